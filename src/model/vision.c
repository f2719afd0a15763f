/* The vision path of every NVLM variant: InternViT (with dummy heads and QK-norm),
 * pixel shuffle v2 and the mlp1 projector. Design note §4-§6. */
#include "core/err.h"
#include "kernels/attention.h"
#include "kernels/gemm_bf16.h"
#include "model/model.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Patches of row gy of a tile's pixels [3, S, S], each flattened as (c, ky, kx): the order of
 * the conv weight [C, 3, p, p], so the convolution is a matrix product. */
static void im2col_row(const float *px, int S, int p, int channels, int gy, float *out) {
    int G = S / p;
    for (int gx = 0; gx < G; gx++) {
        float *o = out + ((size_t)gy * G + gx) * (size_t)(channels * p * p);
        for (int c = 0; c < channels; c++)
            for (int ky = 0; ky < p; ky++) {
                const float *row = px + ((size_t)c * S + (size_t)gy * p + ky) * S + (size_t)gx * p;
                memcpy(o + ((size_t)c * p + ky) * p, row, sizeof(float) * (size_t)p);
            }
    }
}

/* The embedding's row-wise parts over the pool: im2col by (tile, patch row), then the class
 * token and position embeddings by (tile, token). */
typedef struct vit_embed_job {
    const nvlm_model *m;
    const float *pixels, *emb;  /* [n, 3, S, S], [n*P, C] */
    float *cols, *x;            /* [n*P, 3 p p], [n*T, C] */
} vit_embed_job;

static void vit_im2col_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vit_embed_job *j = ctx;
    const int S = j->m->cfg.image_size, p = j->m->cfg.vision.patch_size, ch = j->m->cfg.vision.num_channels, G = S / p;
    for (size_t u = begin; u < end; u++) {
        size_t tile = u / (size_t)G;
        im2col_row(j->pixels + tile * ch * S * S, S, p, ch, (int)(u % (size_t)G), j->cols + tile * G * G * (size_t)(ch * p * p));
    }
}

static void vit_pos_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vit_embed_job *j = ctx;
    const int C = j->m->cfg.vision.hidden_size, G = j->m->cfg.image_size / j->m->cfg.vision.patch_size, T = G * G + 1;
    for (size_t u = begin; u < end; u++) {
        size_t tile = u / (size_t)T, q = u % (size_t)T;
        const float *src = q ? j->emb + (tile * (T - 1) + q - 1) * C : j->m->cls, *pos = j->m->pos + q * C;
        float *xt = j->x + u * C;
        for (int c = 0; c < C; c++) xt[c] = src[c] + pos[c];
    }
}

typedef struct vit_attn_job {
    const float *qkv;   /* [n*T, 3E] */
    float *out;         /* [n*T, E] */
    int T, E, heads, hd;
    float scale;
    int level;          /* kernels/cpu.h */
    int bf16;           /* --compute bf16: kernels/gemm_bf16.h's attention */
    float *scratch;     /* [pool threads][per_thread]: made with the buffers, so no unit can fail */
    size_t per_thread;
} vit_attn_job;

/* One unit of work = (tile, head): all T queries of that head, in blocks (kernels/attention.h). */
static void vit_attn_units(void *ctx, size_t begin, size_t end, int thread) {
    const vit_attn_job *j = ctx;
    float *scratch = j->scratch + (size_t)thread * j->per_thread;
    size_t row = (size_t)3 * j->E;
    for (size_t u = begin; u < end; u++) {
        size_t tile = u / (size_t)j->heads, head = u % (size_t)j->heads;
        const float *base = j->qkv + tile * (size_t)j->T * row;
        const float *q = base + head * j->hd, *k = base + j->E + head * j->hd, *v = base + 2 * j->E + head * j->hd;
        float *out = j->out + tile * (size_t)j->T * j->E + head * j->hd;
        if (j->bf16) nvlm_attention_bf16(j->level, q, row, j->T, k, row, v, row, j->T, j->hd, j->scale, out, (size_t)j->E, scratch);
        else nvlm_attention(j->level, q, row, j->T, k, row, v, row, j->T, -1, j->hd, j->scale, out, (size_t)j->E, scratch);
    }
}

