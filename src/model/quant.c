/* Quantization of a model's weight matrices, in memory and to a folder; their packing for the
 * generation kernels (nvlm_model_pack, kernels/wpack.h). */
#include "model/quant.h"
#include "core/err.h"
#include "core/file.h"
#include "kernels/qblock.h"
#include "kernels/wpack.h"
#include "model/safetensors_write.h"
#include "model/tensors.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct quant_format {
    const char *name, *alias;
    nvlm_dtype dtype;
    int weights; /* NVLM_WEIGHTS_* */
    int side_q8; /* the vision side, the embeddings and the head stay Q8_0 (nvlm_quant_target) */
} quant_formats[] = {
    {"q8_0", "q8", NVLM_DT_Q8_0, NVLM_WEIGHTS_Q8_0, 0},
    {"q4", "q4_1", NVLM_DT_Q4, NVLM_WEIGHTS_Q4, 1},
    {"q4_0", NULL, NVLM_DT_Q4_0, NVLM_WEIGHTS_Q4_0, 1},
};
enum { N_QUANT = sizeof quant_formats / sizeof quant_formats[0] };

static const struct quant_format *quant_format_named(const char *s) {
    for (int i = 0; i < N_QUANT; i++)
        if (!strcasecmp(s, quant_formats[i].name) || (quant_formats[i].alias && !strcasecmp(s, quant_formats[i].alias)))
            return &quant_formats[i];
    return NULL;
}

int nvlm_quant_parse(const char *s, nvlm_dtype *out) {
    const struct quant_format *f = quant_format_named(s);
    if (!f) return -1;
    *out = f->dtype;
    return 0;
}

int nvlm_quant_weights(const char *s) {
    const struct quant_format *f = quant_format_named(s);
    return f ? f->weights : -1;
}

const char *nvlm_quant_weights_name(int weights) {
    for (int i = 0; i < N_QUANT; i++)
        if (quant_formats[i].weights == weights) return quant_formats[i].name;
    return "as stored";
}

nvlm_dtype nvlm_quant_target(const char *name, nvlm_dtype to) {
    int side_q8 = 0;
    for (int i = 0; i < N_QUANT; i++)
        if (quant_formats[i].dtype == to) side_q8 = quant_formats[i].side_q8;
    if (!side_q8) return to;
    /* 4-bit for the LLM's and cross-attention's matrices; the vision encoder, projector,
     * embeddings and head keep Q8_0 (docs/quantization.md) */
    nvlm_role r;
    int i;
    if (nvlm_role_of_name(name, &r, &i)) return to; /* not of the layout: the caller's choice */
    if (nvlm_roles[r].part == NVLM_PART_VISION || nvlm_roles[r].part == NVLM_PART_PROJECTOR || r == NVLM_R_EMBED ||
        r == NVLM_R_LM_HEAD)
        return NVLM_DT_Q8_0;
    return to;
}

static void report_kept(nvlm_quant_report *rep, const char *name, int rows, int cols) {
    rep->n_kept++;
    size_t len = strlen(rep->kept);
    if (len + 8 < sizeof rep->kept)
        snprintf(rep->kept + len, sizeof rep->kept - len, "%s%s [%d x %d]", len ? "; " : "", name, rows, cols);
}

typedef struct qrows_job {
    const uint8_t *src;
    uint8_t *dst;
    nvlm_dtype from, to;
    int cols;
    int failed;           /* a worker could not get its row buffer */
} qrows_job;

/* Rows [begin, end): each row is quantized alone, so the split never changes the bytes. */
static void quantize_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    qrows_job *j = ctx;
    size_t in_rb = nvlm_row_bytes(j->from, j->cols), out_rb = nvlm_row_bytes(j->to, j->cols);
    float *row = malloc(sizeof(float) * (size_t)j->cols);
    if (!row) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (size_t r = begin; r < end; r++) {
        nvlm_row_to_f32(row, j->src + r * in_rb, j->from, j->cols);
        nvlm_row_from_f32(j->dst + r * out_rb, row, j->to, j->cols);
    }
    free(row);
}

/* Quantized copy of one matrix (rows converted through float32, split over pool, which may be
 * NULL). NULL when out of memory. */
static void *quantize_matrix(nvlm_pool *pool, const void *src, nvlm_dtype from, int rows, int cols, nvlm_dtype to) {
    qrows_job j = {.src = src, .dst = nvlm_alloc_weights(nvlm_row_bytes(to, cols) * (size_t)rows), .from = from,
                   .to = to, .cols = cols};
    if (!j.dst) return NULL;
    nvlm_pool_run(pool, (size_t)rows, 16, quantize_rows, &j);
    if (j.failed) {
        free(j.dst);
        return NULL;
    }
    return j.dst;
}

