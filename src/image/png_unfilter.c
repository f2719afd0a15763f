/* png_unfilter.c - reverses the five PNG row filters (PNG spec, section 9).
 *
 * Sub, Average and Paeth add the reconstructed byte one pixel to the left, so a row is a
 * chain of dependent pixels. For 3- and 4-byte pixels (8-bit RGB and RGBA, what real files
 * mostly are) the chain is run one whole pixel at a time in SSE2 registers, 16-bit lanes,
 * which takes it from one step per byte to one per pixel; Paeth, the filter encoders pick
 * most, has an SSE4.1 version (pabsw, pblendvb, pmovzxbw: a third fewer instructions) used
 * when the CPU has it. Every other pixel size, and the last pixel of a row (so that no
 * 4-byte access leaves the row), use the plain byte loop. All give the same bytes: the
 * filters are exact integer arithmetic mod 256. */
#include "image/png_fast.h"
#include <string.h>

static inline int paeth(int a, int b, int c) {
    int p = a + b - c;
    int pa = p > a ? p - a : a - p, pb = p > b ? p - b : b - p, pc = p > c ? p - c : c - p;
    if (pa <= pb && pa <= pc) return a;
    return pb <= pc ? b : c;
}

/* Bytes [from, n) by the spec's definition; bytes before `from` are already done. */
static void unfilter_bytes(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                           size_t from, size_t n, size_t bpp) {
    size_t i = from;
    switch (filter) {
    case 1:
        for (; i < n; i++) out[i] = (uint8_t)(in[i] + (i >= bpp ? out[i - bpp] : 0));
        break;
    case 2:
        for (; i < n; i++) out[i] = (uint8_t)(in[i] + prior[i]);
        break;
    case 3:
        for (; i < n; i++) out[i] = (uint8_t)(in[i] + (((i >= bpp ? out[i - bpp] : 0) + prior[i]) >> 1));
        break;
    case 4:
        for (; i < n; i++) {
            int a = i >= bpp ? out[i - bpp] : 0, c = i >= bpp ? prior[i - bpp] : 0;
            out[i] = (uint8_t)(in[i] + paeth(a, prior[i], c));
        }
        break;
    default:
        memcpy(out + i, in + i, n - i);
        break;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h> /* SSE2, and SSE4.1 in the functions marked for it */

/* One pixel of bpp (3 or 4) bytes as 16-bit lanes, and back. */
static inline __m128i load_px(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)v), _mm_setzero_si128());
}

static inline void store_px(uint8_t *p, __m128i v, size_t bpp) {
    uint32_t u = (uint32_t)_mm_cvtsi128_si32(_mm_packus_epi16(v, v));
    memcpy(p, &u, bpp);
}

static inline __m128i abs16(__m128i v) {
    return _mm_max_epi16(v, _mm_sub_epi16(_mm_setzero_si128(), v));
}

/* Pixels [0, npx) of a row with 3- or 4-byte pixels; loads read 4 bytes, so npx stops one
 * pixel short of the row end when bpp is 3 (the caller finishes the row bytewise). */
static inline __attribute__((always_inline)) void
unfilter_px(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out, size_t npx,
            size_t bpp) {
    /* lanes hold bytes zero-extended to 16 bits; adding with _mm_add_epi8 wraps the low
     * byte mod 256 and keeps the high byte 0, so no masking is needed */
    __m128i a = _mm_setzero_si128(), c = _mm_setzero_si128();
    size_t i, o;
    switch (filter) {
    case 1:
        for (i = 0, o = 0; i < npx; i++, o += bpp) {
            a = _mm_add_epi8(load_px(in + o), a);
            store_px(out + o, a, bpp);
        }
        break;
    case 3:
        for (i = 0, o = 0; i < npx; i++, o += bpp) {
            __m128i avg = _mm_srli_epi16(_mm_add_epi16(a, load_px(prior + o)), 1);
            a = _mm_add_epi8(load_px(in + o), avg);
            store_px(out + o, a, bpp);
        }
        break;
    case 4:
        for (i = 0, o = 0; i < npx; i++, o += bpp) {
            /* pa = |b - c|, pb = |a - c|, pc = |a + b - 2c|; pick a, else b, else c */
            __m128i b = load_px(prior + o);
            __m128i db = _mm_sub_epi16(b, c), da = _mm_sub_epi16(a, c);
            __m128i pa = abs16(db), pb = abs16(da), pc = abs16(_mm_add_epi16(da, db));
            __m128i not_a = _mm_cmpgt_epi16(pa, _mm_min_epi16(pb, pc));
            __m128i use_c = _mm_cmpgt_epi16(pb, pc);
            __m128i bc = _mm_or_si128(_mm_and_si128(use_c, c), _mm_andnot_si128(use_c, b));
            __m128i pred = _mm_or_si128(_mm_and_si128(not_a, bc), _mm_andnot_si128(not_a, a));
            a = _mm_add_epi8(load_px(in + o), pred);
            c = b;
            store_px(out + o, a, bpp);
        }
        break;
    }
}
/* Paeth with SSE4.1. */
#define SSE41 __attribute__((target("sse4.1")))
SSE41 static inline __attribute__((always_inline)) __m128i load_px41(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtepu8_epi16(_mm_cvtsi32_si128((int)v));
}

