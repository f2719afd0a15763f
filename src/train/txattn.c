/* Training forward and backward of the NVLM-X/H gated cross-attention block (docs/spec.md
 * §12), on the rows that see memory (every other row is exactly the identity, so it is
 * skipped in both directions):
 *   y = RMS(x; in_norm); q = RMS_head(y Wq^T; q_norm); K = RMS_head(M Wk^T; k_norm); V = M Wv^T
 *   x1 = x + tanh(a_attn) (attend(q, K, V over the row's range) Wo^T)
 *   out = x1 + tanh(a_mlp) down(silu(gate(RMS(x1; post))) * up(RMS(x1; post)))
 * The gates' gradients are taken w.r.t. the raw parameters a (through tanh). */
#include "core/err.h"
#include "train/train.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALLOC(p, count) (((p) = malloc(sizeof(float) * (size_t)(count))) != NULL)

typedef struct dims {
    int h, nh, nkv, d, qd, kvd, I;
    float eps;
} dims;

static dims dims_of(const nvlm_tmodel *tm, int k) {
    const nvlm_config *c = &tm->m->cfg;
    dims s;
    s.h = c->llm.hidden_size, s.nh = c->llm.num_heads, s.nkv = c->llm.num_kv_heads;
    s.d = s.h / s.nh, s.qd = s.nh * s.d, s.kvd = s.nkv * s.d;
    s.I = (int)tm->X[k].gate->shape[0];
    s.eps = c->llm.rms_norm_eps;
    return s;
}

static void acts_free(nvlm_txstate *st) {
    free(st->qp), free(st->q), free(st->att), free(st->o), free(st->x1), free(st->g), free(st->u), free(st->z);
    st->qp = st->q = st->att = st->o = st->x1 = st->g = st->u = st->z = NULL;
}

void nvlm_txstate_free(nvlm_txstate *st) {
    acts_free(st);
    free(st->sel), free(st->lo), free(st->hi), free(st->xin), free(st->Kp), free(st->K), free(st->V);
    memset(st, 0, sizeof *st);
}

/* Per-head RMS norm of rows*heads vectors of d values. */
static void rms_heads(float *out, const float *in, const float *w, size_t vecs, int d, float eps) {
    for (size_t r = 0; r < vecs; r++) nvlm_rmsnorm(out + r * d, in + r * d, w, d, d, eps);
}

/* Keys and values of the memory for block B. */
static int memory_kv(nvlm_tmodel *tm, const nvlm_txblock *B, const dims *s, nvlm_txstate *st, const float *M,
                     int S) {
    int rc = nvlm_t_linear(tm->m->pool, st->Kp, M, S, B->wk->w, s->kvd, s->h, NULL);
    if (!rc) rc = nvlm_t_linear(tm->m->pool, st->V, M, S, B->wv->w, s->kvd, s->h, NULL);
    if (!rc) rms_heads(st->K, st->Kp, B->k_norm->w, (size_t)S * s->nkv, s->d, s->eps);
    return rc;
}

/* Every activation of the selected rows from st->xin; y: scratch [N, h]. */
static int block_rows(nvlm_tmodel *tm, const nvlm_txblock *B, const dims *s, nvlm_txstate *st, float *y) {
    nvlm_pool *pool = tm->m->pool;
    const int N = st->n_sel, h = s->h;
    const size_t NH = (size_t)N * h;
    if (!st->qp && !(ALLOC(st->qp, (size_t)N * s->qd) && ALLOC(st->q, (size_t)N * s->qd) &&
                     ALLOC(st->att, (size_t)N * s->qd) && ALLOC(st->o, NH) && ALLOC(st->x1, NH) &&
                     ALLOC(st->g, (size_t)N * s->I) && ALLOC(st->u, (size_t)N * s->I) && ALLOC(st->z, NH)))
        return NVLM_E_NOMEM;
    for (int t = 0; t < N; t++) nvlm_rmsnorm(y + (size_t)t * h, st->xin + (size_t)t * h, B->in_norm->w, h, h, s->eps);
    int rc = nvlm_t_linear(pool, st->qp, y, N, B->wq->w, s->qd, h, NULL);
    if (rc) return rc;
    rms_heads(st->q, st->qp, B->q_norm->w, (size_t)N * s->nh, s->d, s->eps);
    if ((rc = nvlm_t_xattention(pool, st->att, st->q, st->K, st->V, st->lo, st->hi, N, s->nh, s->nkv, s->d))) return rc;
    if ((rc = nvlm_t_linear(pool, st->o, st->att, N, B->wo->w, h, s->qd, NULL))) return rc;
    const float ga = tanhf(B->attn_gate->w[0]);
    for (size_t i = 0; i < NH; i++) st->x1[i] = st->xin[i] + ga * st->o[i];
    for (int t = 0; t < N; t++) nvlm_rmsnorm(y + (size_t)t * h, st->x1 + (size_t)t * h, B->post_norm->w, h, h, s->eps);
    if ((rc = nvlm_t_linear(pool, st->g, y, N, B->gate->w, s->I, h, NULL))) return rc;
    if ((rc = nvlm_t_linear(pool, st->u, y, N, B->up->w, s->I, h, NULL))) return rc;
    float *act = malloc(sizeof(float) * (size_t)N * s->I);
    if (!act) return NVLM_E_NOMEM;
    memcpy(act, st->g, sizeof(float) * (size_t)N * s->I);
    nvlm_silu_mul(act, st->u, (size_t)N * s->I);
    rc = nvlm_t_linear(pool, st->z, act, N, B->down->w, h, s->I, NULL);
    free(act);
    return rc;
}

