/* The engine's forward pass over a batch of several sequences (Qwen2 layers: RMSNorm, GQA
 * self-attention with rotate-half RoPE over each sequence's own KV pages, SwiGLU MLP), through
 * the backend's entries only. docs/engine.md says why every token's values are independent of
 * the batch it is in. */
#include "engine/engine.h"
#include "model/quant.h"
#include "core/err.h"
#include "dist/dist.h"
#include "kernels/attention.h"
#include "model/finite.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct run {
    int seq, first, n, pos0, gen, row; /* first: index in the batch; row: first row of the arena */
    const nvlm_llm_hooks *hooks;
} run;

typedef struct attn_unit {
    int run, head, q0, q1;
} attn_unit;

typedef struct thread_scratch {
    float *p;
    size_t n;
} thread_scratch;

struct nvlm_engine {
    nvlm_model *m;
    nvlm_backend *be;
    nvlm_kvstore *kv;
    int cap, h, d, qd, kvd, inter;
    /* tensor parallel (docs/distributed.md): this rank's query heads [h0, h1) and the kv heads
     * [g0, g1) they read, whose keys and values alone it keeps; one process: all of them */
    nvlm_dist *dist;
    int h0, h1, g0, g1;
    /* the arena: activations of max_batch tokens, sized once */
    float *x, *y, *q, *k, *v, *att, *gate, *up, *cs, *sn;
    run *runs;
    int *row_run;
    attn_unit *units;
    size_t cap_units;
    thread_scratch *ts; /* per backend slot: attention keys/values and kernel scratch, high-water sized */
    int n_ts;
    nvlm_engine_stats st;
};

static void arena_free(nvlm_engine *e) {
    float **bufs[] = {&e->x, &e->y, &e->q, &e->k, &e->v, &e->att, &e->gate, &e->up, &e->cs, &e->sn};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) e->be->i->release(e->be, *bufs[i]), *bufs[i] = NULL;
    free(e->runs), free(e->row_run), free(e->units);
    for (int t = 0; e->ts && t < e->n_ts; t++) e->be->i->release(e->be, e->ts[t].p);
    free(e->ts);
}

static int arena_alloc(nvlm_engine *e) {
    const nvlm_llm_config *c = &e->m->cfg.llm;
    size_t N = (size_t)e->cap;
    struct { float **p; size_t n; } bufs[] = {
        {&e->x, N * e->h}, {&e->y, N * e->h}, {&e->q, N * e->qd}, {&e->k, N * e->kvd}, {&e->v, N * e->kvd},
        {&e->att, N * e->qd}, {&e->gate, N * e->inter}, {&e->up, N * e->inter}, {&e->cs, N * (e->d / 2)},
        {&e->sn, N * (e->d / 2)},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (!(*bufs[i].p = e->be->i->alloc(e->be, sizeof(float) * (bufs[i].n ? bufs[i].n : 1)))) return -1;
    e->cap_units = N * (size_t)c->num_heads * 4;
    e->runs = malloc(sizeof *e->runs * N);
    e->row_run = malloc(sizeof *e->row_run * N);
    e->units = malloc(sizeof *e->units * e->cap_units);
    e->n_ts = e->be->i->slots(e->be);
    e->ts = calloc((size_t)e->n_ts, sizeof *e->ts);
    return e->runs && e->row_run && e->units && e->ts ? 0 : -1;
}

int nvlm_engine_new(nvlm_model *m, const nvlm_engine_opts *o_in, nvlm_engine **out, nvlm_err *err) {
    *out = NULL;
    if (!m) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no model");
    nvlm_engine_opts o = o_in ? *o_in : (nvlm_engine_opts){0};
    const nvlm_llm_config *c = &m->cfg.llm;
    nvlm_engine *e = calloc(1, sizeof *e);
    if (!e) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the engine");
    e->m = m;
    e->cap = o.max_batch > 0 ? o.max_batch : 512;
    e->h = c->hidden_size;
    e->d = c->hidden_size / c->num_heads;
    e->qd = c->num_heads * e->d;
    e->kvd = c->num_kv_heads * e->d;
    e->inter = c->intermediate_size;
    e->dist = nvlm_dist_size(m->embed.dist) > 1 ? m->embed.dist : NULL; /* a job's matrices carry it */
    nvlm_dist_heads(nvlm_dist_rank(e->dist), nvlm_dist_size(e->dist), c->num_heads, c->num_kv_heads, &e->h0, &e->h1, &e->g0,
                    &e->g1);
    int rc = nvlm_backend_cpu_new(m->pool, &e->be, err);
    if (!rc) rc = nvlm_model_pack(m, o.gen_streams, err); /* the generation layouts (kernels/wpack.h) */
    nvlm_kv_opts ko = {.n_layers = c->num_layers, .kv_dim = (e->g1 - e->g0) * e->d, .f16 = m->kv_f16,
                       .page_tokens = o.page_tokens};
    if (!rc) rc = nvlm_kvstore_new(&ko, &e->kv, err);
    if (!rc && (o.kv_bytes || o.kv_tokens)) { /* the bound, now that the page size is known (one process's
                                                 * page: every rank of a job has the same number) */
        nvlm_kvstore_free(e->kv);
        e->kv = NULL;
        int P = o.page_tokens ? o.page_tokens : 16;
        size_t page = (m->kv_f16 ? 2 : 4) * 2 * (size_t)c->num_layers * (size_t)P * (size_t)e->kvd;
        size_t by_bytes = o.kv_bytes ? o.kv_bytes / page : (size_t)-1;
        size_t by_tok = o.kv_tokens ? (o.kv_tokens + (size_t)P - 1) / (size_t)P : (size_t)-1;
        ko.max_pages = by_bytes < by_tok ? by_bytes : by_tok;
        if (!ko.max_pages)
            rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "the KV size bound is below one page (%zu bytes, %d positions)", page, P);
        else
            rc = nvlm_kvstore_new(&ko, &e->kv, err);
    }
    if (!rc && arena_alloc(e)) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the engine's buffers (%d tokens)", e->cap);
    if (rc) {
        nvlm_engine_free(e);
        return rc;
    }
    *out = e;
    return NVLM_OK;
}

