/* bench_image - time nvlm's image pipeline end to end on given files: decode, tile grid,
 * Pillow-exact resizes, crops, thumbnail and the normalised float32 [n,3,448,448] tensor.
 * Prints the median of R runs after one warm-up, wall and process CPU time. With -t 1 (the
 * default) the stages run one after the other and are timed apart; with -t N the file goes
 * through nvlm_images_load_tile on N threads (decode and resize overlapped).
 * usage: bench_image [-r RUNS] [-m MAX_NUM] [-t THREADS] FILE... */
#include "nvlm.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct stage_times {
    double wall, cpu, decode, tile, tensor;
} stage_times;

/* N threads: one call does decode + tiles, then the tensor. */
static int run_threads(const char *path, int max_num, int threads, stage_times *st, int *ntiles,
                       int *cols, int *rows) {
    nvlm_err err = {0, ""};
    nvlm_tile_batch b;
    nvlm_tile_opts o = {0};
    o.max_num = max_num;
    o.threads = threads;
    double c0 = now(CLOCK_PROCESS_CPUTIME_ID), t0 = now(CLOCK_MONOTONIC);
    if (nvlm_images_load_tile(&path, 1, &o, &b, &err) != NVLM_OK) {
        fprintf(stderr, "bench_image: %s\n", err.msg);
        return -1;
    }
    double t2 = now(CLOCK_MONOTONIC);
    size_t per = (size_t)3 * 448 * 448;
    float *pv = malloc(sizeof(float) * per * (size_t)b.total_tiles);
    if (!pv) return -1;
    nvlm_tiles_normalize(b.rgb, b.total_tiles, 448, pv);
    double t3 = now(CLOCK_MONOTONIC), c3 = now(CLOCK_PROCESS_CPUTIME_ID);
    *ntiles = b.total_tiles;
    *cols = b.images[0].cols;
    *rows = b.images[0].rows;
    free(pv);
    nvlm_tile_batch_free(&b);
    st->wall = t3 - t0;
    st->cpu = c3 - c0;
    st->decode = 0;
    st->tile = t2 - t0;
    st->tensor = t3 - t2;
    return 0;
}

static int run_once(const char *path, int max_num, int threads, stage_times *st, int *ntiles,
                    int *cols, int *rows) {
    if (threads > 1) return run_threads(path, max_num, threads, st, ntiles, cols, rows);
    nvlm_err err = {0, ""};
    nvlm_image img;
    nvlm_tiles t;
    double c0 = now(CLOCK_PROCESS_CPUTIME_ID), t0 = now(CLOCK_MONOTONIC);
    if (nvlm_image_load(path, NULL, &img, &err) != NVLM_OK) {
        fprintf(stderr, "bench_image: %s\n", err.msg);
        return -1;
    }
    double t1 = now(CLOCK_MONOTONIC);
    if (nvlm_image_tile(&img, 448, 1, max_num, 1, &t, &err) != NVLM_OK) {
        fprintf(stderr, "bench_image: %s\n", err.msg);
        nvlm_image_free(&img);
        return -1;
    }
    double t2 = now(CLOCK_MONOTONIC);
    size_t per = (size_t)3 * 448 * 448;
    float *pv = malloc(sizeof(float) * per * (size_t)t.num_tiles);
    if (!pv) return -1;
    for (int k = 0; k < t.num_tiles; k++) nvlm_tile_normalize(t.rgb + per * k, 448, pv + per * k);
    double t3 = now(CLOCK_MONOTONIC), c3 = now(CLOCK_PROCESS_CPUTIME_ID);
    *ntiles = t.num_tiles;
    *cols = t.cols;
    *rows = t.rows;
    free(pv);
    nvlm_tiles_free(&t);
    nvlm_image_free(&img);
    st->wall = t3 - t0;
    st->cpu = c3 - c0;
    st->decode = t1 - t0;
    st->tile = t2 - t1;
    st->tensor = t3 - t2;
    return 0;
}

int main(int argc, char **argv) {
    int runs = 5, max_num = 6, threads = 1, i = 1;
    for (; i < argc && argv[i][0] == '-'; i += 2) {
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "-r")) runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-m")) max_num = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
    }
    if (i >= argc || runs < 1 || runs > 1000 || threads < 1 || threads > 64) {
        fprintf(stderr, "usage: bench_image [-r RUNS] [-m MAX_NUM] [-t THREADS] FILE...\n");
        return 2;
    }
    for (; i < argc; i++) {
        stage_times st, warm;
        int n, c, r;
        if (run_once(argv[i], max_num, threads, &warm, &n, &c, &r) != 0) return 1;
        double *v[5];
        for (int k = 0; k < 5; k++) v[k] = malloc(sizeof(double) * runs);
        for (int k = 0; k < runs; k++) {
            if (run_once(argv[i], max_num, threads, &st, &n, &c, &r) != 0) return 1;
            v[0][k] = st.wall;
            v[1][k] = st.cpu;
            v[2][k] = st.decode;
            v[3][k] = st.tile;
            v[4][k] = st.tensor;
        }
        for (int k = 0; k < 5; k++) qsort(v[k], runs, sizeof(double), cmp_double);
        if (threads == 1)
            printf("%s: grid %dx%d, %d tiles, 1 thread; wall median %.1f ms [decode %.1f, "
                   "resize+crop %.1f, tensor %.1f]; CPU median %.1f ms\n",
                   argv[i], c, r, n, v[0][runs / 2] * 1e3, v[2][runs / 2] * 1e3,
                   v[3][runs / 2] * 1e3, v[4][runs / 2] * 1e3, v[1][runs / 2] * 1e3);
        else
            printf("%s: grid %dx%d, %d tiles, %d threads; wall median %.1f ms [decode+resize+crop "
                   "%.1f, tensor %.1f]; CPU median %.1f ms\n",
                   argv[i], c, r, n, threads, v[0][runs / 2] * 1e3, v[3][runs / 2] * 1e3,
                   v[4][runs / 2] * 1e3, v[1][runs / 2] * 1e3);
        for (int k = 0; k < 5; k++) free(v[k]);
    }
    return 0;
}
