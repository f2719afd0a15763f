/* tile.c - nvlm_image_tile: grid choice, one Pillow-exact resize to the grid size, row-major
 * 448x448 crops, and the thumbnail (the decoded image resized straight to the tile size)
 * when there is more than one tile. Both resizes run together (rs_resize_many) so the source
 * is read once for their horizontal passes. */
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
    /* one tile: the grid image is the tile itself */
    uint8_t *grid = n == 1 ? tiles : malloc(tile_bytes * (size_t)n);
    if (!tiles || !grid) {
        free(tiles);
        if (grid != tiles) free(grid);
        return nvlm_fail(err, NVLM_E_NOMEM, "nvlm_image_tile: out of memory for %d tiles", n + thumb);
    }
    int ow[2] = {tile_size * cols, tile_size}, oh[2] = {tile_size * rows, tile_size};
    uint8_t *outs[2] = {grid, tiles + tile_bytes * (size_t)n};
    rc = rs_resize_many(img->rgb, img->width, img->height, 1 + thumb, ow, oh, outs, err);
    if (rc == NVLM_OK && n > 1) {
        size_t grid_row = (size_t)ow[0] * 3, tile_row = (size_t)tile_size * 3;
        for (int k = 0; k < n; k++) {
            int c = k % cols, r = k / cols;
            const uint8_t *src = grid + (size_t)r * tile_size * grid_row + (size_t)c * tile_row;
            uint8_t *dst = tiles + tile_bytes * (size_t)k;
            for (int y = 0; y < tile_size; y++) memcpy(dst + y * tile_row, src + y * grid_row, tile_row);
        }
    }
    if (grid != tiles) free(grid);
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