void nvlm_engine_free(nvlm_engine *e) {
    if (!e) return;
    if (e->be) arena_free(e);
    nvlm_kvstore_free(e->kv);
    nvlm_backend_free(e->be);
    free(e);
}

nvlm_kvstore *nvlm_engine_kv(nvlm_engine *e) { return e->kv; }
nvlm_model *nvlm_engine_model(nvlm_engine *e) { return e->m; }
int nvlm_engine_max_batch(const nvlm_engine *e) { return e->cap; }
void nvlm_engine_stats_get(const nvlm_engine *e, nvlm_engine_stats *st) { *st = e->st; }

/* ------------------------------------------------------------------ batches */

int nvlm_batch_init(nvlm_batch *b, int cap, int h, nvlm_err *err) {
    memset(b, 0, sizeof *b);
    b->cap = cap, b->h = h;
    b->seq = malloc(sizeof *b->seq * (size_t)cap);
    b->pos = malloc(sizeof *b->pos * (size_t)cap);
    b->logits = malloc((size_t)cap);
    b->gen = malloc((size_t)cap);
    b->embd = malloc(sizeof(float) * (size_t)cap * (size_t)h);
    b->hooks = malloc(sizeof *b->hooks * (size_t)cap);
    if (b->seq && b->pos && b->logits && b->gen && b->embd && b->hooks) return NVLM_OK;
    nvlm_batch_free(b);
    return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a batch of %d tokens", cap);
}

void nvlm_batch_free(nvlm_batch *b) {
    free(b->seq), free(b->pos), free(b->logits), free(b->gen), free(b->embd), free((void *)b->hooks);
    memset(b, 0, sizeof *b);
}

int nvlm_batch_add(nvlm_batch *b, int seq, int pos, const float *embd, int logits, int gen,
                   const nvlm_llm_hooks *hooks) {
    if (b->n_tok >= b->cap) return -1;
    int i = b->n_tok++;
    b->seq[i] = seq, b->pos[i] = pos, b->logits[i] = (uint8_t)!!logits, b->gen[i] = (uint8_t)!!gen;
    b->hooks[i] = hooks;
    if (embd) memcpy(b->embd + (size_t)i * b->h, embd, sizeof(float) * (size_t)b->h);
    return i;
}

int nvlm_batch_n_logits(const nvlm_batch *b) {
    int n = 0;
    for (int i = 0; i < b->n_tok; i++) n += b->logits[i];
    return n;
}

/* Splits the batch into runs of one sequence each, generated tokens' runs first (their rows
 * come first in the arena: the matrix-vector rows of nvlm_matmul_roles). */
