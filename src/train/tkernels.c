/* Backward kernels of the trainer. Every parallel loop gives each output element to one
 * thread with a fixed summation order, so gradients do not depend on the thread count. */
#include "kernels/attention.h"
#include "train/train.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int nvlm_t_linear(nvlm_pool *pool, float *y, const float *x, int n, const float *W, int rows, int cols,
                  const float *b) {
    nvlm_wmat w = {.dtype = NVLM_DT_F32, .rows = rows, .cols = cols, .data = W};
    return nvlm_matmul(pool, y, x, n, &w, b, NULL);
}

enum { TBLOCK = 8 };

typedef struct lin_bwd_job {
    float *dx, *dW;
    const float *dy, *x, *W, *dyT, *xT;
    int n, rows, cols;
} lin_bwd_job;

/* dx rows [begin, end) (in blocks of TBLOCK tokens): dx[t] = sum_o dy[t,o] W[o]. */
static void dx_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const lin_bwd_job *j = ctx;
    for (size_t b = begin; b < end; b++) {
        int t0 = (int)b * TBLOCK, t1 = t0 + TBLOCK < j->n ? t0 + TBLOCK : j->n;
        for (int t = t0; t < t1; t++) memset(j->dx + (size_t)t * j->cols, 0, sizeof(float) * (size_t)j->cols);
        for (int o = 0; o < j->rows; o++) {
            const float *w = j->W + (size_t)o * j->cols;
            for (int t = t0; t < t1; t++) {
                float g = j->dy[(size_t)t * j->rows + o];
                if (g != 0.0f) nvlm_axpy(j->dx + (size_t)t * j->cols, g, w, j->cols);
            }
        }
    }
}

/* dW rows [begin, end): dW[o, i] += dot(dyT[o], xT[i]) over the n tokens. */
static void dw_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const lin_bwd_job *j = ctx;
    for (size_t o = begin; o < end; o++) {
        const float *a = j->dyT + o * (size_t)j->n;
        float *dw = j->dW + o * (size_t)j->cols;
        int any = 0;
        for (int t = 0; t < j->n && !any; t++) any = a[t] != 0.0f;
        if (!any) continue;
        for (int i = 0; i < j->cols; i++) dw[i] += nvlm_dot(a, j->xT + (size_t)i * j->n, j->n);
    }
}

static void transpose(float *dst, const float *src, int r, int c) {
    for (int i = 0; i < r; i++)
        for (int k = 0; k < c; k++) dst[(size_t)k * r + i] = src[(size_t)i * c + k];
}

void nvlm_t_linear_bwd(nvlm_pool *pool, float *dx, const float *dy, const float *x, int n, const float *W,
                       int rows, int cols, float *dW, float *db) {
    lin_bwd_job j = {.dx = dx, .dW = dW, .dy = dy, .x = x, .W = W, .n = n, .rows = rows, .cols = cols};
    if (dx) nvlm_pool_run(pool, (size_t)(n + TBLOCK - 1) / TBLOCK, 1, dx_units, &j);
    if (db)
        for (int t = 0; t < n; t++) nvlm_axpy(db, 1.0f, dy + (size_t)t * rows, rows);
    if (!dW) return;
    /* token-major transposes so each dW element is one contiguous dot product */
    float *dyT = malloc(sizeof(float) * (size_t)n * rows), *xT = malloc(sizeof(float) * (size_t)n * cols);
    if (dyT && xT) {
        transpose(dyT, dy, n, rows);
        transpose(xT, x, n, cols);
        j.dyT = dyT;
        j.xT = xT;
        nvlm_pool_run(pool, (size_t)rows, 4, dw_units, &j);
    } else { /* low memory: the slow direct form */
        for (int o = 0; o < rows; o++)
            for (int t = 0; t < n; t++) nvlm_axpy(dW + (size_t)o * cols, dy[(size_t)t * rows + o], x + (size_t)t * cols, cols);
    }
    free(dyT);
    free(xT);
}

void nvlm_t_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w, float *dw, int n, float eps) {
    float r = nvlm_rms_scale(x, n, eps); /* the forward's statistic, the same bits */
    double dot = 0; /* sum dy w x */
    for (int i = 0; i < n; i++) dot += (double)dy[i] * w[i] * x[i];
    if (dw)
        for (int i = 0; i < n; i++) dw[i] += dy[i] * x[i] * r;
    if (!dx) return;
    float c = (float)(dot * r * r * r / n);
    for (int i = 0; i < n; i++) dx[i] = dy[i] * w[i] * r - x[i] * c;
}

static void ln_stats(const float *x, int n, float eps, float *mean, float *rstd) {
    double mu = 0, var = 0;
    for (int i = 0; i < n; i++) mu += x[i];
    mu /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mu) * (x[i] - mu);
    var /= n;
    *mean = (float)mu;
    *rstd = 1.0f / sqrtf((float)var + eps);
}

