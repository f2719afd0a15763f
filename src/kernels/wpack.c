/* Packing weight matrices into NVLM_WL_P8 and NVLM_WL_Q16 (kernels/ops.h, wpack.h). */
#include "kernels/wpack.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"
#include "kernels/gemv_vnni.h"
#include "kernels/qblock.h"
#include "kernels/simd512.h"
#include <stdlib.h>
#include <string.h>

int nvlm_wpack_layout(nvlm_dtype dt) {
    const nvlm_dtype_traits *tr = nvlm_dtype_traits_of(dt);
    return tr ? tr->packed : NVLM_WL_ROWS;
}

int nvlm_wpack_reads(int level, nvlm_dtype dt) {
    switch (nvlm_wpack_layout(dt)) {
#ifdef NVLM_HAVE_AVX512_KERNELS
    case NVLM_WL_P8: return nvlm_cpu_at_least(level, NVLM_CPU_AVX512);
#endif
#ifdef NVLM_HAVE_VNNI_KERNELS
    case NVLM_WL_Q16: return nvlm_cpu_at_least(level, NVLM_CPU_AVX512_VNNI);
#endif
    default: (void)level; return 0;
    }
}

int nvlm_wpack_can(const nvlm_wmat *w, int level) {
    const int group = nvlm_wpack_layout(w->dtype) == NVLM_WL_Q16 ? NVLM_Q16_ROWS : NVLM_P8_ROWS, rows = nvlm_wmat_held_rows(w);
    return w->layout == NVLM_WL_ROWS && w->data && nvlm_wpack_reads(level, w->dtype) && rows > 0 && rows % group == 0 &&
           w->cols > 0 && w->cols % NVLM_P8_RUN == 0;
}

int nvlm_wpack_for(const nvlm_pool *pool, const nvlm_wmat *w) {
    return nvlm_wpack_can(w, nvlm_pool_level(pool)) && (!nvlm_dtype_is_block(w->dtype) || nvlm_pool_int8_act_for(pool, w->dtype));
}

/* ---- NVLM_WL_Q16 ---- */

size_t nvlm_q16_block_bytes(nvlm_dtype t) { return NVLM_Q16_ROWS * nvlm_row_bytes(t, NVLM_QK); }

/* A stored block (kernels/qblock.h) opens with its f16 scales (dtype traits' .scales: the scale,
 * Q4's minimum), then its weight bytes, 4 at a time: Q8_0 8 groups of signed bytes (+ 128 in a
 * panel: xor 0x80), Q4 and Q4_0 4 groups of nibble bytes as stored. A panel block holds each
 * group as one vector (dword r: row r's), then each scale as 16 f16 side by side. */
enum { VEC = 64 };
typedef struct qparts {
    size_t head;    /* bytes of the scales */
    int groups;     /* 4-byte groups of weights */
    int scales;
    uint32_t flip;  /* xor between the stored and the panel's bytes */
} qparts;

static qparts parts_of(nvlm_dtype t) {
    const nvlm_dtype_traits *tr = nvlm_dtype_traits_of(t);
    const size_t head = 2 * (size_t)tr->scales;
    return (qparts){.head = head, .groups = (int)((tr->block_bytes - head) / 4), .scales = tr->scales,
                    .flip = t == NVLM_DT_Q8_0 ? 0x80808080u : 0};
}

void nvlm_q16_pack_panel(nvlm_dtype t, const uint8_t *src, size_t rb, int R, int nb, uint8_t *dst) {
    const qparts q = parts_of(t);
    const size_t bb = nvlm_q16_block_bytes(t), bs = nvlm_row_bytes(t, NVLM_QK), sc = (size_t)q.groups * VEC;
    memset(dst, 0, bb * (size_t)nb);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < nb; i++) {
            const uint8_t *b = src + (size_t)r * rb + (size_t)i * bs;
            uint8_t *o = dst + (size_t)i * bb;
            for (int g = 0; g < q.groups; g++) { /* 4 bytes at a time: xor is bytewise */
                uint32_t v;
                memcpy(&v, b + q.head + 4 * (size_t)g, 4);
                v ^= q.flip;
                memcpy(o + g * VEC + r * 4, &v, 4);
            }
            for (int k = 0; k < q.scales; k++) memcpy(o + sc + 2 * NVLM_Q16_ROWS * k + 2 * r, b + 2 * k, 2);
        }
}

