/* Training forward and backward of one sequence through the projector and the Qwen2 LLM
 * (docs/spec.md §7, §9), with NVLM-X/H's gated cross-attention blocks before their layers
 * (§12, src/train/txattn.c). The ViT is outside: the caller passes its pixel-shuffled
 * features (and, to train it, takes their gradient back through nvlm_tseq.dimg). Only the supervised positions go through the final norm and
 * lm_head, so the logits never take [n, V] memory. */
#include "core/err.h"
#include "train/train.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { LOSS_CHUNK = 64 };

typedef struct lacts {
    float *x_mid, *q, *k, *v, *att, *gate, *up;
} lacts;

/* Scratch of the backward pass, sized for one sequence. */
typedef struct work {
    float *y, *dy, *tmp, *act, *dact, *dg, *du, *datt, *dq, *dk, *dv;
    float *cs, *sn;
} work;

typedef struct seq_state {
    int n, h, qd, kvd, I, d, nh, nkv, nl;
    float *xs;        /* [nl + 1][n, h]: input of each layer, then the final hidden states */
    lacts *acts;      /* nl sets, or 1 when recomputing */
    int n_acts;
    work w;
    /* projector */
    float **pa, **pu; /* LayerNorm output / GELU outputs, pre-activations */
    float *pout;      /* [n_img, h] */
    /* NVLM-X/H */
    float *mem;       /* [n_mem, h] cross-attention memory */
    nvlm_txstate *tx; /* [n_x] */
    int n_x;
} seq_state;

#define ALLOC(p, count) (((p) = malloc(sizeof(float) * (size_t)(count))) != NULL)

static void acts_free(lacts *a) {
    free(a->x_mid), free(a->q), free(a->k), free(a->v), free(a->att), free(a->gate), free(a->up);
}

static void state_free(seq_state *s, int depth) {
    free(s->xs);
    for (int i = 0; s->acts && i < s->n_acts; i++) acts_free(&s->acts[i]);
    free(s->acts);
    work *w = &s->w;
    free(w->y), free(w->dy), free(w->tmp), free(w->act), free(w->dact), free(w->dg), free(w->du);
    free(w->datt), free(w->dq), free(w->dk), free(w->dv), free(w->cs), free(w->sn);
    for (int k = 0; k < depth; k++) {
        if (s->pa) free(s->pa[k]);
        if (s->pu) free(s->pu[k]);
    }
    free(s->pa), free(s->pu), free(s->pout);
    for (int k = 0; s->tx && k < s->n_x; k++) nvlm_txstate_free(&s->tx[k]);
    free(s->tx), free(s->mem);
}

static int state_alloc(seq_state *s, const nvlm_tmodel *tm, int n, int n_img, int n_mem) {
    const nvlm_llm_config *c = &tm->m->cfg.llm;
    memset(s, 0, sizeof *s);
    s->n = n, s->h = c->hidden_size, s->nh = c->num_heads, s->nkv = c->num_kv_heads;
    s->d = s->h / s->nh, s->qd = s->nh * s->d, s->kvd = s->nkv * s->d, s->I = c->intermediate_size;
    s->nl = c->num_layers;
    size_t N = (size_t)n;
    s->n_acts = tm->recompute ? 1 : s->nl;
    s->acts = calloc((size_t)s->n_acts, sizeof *s->acts);
    int ok = s->acts && ALLOC(s->xs, (size_t)(s->nl + 1) * N * s->h);
    for (int i = 0; ok && i < s->n_acts; i++) {
        lacts *a = &s->acts[i];
        ok = ALLOC(a->x_mid, N * s->h) && ALLOC(a->q, N * s->qd) && ALLOC(a->k, N * s->kvd) &&
             ALLOC(a->v, N * s->kvd) && ALLOC(a->att, N * s->qd) && ALLOC(a->gate, N * s->I) && ALLOC(a->up, N * s->I);
    }
    work *w = &s->w;
    ok = ok && ALLOC(w->y, N * s->h) && ALLOC(w->dy, N * s->h) && ALLOC(w->tmp, N * s->h) && ALLOC(w->act, N * s->I) &&
         ALLOC(w->dact, N * s->I) && ALLOC(w->dg, N * s->I) && ALLOC(w->du, N * s->I) && ALLOC(w->datt, N * s->qd) &&
         ALLOC(w->dq, N * s->qd) && ALLOC(w->dk, N * s->kvd) && ALLOC(w->dv, N * s->kvd) &&
         ALLOC(w->cs, N * (s->d / 2)) && ALLOC(w->sn, N * (s->d / 2));
    if (ok && n_img > 0) {
        int depth = tm->proj_depth;
        s->pa = calloc((size_t)depth, sizeof *s->pa);
        s->pu = calloc((size_t)depth, sizeof *s->pu);
        ok = s->pa && s->pu && ALLOC(s->pout, (size_t)n_img * s->h);
        for (int k = 0; ok && k < depth; k++) {
            ok = ALLOC(s->pa[k], (size_t)n_img * tm->proj[k]->shape[1]);
            if (ok && k < depth - 1) ok = ALLOC(s->pu[k], (size_t)n_img * tm->proj[k]->shape[0]);
        }
    }
    if (ok && tm->n_x) {
        s->n_x = tm->n_x;
        ok = (s->tx = calloc((size_t)tm->n_x, sizeof *s->tx)) != NULL;
    }
    if (ok && n_mem > 0) ok = ALLOC(s->mem, (size_t)n_mem * s->h);
    return ok ? 0 : -1;
}

