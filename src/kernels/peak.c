/* Machine limits measured with the same instructions the kernels use: a streaming sum for
 * read bandwidth, independent FMA chains for compute. */
#include "kernels/peak.h"
#include "kernels/cpu.h"
#include "core/file.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double nvlm_bench_clock(int cpu, int n_threads) {
    struct timespec ts;
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (ts.tv_sec + ts.tv_nsec * 1e-9) / (cpu && n_threads > 0 ? n_threads : 1);
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>
static float sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

/* XOR of every 32 bytes of [p, p + n): integer loads and logic only, so no float assist
 * whatever the bytes are (weights read as they are stored). n % 128 == 0. */
static uint64_t fold_avx2(const uint8_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}

/* 12 independent accumulators (named, so they stay in registers) cover FMA latency x
 * throughput of current cores. */
static float fma_avx2(long iters) {
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
    for (long it = 0; it < iters; it++) {
        a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c), a2 = _mm256_fmadd_ps(a2, m, c);
        a3 = _mm256_fmadd_ps(a3, m, c), a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c), a8 = _mm256_fmadd_ps(a8, m, c);
        a9 = _mm256_fmadd_ps(a9, m, c), a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0];
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
/* The same 12 chains on 512-bit registers: 2x the flops per instruction. Cores with 512-bit
 * FMA units (Zen 5, Xeon with two FMA ports) double the AVX2 peak; Zen 4 splits each into two
 * 256-bit halves and measures the same as fma_avx2. */
static float fma_avx512(long iters) {
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
    for (long it = 0; it < iters; it++) {
        a0 = _mm512_fmadd_ps(a0, m, c), a1 = _mm512_fmadd_ps(a1, m, c), a2 = _mm512_fmadd_ps(a2, m, c);
        a3 = _mm512_fmadd_ps(a3, m, c), a4 = _mm512_fmadd_ps(a4, m, c), a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c), a7 = _mm512_fmadd_ps(a7, m, c), a8 = _mm512_fmadd_ps(a8, m, c);
        a9 = _mm512_fmadd_ps(a9, m, c), a10 = _mm512_fmadd_ps(a10, m, c), a11 = _mm512_fmadd_ps(a11, m, c);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}
#pragma GCC pop_options
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
static float sum_neon(const float *p, size_t n) {
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a0 = vaddq_f32(a0, vld1q_f32(p + i));
        a1 = vaddq_f32(a1, vld1q_f32(p + i + 4));
        a2 = vaddq_f32(a2, vld1q_f32(p + i + 8));
        a3 = vaddq_f32(a3, vld1q_f32(p + i + 12));
    }
    return vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
}

/* 24 independent accumulators of 4 lanes (the 8x12 micro-kernel's count): the same flops per
 * iteration as fma_avx2's 12 x 8. FMLA accumulates into its destination, so each chain is
 * a += c * m (the AVX2 form a = a * m + c would need a register move per FMA). */
static float fma_neon(long iters) {
    const float32x4_t m = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-7f);
    /* named, so they stay in registers (an array is stored back every iteration); distinct
     * starting values, so the compiler cannot merge the chains */
#define S(i) a##i = vdupq_n_f32(i)
    float32x4_t S(0), S(1), S(2), S(3), S(4), S(5), S(6), S(7), S(8), S(9), S(10), S(11);
    float32x4_t S(12), S(13), S(14), S(15), S(16), S(17), S(18), S(19), S(20), S(21), S(22), S(23);
#undef S
#define F4(i, j, k, l) a##i = vfmaq_f32(a##i, c, m), a##j = vfmaq_f32(a##j, c, m), \
                       a##k = vfmaq_f32(a##k, c, m), a##l = vfmaq_f32(a##l, c, m)
    for (long it = 0; it < iters; it++) {
        F4(0, 1, 2, 3), F4(4, 5, 6, 7), F4(8, 9, 10, 11);
        F4(12, 13, 14, 15), F4(16, 17, 18, 19), F4(20, 21, 22, 23);
    }
#undef F4
    float32x4_t s = vaddq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)), vaddq_f32(vaddq_f32(a4, a5), vaddq_f32(a6, a7)));
    s = vaddq_f32(s, vaddq_f32(vaddq_f32(vaddq_f32(a8, a9), vaddq_f32(a10, a11)), vaddq_f32(vaddq_f32(a12, a13), vaddq_f32(a14, a15))));
    s = vaddq_f32(s, vaddq_f32(vaddq_f32(vaddq_f32(a16, a17), vaddq_f32(a18, a19)), vaddq_f32(vaddq_f32(a20, a21), vaddq_f32(a22, a23))));
    return vgetq_lane_f32(s, 0);
}
#endif

static uint64_t fold_scalar(const uint8_t *p, size_t n) { /* n % 128 == 0 */
    uint64_t a[16] = {0};
    for (size_t i = 0; i < n; i += 128)
        for (int k = 0; k < 16; k++) {
            uint64_t v;
            memcpy(&v, p + i + 8 * (size_t)k, 8);
            a[k] ^= v;
        }
    uint64_t r = 0;
    for (int k = 0; k < 16; k++) r ^= a[k];
    return r;
}

