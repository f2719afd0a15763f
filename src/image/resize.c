/* resize.c - Pillow 9.4 BICUBIC resample of RGB8, bit-exact, vectorised.
 *
 * Exactness: the weights are computed in double exactly as Pillow's precompute_coeffs and
 * normalize_coeffs_8bpc do; every output is (2^21 + sum in*k) >> 22 clipped to 0..255 with
 * 32-bit integer sums, as in ImagingResampleHorizontal_8bpc / Vertical_8bpc. Integer sums
 * are order-independent, so any vectorisation gives Pillow's bytes.
 *
 * Speed: both passes are written as "vertical" filters over contiguous lanes of bytes:
 *   - vertical pass: lanes are the bytes of an output row; each tap adds one source row;
 *   - horizontal pass: 8 source rows are transposed into a [x][row][rgb] block, so the 24
 *     bytes of one column become contiguous lanes and each tap adds one column.
 * Lanes are widened to int32 and multiplied by the broadcast weight (AVX2, chosen at run
 * time when the CPU has it; plain integer loops otherwise).
 * Several output sizes of one source (the tile grid and the thumbnail) share the transposed
 * blocks. */
#include "image/resize.h"
#include "core/err.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS 22
#define HB 8            /* source rows per transposed block */
#define LANES (HB * 3)  /* bytes per column of a block */

/* ------------------------------------------------------------------ weights */

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

void rs_axis_free(rs_axis *a) {
    if (!a) return;
    free(a->xmin);
    free(a->n);
    free(a->k);
    memset(a, 0, sizeof *a);
}

int rs_axis_init(rs_axis *a, int in, int out, nvlm_err *err) {
    memset(a, 0, sizeof *a);
    if (in <= 0 || out <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "resize: bad sizes %d -> %d", in, out);
    /* Pillow passes the box as floats: scale = (double)(float)in / out */
    double scale = (double)(float)in / out;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale; /* bicubic support is 2 */
    double cs = ceil(support);
    if (cs > 1e8) return nvlm_fail(err, NVLM_E_LIMIT, "resize: reduction %d -> %d too large", in, out);
    int ksize = (int)cs * 2 + 1;
    a->in = in;
    a->out = out;
    a->ksize = ksize;
    a->xmin = malloc(sizeof(int) * (size_t)out);
    a->n = malloc(sizeof(int) * (size_t)out);
    a->k = calloc((size_t)out * (size_t)ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * (size_t)ksize);
    if (!a->xmin || !a->n || !a->k || !w) {
        free(w);
        rs_axis_free(a);
        return nvlm_fail(err, NVLM_E_NOMEM, "resize: out of memory for weights");
    }
    for (int xx = 0; xx < out; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        if (xmax < 0) xmax = 0;
        if (xmax > ksize) xmax = ksize; /* cannot happen; keeps the table in bounds */
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = a->k + (size_t)xx * (size_t)ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        a->xmin[xx] = xmin;
        a->n[xx] = xmax;
    }
    free(w);
    return NVLM_OK;
}

/* ------------------------------------------------------------------ kernels */

