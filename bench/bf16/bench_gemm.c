/* GEMM GFLOP/s of the float32 kernel and of the bf16 compute mode (kernels/gemm_bf16.h), in one
 * process, at each level the machine has: y = x W^T for M tokens, W [N, K] stored BF16 (as the
 * released checkpoints). Interleaved rounds, the best of each kept.
 *   bench_gemm THREADS [M N K [ROUNDS]]   (default 512 896 4864: Qwen2-0.5B's down_proj shape) */
#include "kernels/cpu.h"
#include "kernels/gemm_bf16.h"
#include "kernels/qblock.h"
#include "kernels/gemv_vnni.h"
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
    int M = argc > 4 ? atoi(argv[2]) : 512, N = argc > 4 ? atoi(argv[3]) : 896, K = argc > 4 ? atoi(argv[4]) : 4864;
    int rounds = argc > 5 ? atoi(argv[5]) : 5;
    nvlm_pool *pool;
    nvlm_err err = {0};
    if (nvlm_pool_new(threads, &pool, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    float *x = malloc(sizeof(float) * (size_t)M * K), *y = malloc(sizeof(float) * (size_t)M * N);
    float *row = malloc(sizeof(float) * (size_t)K);
    uint16_t *wd = malloc(2 * (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (int r = 0; r < N; r++) {
        for (int k = 0; k < K; k++) row[k] = (float)(((size_t)r * K + k) * 40503u % 2001) / 20000.0f - 0.05f;
        nvlm_row_from_f32(wd + (size_t)r * K, row, NVLM_DT_BF16, K);
    }
    nvlm_wmat w = {.dtype = NVLM_DT_BF16, .rows = N, .cols = K, .data = wd};
    int n_levels;
    const int *levels = nvlm_cpu_levels(&n_levels);
    printf("M=%d N=%d K=%d (BF16 weights), %d thread(s); GFLOP/s, best of %d\n", M, N, K, threads, rounds);
    printf("%-12s %10s %10s %8s\n", "level", "fp32", "bf16", "ratio");
    for (int li = 0; li < n_levels; li++) {
        int level = levels[li];
        const char *only = getenv("BENCH_LEVEL"); /* e.g. BENCH_LEVEL=avx512bf16: that level alone */
        if (level == NVLM_CPU_SCALAR || !nvlm_cpu_level_usable(level)) continue;
        if (only && *only && nvlm_cpu_level_from_name(only) != level) continue;
        nvlm_pool_set_level(pool, level);
        double best[2] = {1e30, 1e30};
        for (int r = 0; r < rounds; r++)
            for (int c = 0; c < 2; c++) {
                nvlm_pool_set_compute(pool, c ? NVLM_COMPUTE_BF16 : NVLM_COMPUTE_F32);
                double t0 = now();
                nvlm_matmul(pool, y, x, M, &w, NULL, NULL);
                double t = now() - t0;
                best[c] = t < best[c] ? t : best[c];
            }
        double flop = 2.0 * M * N * K;
        printf("%-12s %10.1f %10.1f %8.2f\n", nvlm_cpu_level_name(level), flop / best[0] * 1e-9, flop / best[1] * 1e-9,
               best[0] / best[1]);
    }
#ifdef NVLM_HAVE_VNNI_KERNELS
    /* Q8_0 / Q4 prefill: today's float32 GEMM (weights expanded per panel) against the VNNI
     * int8 GEMM (activations quantized per block, gemm_vnni.c) */
    if (nvlm_cpu_level_usable(NVLM_CPU_AVX512_VNNI)) {
        printf("%-12s %10s %10s %8s\n", "format", "f32 GEMM", "int8 VNNI", "ratio");
        nvlm_pool_set_compute(pool, NVLM_COMPUTE_F32);
        nvlm_pool_set_level(pool, NVLM_CPU_AVX512_VNNI);
        float *wf = malloc(sizeof(float) * (size_t)N * K);
        nvlm_row_to_f32(wf, wd, NVLM_DT_BF16, N * K);
        static const nvlm_dtype qd[] = {NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
        for (int d = 0; d < (int)(sizeof qd / sizeof qd[0]); d++) {
            size_t rb = nvlm_row_bytes(qd[d], K);
            uint8_t *q = malloc(rb * (size_t)N);
            for (int r = 0; r < N; r++) nvlm_row_from_f32(q + (size_t)r * rb, wf + (size_t)r * K, qd[d], K);
            nvlm_wmat wq = {.dtype = qd[d], .rows = N, .cols = K, .data = q};
            double best[2] = {1e30, 1e30};
            for (int r = 0; r < rounds; r++)
                for (int c = 0; c < 2; c++) {
                    double t0 = now();
                    if (c) nvlm_gemm_vnni(pool, y, x, M, &wq, NULL);
                    else nvlm_matmul(pool, y, x, M, &wq, NULL, NULL);
                    double t = now() - t0;
                    best[c] = t < best[c] ? t : best[c];
                }
            double flop = 2.0 * M * N * K;
            printf("%-12s %10.1f %10.1f %8.2f\n", nvlm_dtype_name(qd[d]), flop / best[0] * 1e-9, flop / best[1] * 1e-9, best[0] / best[1]);
            free(q);
        }
        free(wf);
    }
#endif
    nvlm_pool_free(pool);
    free(x), free(y), free(row), free(wd);
    return 0;
}
