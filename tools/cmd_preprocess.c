/* nvlm preprocess - decode an image and cut it into NVLM tiles (the model's exact input),
 * printing the grid, each tile's sha256 and the sum of the normalised tensor. */
#include "cli.h"
#include <errno.h>
#include <openssl/evp.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: nvlm preprocess --image FILE [--max-num N] [--min-num N] [--json]\n"
            "                       [--save-tiles DIR] [--max-pixels N]\n\n"
            "Decodes FILE (JPEG, PNG, WebP, GIF first frame, BMP) exactly as Pillow's\n"
            "Image.open(f).convert('RGB'), picks the NVLM/InternVL tile grid, resizes with\n"
            "Pillow's BICUBIC, cuts 448x448 tiles row by row and appends a thumbnail when there\n"
            "is more than one tile, then normalises them as torchvision does.\n\n"
            "  --image FILE       the image (required)\n"
            "  --max-num N        most grid tiles, 1..64 (default 6, NVLM-D's max_dynamic_patch)\n"
            "  --min-num N        fewest grid tiles (default 1)\n"
            "  --json             print one JSON object: {\"grid\": [cols, rows], \"num_tiles\": n,\n"
            "                     \"thumbnail\": bool, \"tile_sha256\": [...], \"pixel_values_sum\": x}\n"
            "                     (sha256 of each tile's 448x448x3 RGB bytes, row-major; the sum\n"
            "                     of all float32 values of the [n,3,448,448] tensor, in double)\n"
            "  --save-tiles DIR   also write the tiles as DIR/tile_00.png ... (the thumbnail is\n"
            "                     the last one); DIR is created if missing\n"
            "  --max-pixels N     refuse larger images (default 178956970, Pillow's bomb guard)\n");
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

static int write_png(const char *path, const uint8_t *rgb, int w, int h) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, rgb + (size_t)y * w * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f) == 0 ? 0 : -1;
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
        if (write_png(path, t->rgb + tb * k, t->size, t->size) != 0) {
            fprintf(stderr, "nvlm preprocess: cannot write %s\n", path);
            return -1;
        }
    }
    return 0;
}

int cmd_preprocess(int argc, char **argv) {
    const char *image = NULL, *save_dir = NULL;
    long max_num = 6, min_num = 1, max_pixels = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (i + 1 >= argc) {
            return cli_usage_error("preprocess", "unknown option or missing value: %s", a);
        } else if (!strcmp(a, "--image")) {
            image = argv[++i];
        } else if (!strcmp(a, "--save-tiles")) {
            save_dir = argv[++i];
        } else if (!strcmp(a, "--max-num")) {
            if (cli_parse_int(argv[++i], 1, 64, &max_num))
                return cli_usage_error("preprocess", "--max-num wants an integer 1..64");
        } else if (!strcmp(a, "--min-num")) {
            if (cli_parse_int(argv[++i], 1, 64, &min_num))
                return cli_usage_error("preprocess", "--min-num wants an integer 1..64");
        } else if (!strcmp(a, "--max-pixels")) {
            if (cli_parse_int(argv[++i], 1, 0x7fffffffffffffffL, &max_pixels))
                return cli_usage_error("preprocess", "--max-pixels wants a positive integer");
        } else {
            return cli_usage_error("preprocess", "unknown option %s", a);
        }
    }
    if (!image) return cli_usage_error("preprocess", "--image FILE is required");
    if (min_num > max_num) return cli_usage_error("preprocess", "--min-num is above --max-num");

    nvlm_err err = {0, ""};
    nvlm_image_limits lim = {(uint64_t)max_pixels};
    nvlm_image img;
    if (nvlm_image_load(image, &lim, &img, &err) != NVLM_OK) return cli_report("preprocess", &err);
    nvlm_tiles t;
    int rc = nvlm_image_tile(&img, 448, (int)min_num, (int)max_num, 1, &t, &err);
    int w = img.width, h = img.height;
    nvlm_image_free(&img);
    if (rc != NVLM_OK) return cli_report("preprocess", &err);

    size_t plane = (size_t)t.size * t.size, tb = plane * 3;
    float *chw = malloc(sizeof(float) * tb);
    if (!chw) {
        nvlm_tiles_free(&t);
        fprintf(stderr, "nvlm preprocess: out of memory\n");
        return 1;
    }
    double sum = 0.0;
    for (int k = 0; k < t.num_tiles; k++) {
        nvlm_tile_normalize(t.rgb + tb * k, t.size, chw);
        for (size_t i = 0; i < tb; i++) sum += (double)chw[i];
    }
    free(chw);
    if (json) {
        printf("{\"grid\": [%d, %d], \"num_tiles\": %d, \"thumbnail\": %s, \"tile_sha256\": [", t.cols,
               t.rows, t.num_tiles, t.thumbnail ? "true" : "false");
    } else {
        printf("image %s: %dx%d\ngrid %d x %d (cols x rows), %d tiles%s\n", image, w, h, t.cols,
               t.rows, t.num_tiles, t.thumbnail ? " (last one is the thumbnail)" : "");
    }
    for (int k = 0; k < t.num_tiles; k++) {
        char hex[65];
        tile_sha256(t.rgb + tb * k, tb, hex);
        if (json) printf("%s\"%s\"", k ? ", " : "", hex);
        else printf("tile %2d sha256 %s\n", k, hex);
    }
    if (json) printf("], \"pixel_values_sum\": %.17g}\n", sum);
    else printf("pixel_values_sum %.17g\n", sum);
    rc = save_dir ? save_tiles(save_dir, &t) : 0;
    nvlm_tiles_free(&t);
    return rc ? 1 : 0;
}