void nvlm_t_layernorm_bwd_params(const float *dy, const float *x, float *dw, float *db, int n, float eps) {
    float mu, r;
    ln_stats(x, n, eps, &mu, &r);
    for (int i = 0; i < n; i++) {
        if (dw) dw[i] += dy[i] * (x[i] - mu) * r;
        if (db) db[i] += dy[i];
    }
}

void nvlm_t_layernorm_bwd_x(float *dx, const float *dy, const float *x, const float *w, int n, float eps) {
    float mu, r;
    ln_stats(x, n, eps, &mu, &r);
    double s1 = 0, s2 = 0;
    for (int i = 0; i < n; i++) {
        double g = (double)dy[i] * w[i], xh = (x[i] - mu) * r;
        s1 += g;
        s2 += g * xh;
    }
    float m1 = (float)(s1 / n), m2 = (float)(s2 / n);
    for (int i = 0; i < n; i++) dx[i] = r * (dy[i] * w[i] - m1 - (x[i] - mu) * r * m2);
}

void nvlm_t_gelu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        double cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752));
        double pdf = 0.39894228040143268 * exp(-0.5 * v * v);
        dx[i] = (float)(dy[i] * (cdf + v * pdf));
    }
}

void nvlm_t_swiglu_bwd(float *dg, float *du, const float *da, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        float silu = g[i] * s;
        du[i] = da[i] * silu;
        dg[i] = da[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
}

void nvlm_t_rope_table(const nvlm_llm_config *c, int d, int n, float *cs, float *sn) {
    double base = c->rope_theta;
    if (!strcmp(c->rope_scaling_type, "dynamic") && n > c->max_position_embeddings) {
        double f = c->rope_scaling_factor;
        base *= pow(f * n / c->max_position_embeddings - (f - 1), (double)d / (d - 2));
    }
    for (int i = 0; i < d / 2; i++) {
        double inv = 1.0 / pow(base, (double)(2 * i) / d);
        for (int t = 0; t < n; t++) {
            double a = (double)t * inv;
            cs[(size_t)t * (d / 2) + i] = (float)cos(a);
            sn[(size_t)t * (d / 2) + i] = (float)sin(a);
        }
    }
}

void nvlm_t_rope(float *x, int n, int heads, int d, const float *cs, const float *sn, int inverse) {
    int h2 = d / 2;
    float sign = inverse ? -1.0f : 1.0f;
    for (int t = 0; t < n; t++)
        for (int hh = 0; hh < heads; hh++) {
            float *v = x + ((size_t)t * heads + hh) * d;
            const float *c = cs + (size_t)t * h2, *s = sn + (size_t)t * h2;
            for (int i = 0; i < h2; i++) {
                float x1 = v[i], x2 = v[i + h2], si = sign * s[i];
                v[i] = x1 * c[i] - x2 * si;
                v[i + h2] = x2 * c[i] + x1 * si;
            }
        }
}

typedef struct attn_job {
    float *o, *dq, *dk, *dv; /* dk, dv: per query head [nh][n, d] in backward */
    const float *q, *k, *v, *dout;
    int n, nh, nkv, d;
    float scale;
    int failed;
} attn_job;

static void attn_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    attn_job *j = ctx;
    float *scores = malloc(sizeof(float) * (size_t)j->n);
    if (!scores) {
        j->failed = 1;
        return;
    }
    const int kvd = j->nkv * j->d, group = j->nh / j->nkv;
    for (size_t u = begin; u < end; u++) {
        int t = (int)(u / (size_t)j->nh), a = (int)(u % (size_t)j->nh), g = a / group;
        nvlm_attend(j->q + ((size_t)t * j->nh + a) * j->d, j->k + (size_t)g * j->d, (size_t)kvd,
                    j->v + (size_t)g * j->d, (size_t)kvd, t + 1, j->d, j->scale, scores,
                    j->o + ((size_t)t * j->nh + a) * j->d);
    }
    free(scores);
}

int nvlm_t_attention(nvlm_pool *pool, float *o, const float *q, const float *k, const float *v, int n, int nh,
                     int nkv, int d) {
    attn_job j = {.o = o, .q = q, .k = k, .v = v, .n = n, .nh = nh, .nkv = nkv, .d = d, .scale = 1.0f / sqrtf((float)d)};
    nvlm_pool_run(pool, (size_t)n * nh, 1, attn_units, &j);
    return j.failed ? NVLM_E_NOMEM : NVLM_OK;
}

