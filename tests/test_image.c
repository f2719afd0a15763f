/* test_image - every case of reference/image_cases.jsonl: decoded size and sha256, grid,
 * tile count, thumbnail, every tile sha256, the tensor sum within the README bound; every
 * bad file refused; astronaut.pixel_values.f32 and normalize_lut.f32 bit-exact.
 *
 * Under AddressSanitizer the decode checks still run for every image, but the tiling checks
 * run for max_num 6 only (about a third of the resize work), to keep the suite fast. */
#include "check.h"
#include "nvlm.h"
#include <cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static void sha256_hex(const uint8_t *p, size_t n, char hex[65]) {
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

static int n_cases, n_tiled, n_errors, n_images;

/* A case's "image" path is relative to shared/reference. */
static const char *ref_path(const char *rel) {
    char buf[1024];
    snprintf(buf, sizeof buf, "reference/%s", rel);
    return shared_path(buf);
}

/* Sum of the normalised tensor of all tiles, in double. */
static double tiles_sum(const nvlm_tiles *t, float *chw) {
    size_t tb = (size_t)t->size * t->size * 3;
    double s = 0.0;
    for (int k = 0; k < t->num_tiles; k++) {
        nvlm_tile_normalize(t->rgb + tb * k, t->size, chw);
        for (size_t i = 0; i < tb; i++) s += chw[i];
    }
    return s;
}

static void check_case(const cJSON *c, const nvlm_image *img, float *chw) {
    const char *name = cJSON_GetObjectItem(c, "image")->valuestring;
    int max_num = cJSON_GetObjectItem(c, "max_num")->valueint;
    nvlm_tiles t;
    nvlm_err err = {0, ""};
    int rc = nvlm_image_tile(img, 448, 1, max_num, 1, &t, &err);
    CHECK(rc == NVLM_OK, "%s max_num %d: %s", name, max_num, err.msg);
    if (rc != NVLM_OK) return;
    n_tiled++;
    const cJSON *grid = cJSON_GetObjectItem(c, "grid");
    int cols = cJSON_GetArrayItem(grid, 0)->valueint, rows = cJSON_GetArrayItem(grid, 1)->valueint;
    CHECK(t.cols == cols && t.rows == rows, "%s max_num %d: grid %dx%d, want %dx%d", name, max_num,
          t.cols, t.rows, cols, rows);
    int num = cJSON_GetObjectItem(c, "num_tiles")->valueint;
    CHECK(t.num_tiles == num, "%s max_num %d: %d tiles, want %d", name, max_num, t.num_tiles, num);
    CHECK(t.thumbnail == cJSON_IsTrue(cJSON_GetObjectItem(c, "thumbnail")), "%s: thumbnail flag", name);
    const cJSON *shas = cJSON_GetObjectItem(c, "tile_sha256");
    size_t tb = (size_t)448 * 448 * 3;
    for (int k = 0; k < t.num_tiles && k < cJSON_GetArraySize(shas); k++) {
        char hex[65];
        sha256_hex(t.rgb + tb * k, tb, hex);
        CHECK(!strcmp(hex, cJSON_GetArrayItem(shas, k)->valuestring), "%s max_num %d: tile %d sha256",
              name, max_num, k);
    }
    double sum = tiles_sum(&t, chw);
    double want = cJSON_GetObjectItem(c, "pixel_values_sum")->valuedouble;
    double abs_sum = cJSON_GetObjectItem(c, "pixel_values_abs_sum")->valuedouble;
    CHECK(fabs(sum - want) <= 1e-9 * abs_sum, "%s max_num %d: sum %.17g, want %.17g", name, max_num,
          sum, want);
    nvlm_tiles_free(&t);
}

static void check_error_case(const cJSON *c) {
    const char *name = cJSON_GetObjectItem(c, "image")->valuestring;
    nvlm_image img;
    nvlm_err err = {0, ""};
    int rc = nvlm_image_load(ref_path(name), NULL, &img, &err);
    CHECK(rc < 0, "%s: must be refused (Pillow: %s)", name,
          cJSON_GetObjectItem(c, "pillow_says")->valuestring);
    CHECK(img.rgb == NULL && img.width == 0 && img.height == 0, "%s: no image on error", name);
    CHECK(err.code == rc && err.msg[0] && strstr(err.msg, name + strlen("images/bad/")),
          "%s: message names the file: '%s'", name, err.msg);
    if (rc == 0) nvlm_image_free(&img);
    n_errors++;
}