static int make_runs(nvlm_engine *e, const nvlm_batch *b, int *n_runs, int *n_gen, nvlm_err *err) {
    int nr = 0;
    for (int i = 0; i < b->n_tok;) {
        int j = i + 1;
        while (j < b->n_tok && b->seq[j] == b->seq[i]) j++;
        int len = nvlm_kv_seq_len(e->kv, b->seq[i]);
        if (len < 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch token %d: no KV sequence %d", i, b->seq[i]);
        for (int r = 0; r < nr; r++)
            if (e->runs[r].seq == b->seq[i])
                return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch: the tokens of sequence %d are not together", b->seq[i]);
        for (int t = i; t < j; t++) {
            if (b->pos[t] != len + (t - i))
                return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch token %d: position %d, but sequence %d continues at %d", t,
                                 b->pos[t], b->seq[i], len + (t - i));
            if (b->gen[t] != b->gen[i] || b->hooks[t] != b->hooks[i])
                return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch: sequence %d mixes roles or hooks in one step", b->seq[i]);
        }
        if (b->gen[i] && j - i != 1)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch: sequence %d has %d generated tokens in one step (1 at most)",
                             b->seq[i], j - i);
        e->runs[nr++] = (run){.seq = b->seq[i], .first = i, .n = j - i, .pos0 = len, .gen = b->gen[i], .hooks = b->hooks[i]};
        i = j;
    }
    int row = 0;
    for (int pass = 1; pass >= 0; pass--) /* generated first */
        for (int r = 0; r < nr; r++)
            if (e->runs[r].gen == pass) {
                e->runs[r].row = row;
                for (int t = 0; t < e->runs[r].n; t++) e->row_run[row + t] = r;
                row += e->runs[r].n;
            }
    *n_gen = 0;
    for (int r = 0; r < nr; r++) *n_gen += e->runs[r].gen ? e->runs[r].n : 0;
    *n_runs = nr;
    return NVLM_OK;
}

/* ------------------------------------------------------------- row work */

enum { ROWS_NORM, ROWS_ADD_NORM, ROWS_ADD, ROWS_ROPE };

typedef struct rows_job {
    nvlm_engine *e;
    int op, l;
    const float *norm;
} rows_job;

static void store_row(void *dst, const float *src, int n, int f16) {
    if (!f16) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t *d = dst;
    for (int i = 0; i < n; i++) d[i] = nvlm_f32_to_f16(src[i]);
}

static void rows_fn(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const rows_job *j = ctx;
    nvlm_engine *e = j->e;
    const nvlm_llm_config *c = &e->m->cfg.llm;
    const int h = e->h, d = e->d, kvd = e->kvd, f16 = nvlm_kv_is_f16(e->kv);
    for (size_t t = begin; t < end; t++) {
        if (j->op == ROWS_ROPE) {
            const run *r = &e->runs[e->row_run[t]];
            const float *cs = e->cs + t * (d / 2), *sn = e->sn + t * (d / 2);
            nvlm_rope_apply(e->q + t * e->qd, c->num_heads, d, cs, sn);
            nvlm_rope_apply(e->k + t * kvd, c->num_kv_heads, d, cs, sn);
            int pos = r->pos0 + (int)t - r->row, kv0 = e->g0 * d, kvn = (e->g1 - e->g0) * d; /* this rank's kv heads */
            store_row(nvlm_kv_row(e->kv, r->seq, j->l, 0, pos), e->k + t * kvd + kv0, kvn, f16);
            store_row(nvlm_kv_row(e->kv, r->seq, j->l, 1, pos), e->v + t * kvd + kv0, kvn, f16);
            continue;
        }
        float *x = e->x + t * h, *y = e->y + t * h;
        if (j->op != ROWS_NORM)
            for (int i = 0; i < h; i++) x[i] += y[i];
        if (j->op != ROWS_ADD) nvlm_rmsnorm(y, x, j->norm, h, h, c->rms_norm_eps);
    }
}

static int rows_run(nvlm_engine *e, int op, int n, const float *norm, int l, nvlm_err *err) {
    rows_job j = {.e = e, .op = op, .l = l, .norm = norm};
    return e->be->i->units(e->be, (size_t)n, 16, rows_fn, &j, err);
}

/* -------------------------------------------------------------- attention */

enum { PAD_Q = 4 }; /* prompt runs of fewer queries are padded to this: the blocked kernel */

typedef struct attn_job {
    nvlm_engine *e;
    int l, level;
    float scale;
    int max_keys;   /* keys of the longest sequence in the step: the slots' key/value buffers */
} attn_job;