void nvlm_q16_row_blocks(const nvlm_wmat *w, int r, int b0, int nb, uint8_t *dst) {
    const qparts q = parts_of(w->dtype);
    const int rr = r % NVLM_Q16_ROWS;
    const size_t bb = nvlm_q16_block_bytes(w->dtype), bs = nvlm_row_bytes(w->dtype, NVLM_QK), sc = (size_t)q.groups * VEC;
    const uint8_t *panel = (const uint8_t *)w->data + (size_t)(r / NVLM_Q16_ROWS) * ((size_t)w->cols / NVLM_QK) * bb;
    for (int i = 0; i < nb; i++) {
        const uint8_t *o = panel + (size_t)(b0 + i) * bb;
        uint8_t *b = dst + (size_t)i * bs;
        for (int g = 0; g < q.groups; g++) {
            uint32_t v;
            memcpy(&v, o + g * VEC + rr * 4, 4);
            v ^= q.flip;
            memcpy(b + q.head + 4 * (size_t)g, &v, 4);
        }
        for (int k = 0; k < q.scales; k++) memcpy(b + 2 * k, o + sc + 2 * NVLM_Q16_ROWS * k + 2 * rr, 2);
    }
}

typedef struct pack_job {
    uint8_t *dst;
    const uint8_t *src;
    size_t es, unit; /* P8: bytes per element; bytes of a group (P8) or panel (Q16), row-major */
    int cols;
    nvlm_dtype dt;
    uint8_t *stage; /* one unit per thread: the source is copied there first, so dst may be src */
} pack_job;

/* Groups [begin, end) of 8 rows: each run of 16 of each row to its place. */
static void pack_groups(void *ctx, size_t begin, size_t end, int thread) {
    const pack_job *j = ctx;
    const size_t run = NVLM_P8_RUN * j->es, row = (size_t)j->cols * j->es;
    uint8_t *s = j->stage + (size_t)thread * j->unit;
    for (size_t g = begin; g < end; g++) {
        memcpy(s, j->src + g * j->unit, j->unit);
        uint8_t *d = j->dst + g * j->unit;
        for (int k = 0; k < j->cols; k += NVLM_P8_RUN)
            for (int r = 0; r < NVLM_P8_ROWS; r++, d += run) memcpy(d, s + (size_t)r * row + (size_t)k * j->es, run);
    }
}

/* Q16 panels [begin, end). */
static void pack_panels(void *ctx, size_t begin, size_t end, int thread) {
    const pack_job *j = ctx;
    const size_t rb = nvlm_row_bytes(j->dt, j->cols), nb = (size_t)j->cols / NVLM_QK;
    uint8_t *s = j->stage + (size_t)thread * j->unit;
    for (size_t p = begin; p < end; p++) {
        memcpy(s, j->src + p * j->unit, j->unit);
        nvlm_q16_pack_panel(j->dt, s, rb, NVLM_Q16_ROWS, (int)nb, j->dst + p * j->unit);
    }
}

int nvlm_wpack(nvlm_pool *pool, void *dst, const nvlm_wmat *w) {
    const int layout = nvlm_wpack_layout(w->dtype), q16 = layout == NVLM_WL_Q16;
    if (layout == NVLM_WL_ROWS) { /* nothing to rearrange */
        if (dst != w->data) memmove(dst, w->data, nvlm_row_bytes(w->dtype, w->cols) * (size_t)nvlm_wmat_held_rows(w));
        return layout;
    }
    const size_t rows = q16 ? NVLM_Q16_ROWS : NVLM_P8_ROWS;
    pack_job j = {.dst = dst, .src = w->data, .es = nvlm_dtype_size(w->dtype), .cols = w->cols, .dt = w->dtype,
                  .unit = rows * nvlm_row_bytes(w->dtype, w->cols)};
    /* every thread's stage before any work: a failure leaves the matrix untouched */
    if (!(j.stage = malloc(j.unit * (size_t)nvlm_pool_threads(pool)))) return -1;
    nvlm_pool_run(pool, (size_t)nvlm_wmat_held_rows(w) / rows, q16 ? 8 : 16, q16 ? pack_panels : pack_groups, &j);
    free(j.stage);
    return layout;
}
