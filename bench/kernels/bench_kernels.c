/* GEMM and GEMV per kernel level, at 1 and 2 threads, beside the machine's measured limits:
 *   GEMM y[M x N] = x[M x K] W^T with F32 and BF16 weights: GFLOP/s and % of the FMA peak of
 *     the level's vector width and of the machine's best;
 *   GEMV (one token) with F32/F16/BF16 weights: weight GB/s and % of the read bandwidth;
 *   one generated token's matrices of a Qwen2-0.5B-shaped LLM (24 layers x q, k, v, o, gate, up,
 *     down) per level against the lowest SIMD level, token by token: the median of the per-token
 *     speed ratios with its quartiles (resolves a few percent on a drifting shared machine).
 * Levels and thread counts alternate inside each repetition (best of REPS kept), so a drift of
 * the shared machine hits every row alike. Prints the kernel each op ran (kernels/dispatch.h).
 *
 *   bench_kernels [REPS] [--cpu-time]      (bench/kernels/run.sh builds and runs it) */
#include "core/file.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"
#include "kernels/peak.h"
#include "kernels/qblock.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { M = 512, N = 1024, K = 1024, GN = 4096, GK = 4096, MAX_LEVELS = 8 };
static const nvlm_dtype gemm_dts[] = {NVLM_DT_F32, NVLM_DT_BF16};
static const nvlm_dtype gemv_dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}

/* The kernel's name without its description: "gemm_avx512 (14x32 zmm)" -> "gemm_avx512". */
static const char *short_name(const char *name, char buf[32]) {
    snprintf(buf, 32, "%.*s", (int)strcspn(name, " "), name);
    return buf;
}

/* [rows, cols] weights of format dt, on huge pages as a loaded model's. */
static void *weights(nvlm_dtype dt, int rows, int cols) {
    size_t rb = nvlm_row_bytes(dt, cols);
    uint8_t *m = nvlm_alloc_weights(rb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)cols);
    if (!m || !row) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand() * 0.05f;
        nvlm_row_from_f32(m + (size_t)r * rb, row, dt, cols);
    }
    free(row);
    return m;
}