/* Drops the mapped pages of a matrix we no longer read from the resident set. */
static void release_mapping(const void *p, size_t n) {
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1), e = ((uintptr_t)p + n) & ~(uintptr_t)(pg - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

/* A decoder layer's matrices with their roles: the one list quantizing and packing walk. */
static const struct {
    size_t off; /* in llm_layer */
    nvlm_role role;
} LLM_MATS[] = {
    {offsetof(llm_layer, wq), NVLM_R_L_Q},       {offsetof(llm_layer, wk), NVLM_R_L_K},
    {offsetof(llm_layer, wv), NVLM_R_L_V},       {offsetof(llm_layer, wo), NVLM_R_L_O},
    {offsetof(llm_layer, gate), NVLM_R_L_GATE}, {offsetof(llm_layer, up), NVLM_R_L_UP},
    {offsetof(llm_layer, down), NVLM_R_L_DOWN},
};
enum { N_LLM_MATS = sizeof LLM_MATS / sizeof LLM_MATS[0] };

static nvlm_wmat *llm_mat(llm_layer *L, size_t k) { return (nvlm_wmat *)((uint8_t *)L + LLM_MATS[k].off); }

typedef struct qctx {
    nvlm_model *m;
    nvlm_dtype to;
    nvlm_quant_report *rep;
    nvlm_err *err;
} qctx;

/* w now reads d (owned by m); the `bytes` it read before are released: a file mapping's or read-in
 * copy's pages dropped, a tensor-parallel slice freed. */
static void replace_data(nvlm_model *m, nvlm_wmat *w, const char *name, void *d, size_t bytes) {
    const nvlm_tensor *t = nvlm_st_find(m->st, name);
    if (t && t->data == w->data) release_mapping(w->data, bytes); /* only the file mapping */
    else if (w->dist && !nvlm_model_release(m, w->data)) release_mapping(w->data, bytes); /* the rank's slice */
    w->data = d;
}

static int quant_one(qctx *q, nvlm_wmat *w, const char *name) {
    if (nvlm_dtype_is_block(w->dtype)) return NVLM_OK; /* already quantized on disk */
    if (w->layout != NVLM_WL_ROWS)
        return nvlm_fail(q->err, NVLM_E_INVALID_ARG, "%s is packed for the generation kernels: quantize before creating an engine",
                         name);
    int rows = nvlm_wmat_held_rows(w); /* a tensor-parallel rank quantizes its own rows */
    size_t before = nvlm_row_bytes(w->dtype, w->cols) * (size_t)rows;
    q->rep->bytes_before += before;
    if (w->cols % NVLM_QK) {
        report_kept(q->rep, name, w->rows, w->cols);
        q->rep->bytes_after += before;
        return NVLM_OK;
    }
    nvlm_dtype to = nvlm_quant_target(name, q->to);
    void *d = quantize_matrix(q->m->pool, w->data, w->dtype, rows, w->cols, to);
    if (!d || nvlm_model_own(q->m, d)) {
        free(d);
        return nvlm_fail(q->err, NVLM_E_NOMEM, "out of memory quantizing %s", name);
    }
    replace_data(q->m, w, name, d, before);
    w->dtype = to;
    q->rep->n_quantized++;
    q->rep->bytes_after += nvlm_row_bytes(to, w->cols) * (size_t)rows;
    return NVLM_OK;
}

int nvlm_quantize_model(nvlm_model *m, nvlm_dtype to, nvlm_quant_report *rep, nvlm_err *err) {
    nvlm_quant_report local;
    memset(rep ? rep : &local, 0, sizeof local);
    qctx q = {.m = m, .to = to, .rep = rep ? rep : &local, .err = err};
    char name[160];
    int rc = 0;
#define Q(w, role, i) if (!rc) rc = quant_one(&q, &(w), nvlm_tensor_name(role, i, name, sizeof name))
    for (int i = 0; i < m->cfg.vision.num_layers; i++) {
        Q(m->vit[i].qkv, NVLM_R_V_QKV, i);
        Q(m->vit[i].proj, NVLM_R_V_PROJ, i);
        Q(m->vit[i].fc1, NVLM_R_V_FC1, i);
        Q(m->vit[i].fc2, NVLM_R_V_FC2, i);
    }
    Q(m->patch, NVLM_R_PATCH_W, -1);
    for (int k = 0; k < m->cfg.projector_depth; k++) Q(m->proj[k], NVLM_R_P_LINEAR, k);
    for (int i = 0; i < m->cfg.llm.num_layers; i++)
        for (size_t k = 0; k < N_LLM_MATS; k++) Q(*llm_mat(&m->llm[i], k), LLM_MATS[k].role, i);
    for (int k = 0; m->xattn && k < m->cfg.num_xattn; k++) {
        xattn_block *X = &m->xattn[k];
        Q(X->wq, NVLM_R_X_Q, k);
        Q(X->wk, NVLM_R_X_K, k);
        Q(X->wv, NVLM_R_X_V, k);
        Q(X->wo, NVLM_R_X_O, k);
        Q(X->gate, NVLM_R_X_GATE, k);
        Q(X->up, NVLM_R_X_UP, k);
        Q(X->down, NVLM_R_X_DOWN, k);
    }
    int tied = m->lm_head.data == m->embed.data;
    Q(m->embed, NVLM_R_EMBED, -1);
    if (tied && !rc) m->lm_head = m->embed; /* one copy serves both */
    else Q(m->lm_head, NVLM_R_LM_HEAD, -1);
#undef Q
    return rc;
}

/* ---- packing for the generation kernels ---- */

typedef struct pack_ctx {
    nvlm_model *m;
    int streams;
    int unsealed; /* -1: not asked yet; 1: the read-in arenas are writable; 0: they could not be made so */
    nvlm_err *err;
} pack_ctx;

/* w into its packed layout when the pool's level reads it (kernels/wpack.h, nvlm_wpack_for). Read
 * into memory, it is packed in place (the same bytes; no new pages to fault in: a 72B would
 * otherwise fault in its 159 GB twice; the arenas are unsealed at the first such matrix, so a
 * model with nothing to pack is not touched); mapped from the file, into a copy owned by m, the
 * mapped pages released as quantizing does. NVLM_E_NOMEM when neither can be done. */
static int pack_one(pack_ctx *c, nvlm_wmat *w, const char *name) {
    nvlm_model *m = c->m;
    if (!nvlm_wpack_for(m->pool, w) || (nvlm_wpack_layout(w->dtype) == NVLM_WL_P8 && c->streams > 1)) return NVLM_OK;
    size_t bytes = nvlm_row_bytes(w->dtype, w->cols) * (size_t)nvlm_wmat_held_rows(w); /* a rank: its slice */
    int layout = -1, in_arena = nvlm_st_in_arena(m->st, w->data, bytes);
    if (in_arena && c->unsealed < 0) c->unsealed = nvlm_st_arenas_writable(m->st, 1) == 0;
    if (in_arena && c->unsealed) {
        layout = nvlm_wpack(m->pool, (void *)w->data, w);
    } else {
        void *d = nvlm_alloc_weights(bytes);
        if (d && !nvlm_model_own(m, d)) {
            if ((layout = nvlm_wpack(m->pool, d, w)) >= 0) replace_data(m, w, name, d, bytes);
        } else {
            free(d);
        }
    }
    if (layout < 0) return nvlm_fail(c->err, NVLM_E_NOMEM, "out of memory packing %s (%.1f MB)", name, (double)bytes / 1e6);
    w->layout = layout;
    return NVLM_OK;
}

int nvlm_model_pack(nvlm_model *m, int streams, nvlm_err *err) {
    char name[160];
    pack_ctx c = {.m = m, .streams = streams, .unsealed = -1, .err = err};
    int rc = 0;
#define P(w, role, i) if (!rc) rc = pack_one(&c, &(w), nvlm_tensor_name(role, i, name, sizeof name))
    for (int i = 0; i < m->cfg.llm.num_layers; i++)
        for (size_t k = 0; k < N_LLM_MATS; k++) P(*llm_mat(&m->llm[i], k), LLM_MATS[k].role, i);
    if (m->lm_head.data != m->embed.data) P(m->lm_head, NVLM_R_LM_HEAD, -1); /* a tied one is the embedding's rows */
#undef P
    if (c.unsealed == 1) nvlm_st_arenas_writable(m->st, 0);
    return rc;
}

/* ---- writing a quantized folder ---- */

typedef struct out_tensor {
    const nvlm_tensor *t;
    nvlm_dtype dtype;
    void *data;           /* quantized bytes (owned), or NULL: t->data as stored */
    uint64_t nbytes, offset;
} out_tensor;

static int cmp_out(const void *a, const void *b) {
    return strcmp(((const out_tensor *)a)->t->name, ((const out_tensor *)b)->t->name);
}

/* The safetensors layout (8-byte header length, JSON header padded with spaces to a multiple of
 * 8, data) with tensors sorted by name and every span starting at a multiple of 64 bytes
 * (padding is absorbed into the spans' gaps: nvlm's reader allows gaps, offsets are exact). */
static int write_safetensors(const char *path, out_tensor *o, size_t n, nvlm_err *err) {
    qsort(o, n, sizeof *o, cmp_out);
    size_t cap = 256 + n * 320, len = 0;
    char *h = malloc(cap);
    if (!h) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    uint64_t off = 0;
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"nvlm\":\"quantized\"}");
    for (size_t i = 0; i < n; i++) {
        off = (off + 63) & ~(uint64_t)63;
        o[i].offset = off;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", o[i].t->name, nvlm_dtype_name(o[i].dtype));
        for (int d = 0; d < o[i].t->ndim; d++)
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "", (long long)o[i].t->shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + o[i].nbytes));
        off += o[i].nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    nvlm_atomic_file a; /* a crash or a full disk leaves no half-written model behind */
    int rc = nvlm_atomic_open(&a, path, err);
    if (rc) {
        free(h);
        return rc;
    }
    FILE *f = a.f;
    uint8_t hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (uint8_t)((uint64_t)len >> (8 * i));
    int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    static const uint8_t zeros[64];
    uint64_t pos = 0;
    for (size_t i = 0; ok && i < n; i++) {
        if (o[i].offset > pos) ok = fwrite(zeros, 1, (size_t)(o[i].offset - pos), f) == o[i].offset - pos;
        const void *src = o[i].data ? o[i].data : o[i].t->data;
        ok = ok && fwrite(src, 1, (size_t)o[i].nbytes, f) == o[i].nbytes;
        pos = o[i].offset + o[i].nbytes;
    }
    free(h);
    if (!ok) {
        nvlm_atomic_close(&a, 0, err);
        return nvlm_fail(err, NVLM_E_IO, "error writing %s (disk full?)", path);
    }
    return nvlm_atomic_close(&a, 1, err);
}

