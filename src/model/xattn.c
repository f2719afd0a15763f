/* Gated cross-attention blocks of NVLM-X / NVLM-H with their key/value cache (design §12). */
#include "model/xattn.h"
#include "core/err.h"
#include "kernels/attention.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int nvlm_xattn_init(nvlm_xattn *x, nvlm_model *m, nvlm_err *err) {
    memset(x, 0, sizeof *x);
    x->m = m;
    x->n_blocks = m->cfg.num_xattn;
    x->kv_dim = m->cfg.llm.num_kv_heads * nvlm_cfg_head_dim(&m->cfg);
    x->k = calloc((size_t)(x->n_blocks ? x->n_blocks : 1), sizeof *x->k);
    x->v = calloc((size_t)(x->n_blocks ? x->n_blocks : 1), sizeof *x->v);
    if (!x->k || !x->v) {
        nvlm_xattn_free(x);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the cross-attention cache");
    }
    return NVLM_OK;
}

void nvlm_xattn_free(nvlm_xattn *x) {
    for (int b = 0; x->k && b < x->n_blocks; b++) free(x->k[b]);
    for (int b = 0; x->v && b < x->n_blocks; b++) free(x->v[b]);
    free(x->k), free(x->v), free(x->rows_end), free(x->visible_after), free(x->spans);
    memset(x, 0, sizeof *x);
}

size_t nvlm_xattn_bytes(const nvlm_xattn *x) {
    return 2 * sizeof(float) * (size_t)x->n_blocks * (size_t)x->rows * (size_t)x->kv_dim;
}

static int reserve_rows(nvlm_xattn *x, int extra, nvlm_err *err) {
    if (x->rows + extra <= x->cap) return NVLM_OK;
    int cap = x->cap ? x->cap : 1024;
    while (cap < x->rows + extra) cap *= 2;
    for (int b = 0; b < x->n_blocks; b++) {
        float *k = realloc(x->k[b], sizeof(float) * (size_t)cap * x->kv_dim);
        if (k) x->k[b] = k;
        float *v = k ? realloc(x->v[b], sizeof(float) * (size_t)cap * x->kv_dim) : NULL;
        if (v) x->v[b] = v;
        if (!k || !v) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for %d cross-attention memory rows", cap);
    }
    x->cap = cap;
    return NVLM_OK;
}

/* Grows an int array to hold n + 1 entries. */
static int grow_ints(int **a, int n, int *cap) {
    if (n < *cap) return 0;
    int c = *cap ? 2 * *cap : 8;
    int *p = realloc(*a, sizeof(int) * (size_t)c);
    if (!p) return -1;
    *a = p;
    *cap = c;
    return 0;
}

int nvlm_xattn_add_image(nvlm_xattn *x, const float *mem, int rows, nvlm_err *err) {
    const nvlm_config *cfg = &x->m->cfg;
    const int d = nvlm_cfg_head_dim(cfg), kvh = cfg->llm.num_kv_heads;
    if (grow_ints(&x->rows_end, x->n_images, &x->cap_images))
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int rc = reserve_rows(x, rows, err);
    if (rc) return rc;
    for (int b = 0; b < x->n_blocks && rows > 0; b++) {
        const xattn_block *B = &x->m->xattn[b];
        float *K = x->k[b] + (size_t)x->rows * x->kv_dim, *V = x->v[b] + (size_t)x->rows * x->kv_dim;
        if ((rc = nvlm_matmul(x->m->pool, K, mem, rows, &B->wk, NULL, err)) ||
            (rc = nvlm_matmul(x->m->pool, V, mem, rows, &B->wv, NULL, err)))
            return rc;
        for (size_t r = 0; r < (size_t)rows * kvh; r++)
            nvlm_rmsnorm(K + r * d, K + r * d, B->k_norm, d, d, cfg->llm.rms_norm_eps);
    }
    x->rows += rows;
    x->rows_end[x->n_images++] = x->rows;
    return NVLM_OK;
}

void nvlm_xattn_clear_layout(nvlm_xattn *x) {
    x->n_visible = 0;
    x->n_spans = 0;
}

int nvlm_xattn_set_visible_after(nvlm_xattn *x, int pos, nvlm_err *err) {
    if (x->n_visible >= x->n_images)
        return nvlm_fail(err, NVLM_E_INTERNAL, "image %d laid out in the prompt has no cross-attention memory", x->n_visible);
    /* visible_after has an entry per cached image: same capacity as rows_end */
    int *p = realloc(x->visible_after, sizeof(int) * (size_t)x->cap_images);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    x->visible_after = p;
    x->visible_after[x->n_visible++] = pos;
    return NVLM_OK;
}

