/* cpu.h - which instruction-set level the kernels may use. x86-64: detected from CPUID and the
 * OS state (libgcc's __builtin_cpu_supports checks XCR0 for the AVX registers); aarch64: NEON
 * (Advanced SIMD is part of every ARMv8-A core the Linux ABI runs on). Capped by the environment
 * variable NVLM_CPU=scalar|avx2|avx512|neon so tests and benchmarks can force a lower level (a
 * level of the other architecture means scalar). Every SIMD kernel has a scalar reference with
 * the same contract. Internal. */
#ifndef NVLM_KERNELS_CPU_H
#define NVLM_KERNELS_CPU_H

enum {
    NVLM_CPU_SCALAR = 0,  /* portable C */
    NVLM_CPU_AVX2 = 1,    /* AVX2 + FMA + F16C */
    NVLM_CPU_AVX512 = 2,  /* AVX-512 F/BW/VL detected; runs the AVX2 kernels for now */
    NVLM_CPU_NEON = 3,    /* aarch64 Advanced SIMD (kernels/simd_neon.h) */
};

/* The best level the hardware and OS support. */
int nvlm_cpu_hw_level(void);
/* nvlm_cpu_hw_level() capped by NVLM_CPU (an unknown value is ignored). */
int nvlm_cpu_level(void);
/* 1 when `level` has kernels on this machine: scalar, or a level of this architecture up to
 * nvlm_cpu_hw_level() (on aarch64 the x86 levels below NEON run the scalar code). */
int nvlm_cpu_level_usable(int level);
/* "scalar", "avx2", "avx512", "neon". */
const char *nvlm_cpu_level_name(int level);
/* A one-line description of the detected features, e.g. "avx2 fma f16c avx512f ..." or
 * "asimd fphp asimddp ...". */
void nvlm_cpu_features(char *buf, int size);
#endif
