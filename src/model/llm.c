/* Qwen2: RMSNorm, GQA self-attention with biases and rotate-half RoPE, SwiGLU MLP. */
#include "model/llm.h"
#include "core/err.h"
#include "dist/dist.h"
#include "kernels/attention.h"
#include "kernels/qblock.h"
#include "model/finite.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nvlm_kv_init(nvlm_kv *kv, const nvlm_model *m, nvlm_err *err) {
    memset(kv, 0, sizeof *kv);
    kv->n_layers = m->cfg.llm.num_layers;
    kv->kv_dim = m->cfg.llm.num_kv_heads * nvlm_cfg_head_dim(&m->cfg);
    kv->f16 = m->kv_f16;
    kv->k = calloc((size_t)kv->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)kv->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) {
        nvlm_kv_free(kv);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the KV cache");
    }
    return NVLM_OK;
}

int nvlm_kv_reserve(nvlm_kv *kv, int extra, nvlm_err *err) {
    if (kv->len + extra <= kv->cap) return NVLM_OK;
    int cap = kv->cap ? kv->cap : 256;
    while (cap < kv->len + extra) cap *= 2;
    size_t elem = kv->f16 ? sizeof(uint16_t) : sizeof(float);
    for (int l = 0; l < kv->n_layers; l++) {
        void *k = realloc(kv->k[l], elem * (size_t)cap * kv->kv_dim);
        if (k) kv->k[l] = k;
        void *v = k ? realloc(kv->v[l], elem * (size_t)cap * kv->kv_dim) : NULL;
        if (v) kv->v[l] = v;
        if (!k || !v)
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory growing the KV cache to %d positions", cap);
    }
    kv->cap = cap;
    return NVLM_OK;
}

size_t nvlm_kv_bytes(const nvlm_kv *kv) {
    return 2 * (kv->f16 ? sizeof(uint16_t) : sizeof(float)) * (size_t)kv->n_layers * (size_t)kv->len * (size_t)kv->kv_dim;
}

int nvlm_model_set_kv_type(nvlm_model *m, int kv_type, nvlm_err *err) {
    if (!m) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no model");
    if (kv_type != NVLM_KV_F32 && kv_type != NVLM_KV_F16)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "unknown KV cache type %d (NVLM_KV_F32 or NVLM_KV_F16)", kv_type);
    m->kv_f16 = kv_type == NVLM_KV_F16;
    return NVLM_OK;
}

void nvlm_kv_truncate(nvlm_kv *kv, int len) {
    if (len < kv->len) kv->len = len < 0 ? 0 : len;
}

void nvlm_kv_free(nvlm_kv *kv) {
    for (int l = 0; kv->k && l < kv->n_layers; l++) free(kv->k[l]);
    for (int l = 0; kv->v && l < kv->n_layers; l++) free(kv->v[l]);
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

int nvlm_embed_tokens(const nvlm_model *m, const int32_t *ids, int n, float *out, nvlm_err *err) {
    int h = m->cfg.llm.hidden_size;
    size_t row_bytes = nvlm_row_bytes(m->embed.dtype, h);
    for (int t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= m->embed.rows)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "token id %d is outside the vocabulary (%d rows)", ids[t], m->embed.rows);
        /* a tensor-parallel rank holds the vocabulary rows [row0, row0 + local_rows): it fills
         * those and zeros, and the exchange below gives every rank every row, bit for bit */
        int r = ids[t] - m->embed.row0;
        if (m->embed.dist && (r < 0 || r >= m->embed.local_rows)) memset(out + (size_t)t * h, 0, sizeof(float) * (size_t)h);
        else nvlm_row_to_f32(out + (size_t)t * h, (const uint8_t *)m->embed.data + (size_t)r * row_bytes, m->embed.dtype, h);
    }
    if (m->embed.dist) nvlm_dist_combine_owned(m->embed.dist, out, (size_t)n * h);
    return NVLM_OK;
}

