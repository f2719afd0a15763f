/* tile.c - nvlm_image_tile: grid choice, one Pillow-exact resize to the grid size, row-major
 * 448x448 crops, and the thumbnail (the decoded image resized straight to the tile size)
 * when there is more than one tile. Both resizes run together (rs_resize_stream_ex) so the
 * source is read once for their horizontal passes, and each output row goes straight into
 * its tiles: the grid image is never stored whole. A band of output rows can be made on
 * its own (tile_fill's parts), which is how several threads share one image. */
#include "image/tile.h"
#include "image/grid.h"
#include "image/resize.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>

void nvlm_tiles_free(nvlm_tiles *t) {
    if (!t) return;
    free(t->rgb);
    memset(t, 0, sizeof *t);
}

/* Where resized rows go: job 0 is the grid image, job 1 the thumbnail. */
typedef struct tile_sink {
    uint8_t *tiles;
    int size, cols, n;
} tile_sink;

static void emit_row(void *user, int job, int y, const uint8_t *row) {
    const tile_sink *t = user;
    size_t tile_row = (size_t)t->size * 3, tile_bytes = tile_row * (size_t)t->size;
    if (job == 1) {
        memcpy(t->tiles + tile_bytes * (size_t)t->n + tile_row * (size_t)y, row, tile_row);
        return;
    }
    int r = y / t->size, yy = y % t->size;
    for (int c = 0; c < t->cols; c++)
        memcpy(t->tiles + tile_bytes * (size_t)(r * t->cols + c) + tile_row * (size_t)yy,
               row + tile_row * (size_t)c, tile_row);
}

int tile_plan_make(int w, int h, int size, int min_num, int max_num, int use_thumbnail,
                   tile_plan *p, nvlm_err *err) {
    memset(p, 0, sizeof *p);
    if (w <= 0 || h <= 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: empty image");
    if (size <= 0 || size > 8192)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: bad tile size %d", size);
    int rc = grid_choose(w, h, size, min_num, max_num, &p->cols, &p->rows, err);
    if (rc != NVLM_OK) return rc;
    int grid = p->cols * p->rows;
    p->thumb = use_thumbnail && grid != 1;
    p->n = grid + p->thumb;
    p->size = size;
    return NVLM_OK;
}

int tile_fill(const uint8_t *rgb, int w, int h, const tile_plan *p, uint8_t *dst, int part,
              int parts, int (*wait_rows)(void *user, int rows), void *wait_user,
              nvlm_err *err) {
    int ow[2] = {p->size * p->cols, p->size}, oh[2] = {p->size * p->rows, p->size};
    int from[2], to[2];
    for (int j = 0; j < 2; j++) { /* band `part` of each output's rows */
        from[j] = (int)((long long)oh[j] * part / parts);
        to[j] = (int)((long long)oh[j] * (part + 1) / parts);
    }
    tile_sink sink = {dst, p->size, p->cols, p->cols * p->rows};
    rs_opts o;
    memset(&o, 0, sizeof o);
    o.simd = 1;
    o.row_from = from;
    o.row_to = to;
    o.wait_rows = wait_rows;
    o.wait_user = wait_user;
    return rs_resize_stream_ex(rgb, w, h, 1 + p->thumb, ow, oh, emit_row, &sink, &o, err);
}

int nvlm_image_tile(const nvlm_image *img, int tile_size, int min_num, int max_num,
                    int use_thumbnail, nvlm_tiles *out, nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: out is NULL");
    memset(out, 0, sizeof *out);
    if (!img || !img->rgb || img->width <= 0 || img->height <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: empty image");
    tile_plan p;
    int rc = tile_plan_make(img->width, img->height, tile_size, min_num, max_num, use_thumbnail,
                            &p, err);
    if (rc != NVLM_OK) return rc;
    size_t tile_bytes = (size_t)tile_size * (size_t)tile_size * 3;
    uint8_t *tiles = malloc(tile_bytes * (size_t)p.n);
    if (!tiles)
        return nvlm_fail(err, NVLM_E_NOMEM, "nvlm_image_tile: out of memory for %d tiles", p.n);
    rc = tile_fill(img->rgb, img->width, img->height, &p, tiles, 0, 1, NULL, NULL, err);
    if (rc != NVLM_OK) {
        free(tiles);
        return rc;
    }
    out->cols = p.cols;
    out->rows = p.rows;
    out->num_tiles = p.n;
    out->thumbnail = p.thumb;
    out->size = tile_size;
    out->rgb = tiles;
    return NVLM_OK;
}
