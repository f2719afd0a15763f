/* The vision path of every NVLM variant: InternViT (with dummy heads and QK-norm),
 * pixel shuffle v2 and the mlp1 projector. Design note §4-§6. */
#include "core/err.h"
#include "kernels/attention.h"
#include "model/model.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Patch p x p of tile pixels [3, S, S] at (gy, gx) flattened as (c, ky, kx): the order of the
 * conv weight [C, 3, p, p], so the convolution is a matrix product. */
static void im2col(const float *px, int S, int p, int channels, float *out) {
    int G = S / p;
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++) {
            float *o = out + ((size_t)gy * G + gx) * (size_t)(channels * p * p);
            for (int c = 0; c < channels; c++)
                for (int ky = 0; ky < p; ky++) {
                    const float *row = px + ((size_t)c * S + (size_t)gy * p + ky) * S + (size_t)gx * p;
                    memcpy(o + ((size_t)c * p + ky) * p, row, sizeof(float) * (size_t)p);
                }
        }
}

typedef struct vit_attn_job {
    const float *qkv;   /* [n*T, 3E] */
    float *out;         /* [n*T, E] */
    int T, E, heads, hd;
    float scale;
    int level;          /* kernels/cpu.h */
} vit_attn_job;

/* One unit of work = (tile, head): all T queries of that head, in blocks (kernels/attention.h). */
static void vit_attn_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const vit_attn_job *j = ctx;
    float *scratch = malloc(sizeof(float) * nvlm_attention_scratch(j->level, j->T, j->hd));
    if (!scratch) return;
    size_t row = (size_t)3 * j->E;
    for (size_t u = begin; u < end; u++) {
        size_t tile = u / (size_t)j->heads, head = u % (size_t)j->heads;
        const float *base = j->qkv + tile * (size_t)j->T * row;
        const float *q = base + head * j->hd, *k = base + j->E + head * j->hd, *v = base + 2 * j->E + head * j->hd;
        nvlm_attention(j->level, q, row, j->T, k, row, v, row, j->T, -1, j->hd, j->scale,
                       j->out + tile * (size_t)j->T * j->E + head * j->hd, (size_t)j->E, scratch);
    }
    free(scratch);
}

typedef struct vit_buffers {
    float *x, *y, *qkv, *att, *mlp;
} vit_buffers;

static void vit_buffers_free(vit_buffers *b) {
    free(b->x);
    free(b->y);
    free(b->qkv);
    free(b->att);
    free(b->mlp);
}

/* x[n*T, C] through one pre-norm, layer-scaled InternViT layer. */
static void vit_layer_forward(nvlm_model *m, const vit_layer *L, int n, vit_buffers *b) {
    const nvlm_vision_config *vc = &m->cfg.vision;
    const int C = vc->hidden_size, E = m->vit_width, I = vc->intermediate_size;
    const int G = m->cfg.image_size / vc->patch_size, T = G * G + 1, hd = C / vc->num_heads;
    const size_t rows = (size_t)n * T;
    for (size_t t = 0; t < rows; t++) nvlm_rmsnorm(b->y + t * C, b->x + t * C, L->norm1, C, C, vc->layer_norm_eps);
    nvlm_matmul(m->pool, b->qkv, b->y, (int)rows, &L->qkv, NULL);
    for (size_t t = 0; t < rows; t++) { /* QK-norm: statistic over the C real channels only */
        float *q = b->qkv + t * 3 * E, *k = q + E;
        nvlm_rmsnorm(q, q, L->q_norm, E, C, vc->layer_norm_eps);
        nvlm_rmsnorm(k, k, L->k_norm, E, C, vc->layer_norm_eps);
    }
    vit_attn_job aj = {b->qkv, b->att, T, E, E / hd, hd, 1.0f / sqrtf((float)hd), nvlm_pool_level(m->pool)};
    nvlm_pool_run(m->pool, (size_t)n * aj.heads, 1, vit_attn_units, &aj);
    nvlm_matmul(m->pool, b->y, b->att, (int)rows, &L->proj, L->proj_bias);
    for (size_t t = 0; t < rows; t++)
        for (int c = 0; c < C; c++) b->x[t * C + c] += L->ls1[c] * b->y[t * C + c];
    for (size_t t = 0; t < rows; t++) nvlm_rmsnorm(b->y + t * C, b->x + t * C, L->norm2, C, C, vc->layer_norm_eps);
    nvlm_matmul(m->pool, b->mlp, b->y, (int)rows, &L->fc1, L->fc1_bias);
    nvlm_gelu_pool(m->pool, b->mlp, rows * I);
    nvlm_matmul(m->pool, b->y, b->mlp, (int)rows, &L->fc2, L->fc2_bias);
    for (size_t t = 0; t < rows; t++)
        for (int c = 0; c < C; c++) b->x[t * C + c] += L->ls2[c] * b->y[t * C + c];
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
    if (!b.x || !b.y || !b.qkv || !b.att || !b.mlp) {
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
        vit_buffers_free(&b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the patch embedding");
    }
    for (int i = 0; i < n; i++) im2col(pixels + (size_t)i * vc->num_channels * S * S, S, p, vc->num_channels, cols + (size_t)i * P * K);
    nvlm_matmul(m->pool, emb, cols, n * P, &m->patch, m->patch_bias);
    for (int i = 0; i < n; i++) {
        float *xt = b.x + (size_t)i * T * C;
        for (int c = 0; c < C; c++) xt[c] = m->cls[c] + m->pos[c];
        for (int q = 0; q < P; q++)
            for (int c = 0; c < C; c++)
                xt[(size_t)(q + 1) * C + c] = emb[((size_t)i * P + q) * C + c] + m->pos[(size_t)(q + 1) * C + c];
    }
    if (cols != b.qkv) {
        free(cols);
        free(emb);
    }
    int layers = m->cfg.select_layer < 0 ? vc->num_layers + 1 + m->cfg.select_layer : m->cfg.select_layer;
    for (int l = 0; l < layers; l++) vit_layer_forward(m, &m->vit[l], n, &b);
    for (int i = 0; i < n; i++) /* drop the class token */
        memcpy(out + (size_t)i * P * C, b.x + ((size_t)i * T + 1) * C, sizeof(float) * (size_t)P * C);
    vit_buffers_free(&b);
    return NVLM_OK;
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
    for (int k = 0; k < depth; k++) {
        float *dst = k == depth - 1 ? out : b;
        nvlm_matmul(m->pool, dst, a, n, &m->proj[k], NULL);
        if (k < depth - 1) {
            nvlm_gelu_pool(m->pool, dst, (size_t)n * m->proj[k].rows);
            float *tmp = a;
            a = b;
            b = tmp;
        }
    }
    free(a);
    free(b);
    return NVLM_OK;
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
