/* The generation kernels for a batch of sequences, in CPU time (fair on a shared machine):
 * BF16 weights [38912 x 896] (8 x Qwen2-0.5B's MLP rows), T tokens, the AVX-512 batch kernel
 * (gemv_batch_avx512.c) against the AVX2 kernel (3 tokens a pass over each row group while it
 * is in L1) and the table's AVX-512 generation op (nvlm_gemv_avx512), and whether every
 * token's outputs are the bytes the AVX2 kernel gives it (batch invariance, docs/engine.md).
 *   bench/batch/run.sh [THREADS] */
#include "kernels/ops.h"
#include "kernels/pool.h"
#include "kernels/simd512.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
#ifdef NVLM_HAVE_AVX2_KERNELS
    const int threads = argc > 1 ? atoi(argv[1]) : 1, reps = 10;
    nvlm_pool *p = NULL;
    nvlm_err e = {0};
    if (nvlm_pool_new(threads, &p, &e)) return fprintf(stderr, "%s\n", e.msg), 1;
    /* the MLP's up/gate shape (activations of 8 tokens fit in L1) and its down shape (they do not) */
    static const int shapes[2][2] = {{4864 * 8, 896}, {896 * 8, 4864}};
    for (int sh = 0; sh < 2; sh++) {
    const int N = shapes[sh][0], K = shapes[sh][1];
    uint16_t *wd = malloc(2 * (size_t)N * K);
    float *x = aligned_alloc(64, sizeof(float) * 16 * K), *y = malloc(sizeof(float) * 16 * (size_t)N);
    float *y2 = malloc(sizeof(float) * 16 * (size_t)N);
    for (size_t i = 0; i < (size_t)N * K; i++) wd[i] = (uint16_t)(0x3f80 + i % 7);
    for (int i = 0; i < 16 * K; i++) x[i] = (float)(i % 13) * 0.1f;
    nvlm_wmat w = {NVLM_DT_BF16, N, K, wd};
    printf("[%d x %d]\n", N, K);
    printf("T   avx2 (3 a pass in L1)  avx512 batch  avx512 gen op  same bytes   (ms of CPU per product, %d thread(s))\n", threads);
    for (int T = 1; T <= 16; T = T < 4 ? T + 1 : T * 2) {
        double t0 = cpu_now();
        for (int r = 0; r < reps; r++) nvlm_gemv_avx2(p, y2, x, T, &w, NULL, NULL);
        double a = (cpu_now() - t0) / reps;
        t0 = cpu_now();
        for (int r = 0; r < reps; r++) nvlm_gemv_batch_avx512(p, y, x, T, &w, NULL);
        double b = (cpu_now() - t0) / reps;
        int same = !memcmp(y, y2, sizeof(float) * (size_t)T * N);
        t0 = cpu_now();
        for (int r = 0; r < reps; r++) nvlm_gemv_avx512(p, y, x, T, &w, NULL);
        double c = (cpu_now() - t0) / reps;
        same &= !memcmp(y, y2, sizeof(float) * (size_t)T * N);
        printf("%-3d %10.2f ms %13.2f ms %13.2f ms   %s\n", T, a * 1e3, b * 1e3, c * 1e3, same ? "yes" : "NO");
    }
    free(wd), free(x), free(y), free(y2);
    }
    nvlm_pool_free(p);
#else
    (void)argc, (void)argv;
    printf("x86-64 only\n");
#endif
    return 0;
}
