/* test_image_batch - tiles of several images in one go (nvlm_images_tile,
 * nvlm_images_load_tile, nvlm_tiles_normalize): the same bytes as nvlm_image_tile one image
 * at a time, for 1, 2, 3 and 5 threads, with decode and resize overlapped; failures name
 * the file, including a decode that fails after rows were already handed to the resizer
 * (truncated JPEG and PNG, read on two threads). */
#include "check.h"
#include "nvlm.h"
#include <stdlib.h>
#include <string.h>

static const char *files[] = {
    "reference/images/skimage_astronaut.png", "reference/images/astronaut_q90.jpg",
    "reference/images/grid_1400x200.png",     "reference/images/tiny_1x1.png",
    "reference/images/png_rgb8_interlaced.png", "reference/images/extreme_10x10000.png",
    "reference/images/bmp_24.bmp",            "reference/images/png_pal4.png",
};
#define NF (int)(sizeof files / sizeof files[0])

/* Each file's tiles the one-image way. */
static nvlm_tiles ref[NF];
static nvlm_image imgs[NF];

static int same_batch(const nvlm_tile_batch *b, int n, const char *what) {
    int ok = b->n_images == n && b->size == 448;
    int total = 0;
    for (int i = 0; i < n && ok; i++) {
        const nvlm_tiles *t = &b->images[i];
        size_t bytes = (size_t)ref[i].num_tiles * 448 * 448 * 3;
        ok = t->cols == ref[i].cols && t->rows == ref[i].rows && t->num_tiles == ref[i].num_tiles &&
             t->thumbnail == ref[i].thumbnail && b->first_tile[i] == total &&
             t->rgb == b->rgb + (size_t)total * 448 * 448 * 3 && !memcmp(t->rgb, ref[i].rgb, bytes);
        CHECK(ok, "%s: image %d (%s) differs", what, i, files[i]);
        total += ref[i].num_tiles;
    }
    CHECK(b->total_tiles == total, "%s: %d tiles, expected %d", what, b->total_tiles, total);
    return ok;
}

static void test_batches(void) {
    static const int threads[] = {1, 2, 3, 5};
    const char *paths[NF];
    for (int i = 0; i < NF; i++) paths[i] = shared_path(files[i]), paths[i] = strdup(paths[i]);
    for (size_t k = 0; k < sizeof threads / sizeof threads[0]; k++) {
        nvlm_tile_opts o = {0};
        o.threads = threads[k];
        char what[64];
        nvlm_err err = {0, ""};
        nvlm_tile_batch b;
        snprintf(what, sizeof what, "images_tile %d threads", threads[k]);
        int rc = nvlm_images_tile(imgs, NF, &o, &b, &err);
        CHECK(rc == NVLM_OK, "%s: %s", what, err.msg);
        if (rc == NVLM_OK) same_batch(&b, NF, what);
        nvlm_tile_batch_free(&b);
        snprintf(what, sizeof what, "images_load_tile %d threads", threads[k]);
        rc = nvlm_images_load_tile(paths, NF, &o, &b, &err);
        CHECK(rc == NVLM_OK, "%s: %s", what, err.msg);
        if (rc == NVLM_OK) same_batch(&b, NF, what);
        nvlm_tile_batch_free(&b);
        /* one image on its own: the tiles buffer is the batch's */
        rc = nvlm_images_load_tile(paths, 1, &o, &b, &err);
        CHECK(rc == NVLM_OK && b.n_images == 1, "%s single: %s", what, err.msg);
        if (rc == NVLM_OK) same_batch(&b, 1, what);
        nvlm_tile_batch_free(&b);
    }
    /* options: no thumbnail, other bounds */
    {
        nvlm_tile_opts o = {0};
        o.no_thumbnail = 1;
        o.max_num = 12;
        o.min_num = 2;
        o.threads = 2;
        nvlm_tile_batch b;
        nvlm_err err = {0, ""};
        int rc = nvlm_images_tile(imgs, 2, &o, &b, &err);
        CHECK(rc == NVLM_OK, "options: %s", err.msg);
        for (int i = 0; i < 2 && rc == NVLM_OK; i++) {
            nvlm_tiles t;
            nvlm_image_tile(&imgs[i], 448, 2, 12, 0, &t, &err);
            CHECK(b.images[i].num_tiles == t.num_tiles && !b.images[i].thumbnail &&
                      !memcmp(b.images[i].rgb, t.rgb, (size_t)t.num_tiles * 448 * 448 * 3),
                  "options: image %d differs", i);
            nvlm_tiles_free(&t);
        }
        nvlm_tile_batch_free(&b);
    }
    for (int i = 0; i < NF; i++) free((void *)paths[i]);
}