static const float *G(const nvlm_tparam *p) { return p->w; }

/* ------------------------------------------------------------ projector */

static int projector_forward(nvlm_tmodel *tm, seq_state *s, const float *z, int n_img) {
    nvlm_pool *pool = tm->m->pool;
    int width = (int)tm->ln_w->n;
    for (int t = 0; t < n_img; t++)
        nvlm_layernorm(s->pa[0] + (size_t)t * width, z + (size_t)t * width, G(tm->ln_w), G(tm->ln_b), width, 1e-5f);
    for (int k = 0; k < tm->proj_depth; k++) {
        const nvlm_tparam *W = tm->proj[k];
        int rows = (int)W->shape[0], cols = (int)W->shape[1];
        if (k == tm->proj_depth - 1) {
            int rc = nvlm_t_linear(pool, s->pout, s->pa[k], n_img, W->w, rows, cols, NULL);
            if (rc) return rc;
        } else {
            int rc = nvlm_t_linear(pool, s->pu[k], s->pa[k], n_img, W->w, rows, cols, NULL);
            if (rc) return rc;
            memcpy(s->pa[k + 1], s->pu[k], sizeof(float) * (size_t)n_img * rows);
            nvlm_gelu(s->pa[k + 1], (size_t)n_img * rows);
        }
    }
    return NVLM_OK;
}

/* Gradients of the projector's tensors from dout [n_img, h] (the caller's buffer), and of its
 * input z into dz when dz is not NULL (a trained ViT's gradient). */
static int projector_backward(nvlm_tmodel *tm, seq_state *s, const float *z, int n_img, const float *dout, float *dz) {
    nvlm_pool *pool = tm->m->pool;
    const float *cur = dout;
    float *owned = NULL;
    int ln_trainable = tm->ln_w->g || tm->ln_b->g || dz;
    for (int k = tm->proj_depth - 1; k >= 0; k--) {
        nvlm_tparam *W = tm->proj[k];
        int rows = (int)W->shape[0], cols = (int)W->shape[1];
        float *dx = NULL;
        if ((k > 0 || ln_trainable) && !(dx = malloc(sizeof(float) * (size_t)n_img * cols))) {
            free(owned);
            return NVLM_E_NOMEM;
        }
        nvlm_t_linear_bwd(pool, dx, cur, s->pa[k], n_img, W->w, rows, cols, W->g, NULL);
        free(owned);
        cur = owned = dx;
        if (!dx) return NVLM_OK;
        if (k > 0) nvlm_t_gelu_bwd(dx, dx, s->pu[k - 1], (size_t)n_img * cols);
    }
    int width = (int)tm->ln_w->n;
    for (int t = 0; t < n_img; t++)
        nvlm_t_layernorm_bwd_params(cur + (size_t)t * width, z + (size_t)t * width, tm->ln_w->g, tm->ln_b->g, width,
                                    1e-5f);
    for (int t = 0; dz && t < n_img; t++)
        nvlm_t_layernorm_bwd_x(dz + (size_t)t * width, cur + (size_t)t * width, z + (size_t)t * width, tm->ln_w->w,
                               width, 1e-5f);
    free(owned);
    return NVLM_OK;
}

/* ------------------------------------------------------------ decoder layers */

