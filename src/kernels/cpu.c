/* Run-time instruction-set detection for kernel dispatch. */
#include "kernels/cpu.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define NVLM_X86 1
#endif
#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

int nvlm_cpu_hw_level(void) {
#ifdef NVLM_X86
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return NVLM_CPU_SCALAR;
    /* F16C has no __builtin_cpu_supports name in gcc 12: CPUID.1:ECX bit 29 */
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!(c & (1u << 29))) return NVLM_CPU_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return NVLM_CPU_AVX512;
    return NVLM_CPU_AVX2;
#elif defined(__aarch64__)
    return NVLM_CPU_NEON;
#else
    return NVLM_CPU_SCALAR;
#endif
}

int nvlm_cpu_level_usable(int level) {
    if (level == NVLM_CPU_SCALAR) return 1;
    if (level < 0 || level > nvlm_cpu_hw_level()) return 0;
#ifdef NVLM_X86
    return level != NVLM_CPU_NEON;
#else
    return level == NVLM_CPU_NEON;
#endif
}

int nvlm_cpu_level(void) {
    int hw = nvlm_cpu_hw_level(), want = hw;
    const char *e = getenv("NVLM_CPU");
    if (e && *e) {
        if (!strcmp(e, "scalar")) want = NVLM_CPU_SCALAR;
        else if (!strcmp(e, "avx2")) want = NVLM_CPU_AVX2;
        else if (!strncmp(e, "avx512", 6)) want = NVLM_CPU_AVX512;
        else if (!strcmp(e, "neon")) want = NVLM_CPU_NEON;
    }
    int level = want < hw ? want : hw;
    return nvlm_cpu_level_usable(level) ? level : NVLM_CPU_SCALAR;
}

const char *nvlm_cpu_level_name(int level) {
    switch (level) {
    case NVLM_CPU_AVX2: return "avx2";
    case NVLM_CPU_AVX512: return "avx512";
    case NVLM_CPU_NEON: return "neon";
    default: return "scalar";
    }
}

void nvlm_cpu_features(char *buf, int size) {
    if (size <= 0) return;
    buf[0] = 0;
#ifdef NVLM_X86
    static const char *const names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                        "avx512vnni", "avx512bf16"};
    __builtin_cpu_init();
    int off = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && off < size; i++) {
        int has = 0;
        /* __builtin_cpu_supports needs literal names */
        switch (i) {
        case 0: has = __builtin_cpu_supports("sse4.2"); break;
        case 1: has = __builtin_cpu_supports("avx"); break;
        case 2: has = __builtin_cpu_supports("avx2"); break;
        case 3: has = __builtin_cpu_supports("fma"); break;
        case 4: has = __builtin_cpu_supports("avx512f"); break;
        case 5: has = __builtin_cpu_supports("avx512bw"); break;
        case 6: has = __builtin_cpu_supports("avx512vl"); break;
        case 7: has = __builtin_cpu_supports("avx512vnni"); break;
        case 8: has = __builtin_cpu_supports("avx512bf16"); break;
        }
        if (has) off += snprintf(buf + off, (size_t)(size - off), "%s%s", off ? " " : "", names[i]);
    }
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