typedef struct vit_buffers {
    float *x, *y, *qkv, *att, *mlp;
    float *attn_scratch; /* per pool thread, attn_per_thread floats each */
    size_t attn_per_thread;
} vit_buffers;

static void vit_buffers_free(vit_buffers *b) {
    free(b->attn_scratch);
    free(b->x);
    free(b->y);
    free(b->qkv);
    free(b->att);
    free(b->mlp);
}

/* Row-wise work of a layer, split over the pool by rows (each row is computed the same way
 * whatever the split): optionally x += ls * y (residual with layer scale), then
 * out = rmsnorm(x) * norm, or the QK-norm of the q and k parts of qkv rows. */
typedef struct vit_rows_job {
    float *x;              /* [rows, C] */
    const float *y;        /* residual branch [rows, C], or NULL */
    const float *ls;       /* layer scale [C] */
    const float *norm;     /* RMSNorm weight [C], or NULL: no norm */
    float *out;            /* [rows, C] */
    float *qkv;            /* QK-norm rows [rows, 3E] instead (x, y, norm unused) */
    const float *q_norm, *k_norm;
    int C, E;
    float eps;
} vit_rows_job;

static void vit_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vit_rows_job *j = ctx;
    const size_t C = (size_t)j->C;
    for (size_t t = begin; t < end; t++) {
        if (j->qkv) { /* QK-norm: statistic over the C real channels only */
            float *q = j->qkv + t * 3 * (size_t)j->E, *k = q + j->E;
            nvlm_rmsnorm(q, q, j->q_norm, j->E, j->C, j->eps);
            nvlm_rmsnorm(k, k, j->k_norm, j->E, j->C, j->eps);
            continue;
        }
        float *x = j->x + t * C;
        if (j->y)
            for (size_t c = 0; c < C; c++) x[c] += j->ls[c] * j->y[t * C + c];
        if (j->norm) nvlm_rmsnorm(j->out + t * C, x, j->norm, j->C, j->C, j->eps);
    }
}

/* x += ls * y (when y), then out = rmsnorm(x) * norm (when norm), over all rows in parallel. */
static void vit_resid_norm(nvlm_model *m, size_t rows, float *x, const float *y, const float *ls, const float *norm,
                           float *out) {
    vit_rows_job j = {.x = x, .y = y, .ls = ls, .norm = norm, .out = out, .C = m->cfg.vision.hidden_size,
                      .E = m->vit_width, .eps = m->cfg.vision.layer_norm_eps};
    nvlm_pool_run(m->pool, rows, 16, vit_rows, &j);
}

/* x[n*T, C] through one pre-norm, layer-scaled InternViT layer. On entry y holds norm1(x) (the
 * previous layer fused it into its last residual); on exit x is the layer's output and, when
 * next_norm is not NULL, y holds next_norm(x). */