SSE41 static inline __attribute__((always_inline)) void
paeth_px41(const uint8_t *in, const uint8_t *prior, uint8_t *out, size_t npx, size_t bpp) {
    __m128i a = _mm_setzero_si128(), c = _mm_setzero_si128();
    for (size_t i = 0, o = 0; i < npx; i++, o += bpp) {
        __m128i b = load_px41(prior + o);
        __m128i db = _mm_sub_epi16(b, c), da = _mm_sub_epi16(a, c);
        __m128i pa = _mm_abs_epi16(db), pb = _mm_abs_epi16(da);
        __m128i pc = _mm_abs_epi16(_mm_add_epi16(da, db));
        __m128i bc = _mm_blendv_epi8(b, c, _mm_cmpgt_epi16(pb, pc));
        __m128i pred = _mm_blendv_epi8(a, bc, _mm_cmpgt_epi16(pa, _mm_min_epi16(pb, pc)));
        a = _mm_add_epi8(load_px41(in + o), pred);
        c = b;
        store_px(out + o, a, bpp);
    }
}
SSE41 static void paeth_px41_3(const uint8_t *in, const uint8_t *prior, uint8_t *out, size_t npx) {
    paeth_px41(in, prior, out, npx, 3);
}
SSE41 static void paeth_px41_4(const uint8_t *in, const uint8_t *prior, uint8_t *out, size_t npx) {
    paeth_px41(in, prior, out, npx, 4);
}

static int best_isa(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.1") ? PNG_ISA_SSE41 : PNG_ISA_SSE2;
}

/* bpp as a constant: the 3- or 4-byte moves become single instructions */
static void unfilter_px3(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                         size_t npx) {
    unfilter_px(filter, in, prior, out, npx, 3);
}
static void unfilter_px4(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                         size_t npx) {
    unfilter_px(filter, in, prior, out, npx, 4);
}
#define HAVE_PX_KERNELS 1
#endif

void png_unfilter_row_isa(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                          size_t n, size_t bpp, int isa) {
    size_t done = 0;
#ifdef HAVE_PX_KERNELS
    if (isa > PNG_ISA_BYTES && (bpp == 3 || bpp == 4) && (filter == 1 || filter == 3 || filter == 4) &&
        n >= 2 * bpp) {
        size_t npx = n / bpp - 1; /* the last pixel goes bytewise: no access past the row */
        if (filter == 4 && isa >= PNG_ISA_SSE41 && best_isa() >= PNG_ISA_SSE41) {
            if (bpp == 3) paeth_px41_3(in, prior, out, npx);
            else paeth_px41_4(in, prior, out, npx);
        } else if (bpp == 3) {
            unfilter_px3(filter, in, prior, out, npx);
        } else {
            unfilter_px4(filter, in, prior, out, npx);
        }
        done = npx * bpp;
    }
#else
    (void)isa;
#endif
    unfilter_bytes(filter, in, prior, out, done, n, bpp);
}

void png_unfilter_row(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                      size_t n, size_t bpp) {
    png_unfilter_row_isa(filter, in, prior, out, n, bpp, PNG_ISA_SSE41);
}