/* One unit = one query head: all its query positions; dk/dv go to that head's own slice. */
static void attn_bwd_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    attn_job *j = ctx;
    const int n = j->n, d = j->d, qd = j->nh * d, kvd = j->nkv * d, group = j->nh / j->nkv;
    float *p = malloc(sizeof(float) * (size_t)n), *dp = malloc(sizeof(float) * (size_t)n);
    if (!p || !dp) {
        j->failed = 1;
        free(p);
        free(dp);
        return;
    }
    for (size_t a = begin; a < end; a++) {
        int g = (int)a / group;
        float *dk = j->dk + a * (size_t)n * d, *dv = j->dv + a * (size_t)n * d;
        memset(dk, 0, sizeof(float) * (size_t)n * d);
        memset(dv, 0, sizeof(float) * (size_t)n * d);
        for (int t = 0; t < n; t++) {
            const float *q = j->q + (size_t)t * qd + a * d, *go = j->dout + (size_t)t * qd + a * d;
            float *dq = j->dq + (size_t)t * qd + a * d;
            for (int s = 0; s <= t; s++) p[s] = j->scale * nvlm_dot(q, j->k + (size_t)s * kvd + g * d, d);
            nvlm_softmax(p, t + 1);
            double D = 0;
            for (int s = 0; s <= t; s++) {
                dp[s] = nvlm_dot(go, j->v + (size_t)s * kvd + g * d, d);
                D += (double)p[s] * dp[s];
            }
            memset(dq, 0, sizeof(float) * (size_t)d);
            for (int s = 0; s <= t; s++) {
                float ds = p[s] * (dp[s] - (float)D) * j->scale;
                nvlm_axpy(dq, ds, j->k + (size_t)s * kvd + g * d, d);
                nvlm_axpy(dk + (size_t)s * d, ds, q, d);
                nvlm_axpy(dv + (size_t)s * d, p[s], go, d);
            }
        }
    }
    free(p);
    free(dp);
}


/* dk/dv [rows, nkv*d] = for each kv head g, the sum over its query heads a (in order) of the
 * per-head gradients hk/hv [nh, rows, d]: a fixed order, so results do not depend on threads. */
static void sum_head_groups(float *dk, float *dv, const float *hk, const float *hv, int rows, int nh, int nkv,
                            int d) {
    const int group = nh / nkv, kvd = nkv * d;
    memset(dk, 0, sizeof(float) * (size_t)rows * kvd);
    memset(dv, 0, sizeof(float) * (size_t)rows * kvd);
    for (int a = 0; a < nh; a++) {
        int g = a / group;
        for (int t = 0; t < rows; t++) {
            nvlm_axpy(dk + (size_t)t * kvd + g * d, 1.0f, hk + ((size_t)a * rows + t) * d, d);
            nvlm_axpy(dv + (size_t)t * kvd + g * d, 1.0f, hv + ((size_t)a * rows + t) * d, d);
        }
    }
}

int nvlm_t_attention_bwd(nvlm_pool *pool, float *dq, float *dk, float *dv, const float *dout, const float *q,
                         const float *k, const float *v, int n, int nh, int nkv, int d) {
    float *hk = malloc(sizeof(float) * (size_t)nh * n * d), *hv = malloc(sizeof(float) * (size_t)nh * n * d);
    if (!hk || !hv) {
        free(hk);
        free(hv);
        return NVLM_E_NOMEM;
    }
    attn_job j = {.dq = dq, .dk = hk, .dv = hv, .q = q, .k = k, .v = v, .dout = dout, .n = n, .nh = nh, .nkv = nkv,
                  .d = d, .scale = 1.0f / sqrtf((float)d)};
    nvlm_pool_run(pool, (size_t)nh, 1, attn_bwd_units, &j);
    sum_head_groups(dk, dv, hk, hv, n, nh, nkv, d);
    free(hk);
    free(hv);
    return j.failed ? NVLM_E_NOMEM : NVLM_OK;
}

/* ------------------------------------------------------------ cross-attention over ranges */

typedef struct xatt_job {
    float *o, *dq, *dk, *dv;  /* dk, dv: per query head [nh][S, d] in backward */
    const float *q, *k, *v, *dout;
    const int *lo, *hi;
    int n, nh, nkv, d, S;
    float scale;
    int failed;
} xatt_job;

/* One unit = (row, head): attention over the row's memory range. */
static void xatt_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    xatt_job *j = ctx;
    float *scores = malloc(sizeof(float) * (size_t)(j->S ? j->S : 1));
    if (!scores) {
        j->failed = 1;
        return;
    }
    const int kvd = j->nkv * j->d, group = j->nh / j->nkv;
    for (size_t u = begin; u < end; u++) {
        int t = (int)(u / (size_t)j->nh), a = (int)(u % (size_t)j->nh), g = a / group;
        size_t r0 = (size_t)j->lo[t];
        nvlm_attend(j->q + ((size_t)t * j->nh + a) * j->d, j->k + r0 * kvd + (size_t)g * j->d, (size_t)kvd,
                    j->v + r0 * kvd + (size_t)g * j->d, (size_t)kvd, j->hi[t] > j->lo[t] ? j->hi[t] - j->lo[t] : 0,
                    j->d, j->scale, scores, j->o + ((size_t)t * j->nh + a) * j->d);
    }
    free(scores);
}