/* Keys and values of kv head g (of those this rank keeps) of a sequence, positions [0, n), as
 * float32 rows of d. */
static void gather_head(nvlm_engine *e, int seq, int l, int g, int n, int level, float *kb, float *vb) {
    const int d = e->d, f16 = nvlm_kv_is_f16(e->kv);
    size_t es = f16 ? 2 : 4;
    for (int p = 0; p < n; p++) {
        const uint8_t *kr = (const uint8_t *)nvlm_kv_row_c(e->kv, seq, l, 0, p) + (size_t)g * d * es;
        const uint8_t *vr = (const uint8_t *)nvlm_kv_row_c(e->kv, seq, l, 1, p) + (size_t)g * d * es;
        if (f16) {
            nvlm_row_to_f32_at(level, kb + (size_t)p * d, kr, NVLM_DT_F16, d);
            nvlm_row_to_f32_at(level, vb + (size_t)p * d, vr, NVLM_DT_F16, d);
        } else {
            memcpy(kb + (size_t)p * d, kr, sizeof(float) * (size_t)d);
            memcpy(vb + (size_t)p * d, vr, sizeof(float) * (size_t)d);
        }
    }
}

static void attn_fn(void *ctx, size_t begin, size_t end, int thread) {
    const attn_job *j = ctx;
    nvlm_engine *e = j->e;
    const nvlm_llm_config *c = &e->m->cfg.llm;
    const int d = e->d, group = c->num_heads / c->num_kv_heads;
    const size_t qs = (size_t)e->qd, nkd = (size_t)j->max_keys * d;
    float *kb = e->ts[thread].p, *vb = kb + nkd, *qpad = vb + nkd, *opad = qpad + PAD_Q * (size_t)d;
    float *scratch = opad + PAD_Q * (size_t)d;
    int have_seq = -1, have_g = -1, have_n = 0;
    for (size_t a = begin; a < end; a++) {
        const attn_unit *u = &e->units[a];
        const run *r = &e->runs[u->run];
        int g = u->head / group, n_keys = r->pos0 + u->q1, nq = u->q1 - u->q0;
        if (r->seq != have_seq || g != have_g || n_keys > have_n) {
            gather_head(e, r->seq, j->l, g - e->g0, n_keys, j->level, kb, vb);
            have_seq = r->seq, have_g = g, have_n = n_keys;
        }
        const float *q = e->q + (size_t)(r->row + u->q0) * qs + (size_t)u->head * d;
        float *o = e->att + (size_t)(r->row + u->q0) * qs + (size_t)u->head * d;
        if (r->gen || nq >= PAD_Q) {
            nvlm_attention(j->level, q, qs, nq, kb, (size_t)d, vb, (size_t)d, n_keys, r->pos0 + u->q0, d, j->scale, o, qs,
                           scratch);
            continue;
        }
        for (int i = 0; i < PAD_Q; i++) memcpy(qpad + (size_t)i * d, q + (size_t)(i < nq ? i : nq - 1) * qs, sizeof(float) * d);
        nvlm_attention(j->level, qpad, (size_t)d, PAD_Q, kb, (size_t)d, vb, (size_t)d, n_keys, r->pos0 + u->q0, d, j->scale,
                       opad, (size_t)d, scratch);
        for (int i = 0; i < nq; i++) memcpy(o + (size_t)i * qs, opad + (size_t)i * d, sizeof(float) * d);
    }
}

/* Units: (run, head, query range). A prompt run of 64 queries or more is cut in 4 ranges of
 * whole slivers so that its heads split evenly over the workers; any cut gives the same values
 * (the blocked kernel computes each query alone). */