int nvlm_tx_forward(nvlm_tmodel *tm, int k, nvlm_txstate *st, float *xs, int n, const int *lo, const int *hi,
                    const float *M, int S, int keep_acts) {
    const nvlm_txblock *B = &tm->X[k];
    const dims s = dims_of(tm, k);
    const int h = s.h;
    memset(st, 0, sizeof *st);
    int N = 0;
    for (int t = 0; t < n; t++) N += hi[t] > lo[t];
    if (N == 0 || S == 0) return NVLM_OK; /* the identity */
    st->n_sel = N;
    float *y = NULL;
    if (!(st->sel = malloc(sizeof(int) * (size_t)N)) || !(st->lo = malloc(sizeof(int) * (size_t)N)) ||
        !(st->hi = malloc(sizeof(int) * (size_t)N)) || !ALLOC(st->xin, (size_t)N * h) ||
        !ALLOC(st->Kp, (size_t)S * s.kvd) || !ALLOC(st->K, (size_t)S * s.kvd) || !ALLOC(st->V, (size_t)S * s.kvd) ||
        !ALLOC(y, (size_t)N * h))
        return free(y), NVLM_E_NOMEM;
    for (int t = 0, i = 0; t < n; t++) {
        if (hi[t] <= lo[t]) continue;
        st->sel[i] = t, st->lo[i] = lo[t], st->hi[i] = hi[t];
        memcpy(st->xin + (size_t)i * h, xs + (size_t)t * h, sizeof(float) * h);
        i++;
    }
    int rc = memory_kv(tm, B, &s, st, M, S);
    if (!rc) rc = block_rows(tm, B, &s, st, y);
    if (!rc) {
        const float gm = tanhf(B->mlp_gate->w[0]);
        for (int i = 0; i < N; i++) {
            float *o = xs + (size_t)st->sel[i] * h;
            const float *x1 = st->x1 + (size_t)i * h, *z = st->z + (size_t)i * h;
            for (int c = 0; c < h; c++) o[c] = x1[c] + gm * z[c];
        }
    }
    if (!keep_acts) acts_free(st);
    free(y);
    return rc;
}