static int layer_forward(nvlm_tmodel *tm, seq_state *s, int l, lacts *a) {
    const nvlm_tlayer *L = &tm->L[l];
    nvlm_pool *pool = tm->m->pool;
    const float eps = tm->m->cfg.llm.rms_norm_eps;
    const int n = s->n, h = s->h;
    const float *x = s->xs + (size_t)l * n * h;
    float *xo = s->xs + (size_t)(l + 1) * n * h, *y = s->w.y;
    for (int t = 0; t < n; t++) nvlm_rmsnorm(y + (size_t)t * h, x + (size_t)t * h, G(L->in_norm), h, h, eps);
    int rc = nvlm_t_linear(pool, a->q, y, n, L->wq->w, s->qd, h, L->bq->w);
    if (!rc) rc = nvlm_t_linear(pool, a->k, y, n, L->wk->w, s->kvd, h, L->bk->w);
    if (!rc) rc = nvlm_t_linear(pool, a->v, y, n, L->wv->w, s->kvd, h, L->bv->w);
    if (rc) return rc;
    nvlm_t_rope(a->q, n, s->nh, s->d, s->w.cs, s->w.sn, 0);
    nvlm_t_rope(a->k, n, s->nkv, s->d, s->w.cs, s->w.sn, 0);
    if ((rc = nvlm_t_attention(pool, a->att, a->q, a->k, a->v, n, s->nh, s->nkv, s->d))) return rc;
    if ((rc = nvlm_t_linear(pool, y, a->att, n, L->wo->w, h, s->qd, NULL))) return rc;
    for (size_t i = 0; i < (size_t)n * h; i++) a->x_mid[i] = x[i] + y[i];
    for (int t = 0; t < n; t++) nvlm_rmsnorm(y + (size_t)t * h, a->x_mid + (size_t)t * h, G(L->post_norm), h, h, eps);
    if ((rc = nvlm_t_linear(pool, a->gate, y, n, L->gate->w, s->I, h, NULL))) return rc;
    if ((rc = nvlm_t_linear(pool, a->up, y, n, L->up->w, s->I, h, NULL))) return rc;
    memcpy(s->w.act, a->gate, sizeof(float) * (size_t)n * s->I);
    nvlm_silu_mul(s->w.act, a->up, (size_t)n * s->I);
    if ((rc = nvlm_t_linear(pool, y, s->w.act, n, L->down->w, h, s->I, NULL))) return rc;
    for (size_t i = 0; i < (size_t)n * h; i++) xo[i] = a->x_mid[i] + y[i];
    return NVLM_OK;
}

/* rows of dx += RMSNorm backward of dy at x (weight w, its gradient dw). */
static void rms_bwd_add(float *dx, const float *dy, const float *x, const nvlm_tparam *w, float *tmp, int n, int h,
                        float eps) {
    for (int t = 0; t < n; t++) {
        nvlm_t_rmsnorm_bwd(tmp, dy + (size_t)t * h, x + (size_t)t * h, w->w, w->g, h, eps);
        nvlm_axpy(dx + (size_t)t * h, 1.0f, tmp, h);
    }
}

