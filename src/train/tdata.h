/* tdata.h - training data in the InternVL/LLaVA conversation JSONL format:
 *   {"image": "path" | ["path", ...], "system": "...", "conversations":
 *    [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", "value": "..."}, ...]}
 * Image paths are relative to the file. The prompt is built exactly as chat() builds it
 * (docs/spec.md §8); labels cover each answer and its <|im_end|>. Samples are prepared on
 * first use and cached: the frozen ViT runs once per image (a trained one runs every step
 * on the cached tiles). Internal. */
#ifndef NVLM_TRAIN_TDATA_H
#define NVLM_TRAIN_TDATA_H
#include "train/train.h"

typedef struct nvlm_tturn {
    int gpt;          /* 0: human, 1: gpt */
    char *text;
} nvlm_tturn;

typedef struct nvlm_tsample {
    int line;             /* 1-based line in the file */
    char **images;        /* resolved paths */
    int n_images;
    char *system;         /* NULL: the template default */
    nvlm_tturn *turns;
    int n_turns;
    /* prepared on first use */
    int32_t *ids, *labels;
    int n;
    float *img;           /* pixel-shuffled ViT features [n_img, 4C] (frozen ViT) */
    int n_img;
    float *px;            /* or the normalised tiles [n_tiles, 3, S, S] (nvlm_tdata.pixels) */
    int n_tiles;
    int *num_patches;
    /* NVLM-X/H (nvlm_tseq): decoder image rows, memory rows, each position's memory range */
    int *ctx_rows, n_ctx;
    int *mem_src, n_mem;
    int *mem_lo, *mem_hi;
} nvlm_tsample;

typedef struct nvlm_tdata {
    char *path;
    nvlm_tsample *s;
    int n;
    int pixels;           /* 1: prepare keeps the tiles' pixels (a trained ViT runs each step) */
} nvlm_tdata;

/* Reads and validates every line (errors name the file and line; missing images too). */
int nvlm_tdata_load(const char *path, nvlm_tdata **out, nvlm_err *err);
void nvlm_tdata_free(nvlm_tdata *d);
/* Prepares sample i for model m (tiles with at most max_num per image; 0: the config's). */
int nvlm_tdata_prepare(nvlm_tdata *d, nvlm_model *m, int i, int max_num, nvlm_err *err);
/* The prepared sample as a training sequence. */
void nvlm_tdata_seq(const nvlm_tdata *d, int i, nvlm_tseq *out);

/* ViT + pixel shuffle of the tiles of images (each cut with at most max_num tiles):
 * *feat [sum tiles * tokens_per_tile, 4C] malloc'ed, num_patches[i] tiles of image i; with
 * pixels, *feat holds the normalised tiles [n_tiles, 3, S, S] instead (no ViT). *n_rows is
 * the number of image tokens either way. */
int nvlm_train_image_features(nvlm_model *m, char *const *paths, int n, int max_num, int pixels, float **feat,
                              int *n_rows, int *n_tiles, int *num_patches, nvlm_err *err);
#endif