/* rows of dx += per-row RMSNorm backward of dy at x (dx may equal nothing else). */
static void rms_bwd_rows(float *dx, const float *dy, const float *x, const nvlm_tparam *w, size_t rows, int n,
                         float eps, float *tmp) {
    for (size_t r = 0; r < rows; r++) {
        nvlm_t_rmsnorm_bwd(tmp, dy + r * n, x + r * n, w->w, w->g, n, eps);
        nvlm_axpy(dx + r * n, 1.0f, tmp, n);
    }
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef struct bwd_bufs {
    float *dout, *dx1, *y, *dy, *tmp, *act, *dact, *dg, *du, *datt, *dq, *dqp, *dK, *dV, *dKp, *dM1, *row;
} bwd_bufs;

static void bufs_free(bwd_bufs *b) {
    free(b->dout), free(b->dx1), free(b->y), free(b->dy), free(b->tmp), free(b->act), free(b->dact), free(b->dg);
    free(b->du), free(b->datt), free(b->dq), free(b->dqp), free(b->dK), free(b->dV), free(b->dKp), free(b->dM1);
    free(b->row);
}

static int bufs_alloc(bwd_bufs *b, const dims *s, int N, int S) {
    size_t NH = (size_t)N * s->h, NI = (size_t)N * s->I, NQ = (size_t)N * s->qd, SK = (size_t)S * s->kvd;
    memset(b, 0, sizeof *b);
    return ALLOC(b->dout, NH) && ALLOC(b->dx1, NH) && ALLOC(b->y, NH) && ALLOC(b->dy, NH) && ALLOC(b->tmp, NH) &&
                   ALLOC(b->act, NI) && ALLOC(b->dact, NI) && ALLOC(b->dg, NI) && ALLOC(b->du, NI) &&
                   ALLOC(b->datt, NQ) && ALLOC(b->dq, NQ) && ALLOC(b->dqp, NQ) && ALLOC(b->dK, SK) &&
                   ALLOC(b->dV, SK) && ALLOC(b->dKp, SK) && ALLOC(b->dM1, (size_t)S * s->h) && ALLOC(b->row, s->h)
               ? 0
               : -1;
}

/* d tanh(a) / da = 1 - tanh(a)^2. */
static void gate_grad(nvlm_tparam *a, double dot) {
    if (!a->g) return;
    float t = tanhf(a->w[0]);
    a->g[0] += (float)(dot * (1.0 - (double)t * t));
}

int nvlm_tx_backward(nvlm_tmodel *tm, int k, nvlm_txstate *st, float *dx, const float *M, int S, float *dM) {
    nvlm_txblock *B = &tm->X[k];
    nvlm_pool *pool = tm->m->pool;
    const dims s = dims_of(tm, k);
    const int N = st->n_sel, h = s.h, I = s.I;
    if (N == 0 || S == 0) return NVLM_OK;
    bwd_bufs b;
    if (bufs_alloc(&b, &s, N, S)) return bufs_free(&b), NVLM_E_NOMEM;
    int rc = st->qp ? NVLM_OK : block_rows(tm, B, &s, st, b.y); /* recompute mode */
    if (rc) return bufs_free(&b), rc;
    const size_t NH = (size_t)N * h, NI = (size_t)N * I;
    for (int i = 0; i < N; i++) memcpy(b.dout + (size_t)i * h, dx + (size_t)st->sel[i] * h, sizeof(float) * h);
    /* MLP branch: out = x1 + tanh(a_mlp) z */
    const float gm = tanhf(B->mlp_gate->w[0]), ga = tanhf(B->attn_gate->w[0]);
    gate_grad(B->mlp_gate, dotd(b.dout, st->z, NH));
    for (size_t i = 0; i < NH; i++) b.tmp[i] = gm * b.dout[i]; /* dz */
    memcpy(b.act, st->g, sizeof(float) * NI);
    nvlm_silu_mul(b.act, st->u, NI);
    nvlm_t_linear_bwd(pool, b.dact, b.tmp, b.act, N, B->down->w, h, I, B->down->g, NULL);
    nvlm_t_swiglu_bwd(b.dg, b.du, b.dact, st->g, st->u, NI);
    for (int t = 0; t < N; t++) nvlm_rmsnorm(b.y + (size_t)t * h, st->x1 + (size_t)t * h, B->post_norm->w, h, h, s.eps);
    nvlm_t_linear_bwd(pool, b.dy, b.dg, b.y, N, B->gate->w, I, h, B->gate->g, NULL);
    nvlm_t_linear_bwd(pool, b.tmp, b.du, b.y, N, B->up->w, I, h, B->up->g, NULL);
    for (size_t i = 0; i < NH; i++) b.dy[i] += b.tmp[i];
    memcpy(b.dx1, b.dout, sizeof(float) * NH);
    rms_bwd_rows(b.dx1, b.dy, st->x1, B->post_norm, (size_t)N, h, s.eps, b.row);
    /* attention branch: x1 = x + tanh(a_attn) o */
    gate_grad(B->attn_gate, dotd(b.dx1, st->o, NH));
    for (size_t i = 0; i < NH; i++) b.tmp[i] = ga * b.dx1[i]; /* do */
    nvlm_t_linear_bwd(pool, b.datt, b.tmp, st->att, N, B->wo->w, h, s.qd, B->wo->g, NULL);
    rc = nvlm_t_xattention_bwd(pool, b.dq, b.dK, b.dV, b.datt, st->q, st->K, st->V, st->lo, st->hi, N, s.nh, s.nkv,
                               s.d, S);
    if (rc) return bufs_free(&b), rc;
    memset(b.dqp, 0, sizeof(float) * (size_t)N * s.qd);
    rms_bwd_rows(b.dqp, b.dq, st->qp, B->q_norm, (size_t)N * s.nh, s.d, s.eps, b.row);
    for (int t = 0; t < N; t++) nvlm_rmsnorm(b.y + (size_t)t * h, st->xin + (size_t)t * h, B->in_norm->w, h, h, s.eps);
    nvlm_t_linear_bwd(pool, b.dy, b.dqp, b.y, N, B->wq->w, s.qd, h, B->wq->g, NULL);
    rms_bwd_rows(b.dx1, b.dy, st->xin, B->in_norm, (size_t)N, h, s.eps, b.row); /* now d(block input) */
    for (int i = 0; i < N; i++) memcpy(dx + (size_t)st->sel[i] * h, b.dx1 + (size_t)i * h, sizeof(float) * h);
    /* memory: K = RMS_head(M Wk^T), V = M Wv^T */
    memset(b.dKp, 0, sizeof(float) * (size_t)S * s.kvd);
    rms_bwd_rows(b.dKp, b.dK, st->Kp, B->k_norm, (size_t)S * s.nkv, s.d, s.eps, b.row);
    nvlm_t_linear_bwd(pool, dM ? b.dM1 : NULL, b.dKp, M, S, B->wk->w, s.kvd, h, B->wk->g, NULL);
    if (dM) nvlm_axpy(dM, 1.0f, b.dM1, S * h);
    nvlm_t_linear_bwd(pool, dM ? b.dM1 : NULL, b.dV, M, S, B->wv->w, s.kvd, h, B->wv->g, NULL);
    if (dM) nvlm_axpy(dM, 1.0f, b.dM1, S * h);
    bufs_free(&b);
    return NVLM_OK;
}
