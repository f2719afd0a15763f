/* Matrix products against weights stored F32/F16/BF16 (scalar reference path).
 * Work is split over output rows; each thread expands a block of weight rows to float32
 * once and applies it to every token, so a weight row is read once per call. */
#include "kernels/ops.h"
#include <stdlib.h>
#include <string.h>

enum { ROW_BLOCK = 8 };

typedef struct matmul_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
} matmul_job;

static const void *row_ptr(const nvlm_wmat *w, int r) {
    return (const uint8_t *)w->data + (size_t)r * (size_t)w->cols * nvlm_dtype_size(w->dtype);
}

static void matmul_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const matmul_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows;
    float *wbuf = malloc(sizeof(float) * ROW_BLOCK * (size_t)K);
    if (!wbuf) return; /* cannot happen in practice; leaves y untouched */
    for (size_t r0 = begin; r0 < end; r0 += ROW_BLOCK) {
        int nr = (int)(end - r0 < ROW_BLOCK ? end - r0 : ROW_BLOCK);
        const void *src = row_ptr(j->w, (int)r0);
        /* F32 rows are used in place when aligned (safetensors does not promise alignment) */
        int in_place = j->w->dtype == NVLM_DT_F32 && ((uintptr_t)src % sizeof(float)) == 0;
        const float *wr = in_place ? (const float *)src : wbuf;
        if (!in_place) nvlm_to_f32(wbuf, src, j->w->dtype, (size_t)nr * K);
        for (int t = 0; t < j->n_tok; t++) {
            const float *xt = j->x + (size_t)t * K;
            float *yt = j->y + (size_t)t * N + r0;
            for (int r = 0; r < nr; r++) {
                float v = nvlm_dot(xt, wr + (size_t)r * K, K);
                yt[r] = j->bias ? v + j->bias[r0 + r] : v;
            }
        }
    }
    free(wbuf);
}

void nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                 const float *bias) {
    matmul_job j = {y, x, n_tok, w, bias};
    nvlm_pool_run(pool, (size_t)w->rows, ROW_BLOCK, matmul_rows, &j);
}