static double time_mm(nvlm_pool *p, int cpu, const nvlm_wmat *w, const float *x, int n_tok, float *y) {
    double t0 = nvlm_bench_clock(cpu, nvlm_pool_threads(p));
    if (nvlm_matmul(p, y, x, n_tok, w, NULL, NULL)) {
        fprintf(stderr, "bench_kernels: matmul out of memory\n");
        exit(1);
    }
    return nvlm_bench_clock(cpu, nvlm_pool_threads(p)) - t0;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One token's LLM matrices at each level against levels[0], pairs alternating in order. */
static void layer_ratios(nvlm_pool **pools, const int *nts, const int *levels, int nl, int cpu) {
    enum { LAYERS = 24, PER = 7, PAIRS = 31 };
    static const int shape[PER][2] = {{896, 896}, {128, 896}, {128, 896}, {896, 896}, {4864, 896}, {4864, 896}, {896, 4864}};
    printf("\nGEMV, one token of a Qwen2-0.5B-shaped LLM (%d x 7 matrices): speed against %s, median of %d\n"
           "token-by-token ratios (quartiles)\n%-11s %-5s %26s %26s\n", LAYERS, nvlm_cpu_level_name(levels[0]), PAIRS,
           "level", "W", "1 thread", "2 threads");
    nvlm_wmat *w = malloc(sizeof *w * LAYERS * PER);
    float *x = malloc(sizeof(float) * 4864), *y = malloc(sizeof(float) * 4864);
    double *t = malloc(sizeof(double) * PAIRS * nl), ratio[PAIRS];
    if (!w || !x || !y || !t) exit(1);
    for (int i = 0; i < 4864; i++) x[i] = frand();
    for (int d = 0; d < 3; d++) {
        for (int m = 0; m < LAYERS * PER; m++)
            w[m] = (nvlm_wmat){.dtype = gemv_dts[d], .rows = shape[m % PER][0], .cols = shape[m % PER][1], .data = weights(gemv_dts[d], shape[m % PER][0], shape[m % PER][1])};
        double med[MAX_LEVELS][2][3];
        for (int p = 0; p < 2; p++) {
            for (int r = 0; r < PAIRS; r++)
                for (int i = 0; i < nl; i++) {
                    int l = r & 1 ? nl - 1 - i : i; /* the order alternates */
                    nvlm_pool_set_level(pools[p], levels[l]);
                    double t0 = nvlm_bench_clock(cpu, nts[p]);
                    for (int m = 0; m < LAYERS * PER; m++) time_mm(pools[p], 0, &w[m], x, 1, y);
                    t[r * nl + l] = nvlm_bench_clock(cpu, nts[p]) - t0;
                }
            for (int l = 0; l < nl; l++) {
                for (int r = 0; r < PAIRS; r++) ratio[r] = t[r * nl] / t[r * nl + l];
                qsort(ratio, PAIRS, sizeof(double), by_value);
                med[l][p][0] = ratio[PAIRS / 2], med[l][p][1] = ratio[PAIRS / 4], med[l][p][2] = ratio[3 * PAIRS / 4];
            }
        }
        for (int l = 1; l < nl; l++) {
            printf("%-11s %-5s", nvlm_cpu_level_name(levels[l]), nvlm_dtype_name(gemv_dts[d]));
            for (int p = 0; p < 2; p++) printf("      %5.3f (%5.3f-%5.3f)", med[l][p][0], med[l][p][1], med[l][p][2]);
            printf("\n");
        }
        for (int m = 0; m < LAYERS * PER; m++) free((void *)w[m].data);
    }
    free(w), free(x), free(y), free(t);
}

int main(int argc, char **argv) {
    int reps = argc > 1 && atoi(argv[1]) > 0 ? atoi(argv[1]) : 5, cpu = 0;
    for (int i = 1; i < argc; i++) cpu |= !strcmp(argv[i], "--cpu-time");
    nvlm_err err = {0};
    nvlm_pool *pools[2];
    const int nts[2] = {1, 2};
    for (int i = 0; i < 2; i++)
        if (nvlm_pool_new(nts[i], &pools[i], &err)) {
            fprintf(stderr, "bench_kernels: %s\n", err.msg);
            return 1;
        }
    int n_all, levels[MAX_LEVELS], nl = 0;
    const int *all = nvlm_cpu_levels(&n_all);
    for (int i = 0; i < n_all; i++)
        if (all[i] != NVLM_CPU_SCALAR && nvlm_cpu_level_usable(all[i]) && nl < MAX_LEVELS) levels[nl++] = all[i];
    char feat[256];
    nvlm_cpu_features(feat, sizeof feat);
    FILE *la = fopen("/proc/loadavg", "r");
    char load[64] = "?";
    if (la && fgets(load, sizeof load, la)) load[strcspn(load, "\n")] = 0;
    if (la) fclose(la);
    printf("cpu: %s\nload average: %s; %s clock, best of %d\n", feat, load, cpu ? "CPU-time/threads" : "wall", reps);

    /* machine limits: the FMA peak of each width and the read bandwidth, per thread count */
    double fma[MAX_LEVELS][2], bw[2], best_fma[2] = {0, 0};
    for (int t = 0; t < 2; t++) {
        bw[t] = nvlm_peak_read_gbs(pools[t], (size_t)256 << 20, 5, cpu);
        for (int l = 0; l < nl; l++) {
            fma[l][t] = nvlm_peak_fma_gflops_at(pools[t], levels[l], cpu);
            best_fma[t] = fma[l][t] > best_fma[t] ? fma[l][t] : best_fma[t];
        }
    }
    float *x = malloc(sizeof(float) * (size_t)M * K), *y = malloc(sizeof(float) * (size_t)M * (N > GN ? N : GN));
    if (!x || !y) return 1;
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand();
    nvlm_wmat gw[2], vw[3];
    for (int d = 0; d < 2; d++) gw[d] = (nvlm_wmat){.dtype = gemm_dts[d], .rows = N, .cols = K, .data = weights(gemm_dts[d], N, K)};
    for (int d = 0; d < 3; d++) vw[d] = (nvlm_wmat){.dtype = gemv_dts[d], .rows = GN, .cols = GK, .data = weights(gemv_dts[d], GN, GK)};

    double tg[MAX_LEVELS][2][2], tv[MAX_LEVELS][2][3];
    for (int l = 0; l < nl; l++)
        for (int t = 0; t < 2; t++) {
            for (int d = 0; d < 2; d++) tg[l][t][d] = 1e30;
            for (int d = 0; d < 3; d++) tv[l][t][d] = 1e30;
        }
    for (int r = 0; r <= reps; r++) /* round 0 warms up */
        for (int l = 0; l < nl; l++)
            for (int t = 0; t < 2; t++) {
                nvlm_pool_set_level(pools[t], levels[l]);
                for (int d = 0; d < 2; d++) {
                    double s = time_mm(pools[t], cpu, &gw[d], x, M, y);
                    if (r && s < tg[l][t][d]) tg[l][t][d] = s;
                }
                for (int d = 0; d < 3; d++) {
                    double s = time_mm(pools[t], cpu, &vw[d], x, 1, y);
                    if (r && s < tv[l][t][d]) tv[l][t][d] = s;
                }
            }

    printf("\nlimits:            1 thread          2 threads\n");
    printf("read bandwidth   %8.1f GB/s     %8.1f GB/s\n", bw[0], bw[1]);
    for (int l = 0; l < nl; l++)
        if (l == 0 || nvlm_peak_fma_lanes(levels[l]) != nvlm_peak_fma_lanes(levels[l - 1]))
            printf("FMA %-3d-bit      %8.1f GFLOP/s  %8.1f GFLOP/s   (%s)\n", nvlm_peak_fma_lanes(levels[l]) * 32,
                   fma[l][0], fma[l][1], nvlm_cpu_level_name(levels[l]));
    printf("\nGEMM y[%d x %d] = x[%d x %d] W^T: GFLOP/s (%% of the level's width peak / of the best peak)\n", M, N, M, K);
    printf("%-11s %-5s %-14s %26s %26s\n", "level", "W", "kernel", "1 thread", "2 threads");
    for (int l = 0; l < nl; l++)
        for (int d = 0; d < 2; d++) {
            char nb[32];
            printf("%-11s %-5s %-14s", nvlm_cpu_level_name(levels[l]), nvlm_dtype_name(gemm_dts[d]),
                   short_name(nvlm_kernel_for(nvlm_matmul_op(gemm_dts[d], M), levels[l])->name, nb));
            for (int t = 0; t < 2; t++) {
                double gf = 2.0 * M * N * K / tg[l][t][d] / 1e9;
                printf("   %7.1f (%5.1f%% / %5.1f%%)", gf, 100 * gf / fma[l][t], 100 * gf / best_fma[t]);
            }
            printf("\n");
        }
    printf("\nGEMV y = W x, W [%d x %d], one token: weight GB/s (%% of the read bandwidth)\n", GN, GK);
    printf("%-11s %-5s %-14s %18s %18s\n", "level", "W", "kernel", "1 thread", "2 threads");
    for (int l = 0; l < nl; l++)
        for (int d = 0; d < 3; d++) {
            char nb[32];
            printf("%-11s %-5s %-14s", nvlm_cpu_level_name(levels[l]), nvlm_dtype_name(gemv_dts[d]),
                   short_name(nvlm_kernel_for(nvlm_matmul_op(gemv_dts[d], 1), levels[l])->name, nb));
            for (int t = 0; t < 2; t++) {
                double gbs = (double)nvlm_row_bytes(gemv_dts[d], GK) * GN / tv[l][t][d] / 1e9;
                printf("   %7.1f (%5.1f%%)", gbs, 100 * gbs / bw[t]);
            }
            printf("\n");
        }
    layer_ratios(pools, nts, levels, nl, cpu);
    for (int d = 0; d < 2; d++) free((void *)gw[d].data);
    for (int d = 0; d < 3; d++) free((void *)vw[d].data);
    free(x), free(y);
    for (int i = 0; i < 2; i++) nvlm_pool_free(pools[i]);
    return 0;
}
