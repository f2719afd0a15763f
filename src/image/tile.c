/* tile.c - nvlm_image_tile: grid choice, one Pillow-exact resize to the grid size, row-major
 * 448x448 crops, and the thumbnail (the decoded image resized straight to the tile size)
 * when there is more than one tile. Both resizes run together (rs_resize_stream) so the
 * source is read once for their horizontal passes, and each output row goes straight into
 * its tiles: the grid image is never stored whole. */
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

int nvlm_image_tile(const nvlm_image *img, int tile_size, int min_num, int max_num,
                    int use_thumbnail, nvlm_tiles *out, nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: out is NULL");
    memset(out, 0, sizeof *out);
    if (!img || !img->rgb || img->width <= 0 || img->height <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: empty image");
    if (tile_size <= 0 || tile_size > 8192)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_tile: bad tile size %d", tile_size);
    int cols, rows;
    int rc = grid_choose(img->width, img->height, tile_size, min_num, max_num, &cols, &rows, err);
    if (rc != NVLM_OK) return rc;
    int n = cols * rows;
    int thumb = use_thumbnail && n != 1;
    size_t tile_bytes = (size_t)tile_size * (size_t)tile_size * 3;
    uint8_t *tiles = malloc(tile_bytes * (size_t)(n + thumb));
    if (!tiles)
        return nvlm_fail(err, NVLM_E_NOMEM, "nvlm_image_tile: out of memory for %d tiles", n + thumb);
    int ow[2] = {tile_size * cols, tile_size}, oh[2] = {tile_size * rows, tile_size};
    tile_sink sink = {tiles, tile_size, cols, n};
    rc = rs_resize_stream(img->rgb, img->width, img->height, 1 + thumb, ow, oh, emit_row, &sink, 1,
                          err);
    if (rc != NVLM_OK) {
        free(tiles);
        return rc;
    }
    out->cols = cols;
    out->rows = rows;
    out->num_tiles = n + thumb;
    out->thumbnail = thumb;
    out->size = tile_size;
    out->rgb = tiles;
    return NVLM_OK;
}