static inline uint8_t clip8(int32_t acc) {
    int32_t v = acc >> PRECISION_BITS; /* arithmetic shift, then clamp: Pillow's clip8 */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Portable kernels: plain integer loops. */
static void h_block_generic(const uint8_t *T, const rs_axis *a, uint8_t *O) {
    for (int xx = 0; xx < a->out; xx++) {
        const int32_t *k = a->k + (size_t)xx * (size_t)a->ksize;
        const uint8_t *p0 = T + (size_t)a->xmin[xx] * LANES;
        int32_t s[LANES];
        for (int j = 0; j < LANES; j++) s[j] = 1 << (PRECISION_BITS - 1);
        for (int t = 0, n = a->n[xx]; t < n; t++) {
            const uint8_t *p = p0 + (size_t)t * LANES;
            for (int j = 0; j < LANES; j++) s[j] += (int32_t)p[j] * k[t];
        }
        for (int j = 0; j < LANES; j++) O[(size_t)xx * LANES + j] = clip8(s[j]);
    }
}

/* Vertical pass, output row yy: source row r of the axis is src + (r - shift) * stride. */
static void v_row_generic(const uint8_t *src, size_t stride, int shift, const rs_axis *a, int yy,
                          uint8_t *o, size_t nbytes) {
    const int32_t *k = a->k + (size_t)yy * (size_t)a->ksize;
    const uint8_t *base = src + (size_t)(a->xmin[yy] - shift) * stride;
    for (size_t j = 0; j < nbytes; j++) {
        int32_t s = 1 << (PRECISION_BITS - 1);
        for (int t = 0, n = a->n[yy]; t < n; t++) s += (int32_t)base[(size_t)t * stride + j] * k[t];
        o[j] = clip8(s);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RS_HAVE_AVX2 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

/* acc += widen(8 bytes at p) * kk */
#define MAC8(acc, p, kk)                                                                 \
    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(                  \
                                    _mm_loadl_epi64((const __m128i *)(const void *)(p))), \
                                kk))

/* 32 output bytes from four accumulators: >> 22, then the saturating packs clamp to 0..255
 * (exactly clip8), and a permute restores the lane order. */
AVX2 static inline void store32(uint8_t *o, __m256i s0, __m256i s1, __m256i s2, __m256i s3) {
    __m256i a = _mm256_packs_epi32(_mm256_srai_epi32(s0, PRECISION_BITS),
                                   _mm256_srai_epi32(s1, PRECISION_BITS));
    __m256i b = _mm256_packs_epi32(_mm256_srai_epi32(s2, PRECISION_BITS),
                                   _mm256_srai_epi32(s3, PRECISION_BITS));
    __m256i c = _mm256_packus_epi16(a, b);
    c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)(void *)o, c);
}

/* Horizontal pass over one transposed block; writes 32 bytes per column (O has slack). */
AVX2 static void h_block_avx2(const uint8_t *T, const rs_axis *a, uint8_t *O) {
    const __m256i init = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int xx = 0; xx < a->out; xx++) {
        const int32_t *k = a->k + (size_t)xx * (size_t)a->ksize;
        const uint8_t *p = T + (size_t)a->xmin[xx] * LANES;
        __m256i s0 = init, s1 = init, s2 = init;
        for (int t = 0, n = a->n[xx]; t < n; t++, p += LANES) {
            __m256i kk = _mm256_set1_epi32(k[t]);
            MAC8(s0, p, kk);
            MAC8(s1, p + 8, kk);
            MAC8(s2, p + 16, kk);
        }
        store32(O + (size_t)xx * LANES, s0, s1, s2, s2);
    }
}

AVX2 static void v_row_avx2(const uint8_t *src, size_t stride, int shift, const rs_axis *a,
                            int yy, uint8_t *o, size_t nbytes) {
    const __m256i init = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    const int32_t *k = a->k + (size_t)yy * (size_t)a->ksize;
    const uint8_t *base = src + (size_t)(a->xmin[yy] - shift) * stride;
    int n = a->n[yy];
    size_t j = 0;
    for (; j + 32 <= nbytes; j += 32) {
        __m256i s0 = init, s1 = init, s2 = init, s3 = init;
        const uint8_t *p = base + j;
        for (int t = 0; t < n; t++, p += stride) {
            __m256i kk = _mm256_set1_epi32(k[t]);
            MAC8(s0, p, kk);
            MAC8(s1, p + 8, kk);
            MAC8(s2, p + 16, kk);
            MAC8(s3, p + 24, kk);
        }
        store32(o + j, s0, s1, s2, s3);
    }
    for (; j < nbytes; j++) { /* row tail */
        int32_t s = 1 << (PRECISION_BITS - 1);
        const uint8_t *p = base + j;
        for (int t = 0; t < n; t++, p += stride) s += (int32_t)*p * k[t];
        o[j] = clip8(s);
    }
}
#endif

typedef struct rs_kernels {
    void (*h_block)(const uint8_t *, const rs_axis *, uint8_t *);
    void (*v_row)(const uint8_t *, size_t, int, const rs_axis *, int, uint8_t *, size_t);
} rs_kernels;

