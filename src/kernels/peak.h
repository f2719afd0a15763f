/* peak.h - the machine's own limits, measured (for nvlm bench's rooflines). Internal. */
#ifndef NVLM_KERNELS_PEAK_H
#define NVLM_KERNELS_PEAK_H
#include "kernels/pool.h"
#include <stddef.h>


/* Read bandwidth in GB/s: every pool thread sums its share of a buffer of `bytes` (which
 * should be much larger than the last-level cache), best of `reps` passes. 0 on failure. */
double nvlm_peak_read_gbs(nvlm_pool *pool, size_t bytes, int reps, int cpu_clock);
/* A byte range (nvlm_read_spans_seconds). */
typedef struct nvlm_span {
    const void *p;
    size_t n;
} nvlm_span;
/* Seconds for the pool's threads to read every byte of the spans once (1 MiB pieces taken in
 * turn, XOR-folded with 32-byte loads): the read alone, of the very memory given. On the
 * model's own weights it is the generation roofline of that memory, measured (0 on failure). */
double nvlm_read_spans_seconds(nvlm_pool *pool, const nvlm_span *spans, int n, int cpu_clock);
/* Seconds on the clock the benchmarks use: wall time, or (cpu != 0) this process's CPU time
 * divided by n_threads, which estimates the uncontended time on a machine shared with other
 * busy processes (workers block rather than spin, so idle waiting is not counted). */
double nvlm_bench_clock(int cpu, int n_threads);
/* Single-precision FMA peak in GFLOP/s (2 flops per lane) at the pool's level, all threads. */
double nvlm_peak_fma_gflops(nvlm_pool *pool, int cpu_clock);
/* The same with the FMA instructions of `level` (clamped to what the machine has), whatever the
 * pool's level: nvlm bench measures each vector width the CPU has. */
double nvlm_peak_fma_gflops_at(nvlm_pool *pool, int level, int cpu_clock);
/* float32 lanes of one FMA of the probe at `level`: 16 (AVX-512), 8 (AVX2), 4 (NEON), 1. Levels
 * of the same width (avx512, avx512vnni, avx512bf16) have the same float32 peak. */
int nvlm_peak_fma_lanes(int level);
#endif
