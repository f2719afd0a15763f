/* Run-time instruction-set detection for kernel dispatch (kernels/cpu.h). */
#include "kernels/cpu.h"
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define NVLM_X86 1
#include <cpuid.h>
#endif
#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

/* One row per level: its name, in the order of the enum (neon last). */
static const struct { int level; const char *name; } level_table[NVLM_CPU_N_NAMES] = {
    {NVLM_CPU_SCALAR, "scalar"},         {NVLM_CPU_AVX2, "avx2"},
    {NVLM_CPU_AVX512, "avx512"},         {NVLM_CPU_AVX512_VNNI, "avx512vnni"},
    {NVLM_CPU_AVX512_BF16, "avx512bf16"}, {NVLM_CPU_AMX, "amx"},
    {NVLM_CPU_NEON, "neon"},
};

#ifdef NVLM_X86
/* x86 features: CPUID leaf/subleaf, register (0 eax .. 3 edx) and bit. One table serves the
 * level detection and the feature line. */
enum { F_FMA, F_F16C, F_AVX, F_OSXSAVE, F_AVX2, F_AVX512F, F_AVX512DQ, F_AVX512BW, F_AVX512VL, F_VNNI,
       F_BF16, F_AMX_TILE, F_AMX_BF16, F_AMX_INT8, F_COUNT };
static const struct { const char *name; unsigned leaf, sub; int reg, bit; } feat_table[F_COUNT] = {
    [F_FMA] = {"fma", 1, 0, 2, 12},          [F_F16C] = {"f16c", 1, 0, 2, 29},
    [F_AVX] = {"avx", 1, 0, 2, 28},          [F_OSXSAVE] = {"osxsave", 1, 0, 2, 27},
    [F_AVX2] = {"avx2", 7, 0, 1, 5},         [F_AVX512F] = {"avx512f", 7, 0, 1, 16},
    [F_AVX512DQ] = {"avx512dq", 7, 0, 1, 17}, [F_AVX512BW] = {"avx512bw", 7, 0, 1, 30},
    [F_AVX512VL] = {"avx512vl", 7, 0, 1, 31}, [F_VNNI] = {"avx512vnni", 7, 0, 2, 11},
    [F_BF16] = {"avx512bf16", 7, 1, 0, 5},   [F_AMX_TILE] = {"amx-tile", 7, 0, 3, 24},
    [F_AMX_BF16] = {"amx-bf16", 7, 0, 3, 22}, [F_AMX_INT8] = {"amx-int8", 7, 0, 3, 25},
};

static int has_feat(int f) {
    unsigned r[4] = {0, 0, 0, 0}, max = __get_cpuid_max(0, NULL);
    if (feat_table[f].leaf > max) return 0;
    __cpuid_count(feat_table[f].leaf, feat_table[f].sub, r[0], r[1], r[2], r[3]);
    return (r[feat_table[f].reg] >> feat_table[f].bit) & 1;
}