static rs_kernels pick_kernels(int simd) {
    rs_kernels k = {h_block_generic, v_row_generic};
    (void)simd; /* unused where there are no SIMD kernels (aarch64) */
#ifdef RS_HAVE_AVX2
    __builtin_cpu_init();
    if (simd && __builtin_cpu_supports("avx2")) {
        k.h_block = h_block_avx2;
        k.v_row = v_row_avx2;
    }
#endif
    return k;
}

/* ------------------------------------------------------------------ driver
 *
 * Source rows are read once, in order, 8 at a time. For each output size ("job"), the
 * horizontal results go into a sliding window of rows, and every vertical output row whose
 * taps are all in the window is computed at once and handed to the emit callback. The
 * window only ever holds about one vertical kernel of rows, so it stays in cache and the
 * whole horizontal intermediate is never materialised. */

typedef struct rs_job {
    int ow, oh, need_h, need_v;
    rs_axis ax, ay;
    int y0, y1;       /* source rows the horizontal pass must produce */
    uint8_t *win;     /* horizontal rows [wbase, wbase + wcount), cap rows */
    int wbase, wcount, cap;
    int vy, vend;     /* next vertical output row, end of the rows wanted */
    uint8_t *row;     /* one output row */
} rs_job;

/* Copies source rows [y, y+nr) into the transposed block T. Column by column with 4-byte
 * moves: the extra byte lands in the next lane (or the next column's first lane, or T's 4
 * spare bytes) and is overwritten right after; the last column moves 3 bytes so that no
 * read passes the end of a row. */
static void transpose_block(const uint8_t *src, int w, int y, int nr, uint8_t *T) {
    size_t rb = (size_t)w * 3;
    const uint8_t *rows[HB];
    for (int r = 0; r < nr; r++) rows[r] = src + (size_t)(y + r) * rb;
    int x = 0;
    for (; x < w - 1; x++) {
        uint8_t *t = T + (size_t)x * LANES;
        for (int r = 0; r < nr; r++) memcpy(t + r * 3, rows[r] + (size_t)x * 3, 4);
    }
    uint8_t *t = T + (size_t)x * LANES;
    for (int r = 0; r < nr; r++) memcpy(t + r * 3, rows[r] + (size_t)x * 3, 3);
}

/* Copies lane r of O ([ow][LANES]) into one row. */
static void untranspose_row(const uint8_t *O, int ow, int r, uint8_t *dst) {
    const uint8_t *o = O + r * 3;
    int x = 0;
    for (; x < ow - 1; x++) memcpy(dst + (size_t)x * 3, o + (size_t)x * LANES, 4);
    memcpy(dst + (size_t)x * 3, o + (size_t)x * LANES, 3);
}

/* Emits every vertical output row of j whose source rows are all in the window. */
static void drain_vertical(rs_job *j, int job, const rs_kernels *K, rs_emit_fn emit, void *user) {
    size_t rb = (size_t)j->ow * 3;
    while (j->vy < j->vend && j->ay.xmin[j->vy] + j->ay.n[j->vy] <= j->wbase + j->wcount) {
        K->v_row(j->win, rb, j->wbase, &j->ay, j->vy, j->row, rb);
        emit(user, job, j->vy, j->row);
        j->vy++;
    }
}

/* Makes room for one more row in j's window, dropping rows no later output needs. */
static void window_room(rs_job *j) {
    if (j->wcount < j->cap) return;
    int keep_from = j->vy < j->vend ? j->ay.xmin[j->vy] : j->wbase + j->wcount;
    int drop = keep_from - j->wbase;
    /* drop > 0: the next output is not ready, so its taps end past the full window and,
     * the window being longer than a kernel, they start past its first row */
    if (drop <= 0) return;
    size_t rb = (size_t)j->ow * 3;
    memmove(j->win, j->win + (size_t)drop * rb, (size_t)(j->wcount - drop) * rb);
    j->wbase += drop;
    j->wcount -= drop;
}