static int vit_layer_forward(nvlm_model *m, const vit_layer *L, int n, vit_buffers *b, const float *next_norm,
                             nvlm_err *err) {
    const nvlm_vision_config *vc = &m->cfg.vision;
    const int C = vc->hidden_size, E = m->vit_width, I = vc->intermediate_size;
    const int G = m->cfg.image_size / vc->patch_size, T = G * G + 1, hd = C / vc->num_heads;
    const size_t rows = (size_t)n * T;
    int rc = nvlm_matmul(m->pool, b->qkv, b->y, (int)rows, &L->qkv, NULL, err);
    if (rc) return rc;
    vit_rows_job qk = {.qkv = b->qkv, .q_norm = L->q_norm, .k_norm = L->k_norm, .C = C, .E = E, .eps = vc->layer_norm_eps};
    nvlm_pool_run(m->pool, rows, 16, vit_rows, &qk);
    vit_attn_job aj = {.qkv = b->qkv, .out = b->att, .T = T, .E = E, .heads = E / hd, .hd = hd,
                       .scale = 1.0f / sqrtf((float)hd), .level = nvlm_pool_level(m->pool),
                       .bf16 = nvlm_pool_compute(m->pool) == NVLM_COMPUTE_BF16,
                       .scratch = b->attn_scratch, .per_thread = b->attn_per_thread};
    nvlm_pool_run(m->pool, (size_t)n * aj.heads, 1, vit_attn_units, &aj);
    if ((rc = nvlm_matmul(m->pool, b->y, b->att, (int)rows, &L->proj, L->proj_bias, err))) return rc;
    vit_resid_norm(m, rows, b->x, b->y, L->ls1, L->norm2, b->y); /* in place: row t reads y[t] first */
    if ((rc = nvlm_matmul(m->pool, b->mlp, b->y, (int)rows, &L->fc1, L->fc1_bias, err))) return rc;
    nvlm_gelu_pool(m->pool, b->mlp, rows * I);
    if ((rc = nvlm_matmul(m->pool, b->y, b->mlp, (int)rows, &L->fc2, L->fc2_bias, err))) return rc;
    vit_resid_norm(m, rows, b->x, b->y, L->ls2, next_norm, b->y);
    return NVLM_OK;
}