int nvlm_xattn_add_span(nvlm_xattn *x, int pos0, int pos1, int row0, int row1, nvlm_err *err) {
    if (x->n_spans == x->cap_spans) {
        int cap = x->cap_spans ? 2 * x->cap_spans : 16;
        nvlm_xattn_span *s = realloc(x->spans, sizeof *s * (size_t)cap);
        if (!s) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        x->spans = s;
        x->cap_spans = cap;
    }
    if (row0 < 0 || row1 > x->rows || row0 > row1 || (x->n_spans && pos0 < x->spans[x->n_spans - 1].pos1))
        return nvlm_fail(err, NVLM_E_INTERNAL, "bad cross-attention span [%d,%d) -> rows [%d,%d)", pos0, pos1, row0, row1);
    x->spans[x->n_spans++] = (nvlm_xattn_span){pos0, pos1, row0, row1};
    return NVLM_OK;
}

void nvlm_xattn_rows_of(const nvlm_xattn *x, int pos, int *lo, int *hi) {
    int a = 0, b = x->n_spans; /* last span with pos0 <= pos */
    while (a < b) {
        int mid = (a + b) / 2;
        if (x->spans[mid].pos0 <= pos) a = mid + 1;
        else b = mid;
    }
    if (a > 0 && pos < x->spans[a - 1].pos1) {
        *lo = x->spans[a - 1].row0;
        *hi = x->spans[a - 1].row1;
        return;
    }
    int n = 0; /* images visible at pos: a prefix, since they are laid out in order */
    while (n < x->n_visible && x->visible_after[n] < pos) n++;
    *lo = 0;
    *hi = n ? x->rows_end[n - 1] : 0;
}

typedef struct xattn_job {
    const float *q;          /* [n, n_h d] (q_norm applied) */
    const float *k, *v;      /* the block's cache [rows, kv_dim] */
    const int *lo, *hi;      /* [n] memory rows of each token */
    float *out;              /* [n, n_h d] */
    float *scores;           /* [threads, max_rows] */
    int n_h, group, d, kv_dim, max_rows;
    float scale;
} xattn_job;

/* One unit = (token, head) over that token's run of memory rows. */
static void xattn_units(void *ctx, size_t begin, size_t end, int thread) {
    const xattn_job *j = ctx;
    float *scores = j->scores + (size_t)thread * j->max_rows;
    for (size_t u = begin; u < end; u++) {
        int t = (int)(u / (size_t)j->n_h), a = (int)(u % (size_t)j->n_h), g = a / j->group;
        size_t r0 = (size_t)j->lo[t];
        nvlm_attend(j->q + ((size_t)t * j->n_h + a) * j->d, j->k + r0 * j->kv_dim + (size_t)g * j->d, (size_t)j->kv_dim,
                    j->v + r0 * j->kv_dim + (size_t)g * j->d, (size_t)j->kv_dim, j->hi[t] - j->lo[t], j->d, j->scale,
                    scores, j->out + ((size_t)t * j->n_h + a) * j->d);
    }
}

typedef struct xattn_bufs {
    int *sel, *lo, *hi;
    float *x, *y, *q, *att, *gate, *up, *scores;
} xattn_bufs;

static void xattn_bufs_free(xattn_bufs *b) {
    free(b->sel), free(b->lo), free(b->hi);
    free(b->x), free(b->y), free(b->q), free(b->att), free(b->gate), free(b->up), free(b->scores);
}

static int xattn_bufs_alloc(xattn_bufs *b, const nvlm_xattn *x, int n) {
    const nvlm_config *cfg = &x->m->cfg;
    size_t N = (size_t)n, h = (size_t)cfg->llm.hidden_size, qd = (size_t)cfg->llm.num_heads * nvlm_cfg_head_dim(cfg);
    size_t I = (size_t)cfg->xattn_intermediate_size;
    b->sel = malloc(sizeof(int) * N), b->lo = malloc(sizeof(int) * N), b->hi = malloc(sizeof(int) * N);
    b->x = malloc(sizeof(float) * N * h), b->y = malloc(sizeof(float) * N * h);
    b->q = malloc(sizeof(float) * N * qd), b->att = malloc(sizeof(float) * N * qd);
    b->gate = malloc(sizeof(float) * N * I), b->up = malloc(sizeof(float) * N * I);
    b->scores = malloc(sizeof(float) * (size_t)nvlm_pool_threads(x->m->pool) * (size_t)(x->rows ? x->rows : 1));
    return b->sel && b->lo && b->hi && b->x && b->y && b->q && b->att && b->gate && b->up && b->scores ? 0 : -1;
}

/* y = in W^T over n rows: by count (gen < 0), else by role (nvlm_matmul_roles). */
static int mm(nvlm_xattn *x, int gen, float *y, const float *in, int n, const nvlm_wmat *w, nvlm_err *err) {
    if (gen < 0) return nvlm_matmul(x->m->pool, y, in, n, w, NULL, err);
    const float *nob = NULL;
    return nvlm_matmul_roles(x->m->pool, 1, &y, in, gen ? n : 0, n, &w, &nob, err);
}