static int run_horizontal(const uint8_t *src, int w, rs_job *jobs, int n, const rs_kernels *K,
                          rs_emit_fn emit, void *user, const rs_opts *o, nvlm_err *err) {
    int ylo = -1, yhi = -1, owmax = 0;
    for (int i = 0; i < n; i++) {
        if (!jobs[i].need_h || jobs[i].y0 >= jobs[i].y1) continue;
        if (ylo < 0 || jobs[i].y0 < ylo) ylo = jobs[i].y0;
        if (jobs[i].y1 > yhi) yhi = jobs[i].y1;
        if (jobs[i].ow > owmax) owmax = jobs[i].ow;
    }
    if (ylo < 0) return NVLM_OK;
    uint8_t *T = calloc((size_t)w * LANES + 4, 1);
    uint8_t *O = malloc((size_t)owmax * LANES + 32); /* store32 writes 8 bytes past a column */
    if (!T || !O) {
        free(T);
        free(O);
        return nvlm_fail(err, NVLM_E_NOMEM, "resize: out of memory");
    }
    int rc = NVLM_OK;
    for (int y = ylo; y < yhi; y += HB) {
        int nr = yhi - y < HB ? yhi - y : HB;
        if (o->wait_rows && o->wait_rows(o->wait_user, y + nr) != 0) {
            rc = nvlm_fail(err, NVLM_E_CANCELLED, "resize: source image abandoned");
            break;
        }
        transpose_block(src, w, y, nr, T);
        for (int i = 0; i < n; i++) {
            rs_job *j = &jobs[i];
            if (!j->need_h || y + nr <= j->y0 || y >= j->y1) continue;
            K->h_block(T, &j->ax, O);
            for (int r = 0; r < nr; r++) {
                int yy = y + r;
                if (yy < j->y0 || yy >= j->y1) continue;
                if (!j->need_v) {
                    untranspose_row(O, j->ow, r, j->row);
                    emit(user, i, yy, j->row);
                    continue;
                }
                if (j->wcount == j->cap) {
                    drain_vertical(j, i, K, emit, user); /* then the rows before the next
                                                            output's first tap can go */
                    window_room(j);
                }
                untranspose_row(O, j->ow, r, j->win + (size_t)j->wcount * (size_t)j->ow * 3);
                j->wcount++;
            }
            if (j->need_v) drain_vertical(j, i, K, emit, user);
        }
    }
    free(T);
    free(O);
    return rc;
}

static void free_jobs(rs_job *jobs, int n) {
    for (int i = 0; i < n; i++) {
        rs_axis_free(&jobs[i].ax);
        rs_axis_free(&jobs[i].ay);
        free(jobs[i].win);
        free(jobs[i].row);
    }
    free(jobs);
}

int rs_resize_stream(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                     rs_emit_fn emit, void *user, int simd, nvlm_err *err) {
    rs_opts o;
    memset(&o, 0, sizeof o);
    o.simd = simd;
    return rs_resize_stream_ex(src, w, h, n, ow, oh, emit, user, &o, err);
}

/* Sets up job j: weights, the output rows [vy, vend) wanted and the source rows they read. */
static int job_init(rs_job *j, int w, int h, int ow, int oh, const rs_opts *o, int i,
                    nvlm_err *err) {
    j->ow = ow;
    j->oh = oh;
    if (ow <= 0 || oh <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "resize: bad target size %dx%d", ow, oh);
    j->vy = o->row_from ? o->row_from[i] : 0;
    j->vend = o->row_to ? o->row_to[i] : oh;
    if (j->vy < 0 || j->vend > oh || j->vy > j->vend)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "resize: bad row range %d..%d of %d", j->vy,
                         j->vend, oh);
    j->need_h = ow != w;
    j->need_v = oh != h;
    j->y0 = j->vy; /* without a vertical pass, output row y is source row y */
    j->y1 = j->vend;
    int rc;
    if (j->need_h && (rc = rs_axis_init(&j->ax, w, ow, err)) != NVLM_OK) return rc;
    if (j->need_v) {
        if ((rc = rs_axis_init(&j->ay, h, oh, err)) != NVLM_OK) return rc;
        /* only the rows the vertical pass reads (Pillow's ybox_first/ybox_last) */
        if (j->vy < j->vend) {
            j->y0 = j->ay.xmin[j->vy];
            j->y1 = j->ay.xmin[j->vend - 1] + j->ay.n[j->vend - 1];
        } else {
            j->y0 = j->y1 = 0;
        }
        j->wbase = j->y0;
        j->cap = j->ay.ksize + HB + 64;
        if (j->need_h) {
            j->win = malloc((size_t)ow * 3 * (size_t)j->cap);
            if (!j->win) return nvlm_fail(err, NVLM_E_NOMEM, "resize: out of memory");
        }
    }
    j->row = malloc((size_t)ow * 3);
    if (!j->row) return nvlm_fail(err, NVLM_E_NOMEM, "resize: out of memory");
    return NVLM_OK;
}

