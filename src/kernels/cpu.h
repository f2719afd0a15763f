/* cpu.h - which instruction-set level the kernels may use. Detected from CPUID and the OS
 * state (libgcc's __builtin_cpu_supports checks XCR0 for the AVX registers), capped by the
 * environment variable NVLM_CPU=scalar|avx2|avx512 so tests and benchmarks can force a lower
 * level. Every SIMD kernel has a scalar reference with the same contract. Internal. */
#ifndef NVLM_KERNELS_CPU_H
#define NVLM_KERNELS_CPU_H

enum {
    NVLM_CPU_SCALAR = 0,  /* portable C */
    NVLM_CPU_AVX2 = 1,    /* AVX2 + FMA + F16C */
    NVLM_CPU_AVX512 = 2,  /* AVX-512 F/BW/VL detected; runs the AVX2 kernels for now */
};

/* The best level the hardware and OS support. */
int nvlm_cpu_hw_level(void);
/* nvlm_cpu_hw_level() capped by NVLM_CPU (an unknown value is ignored). */
int nvlm_cpu_level(void);
/* "scalar", "avx2", "avx512". */
const char *nvlm_cpu_level_name(int level);
/* A one-line description of the detected features, e.g. "avx2 fma f16c avx512f ...". */
void nvlm_cpu_features(char *buf, int size);
#endif
