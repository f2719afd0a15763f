/* Training forward and backward of InternViT (docs/spec.md §4-§5, docs/training.md "Training
 * the vision encoder"): the patch embedding (a convolution with stride = kernel, so a matrix
 * product over im2col rows), the class token and position embeddings, pre-norm layers with
 * RMSNorm, QK-norm, layer scales and a GELU MLP, and pixel shuffle. It runs on the trainer's
 * float32 master weights (the engine's forward in src/model/vision.c is the reference it is
 * tested against) and keeps every activation the backward pass needs: a demo-sized ViT is
 * small, the 6B one is not trained here. */
#include "core/err.h"
#include "model/model.h"
#include "train/train.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct vlacts {
    float *y1, *qr, *kr, *qn, *kn, *v, *att, *a, *xm, *y2, *h1, *mo;
} vlacts;

struct nvlm_tvit_acts {
    int n, T, P, C, I, K, L;
    float *cols;   /* [n P, K] im2col rows */
    float *xs;     /* [L + 1][n T, C]: each layer's input, then the output */
    vlacts *la;    /* [L] */
    int *lo, *hi;  /* [n T]: the rows of each row's tile (attention within a tile) */
};

#define ALLOC(p, count) (((p) = malloc(sizeof(float) * (size_t)(count))) != NULL)

static void la_free(vlacts *a) {
    free(a->y1), free(a->qr), free(a->kr), free(a->qn), free(a->kn), free(a->v), free(a->att), free(a->a);
    free(a->xm), free(a->y2), free(a->h1), free(a->mo);
}

void nvlm_tvit_acts_free(nvlm_tvit_acts *s) {
    if (!s) return;
    for (int l = 0; s->la && l < s->L; l++) la_free(&s->la[l]);
    free(s->la), free(s->cols), free(s->xs), free(s->lo), free(s->hi);
    free(s);
}

static nvlm_tvit_acts *acts_new(const nvlm_tmodel *tm, int n) {
    const nvlm_config *cfg = &tm->m->cfg;
    const int G = cfg->image_size / cfg->vision.patch_size;
    nvlm_tvit_acts *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->n = n, s->P = G * G, s->T = s->P + 1, s->C = cfg->vision.hidden_size, s->I = cfg->vision.intermediate_size;
    s->K = cfg->vision.num_channels * cfg->vision.patch_size * cfg->vision.patch_size, s->L = tm->n_v;
    const size_t R = (size_t)n * s->T, C = (size_t)s->C;
    s->la = calloc((size_t)s->L, sizeof *s->la);
    s->lo = malloc(sizeof(int) * R), s->hi = malloc(sizeof(int) * R);
    s->cols = calloc((size_t)n * s->P * s->K, sizeof(float)); /* zeroed: gcc cannot see im2col fill it */
    int ok = s->la && s->lo && s->hi && s->cols && ALLOC(s->xs, (size_t)(s->L + 1) * R * C);
    for (int l = 0; ok && l < s->L; l++) {
        vlacts *a = &s->la[l];
        ok = ALLOC(a->y1, R * C) && ALLOC(a->qr, R * C) && ALLOC(a->kr, R * C) && ALLOC(a->qn, R * C) &&
             ALLOC(a->kn, R * C) && ALLOC(a->v, R * C) && ALLOC(a->att, R * C) && ALLOC(a->a, R * C) &&
             ALLOC(a->xm, R * C) && ALLOC(a->y2, R * C) && ALLOC(a->h1, R * (size_t)s->I) && ALLOC(a->mo, R * C);
    }
    if (!ok) {
        nvlm_tvit_acts_free(s);
        return NULL;
    }
    for (size_t r = 0; r < R; r++) s->lo[r] = (int)(r / s->T) * s->T, s->hi[r] = s->lo[r] + s->T;
    return s;
}

/* Patches of a tile [ch, S, S], each flattened as (c, ky, kx): the conv weight's order. */
static void im2col(const float *px, int S, int p, int ch, float *out) {
    const int G = S / p, K = ch * p * p;
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++) {
            float *o = out + ((size_t)gy * G + gx) * K;
            for (int c = 0; c < ch; c++)
                for (int ky = 0; ky < p; ky++)
                    memcpy(o + ((size_t)c * p + ky) * p, px + ((size_t)c * S + (size_t)gy * p + ky) * S + (size_t)gx * p,
                           sizeof(float) * (size_t)p);
        }
}