/* cos/sin [n_tok, d/2] for positions pos0.. (angles in double, rounded to float as the
 * reference does). Dynamic NTK scaling applies once the sequence exceeds the trained length. */
void nvlm_rope_table(const nvlm_llm_config *c, int d, int pos0, int n_tok, float *cs, float *sn) {
    double base = c->rope_theta;
    int seq = pos0 + n_tok;
    if (!strcmp(c->rope_scaling_type, "dynamic") && seq > c->max_position_embeddings) {
        double f = c->rope_scaling_factor;
        base *= pow(f * seq / c->max_position_embeddings - (f - 1), (double)d / (d - 2));
    }
    for (int i = 0; i < d / 2; i++) {
        double inv = 1.0 / pow(base, (double)(2 * i) / d);
        for (int t = 0; t < n_tok; t++) {
            double a = (double)(pos0 + t) * inv;
            cs[(size_t)t * (d / 2) + i] = (float)cos(a);
            sn[(size_t)t * (d / 2) + i] = (float)sin(a);
        }
    }
}

void nvlm_rope_apply(float *x, int n_heads, int d, const float *cs, const float *sn) {
    int h2 = d / 2;
    for (int hh = 0; hh < n_heads; hh++) {
        float *v = x + (size_t)hh * d;
        for (int i = 0; i < h2; i++) {
            float x1 = v[i], x2 = v[i + h2];
            v[i] = x1 * cs[i] - x2 * sn[i];
            v[i + h2] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

typedef struct self_attn_job {
    const float *q;      /* [n_tok, n_h d] */
    const void *k, *v;   /* cache of this layer [len, kv_dim], float32 or F16 */
    int f16;
    float *out;          /* [n_tok, n_h d] */
    int n_tok, pos0, n_h, group, d, kv_dim;
    float scale;
    int level;           /* kernels/cpu.h */
    int parts;           /* query ranges per head (units = heads x parts) */
    float *scratch;      /* [pool threads][per_thread], made before the loop: no unit can fail */
    size_t per_thread;
} self_attn_job;

/* Start of query range p of `parts`: the ranges cost the same causal work (query i sees
 * pos0 + i + 1 keys), so heads x parts units split evenly over the pool (14 heads alone go
 * 8:6 over 2 threads). Depends only on (n_tok, pos0, parts), never on the thread count. */
static int attn_part_start(const self_attn_job *j, int p) {
    if (p <= 0) return 0;
    if (p >= j->parts) return j->n_tok;
    double n = j->n_tok, z = j->pos0, target = (n * z + n * n / 2) * p / j->parts;
    int q = (int)(-z + sqrt(z * z + 2 * target) + 0.5);
    q = (q + 4) / 8 * 8; /* whole slivers */
    return q < 0 ? 0 : q > j->n_tok ? j->n_tok : q;
}

/* F16 cache: the keys and values of kv head g as float32 rows of d (kbuf, vbuf). */
static void kv_head_to_f32(const self_attn_job *j, size_t g, int n_keys, float *kbuf, float *vbuf) {
    const uint16_t *k = (const uint16_t *)j->k + g * j->d, *v = (const uint16_t *)j->v + g * j->d;
    for (int t = 0; t < n_keys; t++) {
        nvlm_row_to_f32_at(j->level, kbuf + (size_t)t * j->d, k + (size_t)t * j->kv_dim, NVLM_DT_F16, j->d);
        nvlm_row_to_f32_at(j->level, vbuf + (size_t)t * j->d, v + (size_t)t * j->kv_dim, NVLM_DT_F16, j->d);
    }
}

/* One unit = one range of queries of one head (attn_part_start): causal attention over
 * positions 0..pos0+t. With an F16 cache the unit's kv head is expanded once to float32
 * (consecutive units share it), then the same kernel runs, so results do not depend on the
 * split over threads. */
static void self_attn_units(void *ctx, size_t begin, size_t end, int thread) {
    const self_attn_job *j = ctx;
    int n_keys = j->pos0 + j->n_tok;
    size_t nkd = (size_t)n_keys * j->d, ss = j->per_thread - (j->f16 ? 2 * nkd : 0);
    float *scratch = j->scratch + (size_t)thread * j->per_thread;
    float *kbuf = scratch + ss, *vbuf = kbuf + nkd;
    size_t qs = (size_t)j->n_h * j->d, have = (size_t)-1;
    for (size_t a = begin; a < end; a++) {
        size_t head = a / (size_t)j->parts, g = head / (size_t)j->group;
        int q0 = attn_part_start(j, (int)(a % j->parts)), q1 = attn_part_start(j, (int)(a % j->parts) + 1);
        if (q1 <= q0) continue;
        const float *k = (const float *)j->k + g * j->d, *v = (const float *)j->v + g * j->d;
        size_t stride = (size_t)j->kv_dim;
        if (j->f16) {
            if (g != have) kv_head_to_f32(j, g, n_keys, kbuf, vbuf), have = g;
            k = kbuf, v = vbuf, stride = (size_t)j->d;
        }
        nvlm_attention(j->level, j->q + (size_t)q0 * qs + head * j->d, qs, q1 - q0, k, stride, v, stride, j->pos0 + q1,
                       j->pos0 + q0, j->d, j->scale, j->out + (size_t)q0 * qs + head * j->d, qs, scratch);
    }
}

/* Floats of scratch one thread needs for any unit of j (prepacking depends on the range). */
static size_t self_attn_scratch(const self_attn_job *j) {
    size_t ss = 0;
    for (int p = 0; p < j->parts; p++) {
        int q0 = attn_part_start(j, p), q1 = attn_part_start(j, p + 1);
        size_t s = nvlm_attention_scratch(j->level, q1 - q0, j->pos0 + q1, j->d);
        ss = s > ss ? s : ss;
    }
    return ss + (j->f16 ? 2 * (size_t)(j->pos0 + j->n_tok) * j->d : 0);
}

/* Appends n rows of kv_dim keys and values at position pos0 of layer l's cache. */
static void kv_store(nvlm_kv *kv, int l, int pos0, const float *k, const float *v, int n) {
    size_t off = (size_t)pos0 * kv->kv_dim, cnt = (size_t)n * kv->kv_dim;
    if (!kv->f16) {
        memcpy((float *)kv->k[l] + off, k, sizeof(float) * cnt);
        memcpy((float *)kv->v[l] + off, v, sizeof(float) * cnt);
        return;
    }
    uint16_t *kd = (uint16_t *)kv->k[l] + off, *vd = (uint16_t *)kv->v[l] + off;
    for (size_t i = 0; i < cnt; i++) kd[i] = nvlm_f32_to_f16(k[i]), vd[i] = nvlm_f32_to_f16(v[i]);
}

typedef struct llm_buffers {
    float *x, *y, *q, *k, *v, *att, *gate, *up, *cs, *sn;
} llm_buffers;

static void llm_buffers_free(llm_buffers *b) {
    free(b->x), free(b->y), free(b->q), free(b->k), free(b->v);
    free(b->att), free(b->gate), free(b->up), free(b->cs), free(b->sn);
}

static int llm_buffers_alloc(llm_buffers *b, const nvlm_llm_config *c, int n) {
    int h = c->hidden_size, d = h / c->num_heads, qd = c->num_heads * d, kvd = c->num_kv_heads * d;
    size_t N = (size_t)n;
    b->x = malloc(sizeof(float) * N * h);
    b->y = malloc(sizeof(float) * N * h);
    b->q = malloc(sizeof(float) * N * qd);
    b->k = malloc(sizeof(float) * N * kvd);
    b->v = malloc(sizeof(float) * N * kvd);
    b->att = malloc(sizeof(float) * N * qd);
    b->gate = malloc(sizeof(float) * N * c->intermediate_size);
    b->up = malloc(sizeof(float) * N * c->intermediate_size);
    b->cs = malloc(sizeof(float) * N * (d / 2));
    b->sn = malloc(sizeof(float) * N * (d / 2));
    return b->x && b->y && b->q && b->k && b->v && b->att && b->gate && b->up && b->cs && b->sn ? 0 : -1;
}

/* The row-wise work between the matrix products, split over the pool by token (each row is
 * computed the same way whatever the split). */
enum { ROWS_NORM, ROWS_ADD_NORM, ROWS_ADD, ROWS_ROPE };

typedef struct llm_rows_job {
    int op;
    const nvlm_llm_config *c;
    llm_buffers *b;
    const float *norm;  /* ROWS_NORM, ROWS_ADD_NORM */
    nvlm_kv *kv;        /* ROWS_ROPE: rotate q and k, append k and v to layer l's cache */
    int l, pos0, d;
} llm_rows_job;

static void llm_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const llm_rows_job *j = ctx;
    const nvlm_llm_config *c = j->c;
    const int h = c->hidden_size, d = j->d;
    llm_buffers *b = j->b;
    if (j->op == ROWS_ROPE) {
        const int kvd = c->num_kv_heads * d;
        for (size_t t = begin; t < end; t++) {
            const float *cs = b->cs + t * (d / 2), *sn = b->sn + t * (d / 2);
            nvlm_rope_apply(b->q + t * c->num_heads * d, c->num_heads, d, cs, sn);
            nvlm_rope_apply(b->k + t * kvd, c->num_kv_heads, d, cs, sn);
        }
        kv_store(j->kv, j->l, j->pos0 + (int)begin, b->k + begin * kvd, b->v + begin * kvd, (int)(end - begin));
        return;
    }
    for (size_t t = begin; t < end; t++) {
        float *x = b->x + t * h, *y = b->y + t * h;
        if (j->op != ROWS_NORM)
            for (int i = 0; i < h; i++) x[i] += y[i];
        if (j->op != ROWS_ADD) nvlm_rmsnorm(y, x, j->norm, h, h, c->rms_norm_eps);
    }
}

static void llm_rows_run(nvlm_model *m, int op, llm_buffers *b, int n, const float *norm, nvlm_kv *kv, int l) {
    const nvlm_llm_config *c = &m->cfg.llm;
    llm_rows_job j = {.op = op, .c = c, .b = b, .norm = norm, .kv = kv, .l = l, .pos0 = kv ? kv->len : 0,
                      .d = c->hidden_size / c->num_heads};
    nvlm_pool_run(m->pool, (size_t)n, 16, llm_rows, &j);
}

static int llm_layer_forward(nvlm_model *m, nvlm_kv *kv, int l, int n, llm_buffers *b, nvlm_err *err) {
    const nvlm_llm_config *c = &m->cfg.llm;
    const llm_layer *L = &m->llm[l];
    const int d = c->hidden_size / c->num_heads, kvd = kv->kv_dim, pos0 = kv->len;
    llm_rows_run(m, ROWS_NORM, b, n, L->input_norm, NULL, l);
    float *qkv_out[3] = {b->q, b->k, b->v};
    const nvlm_wmat *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
    const float *qkv_b[3] = {L->bq, L->bk, L->bv};
    int rc = nvlm_matmul_multi(m->pool, 3, qkv_out, b->y, n, qkv_w, qkv_b, err);
    if (rc) return rc;
    llm_rows_run(m, ROWS_ROPE, b, n, NULL, kv, l);
    self_attn_job aj = {.q = b->q, .k = kv->k[l], .v = kv->v[l], .f16 = kv->f16, .out = b->att, .n_tok = n,
                        .pos0 = pos0, .n_h = c->num_heads, .group = c->num_heads / c->num_kv_heads, .d = d,
                        .kv_dim = kvd, .scale = 1.0f / sqrtf((float)d), .level = nvlm_pool_level(m->pool),
                        .parts = n >= 64 ? 4 : 1};
    aj.per_thread = self_attn_scratch(&aj);
    aj.scratch = malloc(sizeof(float) * aj.per_thread * (size_t)nvlm_pool_threads(m->pool));
    if (!aj.scratch) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for attention scratch (%d keys)", pos0 + n);
    nvlm_pool_run(m->pool, (size_t)c->num_heads * aj.parts, 1, self_attn_units, &aj);
    free(aj.scratch);
    if ((rc = nvlm_matmul(m->pool, b->y, b->att, n, &L->wo, NULL, err))) return rc;
    llm_rows_run(m, ROWS_ADD_NORM, b, n, L->post_norm, NULL, l);
    float *mlp_out[2] = {b->gate, b->up};
    const nvlm_wmat *mlp_w[2] = {&L->gate, &L->up};
    const float *mlp_b[2] = {NULL, NULL};
    if ((rc = nvlm_matmul_multi(m->pool, 2, mlp_out, b->y, n, mlp_w, mlp_b, err))) return rc;
    nvlm_silu_mul_pool(m->pool, b->gate, b->up, (size_t)n * c->intermediate_size);
    if ((rc = nvlm_matmul(m->pool, b->y, b->gate, n, &L->down, NULL, err))) return rc;
    llm_rows_run(m, ROWS_ADD, b, n, NULL, NULL, l);
    return NVLM_OK;
}

int nvlm_llm_nonfinite(nvlm_err *err, const char *what, int l, const nvlm_llm_config *c) {
    char where[128];
    snprintf(where, sizeof where, "%s %d (of 0..%d; tensors language_model.model.layers.%d.*)", what, l, c->num_layers - 1, l);
    return nvlm_fail_nonfinite(err, where);
}

int nvlm_llm_forward(nvlm_model *m, nvlm_kv *kv, const float *embeds, int n, const nvlm_llm_hooks *hooks,
                     float *logits, int all_logits, nvlm_err *err) {
    const nvlm_llm_config *c = &m->cfg.llm;
    const int h = c->hidden_size, d = h / c->num_heads;
    if (n <= 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no tokens to run");
    int rc = nvlm_kv_reserve(kv, n, err);
    if (rc) return rc;
    llm_buffers b = {0};
    if (llm_buffers_alloc(&b, c, n)) {
        llm_buffers_free(&b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory running %d tokens", n);
    }
    memcpy(b.x, embeds, sizeof(float) * (size_t)n * h);
    nvlm_rope_table(c, d, kv->len, n, b.cs, b.sn);
    const size_t nh = (size_t)n * h;
    if (!nvlm_all_finite(b.x, nh)) rc = nvlm_fail_nonfinite(err, "the input embeddings (token embeddings or image features)");
    for (int l = 0; l < c->num_layers && !rc; l++) {
        if (hooks && hooks->before_layer) rc = hooks->before_layer(hooks->user, l, b.x, n, kv->len, err);
        if (!rc && !nvlm_all_finite(b.x, nh)) rc = nvlm_llm_nonfinite(err, "the cross-attention block before decoder layer", l, c);
        if (!rc) rc = llm_layer_forward(m, kv, l, n, &b, err);
        if (!rc && !nvlm_all_finite(b.x, nh)) rc = nvlm_llm_nonfinite(err, "decoder layer", l, c);
    }
    if (!rc) {
        kv->len += n;
        if (logits) {
            int first = all_logits ? 0 : n - 1;
            for (int t = first; t < n; t++)
                nvlm_rmsnorm(b.y + (size_t)(t - first) * h, b.x + (size_t)t * h, m->final_norm, h, h, c->rms_norm_eps);
            rc = nvlm_matmul(m->pool, logits, b.y, n - first, &m->lm_head, NULL, err);
            if (!rc && !nvlm_all_finite(logits, (size_t)(n - first) * c->vocab_size))
                rc = nvlm_fail_nonfinite(err, "the final norm and lm_head (the logits)");
        }
    }
    llm_buffers_free(&b);
    return rc;
}