/* A file whose decode fails, alone and among good ones, on 1 and 2 threads. */
static void test_failures(void) {
    static const char *bad[] = {"reference/images/bad/truncated_baseline.jpg",
                                "reference/images/bad/truncated.png",
                                "reference/images/bad/truncated_progressive.jpg",
                                "reference/images/bad/jpeg_missing_eoi.jpg",
                                "reference/images/bad/huge_dims_100000x100000.png",
                                "reference/images/bad/zero_bytes.png",
                                "reference/images/no_such_file.png"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        for (int threads = 1; threads <= 2; threads++) {
            char *good = strdup(shared_path(files[1])), *badp = strdup(shared_path(bad[k]));
            const char *paths[3] = {good, badp, good};
            nvlm_tile_opts o = {0};
            o.threads = threads;
            nvlm_tile_batch b;
            nvlm_err err = {0, ""};
            int rc = nvlm_images_load_tile(paths, 3, &o, &b, &err);
            CHECK(rc < 0 && strstr(err.msg, bad[k] + 17) && b.rgb == NULL && b.images == NULL,
                  "%s (%d threads): rc %d '%s'", bad[k], threads, rc, err.msg);
            rc = nvlm_images_load_tile(paths + 1, 1, &o, &b, &err);
            CHECK(rc < 0 && strstr(err.msg, bad[k] + 17), "%s alone: '%s'", bad[k], err.msg);
            free(good);
            free(badp);
        }
    nvlm_tile_batch b;
    nvlm_err err = {0, ""};
    CHECK(nvlm_images_tile(imgs, 0, NULL, &b, &err) == NVLM_E_INVALID_ARG, "0 images accepted");
    CHECK(nvlm_images_tile(NULL, 1, NULL, &b, &err) == NVLM_E_INVALID_ARG, "NULL images accepted");
    nvlm_image empty = {0, 0, NULL};
    CHECK(nvlm_images_tile(&empty, 1, NULL, &b, &err) == NVLM_E_INVALID_ARG && b.rgb == NULL,
          "empty image accepted");
    nvlm_tile_opts o = {0};
    o.min_num = 7;
    o.max_num = 3;
    CHECK(nvlm_images_tile(imgs, 1, &o, &b, &err) < 0, "min > max accepted");
}

static void test_normalize(void) {
    size_t per = (size_t)3 * 448 * 448;
    float *all = malloc(sizeof(float) * per * (size_t)ref[0].num_tiles), *one = malloc(sizeof(float) * per);
    nvlm_tiles_normalize(ref[0].rgb, ref[0].num_tiles, 448, all);
    int same = 1;
    for (int k = 0; k < ref[0].num_tiles; k++) {
        nvlm_tile_normalize(ref[0].rgb + per * (size_t)k, 448, one);
        same &= !memcmp(one, all + per * (size_t)k, sizeof(float) * per);
    }
    CHECK(same, "nvlm_tiles_normalize differs from tile by tile");
    free(all);
    free(one);
}

int main(void) {
    for (int i = 0; i < NF; i++) {
        nvlm_err err = {0, ""};
        int rc = nvlm_image_load(shared_path(files[i]), NULL, &imgs[i], &err);
        CHECK(rc == NVLM_OK, "%s: %s", files[i], err.msg);
        if (rc != NVLM_OK) return check_done("test_image_batch");
        rc = nvlm_image_tile(&imgs[i], 448, 1, 6, 1, &ref[i], &err);
        CHECK(rc == NVLM_OK, "%s: %s", files[i], err.msg);
    }
    test_batches();
    test_failures();
    test_normalize();
    for (int i = 0; i < NF; i++) {
        nvlm_tiles_free(&ref[i]);
        nvlm_image_free(&imgs[i]);
    }
    return check_done("test_image_batch");
}