/* out[r] = rmsnorm(x[r]) * w over rows. */
static void rms_rows(float *out, const float *x, const float *w, size_t rows, int C, float eps) {
    for (size_t r = 0; r < rows; r++) nvlm_rmsnorm(out + r * C, x + r * C, w, C, C, eps);
}

/* dx[r] (+)= RMSNorm backward of dy[r] at x[r]; dw += when not NULL. */
static void rms_bwd_rows(float *dx, const float *dy, const float *x, const nvlm_tparam *w, size_t rows, int C,
                         float eps, int add, float *tmp) {
    for (size_t r = 0; r < rows; r++) {
        nvlm_t_rmsnorm_bwd(add ? tmp : dx + r * C, dy + r * C, x + r * C, w->w, w->g, C, eps);
        if (add) nvlm_axpy(dx + r * C, 1.0f, tmp, C);
    }
}

/* One layer: xs[l] -> xs[l + 1], keeping its activations. */
static int layer_fwd(nvlm_tmodel *tm, nvlm_tvit_acts *s, int l, float *tmp) {
    const nvlm_tvlayer *V = &tm->V[l];
    nvlm_pool *pool = tm->m->pool;
    const float eps = tm->m->cfg.vision.layer_norm_eps;
    const int C = s->C, I = s->I, R = s->n * s->T, heads = tm->m->cfg.vision.num_heads;
    const float *x = s->xs + (size_t)l * R * C;
    float *xo = s->xs + (size_t)(l + 1) * R * C;
    vlacts *a = &s->la[l];
    rms_rows(a->y1, x, V->norm1->w, (size_t)R, C, eps);
    int rc = nvlm_t_linear(pool, tmp, a->y1, R, V->qkv->w, 3 * C, C, NULL);
    if (rc) return rc;
    for (size_t r = 0; r < (size_t)R; r++) {
        memcpy(a->qr + r * C, tmp + r * 3 * C, sizeof(float) * C);
        memcpy(a->kr + r * C, tmp + r * 3 * C + C, sizeof(float) * C);
        memcpy(a->v + r * C, tmp + r * 3 * C + 2 * C, sizeof(float) * C);
    }
    rms_rows(a->qn, a->qr, V->q_norm->w, (size_t)R, C, eps);
    rms_rows(a->kn, a->kr, V->k_norm->w, (size_t)R, C, eps);
    if ((rc = nvlm_t_xattention(pool, a->att, a->qn, a->kn, a->v, s->lo, s->hi, R, heads, heads, C / heads))) return rc;
    if ((rc = nvlm_t_linear(pool, a->a, a->att, R, V->proj->w, C, C, V->proj_b->w))) return rc;
    for (size_t i = 0; i < (size_t)R * C; i++) a->xm[i] = x[i] + V->ls1->w[i % C] * a->a[i];
    rms_rows(a->y2, a->xm, V->norm2->w, (size_t)R, C, eps);
    if ((rc = nvlm_t_linear(pool, a->h1, a->y2, R, V->fc1->w, I, C, V->fc1_b->w))) return rc;
    memcpy(tmp, a->h1, sizeof(float) * (size_t)R * I);
    nvlm_gelu(tmp, (size_t)R * I);
    if ((rc = nvlm_t_linear(pool, a->mo, tmp, R, V->fc2->w, C, I, V->fc2_b->w))) return rc;
    for (size_t i = 0; i < (size_t)R * C; i++) xo[i] = a->xm[i] + V->ls2->w[i % C] * a->mo[i];
    return NVLM_OK;
}

