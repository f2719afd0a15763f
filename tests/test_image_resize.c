/* test_image_resize - the resize against an independent straightforward transcription of
 * Pillow's algorithm (both kernel sets, many sizes), small cases against bytes Pillow 9.4
 * produced, the grid rule (candidate order = CPython's for every min/max up to 40, the
 * README's tie examples), tiling options, limits and argument errors. */
#include "check.h"
#include "nvlm.h"
#include "image/grid.h"
#include "image/resize.h"
#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------- reference resize */

static double ref_filter(double x) {
    x = fabs(x);
    if (x < 1.0) return (1.5 * x - 2.5) * x * x + 1; /* a = -0.5 */
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0.0;
}

/* One axis, one line: out[i*ostep] from in[j*istep], nch interleaved channels. */
static void ref_line(const uint8_t *in, int n_in, size_t istep, uint8_t *out, int n_out, size_t ostep) {
    double scale = (double)n_in / n_out, fs = scale > 1 ? scale : 1, support = 2 * fs;
    for (int i = 0; i < n_out; i++) {
        double center = (i + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > n_in) hi = n_in;
        double w[4096], sum = 0;
        for (int j = lo; j < hi; j++) sum += w[j - lo] = ref_filter((j - center + 0.5) * (1.0 / fs));
        for (int c = 0; c < 3; c++) {
            int32_t acc = 1 << 21;
            for (int j = lo; j < hi; j++) {
                double k = sum != 0 ? w[j - lo] / sum : w[j - lo];
                int32_t kf = k < 0 ? (int32_t)(k * 4194304 - 0.5) : (int32_t)(k * 4194304 + 0.5);
                acc += (int32_t)in[j * istep + c] * kf;
            }
            acc >>= 22;
            out[i * ostep + c] = (uint8_t)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
        }
    }
}