int rs_resize_stream_ex(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                        rs_emit_fn emit, void *user, const rs_opts *o, nvlm_err *err) {
    if (!src || w <= 0 || h <= 0 || n <= 0 || !emit || !o)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "resize: empty source image");
    rs_job *jobs = calloc((size_t)n, sizeof *jobs);
    if (!jobs) return nvlm_fail(err, NVLM_E_NOMEM, "resize: out of memory");
    rs_kernels K = pick_kernels(o->simd);
    int rc = NVLM_OK;
    for (int i = 0; i < n && rc == NVLM_OK; i++) rc = job_init(&jobs[i], w, h, ow[i], oh[i], o, i, err);
    if (rc == NVLM_OK) rc = run_horizontal(src, w, jobs, n, &K, emit, user, o, err);
    for (int i = 0; i < n && rc == NVLM_OK; i++) {
        rs_job *j = &jobs[i];
        size_t rb = (size_t)w * 3;
        if (j->need_h) continue;
        /* no horizontal pass: the source rows are read whole */
        int need = j->need_v ? j->y1 : j->vend;
        if (o->wait_rows && o->wait_rows(o->wait_user, need) != 0) {
            rc = nvlm_fail(err, NVLM_E_CANCELLED, "resize: source image abandoned");
            break;
        }
        for (int y = j->vy; y < j->vend; y++) {
            if (j->need_v) {
                K.v_row(src, rb, 0, &j->ay, y, j->row, rb);
                emit(user, i, y, j->row);
            } else {
                emit(user, i, y, src + (size_t)y * rb);
            }
        }
    }
    free_jobs(jobs, n);
    return rc;
}

/* Contiguous outputs: outs[i] gets ow[i]*oh[i]*3 bytes. */
typedef struct rs_contig {
    const int *ow;
    uint8_t *const *outs;
} rs_contig;

static void emit_contig(void *user, int job, int y, const uint8_t *row) {
    const rs_contig *c = user;
    size_t rb = (size_t)c->ow[job] * 3;
    memcpy(c->outs[job] + (size_t)y * rb, row, rb);
}

int rs_resize_many(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                   uint8_t *const *outs, nvlm_err *err) {
    return rs_resize_many_ex(src, w, h, n, ow, oh, outs, 1, err);
}

int rs_resize_many_ex(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                      uint8_t *const *outs, int simd, nvlm_err *err) {
    rs_contig c = {ow, outs};
    return rs_resize_stream(src, w, h, n, ow, oh, emit_contig, &c, simd, err);
}

int nvlm_image_resize(const nvlm_image *in, int width, int height, nvlm_image *out,
                      nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_resize: out is NULL");
    memset(out, 0, sizeof *out);
    if (!in || !in->rgb || in->width <= 0 || in->height <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_resize: empty input image");
    if (width <= 0 || height <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_resize: bad size %dx%d", width, height);
    size_t bytes = (size_t)width * (size_t)height * 3;
    if (bytes / 3 / (size_t)height != (size_t)width)
        return nvlm_fail(err, NVLM_E_LIMIT, "nvlm_image_resize: %dx%d is too large", width, height);
    uint8_t *buf = malloc(bytes);
    if (!buf) return nvlm_fail(err, NVLM_E_NOMEM, "nvlm_image_resize: out of memory");
    int rc = rs_resize_many(in->rgb, in->width, in->height, 1, &width, &height, &buf, err);
    if (rc != NVLM_OK) {
        free(buf);
        return rc;
    }
    out->width = width;
    out->height = height;
    out->rgb = buf;
    return NVLM_OK;
}