static int attention(nvlm_engine *e, int n_runs, int l, nvlm_err *err) {
    const nvlm_llm_config *c = &e->m->cfg.llm;
    attn_job j = {.e = e, .l = l, .level = e->be->i->level(e->be), .scale = 1.0f / sqrtf((float)e->d)};
    size_t nu = 0, need = 0;
    int n_rows = 0;
    for (int ri = 0; ri < n_runs; ri++) {
        const run *r = &e->runs[ri];
        n_rows += r->n;
        int parts = !r->gen && r->n >= 64 ? 4 : 1, step = (r->n + parts - 1) / parts;
        step = (step + 7) / 8 * 8;
        int keys = r->pos0 + r->n;
        j.max_keys = keys > j.max_keys ? keys : j.max_keys;
        for (int hd = e->h0; hd < e->h1; hd++) /* this rank's heads */
            for (int q0 = 0; q0 < r->n; q0 += step) {
                if (nu == e->cap_units) return nvlm_fail(err, NVLM_E_INTERNAL, "attention: too many units");
                int q1 = q0 + step < r->n ? q0 + step : r->n;
                e->units[nu++] = (attn_unit){.run = ri, .head = hd, .q0 = q0, .q1 = q1};
                int nq = q1 - q0 < PAD_Q && !r->gen ? PAD_Q : q1 - q0;
                size_t s = nvlm_attention_scratch(j.level, nq, r->pos0 + q1, e->d);
                need = s > need ? s : need;
            }
    }
    size_t total = 2 * (size_t)j.max_keys * e->d + 2 * PAD_Q * (size_t)e->d + need + 16;
    for (int t = 0; t < e->n_ts; t++) { /* grows to the high-water mark, then never again */
        if (e->ts[t].n >= total) continue;
        size_t n = total + total / 2;
        float *p = e->be->i->alloc(e->be, sizeof(float) * n);
        if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for attention scratch (%zu floats)", n);
        e->be->i->release(e->be, e->ts[t].p);
        e->ts[t] = (thread_scratch){p, n};
    }
    int rc = e->be->i->units(e->be, nu, 1, attn_fn, &j, err);
    /* tensor parallel: every rank computed its heads; all of them, for the o projection */
    if (!rc && e->dist) nvlm_dist_gather_heads(e->dist, e->att, n_rows, c->num_heads, e->d);
    return rc;
}

/* ------------------------------------------------------------------ layers */

static int layer(nvlm_engine *e, int l, int n, int n_gen, int n_runs, nvlm_err *err) {
    const llm_layer *L = &e->m->llm[l];
    const nvlm_backend_i *B = e->be->i;
    int rc = rows_run(e, ROWS_NORM, n, L->input_norm, l, err);
    float *qkv_out[3] = {e->q, e->k, e->v};
    const nvlm_wmat *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
    const float *qkv_b[3] = {L->bq, L->bk, L->bv};
    if (!rc) rc = B->matmul(e->be, 3, qkv_out, e->y, n_gen, n, qkv_w, qkv_b, err);
    if (!rc) rc = rows_run(e, ROWS_ROPE, n, NULL, l, err);
    if (!rc) rc = attention(e, n_runs, l, err);
    const nvlm_wmat *wo = &L->wo, *down = &L->down;
    const float *nob = NULL;
    if (!rc) rc = B->matmul(e->be, 1, &e->y, e->att, n_gen, n, &wo, &nob, err);
    if (!rc) rc = rows_run(e, ROWS_ADD_NORM, n, L->post_norm, l, err);
    float *mlp_out[2] = {e->gate, e->up};
    const nvlm_wmat *mlp_w[2] = {&L->gate, &L->up};
    const float *mlp_b[2] = {NULL, NULL};
    if (!rc) rc = B->matmul(e->be, 2, mlp_out, e->y, n_gen, n, mlp_w, mlp_b, err);
    if (!rc) rc = B->silu_mul(e->be, e->gate, e->up, (size_t)n * e->inter, err);
    if (!rc) rc = B->matmul(e->be, 1, &e->y, e->gate, n_gen, n, &down, &nob, err);
    if (!rc) rc = rows_run(e, ROWS_ADD, n, NULL, l, err);
    return rc;
}

/* The per-layer finite checks (as nvlm_llm_forward's): a non-finite activation fails the call
 * with NVLM_E_NUMERIC naming the layer, instead of answering '!!!!'. l < 0: the input
 * embeddings. */
static int check_finite(nvlm_engine *e, int n_runs, const char *what, int l, nvlm_err *err) {
    for (int r = 0; r < n_runs; r++) {
        const run *ru = &e->runs[r];
        if (nvlm_all_finite(e->x + (size_t)ru->row * e->h, (size_t)ru->n * e->h)) continue;
        return l < 0 ? nvlm_fail_nonfinite(err, what) : nvlm_llm_nonfinite(err, what, l, &e->m->cfg.llm);
    }
    return NVLM_OK;
}

/* Arena row of batch token i. */
static int row_of(const nvlm_engine *e, int n_runs, int i) {
    for (int r = 0; r < n_runs; r++)
        if (i >= e->runs[r].first && i < e->runs[r].first + e->runs[r].n) return e->runs[r].row + i - e->runs[r].first;
    return -1;
}

