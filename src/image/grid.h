/* grid.h - the dynamic high-resolution grid rule (InternVL/NVLM dynamic_preprocess). Internal.
 *
 * The published code visits the candidates (cols, rows), min_num <= cols*rows <= max_num, as
 * `sorted(set(...), key=cols*rows)`: a stable sort of a CPython set, so candidates of equal
 * area come in the set's iteration order. We rebuild that order by replaying CPython 3.11's
 * set insertion (tuple hash, linear probing, resizes), then apply the aspect/area rule in
 * doubles. */
#ifndef NVLM_IMAGE_GRID_H
#define NVLM_IMAGE_GRID_H
#include "nvlm.h"

typedef struct grid_cand {
    int cols, rows;
} grid_cand;

/* Candidates in visiting order; *out is malloc'ed. */
int grid_candidates(int min_num, int max_num, grid_cand **out, int *n, nvlm_err *err);

/* The (cols, rows) chosen for a width x height image. */
int grid_choose(int width, int height, int tile, int min_num, int max_num, int *cols, int *rows,
                nvlm_err *err);
#endif
