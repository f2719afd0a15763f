/* cpu.h - which instruction-set level the kernels may use.
 *
 * x86-64 levels form one chain, each implying the ones below it:
 *   scalar < avx2 (AVX2+FMA+F16C) < avx512 (F/BW/VL/DQ) < avx512vnni (+VNNI) < avx512bf16 (+BF16)
 *   < amx (reserved: AMX-TILE/BF16/INT8; no kernels yet, detected so the dispatch is ready).
 * Every CPU known to have AVX512-BF16 (Cooper Lake, Sapphire/Emerald/Granite Rapids, Zen 4/5)
 * also has VNNI, so ordering VNNI below BF16 loses nothing; Ice Lake (VNNI, no BF16) stops at
 * avx512vnni. aarch64 has one level, neon, numbered far from the x86 chain: never compare a
 * level with `>=` directly, use nvlm_cpu_at_least(), which is false across architectures (the
 * "ordinal trap": NEON used to be 3 > AVX512 = 2).
 *
 * Detected from CPUID (leaves 1 and 7) and XCR0 (XGETBV: the OS must save the YMM / ZMM /
 * opmask / tile state). Capped by the environment variable NVLM_CPU=<level name> so tests and
 * benchmarks can force any lower level (a level of the other architecture means scalar). Every
 * SIMD kernel has a scalar reference with the same contract. Internal. */
#ifndef NVLM_KERNELS_CPU_H
#define NVLM_KERNELS_CPU_H

enum {
    NVLM_CPU_SCALAR = 0,      /* portable C */
    NVLM_CPU_AVX2 = 1,        /* AVX2 + FMA + F16C */
    NVLM_CPU_AVX512 = 2,      /* AVX-512 F/BW/VL/DQ */
    NVLM_CPU_AVX512_VNNI = 3, /* + AVX512-VNNI (vpdpbusd) */
    NVLM_CPU_AVX512_BF16 = 4, /* + AVX512-BF16 (vdpbf16ps) */
    NVLM_CPU_AMX = 5,         /* + AMX-TILE/BF16/INT8 (reserved) */
    NVLM_CPU_X86_LAST = NVLM_CPU_AMX,
    NVLM_CPU_NEON = 16,       /* aarch64 Advanced SIMD (kernels/simd_neon.h) */
    NVLM_CPU_N_NAMES = 7,     /* rows of the level table in cpu.c */
};

/* 1 when `level` includes everything of `min`: same architecture and at least as high. */
static inline int nvlm_cpu_at_least(int level, int min) {
    if (min == NVLM_CPU_SCALAR) return 1;
    if (min == NVLM_CPU_NEON) return level == NVLM_CPU_NEON;
    return level >= min && level <= NVLM_CPU_X86_LAST;
}

/* The best level the hardware and OS support. */
int nvlm_cpu_hw_level(void);
/* nvlm_cpu_hw_level() capped by NVLM_CPU (an unknown value is ignored). */
int nvlm_cpu_level(void);
/* 1 when `level` has kernels on this machine: scalar, or a level of this architecture up to
 * nvlm_cpu_hw_level(). */
int nvlm_cpu_level_usable(int level);
/* `level` if usable here; a higher level of this architecture becomes the hardware's level;
 * anything else scalar. */
int nvlm_cpu_clamp(int level);
/* "scalar", "avx2", "avx512", "avx512vnni", "avx512bf16", "amx", "neon". */
const char *nvlm_cpu_level_name(int level);
/* The level named `name` (as nvlm_cpu_level_name prints it), or -1. */
int nvlm_cpu_level_from_name(const char *name);
/* The levels in order (scalar first), for loops over every level: *n gets the count. */
const int *nvlm_cpu_levels(int *n);
/* A one-line description of the detected features, e.g. "avx2 fma f16c avx512f ..." or
 * "asimd fphp asimddp ...". */
void nvlm_cpu_features(char *buf, int size);
#endif