static int max_range(const int *lo, const int *hi, int n) {
    int S = 0;
    for (int t = 0; t < n; t++) S = hi[t] - lo[t] > S ? hi[t] - lo[t] : S;
    return S;
}

int nvlm_t_xattention(nvlm_pool *pool, float *o, const float *q, const float *K, const float *V, const int *lo,
                      const int *hi, int n, int nh, int nkv, int d) {
    xatt_job j = {.o = o, .q = q, .k = K, .v = V, .lo = lo, .hi = hi, .n = n, .nh = nh, .nkv = nkv, .d = d,
                  .S = max_range(lo, hi, n), .scale = 1.0f / sqrtf((float)d)};
    nvlm_pool_run(pool, (size_t)n * nh, 1, xatt_units, &j);
    return j.failed ? NVLM_E_NOMEM : NVLM_OK;
}

/* One unit = one query head over every row; dK/dV go to that head's own slice. */
static void xatt_bwd_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    xatt_job *j = ctx;
    const int d = j->d, qd = j->nh * d, kvd = j->nkv * d, group = j->nh / j->nkv;
    int R = max_range(j->lo, j->hi, j->n);
    float *p = malloc(sizeof(float) * (size_t)(R ? R : 1)), *dp = malloc(sizeof(float) * (size_t)(R ? R : 1));
    if (!p || !dp) {
        j->failed = 1;
        free(p);
        free(dp);
        return;
    }
    for (size_t a = begin; a < end; a++) {
        int g = (int)a / group;
        float *dk = j->dk + a * (size_t)j->S * d, *dv = j->dv + a * (size_t)j->S * d;
        memset(dk, 0, sizeof(float) * (size_t)j->S * d);
        memset(dv, 0, sizeof(float) * (size_t)j->S * d);
        for (int t = 0; t < j->n; t++) {
            const float *q = j->q + (size_t)t * qd + a * d, *go = j->dout + (size_t)t * qd + a * d;
            float *dq = j->dq + (size_t)t * qd + a * d;
            const int lo = j->lo[t], m = j->hi[t] - lo;
            memset(dq, 0, sizeof(float) * (size_t)d);
            if (m <= 0) continue;
            const float *K = j->k + (size_t)lo * kvd + g * d, *V = j->v + (size_t)lo * kvd + g * d;
            for (int s = 0; s < m; s++) p[s] = j->scale * nvlm_dot(q, K + (size_t)s * kvd, d);
            nvlm_softmax(p, m);
            double D = 0;
            for (int s = 0; s < m; s++) {
                dp[s] = nvlm_dot(go, V + (size_t)s * kvd, d);
                D += (double)p[s] * dp[s];
            }
            for (int s = 0; s < m; s++) {
                float ds = p[s] * (dp[s] - (float)D) * j->scale;
                nvlm_axpy(dq, ds, K + (size_t)s * kvd, d);
                nvlm_axpy(dk + (size_t)(lo + s) * d, ds, q, d);
                nvlm_axpy(dv + (size_t)(lo + s) * d, p[s], go, d);
            }
        }
    }
    free(p);
    free(dp);
}

int nvlm_t_xattention_bwd(nvlm_pool *pool, float *dq, float *dK, float *dV, const float *dout, const float *q,
                          const float *K, const float *V, const int *lo, const int *hi, int n, int nh, int nkv,
                          int d, int S) {
    float *hk = malloc(sizeof(float) * (size_t)nh * (size_t)(S ? S : 1) * d);
    float *hv = malloc(sizeof(float) * (size_t)nh * (size_t)(S ? S : 1) * d);
    if (!hk || !hv) {
        free(hk);
        free(hv);
        return NVLM_E_NOMEM;
    }
    xatt_job j = {.dq = dq, .dk = hk, .dv = hv, .q = q, .k = K, .v = V, .dout = dout, .lo = lo, .hi = hi, .n = n,
                  .nh = nh, .nkv = nkv, .d = d, .S = S, .scale = 1.0f / sqrtf((float)d)};
    nvlm_pool_run(pool, (size_t)nh, 1, xatt_bwd_units, &j);
    sum_head_groups(dK, dV, hk, hv, S, nh, nkv, d);
    free(hk);
    free(hv);
    return j.failed ? NVLM_E_NOMEM : NVLM_OK;
}