/* dx: gradient of the layer output in, of the layer input out. */
static int layer_backward(nvlm_tmodel *tm, seq_state *s, int l, lacts *a, float *dx) {
    const nvlm_tlayer *L = &tm->L[l];
    nvlm_pool *pool = tm->m->pool;
    const float eps = tm->m->cfg.llm.rms_norm_eps;
    const int n = s->n, h = s->h, I = s->I;
    const float *x = s->xs + (size_t)l * n * h;
    work *w = &s->w;
    /* MLP */
    memcpy(w->act, a->gate, sizeof(float) * (size_t)n * I);
    nvlm_silu_mul(w->act, a->up, (size_t)n * I);
    nvlm_t_linear_bwd(pool, w->dact, dx, w->act, n, L->down->w, h, I, L->down->g, NULL);
    nvlm_t_swiglu_bwd(w->dg, w->du, w->dact, a->gate, a->up, (size_t)n * I);
    for (int t = 0; t < n; t++) nvlm_rmsnorm(w->y + (size_t)t * h, a->x_mid + (size_t)t * h, G(L->post_norm), h, h, eps);
    nvlm_t_linear_bwd(pool, w->dy, w->dg, w->y, n, L->gate->w, I, h, L->gate->g, NULL);
    nvlm_t_linear_bwd(pool, w->tmp, w->du, w->y, n, L->up->w, I, h, L->up->g, NULL);
    for (size_t i = 0; i < (size_t)n * h; i++) w->dy[i] += w->tmp[i];
    rms_bwd_add(dx, w->dy, a->x_mid, L->post_norm, w->tmp, n, h, eps);
    /* attention */
    nvlm_t_linear_bwd(pool, w->datt, dx, a->att, n, L->wo->w, h, s->qd, L->wo->g, NULL);
    int rc = nvlm_t_attention_bwd(pool, w->dq, w->dk, w->dv, w->datt, a->q, a->k, a->v, n, s->nh, s->nkv, s->d);
    if (rc) return rc;
    nvlm_t_rope(w->dq, n, s->nh, s->d, w->cs, w->sn, 1);
    nvlm_t_rope(w->dk, n, s->nkv, s->d, w->cs, w->sn, 1);
    for (int t = 0; t < n; t++) nvlm_rmsnorm(w->y + (size_t)t * h, x + (size_t)t * h, G(L->in_norm), h, h, eps);
    nvlm_t_linear_bwd(pool, w->dy, w->dq, w->y, n, L->wq->w, s->qd, h, L->wq->g, L->bq->g);
    nvlm_t_linear_bwd(pool, w->tmp, w->dk, w->y, n, L->wk->w, s->kvd, h, L->wk->g, L->bk->g);
    for (size_t i = 0; i < (size_t)n * h; i++) w->dy[i] += w->tmp[i];
    nvlm_t_linear_bwd(pool, w->tmp, w->dv, w->y, n, L->wv->w, s->kvd, h, L->wv->g, L->bv->g);
    for (size_t i = 0; i < (size_t)n * h; i++) w->dy[i] += w->tmp[i];
    rms_bwd_add(dx, w->dy, x, L->in_norm, w->tmp, n, h, eps);
    return NVLM_OK;
}

/* ------------------------------------------------------------ loss head */

int nvlm_tseq_supervised(const nvlm_tseq *s) {
    int c = 0;
    for (int t = 0; t + 1 < s->n; t++) c += s->labels[t + 1] != -100;
    return c;
}

/* Final norm + lm_head + cross-entropy on the supervised rows, chunk by chunk; writes the
 * gradient of the final hidden states into dx (zero elsewhere) when backward. */
