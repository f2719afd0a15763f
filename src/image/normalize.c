/* normalize.c - torchvision ToTensor + Normalize on one tile, bit-exact: every step in
 * float32 as torch computes it, x = u / 255, y = (x - mean_c) / std_c (a division, not a
 * multiplication by 1/std, which differs in the last bit for 230 of the 768 values). Only
 * 3 x 256 values exist, so they are tabulated per call. */
#include "nvlm.h"
#include <stddef.h>

static void normalize_lut(float lut[3][256]) {
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
    for (int c = 0; c < 3; c++)
        for (int u = 0; u < 256; u++) {
            volatile float x = (float)u / 255.0f; /* volatile: keep each float32 rounding */
            lut[c][u] = (x - mean[c]) / stdv[c];
        }
}

void nvlm_tile_normalize(const uint8_t *tile_rgb, int size, float *out_chw) {
    if (!tile_rgb || !out_chw || size <= 0) return;
    float lut[3][256];
    normalize_lut(lut);
    size_t plane = (size_t)size * (size_t)size;
    float *r = out_chw, *g = out_chw + plane, *b = out_chw + 2 * plane;
    for (size_t i = 0; i < plane; i++, tile_rgb += 3) {
        r[i] = lut[0][tile_rgb[0]];
        g[i] = lut[1][tile_rgb[1]];
        b[i] = lut[2][tile_rgb[2]];
    }
}

void nvlm_tiles_normalize(const uint8_t *tiles_rgb, int n_tiles, int size, float *out) {
    if (!tiles_rgb || !out || size <= 0 || n_tiles <= 0) return;
    size_t plane = (size_t)size * (size_t)size;
    for (int k = 0; k < n_tiles; k++)
        nvlm_tile_normalize(tiles_rgb + plane * 3 * (size_t)k, size, out + plane * 3 * (size_t)k);
}
