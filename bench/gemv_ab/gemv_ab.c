/* One token's matrix-vector products (a Qwen2-0.5B-shaped LLM: 24 layers x q, k, v, o, gate,
 * up, down, then lm_head) run by two arms in turn, token by token, in one process; prints each
 * arm's median weight GB/s and the median of the per-token ratios B / A with its quartiles.
 * On a machine whose bandwidth drifts from minute to minute (shared hosts), this resolves a
 * few percent where separate runs cannot.
 *
 *   gemv_ab variant THREADS FORMAT [PAIRS]   A = nvlm_gemv_avx2, B = var_gemv (a copy of
 *                                           src/kernels/gemv_avx2.c built by run.sh)
 *   gemv_ab pages THREADS FORMAT [PAIRS]     the same kernel, A on 4 KiB pages, B on huge pages
 * FORMAT: f16, bf16, q8_0 or q4. See run.sh. */
#include "kernels/ops.h"
#include "kernels/pool.h"
#include "kernels/qblock.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int nvlm_gemv_avx2(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
                   nvlm_err *err);
int var_gemv(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias,
             nvlm_err *err);
typedef int (*gemv_fn)(nvlm_pool *, float *, const float *, int, const nvlm_wmat *, const float *, nvlm_err *);

enum { LAYERS = 24, PER_LAYER = 7, N_MAT = LAYERS * PER_LAYER + 1, MAX_PAIRS = 1000, HUGE_PAGE = 2 << 20 };
static const int shape[PER_LAYER + 1][2] = {{896, 896}, {128, 896}, {128, 896}, {896, 896}, {4864, 896}, {4864, 896}, {896, 4864}, {151936, 896}};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The token's matrices, filled with the same rows, on huge pages or not. */
static int make_weights(nvlm_wmat *w, nvlm_dtype dt, int huge, size_t *bytes) {
    float row[4864];
    for (int i = 0; i < 4864; i++) row[i] = (float)(i % 17) / 17 - 0.5f;
    *bytes = 0;
    for (int i = 0; i < N_MAT; i++) {
        const int *s = shape[i == N_MAT - 1 ? PER_LAYER : i % PER_LAYER];
        size_t rb = nvlm_row_bytes(dt, s[1]), n = (rb * s[0] + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
        uint8_t *d = aligned_alloc(HUGE_PAGE, n);
        if (!d) return -1;
        madvise(d, n, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        for (int r = 0; r < s[0]; r++) nvlm_row_from_f32(d + r * rb, row, dt, s[1]);
        w[i] = (nvlm_wmat){.dtype = dt, .rows = s[0], .cols = s[1], .data = d};
        *bytes += rb * s[0];
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4 || (strcmp(argv[1], "variant") && strcmp(argv[1], "pages"))) {
        fprintf(stderr, "usage: gemv_ab variant|pages THREADS f16|bf16|q8_0|q4 [PAIRS]\n");
        return 2;
    }
    int pages = !strcmp(argv[1], "pages"), nt = atoi(argv[2]), pairs = argc > 4 ? atoi(argv[4]) : 30;
    nvlm_dtype dt = !strcmp(argv[3], "f16") ? NVLM_DT_F16 : !strcmp(argv[3], "bf16") ? NVLM_DT_BF16 : !strcmp(argv[3], "q4") ? NVLM_DT_Q4 : NVLM_DT_Q8_0;
    if (pairs < 2 || pairs > MAX_PAIRS) pairs = 30;
    nvlm_pool *pool;
    nvlm_err err;
    if (nvlm_pool_new(nt, &pool, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    static nvlm_wmat w[2][N_MAT];
    size_t bytes;
    if (make_weights(w[0], dt, !pages, &bytes) || (pages && make_weights(w[1], dt, 1, &bytes))) return fprintf(stderr, "out of memory\n"), 1;
    gemv_fn fn[2] = {nvlm_gemv_avx2, pages ? nvlm_gemv_avx2 : var_gemv};
    float *x = malloc(sizeof(float) * 4864), *y[2] = {malloc(sizeof(float) * 151936), malloc(sizeof(float) * 151936)};
    for (int i = 0; i < 4864; i++) x[i] = (float)(i % 13) / 13 - 0.5f;
    static double t[2][MAX_PAIRS], ratio[MAX_PAIRS];
    for (int p = 0; p < pairs; p++)
        for (int k = 0; k < 2; k++) {
            int arm = p & 1 ? 1 - k : k; /* ABBA: neither arm always goes first */
            const nvlm_wmat *ws = w[pages ? arm : 0];
            double t0 = now();
            for (int i = 0; i < N_MAT; i++) fn[arm](pool, y[arm], x, 1, &ws[i], NULL, NULL);
            t[arm][p] = now() - t0;
        }
    if (memcmp(y[0], y[1], sizeof(float) * 151936)) printf("note: the two arms' outputs differ\n");
    for (int p = 0; p < pairs; p++) ratio[p] = t[0][p] / t[1][p];
    qsort(ratio, (size_t)pairs, sizeof(double), by_value);
    qsort(t[0], (size_t)pairs, sizeof(double), by_value);
    qsort(t[1], (size_t)pairs, sizeof(double), by_value);
    printf("%s, %d thread(s), %.0f MB per token: A %.2f GB/s, B %.2f GB/s (medians); B / A speed %.3f (quartiles %.3f-%.3f, %d pairs)\n",
           argv[3], nt, bytes / 1e6, bytes / t[0][pairs / 2] / 1e9, bytes / t[1][pairs / 2] / 1e9, ratio[pairs / 2], ratio[pairs / 4],
           ratio[3 * pairs / 4], pairs);
    return 0;
}