static int loss_head(nvlm_tmodel *tm, seq_state *s, const nvlm_tseq *seq, int backward, double norm, float *dx,
                     nvlm_tresult *res) {
    nvlm_pool *pool = tm->m->pool;
    const int n = s->n, h = s->h, V = (int)tm->lm_head->shape[0];
    const float eps = tm->m->cfg.llm.rms_norm_eps;
    const float *xf = s->xs + (size_t)s->nl * n * h;
    int *rows = malloc(sizeof(int) * LOSS_CHUNK);
    float *yn = malloc(sizeof(float) * LOSS_CHUNK * (size_t)h), *lg = malloc(sizeof(float) * LOSS_CHUNK * (size_t)V);
    float *dyn = malloc(sizeof(float) * LOSS_CHUNK * (size_t)h), *tmp = malloc(sizeof(float) * (size_t)h);
    int rc = rows && yn && lg && dyn && tmp ? NVLM_OK : NVLM_E_NOMEM;
    if (dx) memset(dx, 0, sizeof(float) * (size_t)n * h);
    for (int t0 = 0; t0 + 1 < n && !rc;) {
        int m = 0;
        for (; t0 + 1 < n && m < LOSS_CHUNK; t0++)
            if (seq->labels[t0 + 1] != -100) rows[m++] = t0;
        if (!m) continue;
        for (int r = 0; r < m; r++)
            nvlm_rmsnorm(yn + (size_t)r * h, xf + (size_t)rows[r] * h, G(tm->final_norm), h, h, eps);
        if ((rc = nvlm_t_linear(pool, lg, yn, m, tm->lm_head->w, V, h, NULL))) break;
        for (int r = 0; r < m; r++) {
            float *l = lg + (size_t)r * V;
            int label = seq->labels[rows[r] + 1];
            if (label < 0 || label >= V) {
                rc = NVLM_E_INVALID_ARG;
                break;
            }
            res->correct += nvlm_argmax(l, V) == label;
            float mx = l[0];
            for (int i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
            double sum = 0;
            for (int i = 0; i < V; i++) sum += exp((double)l[i] - mx);
            double lse = mx + log(sum);
            res->loss_sum += lse - l[label];
            res->count++;
            if (backward) {
                for (int i = 0; i < V; i++) l[i] = (float)(exp((double)l[i] - lse) / norm);
                l[label] -= (float)(1.0 / norm);
            }
        }
        if (rc || !backward) continue;
        nvlm_t_linear_bwd(pool, dyn, lg, yn, m, tm->lm_head->w, V, h, tm->lm_head->g, NULL);
        for (int r = 0; r < m; r++)
            nvlm_t_rmsnorm_bwd(dx + (size_t)rows[r] * h, dyn + (size_t)r * h, xf + (size_t)rows[r] * h,
                               tm->final_norm->w, tm->final_norm->g, h, eps);
    }
    free(rows), free(yn), free(lg), free(dyn), free(tmp);
    return rc;
}

/* ------------------------------------------------------------ one sequence */

static int check_seq(const nvlm_tmodel *tm, const nvlm_tseq *q, nvlm_err *err) {
    const nvlm_model *m = tm->m;
    int V = (int)tm->embed->shape[0], n_ctx = 0;
    if (q->n < 2) return nvlm_fail(err, NVLM_E_INVALID_ARG, "a training sequence needs at least 2 tokens");
    for (int t = 0; t < q->n; t++) {
        if (q->ids[t] < 0 || q->ids[t] >= V)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "token id %d at position %d is outside the vocabulary (%d)",
                             q->ids[t], t, V);
        if (q->labels[t] != -100 && (q->labels[t] < 0 || q->labels[t] >= (int)tm->lm_head->shape[0]))
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "label %d at position %d is outside the vocabulary",
                             q->labels[t], t);
        n_ctx += q->ids[t] == m->id_img_context;
    }
    if (q->n_img && !q->img) return nvlm_fail(err, NVLM_E_INVALID_ARG, "%d image rows without features", q->n_img);
    if (!q->ctx_rows && !q->mem_src) {
        if (n_ctx != q->n_img)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "the sequence has %d image-context tokens but %d image features",
                             n_ctx, q->n_img);
        return NVLM_OK;
    }
    if (n_ctx != q->n_ctx || (n_ctx && !q->ctx_rows))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "the sequence has %d image-context tokens but %d decoder image rows",
                         n_ctx, q->n_ctx);
    for (int k = 0; k < q->n_ctx; k++)
        if (q->ctx_rows[k] < 0 || q->ctx_rows[k] >= q->n_img)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "decoder image row %d takes feature row %d of %d", k,
                             q->ctx_rows[k], q->n_img);
    if (q->n_mem && (!tm->n_x || !q->mem_src || !q->mem_lo || !q->mem_hi))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "a cross-attention memory needs an NVLM-X/H model and row ranges");
    for (int r = 0; r < q->n_mem; r++)
        if (q->mem_src[r] >= q->n_img || (q->mem_src[r] < 0 && -(q->mem_src[r] + 1) >= V))
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "memory row %d has a bad source %d", r, q->mem_src[r]);
    for (int t = 0; q->mem_lo && t < q->n; t++)
        if (q->mem_lo[t] < 0 || q->mem_lo[t] > q->mem_hi[t] || q->mem_hi[t] > q->n_mem)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "position %d reads memory rows [%d, %d) of %d", t, q->mem_lo[t],
                             q->mem_hi[t], q->n_mem);
    return NVLM_OK;
}

/* Block k runs before layer l? (-1: none) */
static int block_before(const nvlm_tmodel *tm, int l) {
    for (int k = 0; k < tm->n_x; k++)
        if (tm->X[k].layer == l) return k;
    return -1;
}

/* The cross-attention memory rows: projector rows or token embeddings (H's tile tags). */
static void build_memory(const nvlm_tmodel *tm, const seq_state *s, const nvlm_tseq *q) {
    for (int r = 0; r < q->n_mem; r++) {
        int src = q->mem_src[r];
        const float *from = src >= 0 ? s->pout + (size_t)src * s->h : tm->embed->w + (size_t)(-src - 1) * s->h;
        memcpy(s->mem + (size_t)r * s->h, from, sizeof(float) * s->h);
    }
}