static uint8_t *ref_resize(const uint8_t *src, int w, int h, int ow, int oh) {
    uint8_t *tmp = malloc((size_t)ow * h * 3), *out = malloc((size_t)ow * oh * 3);
    for (int y = 0; y < h; y++) {
        if (ow == w) memcpy(tmp + (size_t)y * w * 3, src + (size_t)y * w * 3, (size_t)w * 3);
        else ref_line(src + (size_t)y * w * 3, w, 3, tmp + (size_t)y * ow * 3, ow, 3);
    }
    for (int x = 0; x < ow; x++) {
        if (oh == h) {
            for (int y = 0; y < h; y++) memcpy(out + ((size_t)y * ow + x) * 3, tmp + ((size_t)y * ow + x) * 3, 3);
        } else {
            ref_line(tmp + (size_t)x * 3, h, (size_t)ow * 3, out + (size_t)x * 3, oh, (size_t)ow * 3);
        }
    }
    free(tmp);
    return out;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void check_against_reference(int w, int h, int ow, int oh) {
    size_t n = (size_t)w * h * 3, on = (size_t)ow * oh * 3;
    uint8_t *src = malloc(n), *a = malloc(on), *b = malloc(on);
    /* noise with saturated runs, so that clipping on both sides happens */
    for (size_t i = 0; i < n; i++) {
        uint32_t r = rnd();
        src[i] = (r & 3) == 0 ? 0 : (r & 3) == 1 ? 255 : (uint8_t)(r >> 8);
    }
    uint8_t *ref = ref_resize(src, w, h, ow, oh);
    int rc1 = rs_resize_many_ex(src, w, h, 1, &ow, &oh, &a, 1, NULL);
    int rc2 = rs_resize_many_ex(src, w, h, 1, &ow, &oh, &b, 0, NULL);
    CHECK(rc1 == 0 && rc2 == 0, "resize %dx%d -> %dx%d failed", w, h, ow, oh);
    CHECK(!memcmp(a, ref, on), "SIMD resize %dx%d -> %dx%d differs from the reference", w, h, ow, oh);
    CHECK(!memcmp(b, ref, on), "portable resize %dx%d -> %dx%d differs from the reference", w, h, ow, oh);
    free(src);
    free(a);
    free(b);
    free(ref);
}

static void test_resize_reference(void) {
    static const int fixed[][4] = {
        {1, 1, 448, 448}, {2, 3, 448, 448}, {1000, 1, 448, 448}, {1, 1000, 448, 448},
        {5, 3, 2, 2},     {40, 40, 40, 41}, {40, 40, 41, 40},    {640, 480, 448, 448},
        {17, 9, 33, 65},  {300, 7, 1, 1},   {9, 300, 9, 17},     {1500, 20, 448, 448},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        check_against_reference(fixed[i][0], fixed[i][1], fixed[i][2], fixed[i][3]);
    for (int i = 0; i < 40; i++) {
        int w = 1 + (int)(rnd() % 200), h = 1 + (int)(rnd() % 200);
        int ow = 1 + (int)(rnd() % 300), oh = 1 + (int)(rnd() % 300);
        check_against_reference(w, h, ow, oh);
    }
}

/* Bytes Pillow 9.4 gave for a 5x3 random image (Image.resize(size, BICUBIC)). */
static void test_resize_pillow_bytes(void) {
    static const uint8_t src[45] = {130, 183, 14, 238, 127, 26, 80, 57, 190, 240, 126, 194, 52, 127, 6,
                                    110, 208, 143, 93, 199, 81, 36, 71, 227, 64, 67, 0, 2, 107, 110,
                                    84, 85, 148, 160, 101, 104, 93, 100, 196, 152, 11, 184, 212, 84, 74};
    static const uint8_t r22[12] = {139, 147, 90, 98, 99, 113, 103, 122, 144, 113, 65, 125};
    static const uint8_t r11[3] = {112, 109, 118};
    static const uint8_t r111[33] = {104, 165, 109, 116, 162, 99, 146, 158, 74, 154, 143,
                                     78, 104, 107, 151, 67, 76, 206, 99, 65, 177, 142,
                                     67, 122, 127, 81, 91, 90, 101, 72, 77, 110, 66};
    nvlm_image in = {5, 3, (uint8_t *)src}, out;
    nvlm_err err = {0, ""};
    CHECK(nvlm_image_resize(&in, 2, 2, &out, &err) == 0 && !memcmp(out.rgb, r22, 12), "5x3 -> 2x2");
    nvlm_image_free(&out);
    CHECK(nvlm_image_resize(&in, 1, 1, &out, &err) == 0 && !memcmp(out.rgb, r11, 3), "5x3 -> 1x1");
    nvlm_image_free(&out);
    CHECK(nvlm_image_resize(&in, 11, 1, &out, &err) == 0 && !memcmp(out.rgb, r111, 33), "5x3 -> 11x1");
    nvlm_image_free(&out);
    CHECK(nvlm_image_resize(&in, 5, 3, &out, &err) == 0 && !memcmp(out.rgb, src, 45), "same size: copy");
    CHECK(out.rgb != src, "same size returns a new buffer");
    nvlm_image_free(&out);
    CHECK(out.rgb == NULL && out.width == 0, "free clears the image");
    CHECK(nvlm_image_resize(&in, 0, 3, &out, &err) == NVLM_E_INVALID_ARG && err.msg[0], "zero width");
    CHECK(nvlm_image_resize(NULL, 2, 2, &out, &err) == NVLM_E_INVALID_ARG, "NULL input");
    nvlm_image empty = {0, 0, NULL};
    CHECK(nvlm_image_resize(&empty, 2, 2, &out, &err) == NVLM_E_INVALID_ARG, "empty input");
    nvlm_image_free(NULL);
    nvlm_tiles_free(NULL);
}

/* --------------------------------------------------------------------- grid */

static void test_grid_order(void) {
    /* all candidate lists for 1 <= min <= max <= 40, as text, against Python 3.11's
     * sorted(set(...), key=area) (sha256 of its output, one line per (min, max)) */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    int fail = 0;
    for (int mn = 1; mn <= 40; mn++)
        for (int mx = mn; mx <= 40; mx++) {
            grid_cand *c;
            int n;
            if (grid_candidates(mn, mx, &c, &n, NULL) != 0) {
                fail++;
                continue;
            }
            char line[8192];
            int len = snprintf(line, sizeof line, "%d %d:", mn, mx);
            for (int i = 0; i < n; i++) len += snprintf(line + len, sizeof line - len, " %dx%d", c[i].cols, c[i].rows);
            len += snprintf(line + len, sizeof line - len, "\n");
            EVP_DigestUpdate(md, line, (size_t)len);
            free(c);
        }
    unsigned char d[32];
    unsigned int dl;
    EVP_DigestFinal_ex(md, d, &dl);
    EVP_MD_CTX_free(md);
    char hex[65];
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
    CHECK(!fail && !strcmp(hex, "95e278cc897436d166249502b301f92c865e264707fc7c6b5d85fa3863c7a83f"),
          "candidate order differs from CPython's (%s)", hex);
    /* the README's max_num 6 and 12 lines, spelled out */
    static const char *want6 = "1x1 1x2 2x1 3x1 1x3 4x1 1x4 2x2 1x5 5x1 6x1 2x3 1x6 3x2";
    static const char *want12 = "1x1 1x2 2x1 3x1 1x3 2x2 4x1 1x4 5x1 1x5 1x6 6x1 3x2 2x3 7x1 1x7 4x2 "
                                "2x4 1x8 8x1 1x9 3x3 9x1 2x5 5x2 10x1 1x10 11x1 1x11 12x1 3x4 4x3 "
                                "1x12 6x2 2x6";
    const char *want[2] = {want6, want12};
    int mxs[2] = {6, 12};
    for (int k = 0; k < 2; k++) {
        grid_cand *c;
        int n;
        char s[1024] = "";
        grid_candidates(1, mxs[k], &c, &n, NULL);
        for (int i = 0; i < n; i++) {
            size_t l = strlen(s);
            snprintf(s + l, sizeof s - l, "%s%dx%d", i ? " " : "", c[i].cols, c[i].rows);
        }
        free(c);
        CHECK(!strcmp(s, want[k]), "max_num %d order: %s", mxs[k], s);
    }
}

static void test_grid_choice(void) {
    static const struct { int w, h, max, cols, rows; } g[] = {
        {633, 633, 6, 1, 1},    {634, 634, 6, 2, 2},    {950, 950, 12, 2, 2},   {951, 951, 12, 3, 3},
        {512, 512, 6, 1, 1},    {896, 448, 6, 2, 1},    {896, 448, 12, 2, 1},   {1266, 633, 12, 2, 1},
        {1268, 634, 12, 4, 2},  {560, 448, 6, 1, 1},    {1000, 800, 6, 3, 2},   {700, 400, 6, 2, 1},
        {1400, 800, 6, 3, 2},   {500, 200, 6, 2, 1},    {1000, 400, 6, 3, 1},   {180, 800, 6, 1, 4},
        {450, 2000, 6, 1, 5},   {1100, 200, 6, 5, 1},   {2200, 400, 6, 6, 1},   {350, 600, 6, 2, 3},
        {500, 1200, 6, 1, 2},   {1000, 1200, 6, 2, 2},  {600, 400, 6, 3, 2},    {1, 1, 1, 1, 1},
        {10000, 10, 6, 6, 1},   {10, 10000, 12, 1, 12},
    };
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        int c = 0, r = 0;
        int rc = grid_choose(g[i].w, g[i].h, 448, 1, g[i].max, &c, &r, NULL);
        CHECK(rc == 0 && c == g[i].cols && r == g[i].rows, "%dx%d max %d: got %dx%d, want %dx%d", g[i].w,
              g[i].h, g[i].max, c, r, g[i].cols, g[i].rows);
    }
    int c, r;
    nvlm_err err = {0, ""};
    CHECK(grid_choose(100, 100, 448, 3, 2, &c, &r, &err) == NVLM_E_INVALID_ARG && err.msg[0], "min > max");
    CHECK(grid_choose(100, 100, 448, 0, 2, &c, &r, &err) == NVLM_E_INVALID_ARG, "min 0");
    /* min_num 2 on a square: 1x1 is not a candidate, 2x2 (exact aspect) wins */
    CHECK(grid_choose(500, 500, 448, 2, 6, &c, &r, NULL) == 0 && c == 2 && r == 2, "min_num 2: %dx%d", c, r);
}

/* -------------------------------------------------------------------- tiles */

static void test_tiles(void) {
    int w = 1000, h = 500;
    uint8_t *px = malloc((size_t)w * h * 3);
    for (size_t i = 0; i < (size_t)w * h * 3; i++) px[i] = (uint8_t)(rnd() >> 3);
    nvlm_image img = {w, h, px};
    nvlm_tiles t, u;
    nvlm_err err = {0, ""};
    CHECK(nvlm_image_tile(&img, 448, 1, 6, 1, &t, &err) == 0, "tile: %s", err.msg);
    CHECK(t.cols == 2 && t.rows == 1 && t.num_tiles == 3 && t.thumbnail && t.size == 448, "2x1 + thumbnail");
    /* the grid tiles are crops of one resize; the thumbnail is a resize of the original */
    nvlm_image big, thumb;
    nvlm_image_resize(&img, 896, 448, &big, &err);
    nvlm_image_resize(&img, 448, 448, &thumb, &err);
    int same = 1;
    for (int y = 0; y < 448; y++)
        for (int k = 0; k < 2; k++)
            same &= !memcmp(t.rgb + (size_t)k * 448 * 448 * 3 + (size_t)y * 448 * 3,
                            big.rgb + (size_t)y * 896 * 3 + (size_t)k * 448 * 3, 448 * 3);
    CHECK(same, "grid tiles are row-major crops of the grid resize");
    CHECK(!memcmp(t.rgb + (size_t)2 * 448 * 448 * 3, thumb.rgb, (size_t)448 * 448 * 3), "thumbnail");
    CHECK(nvlm_image_tile(&img, 448, 1, 6, 0, &u, &err) == 0 && u.num_tiles == 2 && !u.thumbnail &&
              !memcmp(u.rgb, t.rgb, (size_t)2 * 448 * 448 * 3),
          "use_thumbnail 0");
    nvlm_tiles_free(&u);
    CHECK(nvlm_image_tile(&img, 448, 1, 1, 1, &u, &err) == 0 && u.num_tiles == 1 && !u.thumbnail &&
              !memcmp(u.rgb, thumb.rgb, (size_t)448 * 448 * 3),
          "max_num 1: the whole image resized, no thumbnail");
    nvlm_tiles_free(&u);
    CHECK(nvlm_image_tile(&img, 224, 1, 6, 1, &u, &err) == 0 && u.size == 224 && u.num_tiles == 3,
          "tile size 224");
    nvlm_tiles_free(&u);
    CHECK(nvlm_image_tile(&img, 448, 7, 6, 1, &u, &err) == NVLM_E_INVALID_ARG && u.rgb == NULL, "min > max");
    CHECK(nvlm_image_tile(&img, 0, 1, 6, 1, &u, &err) == NVLM_E_INVALID_ARG, "tile size 0");
    CHECK(nvlm_image_tile(NULL, 448, 1, 6, 1, &u, &err) == NVLM_E_INVALID_ARG, "NULL image");
    nvlm_tiles_free(&t);
    nvlm_image_free(&big);
    nvlm_image_free(&thumb);
    free(px);
}

/* ------------------------------------------------------------ limits, errors */

static uint8_t *file_bytes(const char *rel, size_t *len) {
    FILE *f = fopen(shared_path(rel), "rb");
    *len = 0;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len ? *len : 1);
    if (fread(b, 1, *len, f) != *len) *len = 0;
    fclose(f);
    return b;
}