static float sum_scalar(const float *p, size_t n) {
    float s[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += p[i + k];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

typedef struct peak_job {
    const float *buf;
    size_t n;
    int level;
    long iters;
    volatile float sink[256];
} peak_job;

static void read_part(void *ctx, size_t begin, size_t end, int thread) {
    peak_job *j = ctx;
    size_t per = j->n / 256;
    for (size_t u = begin; u < end; u++) {
        const float *p = j->buf + u * per;
#if defined(__x86_64__)
        float s = nvlm_cpu_at_least(j->level, NVLM_CPU_AVX2) ? sum_avx2(p, per) : sum_scalar(p, per);
#elif defined(__aarch64__)
        float s = j->level == NVLM_CPU_NEON ? sum_neon(p, per) : sum_scalar(p, per);
#else
        float s = sum_scalar(p, per);
#endif
        j->sink[thread & 255] += s;
    }
}

double nvlm_peak_read_gbs(nvlm_pool *pool, size_t bytes, int reps, int cpu_clock) {
    int nt = nvlm_pool_threads(pool);
    size_t n = bytes / sizeof(float) / 256 * 256;
    float *buf = nvlm_alloc_weights(n * sizeof(float)); /* as the weights are: on huge pages */
    if (!buf) return 0;
    memset(buf, 0, n * sizeof(float));
    peak_job j = {.buf = buf, .n = n, .level = nvlm_pool_level(pool)};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = nvlm_bench_clock(cpu_clock, nt);
        nvlm_pool_run(pool, 256, 1, read_part, &j);
        double t = nvlm_bench_clock(cpu_clock, nt) - t0;
        if (t < best) best = t;
    }
    free(buf);
    return (double)n * sizeof(float) / best / 1e9;
}

enum { SPAN_UNIT = 1 << 20 }; /* bytes a thread takes at a time */

typedef struct span_job {
    const nvlm_span *unit; /* the spans cut into pieces of at most SPAN_UNIT bytes */
    int level;
    volatile uint64_t sink[256];
} span_job;

static void read_units(void *ctx, size_t begin, size_t end, int thread) {
    span_job *j = ctx;
    uint64_t x = 0;
    for (size_t u = begin; u < end; u++) {
        const uint8_t *p = j->unit[u].p;
        size_t n = j->unit[u].n, body = n / 128 * 128;
#if defined(__x86_64__)
        x ^= nvlm_cpu_at_least(j->level, NVLM_CPU_AVX2) ? fold_avx2(p, body) : fold_scalar(p, body);
#else
        x ^= fold_scalar(p, body);
#endif
        for (size_t i = body; i < n; i++) x ^= p[i];
    }
    j->sink[thread & 255] ^= x;
}

double nvlm_read_spans_seconds(nvlm_pool *pool, const nvlm_span *spans, int n, int cpu_clock) {
    size_t n_units = 0;
    for (int i = 0; i < n; i++) n_units += (spans[i].n + SPAN_UNIT - 1) / SPAN_UNIT;
    nvlm_span *unit = malloc(sizeof *unit * (n_units ? n_units : 1));
    if (!unit) return 0;
    n_units = 0;
    for (int i = 0; i < n; i++)
        for (size_t o = 0; o < spans[i].n; o += SPAN_UNIT)
            unit[n_units++] = (nvlm_span){(const uint8_t *)spans[i].p + o, spans[i].n - o < SPAN_UNIT ? spans[i].n - o : SPAN_UNIT};
    span_job j = {.unit = unit, .level = nvlm_pool_level(pool)};
    int nt = nvlm_pool_threads(pool);
    double t0 = nvlm_bench_clock(cpu_clock, nt);
    nvlm_pool_run(pool, n_units, 1, read_units, &j);
    double t = nvlm_bench_clock(cpu_clock, nt) - t0;
    free(unit);
    return t;
}

int nvlm_peak_fma_lanes(int level) {
#if defined(__x86_64__)
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512)) return 16;
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2)) return 8;
#elif defined(__aarch64__)
    if (level == NVLM_CPU_NEON) return 4;
#endif
    (void)level;
    return 1;
}

/* One unit: iters x 12 x 8 FMAs of one lane each (the NEON probe: 24 chains of 4 lanes, the
 * same count), or iters x 12 x 16 at 512 bits. */
static void fma_part(void *ctx, size_t begin, size_t end, int thread) {
    peak_job *j = ctx;
    for (size_t u = begin; u < end; u++) {
#if defined(__x86_64__)
        if (nvlm_cpu_at_least(j->level, NVLM_CPU_AVX512)) {
            j->sink[thread & 255] += fma_avx512(j->iters);
            continue;
        }
        if (nvlm_cpu_at_least(j->level, NVLM_CPU_AVX2)) {
            j->sink[thread & 255] += fma_avx2(j->iters);
            continue;
        }
#elif defined(__aarch64__)
        if (j->level == NVLM_CPU_NEON) {
            j->sink[thread & 255] += fma_neon(j->iters);
            continue;
        }
#endif
        float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        for (long it = 0; it < j->iters * 12; it++)
            for (int k = 0; k < 8; k++) a[k] = a[k] * 0.999999f + 1e-7f;
        j->sink[thread & 255] += a[0] + a[7];
    }
}

double nvlm_peak_fma_gflops_at(nvlm_pool *pool, int level, int cpu_clock) {
    int nt = nvlm_pool_threads(pool);
    level = nvlm_cpu_clamp(level);
    /* the same time per probe at every width: fewer iterations where each does more */
    int lanes = nvlm_peak_fma_lanes(level) > 8 ? nvlm_peak_fma_lanes(level) : 8;
    peak_job j = {.level = level, .iters = 2000000L * 8 / lanes};
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = nvlm_bench_clock(cpu_clock, nt);
        nvlm_pool_run(pool, (size_t)nt, 1, fma_part, &j);
        double t = nvlm_bench_clock(cpu_clock, nt) - t0;
        if (t < best) best = t;
    }
    /* per unit: iters x 12 FMAs x lanes x 2 flops */
    return (double)nt * j.iters * 12 * lanes * 2 / best / 1e9;
}

double nvlm_peak_fma_gflops(nvlm_pool *pool, int cpu_clock) {
    return nvlm_peak_fma_gflops_at(pool, nvlm_pool_level(pool), cpu_clock);
}