static void run_cases(void) {
    size_t len;
    char *all = read_all(shared_path("reference/image_cases.jsonl"), &len);
    CHECK(all != NULL, "cannot read image_cases.jsonl");
    if (!all) return;
    float *chw = malloc(sizeof(float) * 3 * 448 * 448);
    char cur[512] = "";
    nvlm_image img = {0, 0, NULL};
    int img_ok = 0;
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *c = cJSON_Parse(line);
        CHECK(c != NULL, "bad JSON line");
        if (!c) continue;
        n_cases++;
        const char *name = cJSON_GetObjectItem(c, "image")->valuestring;
        if (cJSON_IsTrue(cJSON_GetObjectItem(c, "error"))) {
            check_error_case(c);
            cJSON_Delete(c);
            continue;
        }
        if (strcmp(cur, name) != 0) { /* cases of one image are consecutive: decode once */
            nvlm_image_free(&img);
            snprintf(cur, sizeof cur, "%s", name);
            nvlm_err err = {0, ""};
            img_ok = nvlm_image_load(ref_path(name), NULL, &img, &err) == NVLM_OK;
            CHECK(img_ok, "%s: %s", name, err.msg);
            if (img_ok) {
                n_images++;
                const cJSON *size = cJSON_GetObjectItem(c, "size");
                int w = cJSON_GetArrayItem(size, 0)->valueint, h = cJSON_GetArrayItem(size, 1)->valueint;
                CHECK(img.width == w && img.height == h, "%s: size %dx%d, want %dx%d", name,
                      img.width, img.height, w, h);
                char hex[65];
                sha256_hex(img.rgb, (size_t)img.width * img.height * 3, hex);
                CHECK(!strcmp(hex, cJSON_GetObjectItem(c, "decoded_sha256")->valuestring),
                      "%s: decoded sha256 differs (%s %s)", name,
                      cJSON_GetObjectItem(c, "pillow_format")->valuestring,
                      cJSON_GetObjectItem(c, "pillow_mode")->valuestring);
            }
        }
        if (img_ok && (!UNDER_ASAN || cJSON_GetObjectItem(c, "max_num")->valueint == 6))
            check_case(c, &img, chw);
        cJSON_Delete(c);
    }
    nvlm_image_free(&img);
    free(chw);
    free(all);
}

/* astronaut at max_num 6: one tile whose tensor must equal the reference bit for bit. */
static void check_astronaut_tensor(void) {
    size_t len;
    char *ref = read_all(shared_path("reference/tiles/astronaut.pixel_values.f32"), &len);
    CHECK(ref && len == sizeof(float) * 3 * 448 * 448, "astronaut.pixel_values.f32 missing");
    nvlm_image img;
    nvlm_tiles t;
    nvlm_err err = {0, ""};
    int rc = nvlm_image_load(shared_path("reference/images/skimage_astronaut.png"), NULL, &img, &err);
    CHECK(rc == NVLM_OK, "astronaut: %s", err.msg);
    if (!ref || rc != NVLM_OK) {
        free(ref);
        return;
    }
    rc = nvlm_image_tile(&img, 448, 1, 6, 1, &t, &err);
    CHECK(rc == NVLM_OK && t.num_tiles == 1, "astronaut tiles: %s", err.msg);
    if (rc == NVLM_OK) {
        float *chw = malloc(len);
        nvlm_tile_normalize(t.rgb, 448, chw);
        float maxdiff = 0;
        size_t nbits = 0;
        for (size_t i = 0; i < len / 4; i++) {
            float r;
            memcpy(&r, ref + 4 * i, 4);
            float d = fabsf(chw[i] - r);
            if (d > maxdiff) maxdiff = d;
            if (memcmp(&chw[i], &r, 4)) nbits++;
        }
        CHECK(maxdiff <= 1e-6f, "astronaut tensor: max abs diff %g", maxdiff);
        CHECK(nbits == 0, "astronaut tensor: %zu values not bit-identical", nbits);
        free(chw);
        nvlm_tiles_free(&t);
    }
    nvlm_image_free(&img);
    free(ref);
}

/* Every (channel, byte) value against tiles/normalize_lut.f32. */
static void check_lut(void) {
    size_t len;
    char *ref = read_all(shared_path("reference/tiles/normalize_lut.f32"), &len);
    CHECK(ref && len == 3 * 256 * 4, "normalize_lut.f32 missing");
    if (!ref) return;
    /* a 16x16 tile whose pixel u has value u in every channel */
    uint8_t tile[16 * 16 * 3];
    float chw[3 * 16 * 16];
    for (int u = 0; u < 256; u++) tile[3 * u] = tile[3 * u + 1] = tile[3 * u + 2] = (uint8_t)u;
    nvlm_tile_normalize(tile, 16, chw);
    int bad = 0;
    for (int c = 0; c < 3; c++)
        for (int u = 0; u < 256; u++) bad += memcmp(&chw[c * 256 + u], ref + 4 * (c * 256 + u), 4) != 0;
    CHECK(bad == 0, "normalisation table: %d of 768 values differ", bad);
    free(ref);
}

int main(void) {
    check_lut();
    check_astronaut_tensor();
    run_cases();
    CHECK(n_cases == 423, "expected 423 case lines, read %d", n_cases);
    CHECK(n_errors == 12, "expected 12 error cases, read %d", n_errors);
    CHECK(n_images == 137, "expected 137 decoded images, got %d", n_images);
    printf("test_image: %d images decoded, %d cases tiled%s, %d bad files refused\n", n_images,
           n_tiled, UNDER_ASAN ? " (ASan: max_num 6 only)" : "", n_errors);
    return check_done("test_image");
}
