/* nvlm preprocess - decode images and cut them into NVLM tiles (the model's exact input),
 * printing the grid, each tile's sha256 and the sum of the normalised tensor, one image
 * after the other (all tiled in one go by nvlm_images_load_tile). */
#include "cli.h"
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: nvlm preprocess --image FILE [--image FILE...] [--max-num N] [--min-num N]\n"
            "                       [--json] [--save-tiles DIR] [--max-pixels N] [--threads N]\n\n"
            "Decodes FILE (JPEG, PNG, WebP, GIF first frame, BMP) exactly as Pillow's\n"
            "Image.open(f).convert('RGB'), picks the NVLM/InternVL tile grid, resizes with\n"
            "Pillow's BICUBIC, cuts 448x448 tiles row by row and appends a thumbnail when there\n"
            "is more than one tile, then normalises them as torchvision does.\n\n"
            "  --image FILE       the image (required); repeat it for several images, which are\n"
            "                     all tiled in one go and reported in order (with --json, one\n"
            "                     JSON object per line)\n"
            "  --max-num N        most grid tiles, 1..64 (default 6, NVLM-D's max_dynamic_patch)\n"
            "  --min-num N        fewest grid tiles (default 1)\n"
            "  --json             print one JSON object: {\"grid\": [cols, rows], \"num_tiles\": n,\n"
            "                     \"thumbnail\": bool, \"tile_sha256\": [...], \"pixel_values_sum\": x}\n"
            "                     (sha256 of each tile's 448x448x3 RGB bytes, row-major; the sum\n"
            "                     of all float32 values of the [n,3,448,448] tensor, in double)\n"
            "  --save-tiles DIR   also write the tiles as DIR/tile_00.png ... (the thumbnail is\n"
            "                     the last one); DIR is created if missing; with several images\n"
            "                     image k's tiles go to DIR/image_k/\n"
            "  --max-pixels N     refuse larger images (default 178956970, Pillow's bomb guard)\n"
            "  --threads N        threads, 1..64 (default 1; 2 overlaps decoding and resizing);\n"
            "                     the output never depends on it\n");
}

static void tile_sha256(const uint8_t *p, size_t n, char hex[65]) {
    unsigned char md[32];
    unsigned int len = 0;
    if (!EVP_Digest(p, n, md, &len, EVP_sha256(), NULL) || len != 32) {
        strcpy(hex, "error");
        return;
    }
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
}

static int save_tiles(const char *dir, const nvlm_tiles *t) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "nvlm preprocess: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    size_t tb = (size_t)t->size * t->size * 3;
    for (int k = 0; k < t->num_tiles; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tile_%02d.png", dir, k);
        if (cli_write_png(path, t->rgb + tb * k, t->size, t->size) != 0) {
            fprintf(stderr, "nvlm preprocess: cannot write %s\n", path);
            return -1;
        }
    }
    return 0;
}

/* Prints one image's report (JSON object on one line, or text). */
static void report(const char *image, const nvlm_tiles *t, int json) {
    size_t plane = (size_t)t->size * t->size, tb = plane * 3;
    double sum = 0.0;
    float *chw = malloc(sizeof(float) * tb);
    for (int k = 0; k < t->num_tiles && chw; k++) {
        nvlm_tile_normalize(t->rgb + tb * k, t->size, chw);
        for (size_t i = 0; i < tb; i++) sum += (double)chw[i];
    }
    free(chw);
    if (json) {
        printf("{\"grid\": [%d, %d], \"num_tiles\": %d, \"thumbnail\": %s, \"tile_sha256\": [", t->cols,
               t->rows, t->num_tiles, t->thumbnail ? "true" : "false");
    } else {
        printf("image %s\ngrid %d x %d (cols x rows), %d tiles%s\n", image, t->cols, t->rows,
               t->num_tiles, t->thumbnail ? " (last one is the thumbnail)" : "");
    }
    for (int k = 0; k < t->num_tiles; k++) {
        char hex[65];
        tile_sha256(t->rgb + tb * k, tb, hex);
        if (json) printf("%s\"%s\"", k ? ", " : "", hex);
        else printf("tile %2d sha256 %s\n", k, hex);
    }
    if (json) printf("], \"pixel_values_sum\": %.17g}\n", sum);
    else printf("pixel_values_sum %.17g\n", sum);
}

int cmd_preprocess(int argc, char **argv) {
    const char *save_dir = NULL;
    const char **images = calloc((size_t)argc + 1, sizeof *images);
    int n_images = 0;
    long max_num = 6, min_num = 1, max_pixels = 0, threads = 1;
    int json = 0, rc = 0;
    if (!images) {
        fprintf(stderr, "nvlm preprocess: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(images);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (i + 1 >= argc) {
            rc = cli_usage_error("preprocess", "unknown option or missing value: %s", a);
        } else if (!strcmp(a, "--image")) {
            images[n_images++] = argv[++i];
        } else if (!strcmp(a, "--save-tiles")) {
            save_dir = argv[++i];
        } else if (!strcmp(a, "--max-num")) {
            if (cli_parse_int(argv[++i], 1, 64, &max_num))
                rc = cli_usage_error("preprocess", "--max-num wants an integer 1..64");
        } else if (!strcmp(a, "--min-num")) {
            if (cli_parse_int(argv[++i], 1, 64, &min_num))
                rc = cli_usage_error("preprocess", "--min-num wants an integer 1..64");
        } else if (!strcmp(a, "--max-pixels")) {
            if (cli_parse_int(argv[++i], 1, 0x7fffffffffffffffL, &max_pixels))
                rc = cli_usage_error("preprocess", "--max-pixels wants a positive integer");
        } else if (!strcmp(a, "--threads")) {
            if (cli_parse_int(argv[++i], 1, 64, &threads))
                rc = cli_usage_error("preprocess", "--threads wants an integer 1..64");
        } else {
            rc = cli_usage_error("preprocess", "unknown option %s", a);
        }
    }
    if (rc == 0 && n_images == 0) rc = cli_usage_error("preprocess", "--image FILE is required");
    if (rc == 0 && min_num > max_num)
        rc = cli_usage_error("preprocess", "--min-num is above --max-num");
    if (rc != 0) {
        free(images);
        return rc;
    }

    nvlm_err err = {0, ""};
    nvlm_tile_opts o = {0};
    o.tile_size = 448;
    o.min_num = (int)min_num;
    o.max_num = (int)max_num;
    o.threads = (int)threads;
    o.limits.max_pixels = (uint64_t)max_pixels;
    nvlm_tile_batch b;
    if (nvlm_images_load_tile(images, n_images, &o, &b, &err) != NVLM_OK) {
        free(images);
        return cli_report("preprocess", &err);
    }
    for (int i = 0; i < n_images; i++) report(images[i], &b.images[i], json);
    for (int i = 0; i < n_images && save_dir && rc == 0; i++) {
        if (n_images == 1) {
            rc = save_tiles(save_dir, &b.images[i]);
            break;
        }
        char sub[4096];
        if (mkdir(save_dir, 0777) != 0 && errno != EEXIST) {
            fprintf(stderr, "nvlm preprocess: cannot create %s: %s\n", save_dir, strerror(errno));
            rc = -1;
            break;
        }
        snprintf(sub, sizeof sub, "%s/image_%d", save_dir, i);
        rc = save_tiles(sub, &b.images[i]);
    }
    nvlm_tile_batch_free(&b);
    free(images);
    return rc ? 1 : 0;
}