/* Gradient of the memory into the projector rows (dimg) and the embedding rows. */
static void scatter_memory(nvlm_tmodel *tm, const nvlm_tseq *q, const float *dmem, float *dimg, int h) {
    for (int r = 0; r < q->n_mem; r++) {
        int src = q->mem_src[r];
        if (src >= 0) nvlm_axpy(dimg + (size_t)src * h, 1.0f, dmem + (size_t)r * h, h);
        else if (tm->embed->g) nvlm_axpy(tm->embed->g + (size_t)(-src - 1) * h, 1.0f, dmem + (size_t)r * h, h);
    }
}

int nvlm_train_seq(nvlm_tmodel *tm, const nvlm_tseq *q, int backward, double norm, nvlm_tresult *res,
                   nvlm_err *err) {
    int rc = check_seq(tm, q, err);
    if (rc) return rc;
    seq_state s;
    if (state_alloc(&s, tm, q->n, q->n_img, q->n_mem)) {
        state_free(&s, tm->proj_depth);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a training sequence of %d tokens", q->n);
    }
    const int n = q->n, h = s.h;
    nvlm_t_rope_table(&tm->m->cfg.llm, s.d, n, s.w.cs, s.w.sn);
    if (q->n_img) rc = projector_forward(tm, &s, q->img, q->n_img);
    if (q->n_mem) build_memory(tm, &s, q);
    /* embeddings; image-context rows take the projector output (no gradient to their rows) */
    for (int t = 0, r = 0; t < n; t++) {
        float *o = s.xs + (size_t)t * h;
        if (q->ids[t] == tm->m->id_img_context) {
            int row = q->ctx_rows ? q->ctx_rows[r] : r;
            r++;
            memcpy(o, s.pout + (size_t)row * h, sizeof(float) * h);
        } else memcpy(o, tm->embed->w + (size_t)q->ids[t] * h, sizeof(float) * h);
    }
    for (int l = 0; l < s.nl && !rc; l++) {
        int k = block_before(tm, l);
        if (k >= 0 && q->n_mem)
            rc = nvlm_tx_forward(tm, k, &s.tx[k], s.xs + (size_t)l * n * h, n, q->mem_lo, q->mem_hi, s.mem, q->n_mem,
                                 !tm->recompute);
        if (!rc) rc = layer_forward(tm, &s, l, &s.acts[tm->recompute ? 0 : l]);
    }
    float *dx = NULL, *dmem = NULL;
    if (!rc && backward && !(dx = malloc(sizeof(float) * (size_t)n * h))) rc = NVLM_E_NOMEM;
    if (!rc && backward && q->n_mem && !(dmem = calloc((size_t)q->n_mem * h, sizeof(float)))) rc = NVLM_E_NOMEM;
    if (!rc) rc = loss_head(tm, &s, q, backward, norm, dx, res);
    for (int l = s.nl - 1; l >= 0 && !rc && backward; l--) {
        lacts *a = &s.acts[tm->recompute ? 0 : l];
        if (tm->recompute) rc = layer_forward(tm, &s, l, a);
        if (!rc) rc = layer_backward(tm, &s, l, a, dx);
        int k = block_before(tm, l);
        if (!rc && k >= 0 && q->n_mem) rc = nvlm_tx_backward(tm, k, &s.tx[k], dx, s.mem, q->n_mem, dmem);
    }
    if (!rc && backward) {
        float *dimg = q->n_img ? calloc((size_t)q->n_img * h, sizeof(float)) : NULL;
        if (q->n_img && !dimg) rc = NVLM_E_NOMEM;
        for (int t = 0, r = 0; t < n && !rc; t++) {
            const float *g = dx + (size_t)t * h;
            if (q->ids[t] == tm->m->id_img_context) {
                int row = q->ctx_rows ? q->ctx_rows[r] : r;
                r++;
                nvlm_axpy(dimg + (size_t)row * h, 1.0f, g, h);
            } else if (tm->embed->g) nvlm_axpy(tm->embed->g + (size_t)q->ids[t] * h, 1.0f, g, h);
        }
        if (!rc && q->n_mem) scatter_memory(tm, q, dmem, dimg, h);
        if (!rc && q->n_img) rc = projector_backward(tm, &s, q->img, q->n_img, dimg, q->dimg);
        free(dimg);
    }
    free(dx), free(dmem);
    state_free(&s, tm->proj_depth);
    if (rc == NVLM_E_NOMEM) return nvlm_fail(err, rc, "out of memory in the training pass (%d tokens)", n);
    if (rc && err && !err->code) return nvlm_fail(err, rc, "training pass failed");
    return rc;
}