int nvlm_tvit_forward(nvlm_tmodel *tm, const float *px, int n, float *z, nvlm_tvit_acts **out, nvlm_err *err) {
    *out = NULL;
    if (!tm->n_v) return nvlm_fail(err, NVLM_E_INVALID_ARG, "the vision encoder is not in the trainer's store");
    const nvlm_config *cfg = &tm->m->cfg;
    const int S = cfg->image_size, p = cfg->vision.patch_size, ch = cfg->vision.num_channels;
    nvlm_tvit_acts *s = acts_new(tm, n);
    size_t R = (size_t)n * (s ? s->T : 0), widest = s ? (size_t)(3 * s->C > s->I ? 3 * s->C : s->I) : 0;
    float *tmp = s ? malloc(sizeof(float) * R * widest) : NULL;
    if (!s || !tmp) {
        nvlm_tvit_acts_free(s);
        free(tmp);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the vision encoder's training pass (%d tiles)", n);
    }
    const int C = s->C, P = s->P, T = s->T;
    for (int i = 0; i < n; i++) im2col(px + (size_t)i * ch * S * S, S, p, ch, s->cols + (size_t)i * P * s->K);
    int rc = nvlm_t_linear(tm->m->pool, tmp, s->cols, n * P, tm->patch_w->w, C, s->K, tm->patch_b->w);
    for (int i = 0; i < n && !rc; i++)
        for (int q = 0; q < T; q++) {
            const float *src = q ? tmp + ((size_t)i * P + q - 1) * C : tm->cls->w, *pos = tm->pos->w + (size_t)q * C;
            float *x = s->xs + ((size_t)i * T + q) * C;
            for (int c = 0; c < C; c++) x[c] = src[c] + pos[c];
        }
    for (int l = 0; l < s->L && !rc; l++) rc = layer_fwd(tm, s, l, tmp);
    const float *xo = s->xs + (size_t)s->L * R * C;
    for (int i = 0; i < n && !rc; i++) /* drop the class token, then pixel shuffle */
        nvlm_pixel_shuffle(xo + ((size_t)i * T + 1) * C, S / p, C, z + (size_t)i * P * C);
    free(tmp);
    if (rc) {
        nvlm_tvit_acts_free(s);
        return nvlm_fail(err, rc, "out of memory in the vision encoder's training pass");
    }
    *out = s;
    return NVLM_OK;
}

/* The transpose of nvlm_pixel_shuffle for one tile: out [G G, C] from in [G G / 4, 4 C]. */
static void pixel_unshuffle(const float *in, int G, int C, float *out) {
    int g = G / 2;
    for (int a = 0; a < g; a++)
        for (int b = 0; b < g; b++)
            for (int dr = 0; dr < 2; dr++)
                for (int dc = 0; dc < 2; dc++)
                    memcpy(out + ((size_t)(2 * a + dr) * G + 2 * b + dc) * C,
                           in + ((size_t)a * g + b) * 4 * C + (size_t)(2 * dr + dc) * C, sizeof(float) * (size_t)C);
}

/* Scratch of one layer's backward pass. */
typedef struct vwork {
    float *dm, *dg, *dh, *dy, *dxm, *da, *datt, *dqn, *dkn, *dv, *dqkv, *g, *tmp;
} vwork;

static void layer_bwd_scale(float *d, float *gls, const float *dx, const float *ls, const float *branch, size_t R,
                            int C) {
    for (size_t r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            size_t i = r * C + c;
            d[i] = dx[i] * ls[c];
            if (gls) gls[c] += dx[i] * branch[i];
        }
}

/* dx: the gradient of the layer's output in, of its input out. */
static int layer_bwd(nvlm_tmodel *tm, nvlm_tvit_acts *s, int l, float *dx, vwork *w) {
    const nvlm_tvlayer *V = &tm->V[l];
    nvlm_pool *pool = tm->m->pool;
    const float eps = tm->m->cfg.vision.layer_norm_eps;
    const int C = s->C, I = s->I, R = s->n * s->T, heads = tm->m->cfg.vision.num_heads;
    const float *x = s->xs + (size_t)l * R * C;
    vlacts *a = &s->la[l];
    /* MLP branch: x_out = xm + ls2 * fc2(gelu(fc1(norm2(xm)))) */
    layer_bwd_scale(w->dm, V->ls2->g, dx, V->ls2->w, a->mo, (size_t)R, C);
    memcpy(w->g, a->h1, sizeof(float) * (size_t)R * I);
    nvlm_gelu(w->g, (size_t)R * I);
    nvlm_t_linear_bwd(pool, w->dg, w->dm, w->g, R, V->fc2->w, C, I, V->fc2->g, V->fc2_b->g);
    nvlm_t_gelu_bwd(w->dh, w->dg, a->h1, (size_t)R * I);
    nvlm_t_linear_bwd(pool, w->dy, w->dh, a->y2, R, V->fc1->w, I, C, V->fc1->g, V->fc1_b->g);
    memcpy(w->dxm, dx, sizeof(float) * (size_t)R * C);
    rms_bwd_rows(w->dxm, w->dy, a->xm, V->norm2, (size_t)R, C, eps, 1, w->tmp);
    /* attention branch: xm = x + ls1 * proj(attn(qknorm(qkv(norm1(x))))) */
    layer_bwd_scale(w->da, V->ls1->g, w->dxm, V->ls1->w, a->a, (size_t)R, C);
    nvlm_t_linear_bwd(pool, w->datt, w->da, a->att, R, V->proj->w, C, C, V->proj->g, V->proj_b->g);
    int rc = nvlm_t_xattention_bwd(pool, w->dqn, w->dkn, w->dv, w->datt, a->qn, a->kn, a->v, s->lo, s->hi, R, heads,
                                   heads, C / heads, R);
    if (rc) return rc;
    for (size_t r = 0; r < (size_t)R; r++) {
        float *d = w->dqkv + r * 3 * C;
        nvlm_t_rmsnorm_bwd(d, w->dqn + r * C, a->qr + r * C, V->q_norm->w, V->q_norm->g, C, eps);
        nvlm_t_rmsnorm_bwd(d + C, w->dkn + r * C, a->kr + r * C, V->k_norm->w, V->k_norm->g, C, eps);
        memcpy(d + 2 * C, w->dv + r * C, sizeof(float) * C);
    }
    nvlm_t_linear_bwd(pool, w->dy, w->dqkv, a->y1, R, V->qkv->w, 3 * C, C, V->qkv->g, NULL);
    memcpy(dx, w->dxm, sizeof(float) * (size_t)R * C);
    rms_bwd_rows(dx, w->dy, x, V->norm1, (size_t)R, C, eps, 1, w->tmp);
    return NVLM_OK;
}