int nvlm_vit_forward(nvlm_model *m, const float *pixels, int n, float *out, nvlm_err *err) {
    const nvlm_vision_config *vc = &m->cfg.vision;
    const int S = m->cfg.image_size, p = vc->patch_size, G = S / p, P = G * G, T = P + 1;
    const int C = vc->hidden_size, E = m->vit_width, K = vc->num_channels * p * p;
    const size_t rows = (size_t)n * T;
    vit_buffers b = {0};
    size_t ywidth = (size_t)(C > K ? C : K);
    b.x = malloc(sizeof(float) * rows * C);
    b.y = malloc(sizeof(float) * rows * ywidth);
    b.qkv = malloc(sizeof(float) * rows * 3 * E);
    b.att = malloc(sizeof(float) * rows * E);
    b.mlp = malloc(sizeof(float) * rows * vc->intermediate_size);
    b.attn_per_thread = nvlm_attention_scratch(nvlm_pool_level(m->pool), T, T, C / vc->num_heads);
    if (nvlm_pool_compute(m->pool) == NVLM_COMPUTE_BF16) {
        size_t s16 = nvlm_attention_bf16_scratch(T, T, C / vc->num_heads);
        b.attn_per_thread = s16 > b.attn_per_thread ? s16 : b.attn_per_thread;
    }
    b.attn_scratch = malloc(sizeof(float) * b.attn_per_thread * (size_t)nvlm_pool_threads(m->pool));
    if (!b.x || !b.y || !b.qkv || !b.att || !b.mlp || !b.attn_scratch) {
        vit_buffers_free(&b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the vision encoder (%d tiles)", n);
    }
    /* patch embedding as a matrix product over all patches of all tiles, into qkv as scratch */
    float *cols = b.qkv, *emb = b.att;
    if ((size_t)K > (size_t)3 * E || (size_t)C > (size_t)E) { /* scratch too small: unusual shapes */
        cols = malloc(sizeof(float) * (size_t)n * P * K);
        emb = malloc(sizeof(float) * (size_t)n * P * C);
    }
    if (!cols || !emb) {
        if (cols != b.qkv) free(cols), free(emb); /* whichever of the two was made */
        vit_buffers_free(&b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the patch embedding");
    }
    vit_embed_job ej = {.m = m, .pixels = pixels, .emb = emb, .cols = cols, .x = b.x};
    nvlm_pool_run(m->pool, (size_t)n * G, 1, vit_im2col_units, &ej);
    int rc = nvlm_matmul(m->pool, emb, cols, n * P, &m->patch, m->patch_bias, err);
    if (!rc) nvlm_pool_run(m->pool, rows, 64, vit_pos_units, &ej);
    if (cols != b.qkv) {
        free(cols);
        free(emb);
    }
    int layers = m->cfg.select_layer < 0 ? vc->num_layers + 1 + m->cfg.select_layer : m->cfg.select_layer;
    if (layers > 0 && !rc) vit_resid_norm(m, rows, b.x, NULL, NULL, m->vit[0].norm1, b.y);
    for (int l = 0; l < layers && !rc; l++)
        rc = vit_layer_forward(m, &m->vit[l], n, &b, l + 1 < layers ? m->vit[l + 1].norm1 : NULL, err);
    for (int i = 0; i < n && !rc; i++) /* drop the class token */
        memcpy(out + (size_t)i * P * C, b.x + ((size_t)i * T + 1) * C, sizeof(float) * (size_t)P * C);
    vit_buffers_free(&b);
    return rc;
}

void nvlm_pixel_shuffle(const float *in, int G, int C, float *out) {
    int g = G / 2;
    for (int a = 0; a < g; a++)
        for (int bb = 0; bb < g; bb++) {
            float *o = out + ((size_t)a * g + bb) * 4 * C;
            for (int dr = 0; dr < 2; dr++)
                for (int dc = 0; dc < 2; dc++)
                    memcpy(o + (size_t)(2 * dr + dc) * C, in + ((size_t)(2 * a + dr) * G + 2 * bb + dc) * C,
                           sizeof(float) * (size_t)C);
        }
}

int nvlm_projector(nvlm_model *m, const float *in, int n, float *out, nvlm_err *err) {
    int width = 4 * m->cfg.vision.hidden_size, depth = m->cfg.projector_depth;
    int widest = width;
    for (int k = 0; k < depth; k++)
        if (m->proj[k].rows > widest) widest = m->proj[k].rows;
    float *a = malloc(sizeof(float) * (size_t)n * widest), *b = malloc(sizeof(float) * (size_t)n * widest);
    if (!a || !b) {
        free(a);
        free(b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory in the projector");
    }
    for (int t = 0; t < n; t++)
        nvlm_layernorm(a + (size_t)t * width, in + (size_t)t * width, m->proj_ln_w, m->proj_ln_b, width, 1e-5f);
    int rc = NVLM_OK;
    for (int k = 0; k < depth && !rc; k++) {
        float *dst = k == depth - 1 ? out : b;
        rc = nvlm_matmul(m->pool, dst, a, n, &m->proj[k], NULL, err);
        if (!rc && k < depth - 1) {
            nvlm_gelu_pool(m->pool, dst, (size_t)n * m->proj[k].rows);
            float *tmp = a;
            a = b;
            b = tmp;
        }
    }
    free(a);
    free(b);
    return rc;
}

int nvlm_encode_tiles(nvlm_model *m, const float *pixels, int n, float *out, nvlm_err *err) {
    const int C = m->cfg.vision.hidden_size, G = m->cfg.image_size / m->cfg.vision.patch_size;
    const int P = G * G, per_tile = P / 4;
    float *feat = malloc(sizeof(float) * (size_t)n * P * C);
    float *shuf = malloc(sizeof(float) * (size_t)n * P * C);
    int rc = feat && shuf ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory encoding %d tiles", n);
    if (!rc) rc = nvlm_vit_forward(m, pixels, n, feat, err);
    if (!rc) {
        for (int i = 0; i < n; i++) nvlm_pixel_shuffle(feat + (size_t)i * P * C, G, C, shuf + (size_t)i * P * C);
        rc = nvlm_projector(m, shuf, n * per_tile, out, err);
    }
    free(feat);
    free(shuf);
    return rc;
}