int nvlm_quantize_folder(const char *in_dir, const char *out_dir, nvlm_dtype to, nvlm_quant_report *rep,
                         nvlm_err *err) {
    nvlm_quant_report local;
    if (!rep) rep = &local;
    memset(rep, 0, sizeof *rep);
    if (nvlm_same_dir(in_dir, out_dir)) /* it would replace the weights it reads */
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "the output folder %s is the model folder %s itself: write the quantized copy to a new folder",
                         out_dir, in_dir);
    nvlm_st *st = NULL;
    int rc = nvlm_st_open(in_dir, &st, err);
    if (rc) return rc;
    if (mkdir(out_dir, 0777) && access(out_dir, W_OK)) {
        nvlm_st_close(st);
        return nvlm_fail(err, NVLM_E_IO, "cannot create folder %s", out_dir);
    }
    size_t n = nvlm_st_count(st);
    out_tensor *o = calloc(n ? n : 1, sizeof *o);
    nvlm_pool *pool = NULL; /* all cores; without one (cannot start threads) the rows run inline */
    nvlm_err pool_err;
    if (nvlm_pool_new(0, &pool, &pool_err)) pool = NULL;
    if (!o) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        o[i] = (out_tensor){t, t->dtype, NULL, t->nbytes, 0};
        if (t->ndim != 2 || nvlm_dtype_is_block(t->dtype)) continue; /* vectors, conv kernel, done */
        rep->bytes_before += t->nbytes;
        if (t->shape[1] % NVLM_QK) {
            report_kept(rep, t->name, (int)t->shape[0], (int)t->shape[1]);
            rep->bytes_after += t->nbytes;
            continue;
        }
        nvlm_dtype dt = nvlm_quant_target(t->name, to);
        o[i].data = quantize_matrix(pool, t->data, t->dtype, (int)t->shape[0], (int)t->shape[1], dt);
        if (!o[i].data) {
            rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory quantizing %s", t->name);
            break;
        }
        o[i].dtype = dt;
        o[i].nbytes = nvlm_row_bytes(dt, t->shape[1]) * (uint64_t)t->shape[0];
        rep->n_quantized++;
        rep->bytes_after += o[i].nbytes;
    }
    char path[4096];
    if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
        rc = write_safetensors(path, o, n, err);
    }
    if (!rc) rc = nvlm_copy_side_files(in_dir, out_dir, err);
    if (!rc) { /* a stale index would make loaders prefer old shards */
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_dir);
        unlink(path);
    }
    for (size_t i = 0; o && i < n; i++) free(o[i].data);
    free(o);
    nvlm_pool_free(pool);
    nvlm_st_close(st);
    return rc;
}

int nvlm_model_quantize(nvlm_model *m, int weights, nvlm_err *err) {
    if (weights == NVLM_WEIGHTS_STORED) return NVLM_OK;
    for (int i = 0; i < N_QUANT; i++)
        if (quant_formats[i].weights == weights) return nvlm_quantize_model(m, quant_formats[i].dtype, NULL, err);
    return nvlm_fail(err, NVLM_E_INVALID_ARG, "unknown weights format %d", weights);
}