static void vwork_free(vwork *w) {
    free(w->dm), free(w->dg), free(w->dh), free(w->dy), free(w->dxm), free(w->da), free(w->datt);
    free(w->dqn), free(w->dkn), free(w->dv), free(w->dqkv), free(w->g), free(w->tmp);
}

int nvlm_tvit_backward(nvlm_tmodel *tm, nvlm_tvit_acts *s, const float *dz, nvlm_err *err) {
    const int n = s->n, T = s->T, P = s->P, C = s->C, I = s->I;
    const int G = tm->m->cfg.image_size / tm->m->cfg.vision.patch_size;
    const size_t R = (size_t)n * T;
    vwork w = {0};
    float *dx = calloc(R * C, sizeof(float)), *demb = malloc(sizeof(float) * (size_t)n * P * C);
    int ok = dx && demb && ALLOC(w.dm, R * C) && ALLOC(w.dg, R * I) && ALLOC(w.dh, R * I) && ALLOC(w.dy, R * C) &&
             ALLOC(w.dxm, R * C) && ALLOC(w.da, R * C) && ALLOC(w.datt, R * C) && ALLOC(w.dqn, R * C) &&
             ALLOC(w.dkn, R * C) && ALLOC(w.dv, R * C) && ALLOC(w.dqkv, R * 3 * C) && ALLOC(w.g, R * I) &&
             ALLOC(w.tmp, C);
    int rc = ok ? NVLM_OK : NVLM_E_NOMEM;
    for (int i = 0; i < n && !rc; i++) /* the class token's row gets no gradient from the output */
        pixel_unshuffle(dz + (size_t)i * P * C, G, C, dx + ((size_t)i * T + 1) * C);
    for (int l = s->L - 1; l >= 0 && !rc; l--) rc = layer_bwd(tm, s, l, dx, &w);
    for (int i = 0; i < n && !rc; i++)
        for (int q = 0; q < T; q++) {
            const float *d = dx + ((size_t)i * T + q) * C;
            if (tm->pos->g) nvlm_axpy(tm->pos->g + (size_t)q * C, 1.0f, d, C);
            if (!q && tm->cls->g) nvlm_axpy(tm->cls->g, 1.0f, d, C);
            if (q) memcpy(demb + ((size_t)i * P + q - 1) * C, d, sizeof(float) * C);
        }
    if (!rc && (tm->patch_w->g || tm->patch_b->g))
        nvlm_t_linear_bwd(tm->m->pool, NULL, demb, s->cols, n * P, tm->patch_w->w, C, s->K, tm->patch_w->g,
                          tm->patch_b->g);
    vwork_free(&w);
    free(dx), free(demb);
    return rc ? nvlm_fail(err, rc, "out of memory in the vision encoder's backward pass (%d tiles)", n) : NVLM_OK;
}