/* A 24-bit BMP with the given size and no pixel data after the headers. */
static size_t make_bmp_header(uint8_t *b, uint32_t w, uint32_t h) {
    memset(b, 0, 54);
    b[0] = 'B';
    b[1] = 'M';
    b[10] = 54;
    b[14] = 40;
    memcpy(b + 18, &w, 4);
    memcpy(b + 22, &h, 4);
    b[26] = 1;
    b[28] = 24;
    return 54;
}

static void test_limits(void) {
    nvlm_image img;
    nvlm_err err = {0, ""};
    size_t len = 0;
    uint8_t *png = file_bytes("reference/images/png_rgb8.png", &len); /* 300x200 */
    CHECK(png && len, "png_rgb8.png");
    nvlm_image_limits lim = {59999};
    CHECK(nvlm_image_decode(png, len, &lim, &img, &err) == NVLM_E_LIMIT && img.rgb == NULL,
          "limit 59999 refuses 300x200: %s", err.msg);
    lim.max_pixels = 60000;
    CHECK(nvlm_image_decode(png, len, &lim, &img, &err) == 0 && img.width == 300, "limit 60000 allows it");
    nvlm_image_free(&img);
    CHECK(nvlm_image_decode(png, len, NULL, &img, &err) == 0, "default limits");
    nvlm_image_free(&img);
    free(png);

    uint8_t b[64 + 320]; /* 10 rows of 32 bytes */
    CHECK(nvlm_image_decode(b, make_bmp_header(b, 0, 10), NULL, &img, &err) == NVLM_E_FORMAT &&
              strstr(err.msg, "zero"), "zero-width BMP: %s", err.msg);
    CHECK(nvlm_image_decode(b, make_bmp_header(b, 10, 0), NULL, &img, &err) == NVLM_E_FORMAT, "zero-height BMP");
    CHECK(nvlm_image_decode(b, make_bmp_header(b, 20000, 20000), NULL, &img, &err) == NVLM_E_LIMIT,
          "400 Mpixel BMP refused before allocation: %s", err.msg);
    CHECK(nvlm_image_decode(b, make_bmp_header(b, 10, 10), NULL, &img, &err) == NVLM_E_FORMAT &&
              strstr(err.msg, "truncated"), "BMP without pixels: %s", err.msg);
    memset(b + 54, 7, 320);
    CHECK(nvlm_image_decode(b, make_bmp_header(b, 10, 10) + 320, NULL, &img, &err) == 0 &&
              img.width == 10 && img.rgb[0] == 7, "10x10 BMP");
    nvlm_image_free(&img);

    CHECK(nvlm_image_load(shared_path("reference/images/bad/huge_dims_100000x100000.png"), NULL, &img,
                          &err) == NVLM_E_LIMIT, "huge dims: %s", err.msg);
    CHECK(nvlm_image_decode((const uint8_t *)"hello world", 11, NULL, &img, &err) == NVLM_E_UNSUPPORTED &&
              strstr(err.msg, "unknown"), "text: %s", err.msg);
    CHECK(nvlm_image_decode((const uint8_t *)"", 0, NULL, &img, &err) == NVLM_E_FORMAT, "empty");
    CHECK(nvlm_image_decode(NULL, 5, NULL, &img, &err) == NVLM_E_INVALID_ARG, "NULL data");
    CHECK(nvlm_image_load("/nonexistent/x.png", NULL, &img, &err) == NVLM_E_IO && strstr(err.msg, "x.png"),
          "missing file: %s", err.msg);
    CHECK(nvlm_image_load(shared_path("reference/images/bad/truncated.png"), NULL, &img, &err) ==
              NVLM_E_FORMAT && strstr(err.msg, "truncated.png") && strstr(err.msg, "PNG"),
          "truncated PNG names file and format: %s", err.msg);
    /* signatures alone are not images */
    static const char *sigs[] = {"\x89PNG\r\n\x1a\n", "\xff\xd8\xff", "GIF89a", "BM", "RIFF\0\0\0\0WEBPVP8 "};
    static const size_t sig_len[] = {8, 3, 6, 2, 16};
    for (int i = 0; i < 5; i++)
        CHECK(nvlm_image_decode((const uint8_t *)sigs[i], sig_len[i], NULL, &img, &err) < 0 && !img.rgb,
              "bare signature %d refused", i);
}

int main(void) {
    test_resize_reference();
    test_resize_pillow_bytes();
    test_grid_order();
    test_grid_choice();
    test_tiles();
    test_limits();
    return check_done("test_image_resize");
}
