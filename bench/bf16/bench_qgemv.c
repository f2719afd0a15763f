/* Generation matrix-vector GB/s of Q8_0 / Q4 weights with int8 activations: the AVX2 kernel
 * (vpmaddubsw, gemv_avx2.c) against the AVX512-VNNI ones (vpdpbusd): gemv_vnni.c on row-major
 * rows, gemm_vnni.c packing per call, and gemm_vnni.c on the matrix packed NVLM_WL_Q16 as an
 * engine packs it (what generation runs at the VNNI levels), in one process, interleaved rounds,
 * best of each. W is [N, K] (default 65536 x 896: 62 MB of Q8_0, beyond the
 * caches), one token.
 *   bench_qgemv THREADS [N K [ROUNDS]] */
#include "kernels/cpu.h"
#include "kernels/qblock.h"
#include "kernels/ops.h"
#include "kernels/gemv_vnni.h"
#include "kernels/wpack.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Wall time, or with CPU_TIME=1 in the environment the process's CPU time divided by the
 * threads (estimates the uncontended figure on a busy shared machine, as nvlm bench --cpu-time). */
static int g_threads = 1;
static double now(void) {
    struct timespec t;
    const char *c = getenv("CPU_TIME");
    int cpu = c && *c == '1';
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return ((double)t.tv_sec + 1e-9 * (double)t.tv_nsec) / (cpu ? g_threads : 1);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    g_threads = threads;
    int N = argc > 3 ? atoi(argv[2]) : 65536, K = argc > 3 ? atoi(argv[3]) : 896, rounds = argc > 4 ? atoi(argv[4]) : 15;
    nvlm_pool *pool;
    nvlm_err err = {0};
    if (nvlm_pool_new(threads, &pool, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    nvlm_pool_set_int8_act(pool, 1);
    float *x = malloc(sizeof(float) * K), *y = malloc(sizeof(float) * N), *row = malloc(sizeof(float) * K);
    for (int k = 0; k < K; k++) x[k] = (float)((k * 2654435761u) % 2001) / 1000.0f - 1.0f;
    static const nvlm_dtype dts[] = {NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    static const int lv[] = {NVLM_CPU_AVX2, NVLM_CPU_AVX512_VNNI, NVLM_CPU_AVX512_VNNI, NVLM_CPU_AVX512_VNNI};
    printf("N=%d K=%d, 1 token, int8 activations, %d thread(s); GB/s of weights, best of %d\n", N, K, threads, rounds);
    for (int d = 0; d < (int)(sizeof dts / sizeof dts[0]); d++) {
        size_t rb = nvlm_row_bytes(dts[d], K);
        uint8_t *wd = malloc(rb * (size_t)N);
        for (int r = 0; r < N; r++) {
            for (int k = 0; k < K; k++) row[k] = (float)(((size_t)r * K + k) * 40503u % 2001) / 20000.0f - 0.05f;
            nvlm_row_from_f32(wd + (size_t)r * rb, row, dts[d], K);
        }
        nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd}, wp = w;
        uint8_t *pd = malloc(rb * (size_t)N);
        wp.data = pd;
        wp.layout = N % NVLM_Q16_ROWS == 0 && pd ? nvlm_wpack(pool, pd, &w) : -1;
        double best[4] = {1e30, 1e30, 1e30, 1e30};
        for (int r = 0; r < rounds; r++)
            for (int l = 0; l < 4; l++) {
                if (l == 3 && wp.layout != NVLM_WL_Q16) continue;
                if (!nvlm_cpu_level_usable(lv[l])) continue;
                nvlm_pool_set_level(pool, lv[l]);
                double t0 = now();
                if (l == 1) nvlm_gemv_vnni(pool, y, x, 1, &w, NULL); /* called directly: not dispatched */
                else if (l == 2) nvlm_gemm_vnni(pool, y, x, 1, &w, NULL);
                else if (l == 3) nvlm_gemm_vnni(pool, y, x, 1, &wp, NULL);
                else nvlm_matmul(pool, y, x, 1, &w, NULL, NULL);
                double t = now() - t0;
                best[l] = t < best[l] ? t : best[l];
            }
        double gb = (double)rb * N * 1e-9;
        printf("%-5s avx2 %6.1f GB/s   vnni gemv %6.1f GB/s (%.2f)   vnni gemm %6.1f GB/s (%.2f)   vnni packed %6.1f GB/s (%.2f)\n",
               nvlm_dtype_name(dts[d]), gb / best[0], best[1] < 1e30 ? gb / best[1] : 0.0, best[1] < 1e30 ? best[0] / best[1] : 0.0,
               best[2] < 1e30 ? gb / best[2] : 0.0, best[2] < 1e30 ? best[0] / best[2] : 0.0,
               best[3] < 1e30 ? gb / best[3] : 0.0, best[3] < 1e30 ? best[0] / best[3] : 0.0);
        free(wd), free(pd);
    }
    nvlm_pool_free(pool);
    free(x), free(y), free(row);
    return 0;
}
