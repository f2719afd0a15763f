/* tile.h - one image's tiling, in parts that threads can share. Internal. */
#ifndef NVLM_IMAGE_TILE_H
#define NVLM_IMAGE_TILE_H
#include "nvlm.h"

typedef struct tile_plan {
    int cols, rows;  /* the grid */
    int n;           /* tiles in all: cols*rows, plus the thumbnail */
    int thumb;       /* 1 when the last tile is the thumbnail */
    int size;        /* tile side */
} tile_plan;

/* Checks the arguments and chooses the grid for a w x h image. */
int tile_plan_make(int w, int h, int size, int min_num, int max_num, int use_thumbnail,
                   tile_plan *p, nvlm_err *err);

/* Writes part `part` of `parts` (a band of output rows of the grid image and of the
 * thumbnail) into dst (p->n tiles of size*size*3 bytes). Parts touch disjoint bytes, so
 * they may run at the same time, and the bytes do not depend on how the work is cut.
 * wait_rows (may be NULL) is called before source rows [0, rows) are read; nonzero aborts. */
int tile_fill(const uint8_t *rgb, int w, int h, const tile_plan *p, uint8_t *dst, int part,
              int parts, int (*wait_rows)(void *user, int rows), void *wait_user,
              nvlm_err *err);
#endif