int nvlm_decode(nvlm_engine *e, const nvlm_batch *b, int l0, int l1, float *hidden, float *logits, nvlm_err *err) {
    const nvlm_llm_config *c = &e->m->cfg.llm;
    const int h = e->h, n = b->n_tok;
    if (n <= 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "an empty batch");
    if (n > e->cap) return nvlm_fail(err, NVLM_E_INVALID_ARG, "a batch of %d tokens, the engine takes %d", n, e->cap);
    if (l0 < 0 || l1 > c->num_layers || l0 >= l1)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "layer range [%d, %d) outside [0, %d)", l0, l1, c->num_layers);
    if (b->h != h) return nvlm_fail(err, NVLM_E_INVALID_ARG, "a batch of width %d for a model of %d", b->h, h);
    if (l0 > 0 && !hidden) return nvlm_fail(err, NVLM_E_INVALID_ARG, "layers from %d need the hidden states", l0);
    int n_runs = 0, n_gen = 0, rc = make_runs(e, b, &n_runs, &n_gen, err);
    for (int r = 0; !rc && r < n_runs; r++) rc = nvlm_kv_seq_reserve(e->kv, e->runs[r].seq, e->runs[r].n, err);
    if (rc) return rc;
    for (int r = 0; r < n_runs; r++) {
        const run *ru = &e->runs[r];
        const float *src = l0 == 0 ? b->embd : hidden;
        memcpy(e->x + (size_t)ru->row * h, src + (size_t)ru->first * h, sizeof(float) * (size_t)ru->n * h);
        nvlm_rope_table(c, e->d, ru->pos0, ru->n, e->cs + (size_t)ru->row * (e->d / 2), e->sn + (size_t)ru->row * (e->d / 2));
    }
    if (l0 == 0) rc = check_finite(e, n_runs, "the input embeddings (token embeddings or image features)", -1, err);
    for (int l = l0; l < l1 && !rc; l++) {
        int hooked = 0;
        for (int r = 0; r < n_runs && !rc; r++) {
            const run *ru = &e->runs[r];
            float *xr = e->x + (size_t)ru->row * h;
            if (ru->hooks && ru->hooks->before_layer_role)
                rc = ru->hooks->before_layer_role(ru->hooks->user, l, xr, ru->n, ru->pos0, ru->gen, err), hooked = 1;
            else if (ru->hooks && ru->hooks->before_layer)
                rc = ru->hooks->before_layer(ru->hooks->user, l, xr, ru->n, ru->pos0, err), hooked = 1;
        }
        if (!rc && hooked) rc = check_finite(e, n_runs, "the cross-attention block before decoder layer", l, err);
        if (!rc) rc = layer(e, l, n, n_gen, n_runs, err);
        if (!rc) rc = check_finite(e, n_runs, "decoder layer", l, err);
    }
    if (!rc) rc = e->be->i->sync(e->be, err);
    if (rc) return rc;
    if (l1 < c->num_layers) {
        for (int r = 0; r < n_runs; r++)
            memcpy(hidden + (size_t)e->runs[r].first * h, e->x + (size_t)e->runs[r].row * h,
                   sizeof(float) * (size_t)e->runs[r].n * h);
        return NVLM_OK;
    }
    for (int r = 0; r < n_runs; r++) nvlm_kv_seq_advance(e->kv, e->runs[r].seq, e->runs[r].n);
    e->st.steps++, e->st.tokens += (uint64_t)n, e->st.gen_tokens += (uint64_t)n_gen;
    e->st.prompt_tokens += (uint64_t)(n - n_gen), e->st.last_batch = n;
    if (!logits) return NVLM_OK;
    int nm = 0;
    for (int i = 0; i < n; i++)
        if (b->logits[i])
            nvlm_rmsnorm(e->y + (size_t)nm++ * h, e->x + (size_t)row_of(e, n_runs, i) * h, e->m->final_norm, h, h,
                         c->rms_norm_eps);
    if (!nm) return NVLM_OK;
    /* every logits row through the matrix-vector kernels, however many: the same values as alone */
    const nvlm_wmat *lm = &e->m->lm_head;
    const float *nob = NULL;
    int rc2 = e->be->i->matmul(e->be, 1, &logits, e->y, nm, nm, &lm, &nob, err);
    if (!rc2 && !nvlm_all_finite(logits, (size_t)nm * c->vocab_size))
        rc2 = nvlm_fail_nonfinite(err, "the final norm and lm_head (the logits)");
    return rc2;
}