/* XCR0: which register state the OS saves on a context switch (0 without OSXSAVE). */
static uint64_t xcr0(void) {
    if (!has_feat(F_OSXSAVE)) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static int detect_level(void) {
#ifdef NVLM_X86
    uint64_t x = xcr0();
    const uint64_t ymm = 0x6, zmm = 0xe0, tiles = 0x60000; /* XMM|YMM; opmask|ZMM_Hi256|Hi16_ZMM; TILECFG|TILEDATA */
    if ((x & ymm) != ymm || !has_feat(F_AVX) || !has_feat(F_AVX2) || !has_feat(F_FMA) || !has_feat(F_F16C))
        return NVLM_CPU_SCALAR;
    if ((x & zmm) != zmm || !has_feat(F_AVX512F) || !has_feat(F_AVX512BW) || !has_feat(F_AVX512VL) ||
        !has_feat(F_AVX512DQ))
        return NVLM_CPU_AVX2;
    if (!has_feat(F_VNNI)) return NVLM_CPU_AVX512;
    if (!has_feat(F_BF16)) return NVLM_CPU_AVX512_VNNI;
    if ((x & tiles) != tiles || !has_feat(F_AMX_TILE) || !has_feat(F_AMX_BF16) || !has_feat(F_AMX_INT8))
        return NVLM_CPU_AVX512_BF16;
    return NVLM_CPU_AMX;
#elif defined(__aarch64__)
    return NVLM_CPU_NEON;
#else
    return NVLM_CPU_SCALAR;
#endif
}

/* CPUID traps to the hypervisor in a VM (about a microsecond): the answer, a fact of the
 * machine that never changes while the process runs, is kept after the first call. */
int nvlm_cpu_hw_level(void) {
    static _Atomic int cached = -1;
    int level = atomic_load_explicit(&cached, memory_order_relaxed);
    if (level < 0) atomic_store_explicit(&cached, level = detect_level(), memory_order_relaxed);
    return level;
}

int nvlm_cpu_level_usable(int level) {
    if (level == NVLM_CPU_SCALAR) return 1;
    return nvlm_cpu_at_least(nvlm_cpu_hw_level(), level);
}

int nvlm_cpu_level_from_name(const char *name) {
    for (int i = 0; i < NVLM_CPU_N_NAMES; i++)
        if (!strcmp(name, level_table[i].name)) return level_table[i].level;
    return -1;
}

int nvlm_cpu_clamp(int level) {
    if (nvlm_cpu_level_usable(level)) return level;
    int hw = nvlm_cpu_hw_level();
    /* above the hardware on the same architecture: the hardware's level; else scalar */
    return level > hw && level <= NVLM_CPU_X86_LAST && hw <= NVLM_CPU_X86_LAST ? hw : NVLM_CPU_SCALAR;
}

int nvlm_cpu_level(void) {
    const char *e = getenv("NVLM_CPU");
    int want = e && *e ? nvlm_cpu_level_from_name(e) : -1;
    return want < 0 ? nvlm_cpu_hw_level() : nvlm_cpu_clamp(want);
}

const char *nvlm_cpu_level_name(int level) {
    for (int i = 0; i < NVLM_CPU_N_NAMES; i++)
        if (level_table[i].level == level) return level_table[i].name;
    return "scalar";
}

const int *nvlm_cpu_levels(int *n) {
    static const int levels[NVLM_CPU_N_NAMES] = {NVLM_CPU_SCALAR,      NVLM_CPU_AVX2,        NVLM_CPU_AVX512,
                                                 NVLM_CPU_AVX512_VNNI, NVLM_CPU_AVX512_BF16, NVLM_CPU_AMX,
                                                 NVLM_CPU_NEON};
    *n = NVLM_CPU_N_NAMES;
    return levels;
}

void nvlm_cpu_features(char *buf, int size) {
    if (size <= 0) return;
    buf[0] = 0;
#ifdef NVLM_X86
    int off = 0;
    for (int f = 0; f < F_COUNT && off < size; f++)
        if (f != F_OSXSAVE && has_feat(f))
            off += snprintf(buf + off, (size_t)(size - off), "%s%s", off ? " " : "", feat_table[f].name);
#elif defined(__aarch64__)
    /* the kernels need asimd only; the rest says what later kernels could use */
    static const struct { unsigned long bit; int hw2; const char *name; } caps[] = {
        {HWCAP_ASIMD, 0, "asimd"},     {HWCAP_FPHP, 0, "fphp"}, {HWCAP_ASIMDHP, 0, "asimdhp"},
        {HWCAP_ASIMDDP, 0, "asimddp"}, {HWCAP_SVE, 0, "sve"},   {HWCAP2_I8MM, 1, "i8mm"},
        {HWCAP2_BF16, 1, "bf16"},
    };
    unsigned long hw1 = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    int off = 0;
    for (size_t i = 0; i < sizeof caps / sizeof caps[0] && off < size; i++)
        if ((caps[i].hw2 ? hw2 : hw1) & caps[i].bit)
            off += snprintf(buf + off, (size_t)(size - off), "%s%s", off ? " " : "", caps[i].name);
#endif
}