/* The block on the n gathered rows of b->x (each sees memory rows [lo, hi), hi > lo). */
static int xattn_rows(nvlm_xattn *x, const xattn_block *B, int n, int gen, xattn_bufs *b, nvlm_err *err) {
    const nvlm_config *cfg = &x->m->cfg;
    const int h = cfg->llm.hidden_size, nh = cfg->llm.num_heads, d = nvlm_cfg_head_dim(cfg);
    const float eps = cfg->llm.rms_norm_eps;
    const size_t N = (size_t)n;
    for (size_t t = 0; t < N; t++) nvlm_rmsnorm(b->y + t * h, b->x + t * h, B->input_norm, h, h, eps);
    int rc = mm(x, gen, b->q, b->y, n, &B->wq, err);
    if (rc) return rc;
    for (size_t r = 0; r < N * nh; r++) nvlm_rmsnorm(b->q + r * d, b->q + r * d, B->q_norm, d, d, eps);
    const int k = (int)(B - x->m->xattn);
    xattn_job j = {.q = b->q, .k = x->k[k], .v = x->v[k], .lo = b->lo, .hi = b->hi, .out = b->att,
                   .scores = b->scores, .n_h = nh, .group = nh / cfg->llm.num_kv_heads, .d = d, .kv_dim = x->kv_dim,
                   .max_rows = x->rows, .scale = 1.0f / sqrtf((float)d)};
    nvlm_pool_run(x->m->pool, N * nh, 1, xattn_units, &j);
    if ((rc = mm(x, gen, b->y, b->att, n, &B->wo, err))) return rc;
    for (size_t i = 0; i < N * h; i++) b->x[i] += B->attn_gate * b->y[i];
    for (size_t t = 0; t < N; t++) nvlm_rmsnorm(b->y + t * h, b->x + t * h, B->post_norm, h, h, eps);
    if ((rc = mm(x, gen, b->gate, b->y, n, &B->gate, err))) return rc;
    if ((rc = mm(x, gen, b->up, b->y, n, &B->up, err))) return rc;
    nvlm_silu_mul(b->gate, b->up, N * cfg->xattn_intermediate_size);
    if ((rc = mm(x, gen, b->y, b->gate, n, &B->down, err))) return rc;
    for (size_t i = 0; i < N * h; i++) b->x[i] += B->mlp_gate * b->y[i];
    return NVLM_OK;
}

int nvlm_xattn_apply(nvlm_xattn *x, int k, float *xs, int n_tok, int pos0, nvlm_err *err) {
    return nvlm_xattn_apply_role(x, k, xs, n_tok, pos0, -1, err);
}

int nvlm_xattn_apply_role(nvlm_xattn *x, int k, float *xs, int n_tok, int pos0, int gen, nvlm_err *err) {
    if (k < 0 || k >= x->n_blocks) return nvlm_fail(err, NVLM_E_INTERNAL, "no cross-attention block %d", k);
    if (x->rows == 0 || n_tok <= 0) return NVLM_OK;
    const int h = x->m->cfg.llm.hidden_size;
    xattn_bufs b = {0};
    if (xattn_bufs_alloc(&b, x, n_tok)) {
        xattn_bufs_free(&b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory in cross-attention block %d (%d tokens)", k, n_tok);
    }
    int n = 0; /* rows with no visible memory are skipped: the block is exactly the identity there */
    for (int t = 0; t < n_tok; t++) {
        int lo, hi;
        nvlm_xattn_rows_of(x, pos0 + t, &lo, &hi);
        if (hi <= lo) continue;
        b.sel[n] = t, b.lo[n] = lo, b.hi[n] = hi;
        memcpy(b.x + (size_t)n * h, xs + (size_t)t * h, sizeof(float) * h);
        n++;
    }
    int rc = n ? xattn_rows(x, &x->m->xattn[k], n, gen, &b, err) : NVLM_OK;
    for (int i = 0; i < n && !rc; i++) memcpy(xs + (size_t)b.sel[i] * h, b.x + (size_t)i * h, sizeof(float) * h);
    xattn_bufs_free(&b);
    return rc;
}

int nvlm_xattn_before_layer(void *user, int layer, float *xs, int n_tok, int pos0, nvlm_err *err) {
    nvlm_xattn *x = user;
    for (int k = 0; k < x->n_blocks; k++)
        if (x->m->cfg.xattn_layers[k] == layer) return nvlm_xattn_apply(x, k, xs, n_tok, pos0, err);
    return NVLM_OK;
}

int nvlm_xattn_before_layer_role(void *user, int layer, float *xs, int n_tok, int pos0, int gen, nvlm_err *err) {
    nvlm_xattn *x = user;
    for (int k = 0; k < x->n_blocks; k++)
        if (x->m->cfg.xattn_layers[k] == layer) return nvlm_xattn_apply_role(x, k, xs, n_tok, pos0, gen, err);
    return NVLM_OK;
}
