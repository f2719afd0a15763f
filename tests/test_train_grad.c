/* Finite-difference checks of the trainer's backward passes on odd shapes (not multiples of
 * any SIMD width): each kernel alone, then the whole training pass (projector, embedding,
 * RMSNorm, GQA attention with RoPE and biases, SwiGLU, final norm, lm_head, cross-entropy) of
 * NVLM-D, and of NVLM-X and NVLM-H with their gated cross-attention blocks (per-head q/k
 * norms, GQA over memory ranges, masks with empty rows, both tanh gates, H's tag-embedding
 * memory rows and thumbnail rows in the decoder) on random models made here with odd sizes. */
#include "check.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "train/train.h"
#include <math.h>
#include <unistd.h>

static uint64_t rng = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}
static float *rnd(size_t n, float scale) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}
static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

#if defined(__SANITIZE_ADDRESS__)
enum { SANITIZED = 1 };
#else
enum { SANITIZED = 0 };
#endif

/* Elements checked per tensor (about): every element of small ones. */
static int fd_samples = 23;

/* Compares an analytic gradient with central differences of f at a few elements of x. */
typedef double (*objective)(void *ctx);
static void fd_check(const char *what, objective f, void *ctx, float *x, const float *grad, size_t n, float h,
                     double tol) {
    double worst = 0;
    for (size_t k = 0; k < n; k += 1 + n / (size_t)fd_samples) {
        float keep = x[k];
        x[k] = keep + h;
        double up = f(ctx);
        x[k] = keep - h;
        double dn = f(ctx);
        x[k] = keep;
        double fd = (up - dn) / (2.0 * h), err = fabs(fd - grad[k]) / (1.0 + fabs(fd));
        if (err > worst) worst = err;
    }
    CHECK(worst <= tol, "%s: worst relative FD error %.3g", what, worst);
}

/* ------------------------------------------------------------ kernels */

typedef struct lin_ctx {
    float *x, *W, *b, *y, *R;
    int n, rows, cols;
} lin_ctx;
static double lin_obj(void *p) {
    lin_ctx *c = p;
    nvlm_t_linear(NULL, c->y, c->x, c->n, c->W, c->rows, c->cols, c->b);
    return dotd(c->y, c->R, (size_t)c->n * c->rows);
}
static void check_linear(void) {
    lin_ctx c = {0};
    c.n = 5, c.rows = 7, c.cols = 13;
    c.x = rnd(65, 1), c.W = rnd(91, 0.5f), c.b = rnd(7, 0.5f), c.y = malloc(sizeof(float) * 35), c.R = rnd(35, 1);
    float *dx = malloc(sizeof(float) * 65), *dW = calloc(91, sizeof(float)), *db = calloc(7, sizeof(float));
    nvlm_t_linear_bwd(NULL, dx, c.R, c.x, c.n, c.W, c.rows, c.cols, dW, db);
    fd_check("linear dx", lin_obj, &c, c.x, dx, 65, 1e-2f, 1e-3);
    fd_check("linear dW", lin_obj, &c, c.W, dW, 91, 1e-2f, 1e-3);
    fd_check("linear db", lin_obj, &c, c.b, db, 7, 1e-2f, 1e-3);
    free(c.x), free(c.W), free(c.b), free(c.y), free(c.R), free(dx), free(dW), free(db);
}

typedef struct norm_ctx {
    float *x, *w, *b, *y, *R;
    int n, layer;
} norm_ctx;
static double norm_obj(void *p) {
    norm_ctx *c = p;
    if (c->layer) nvlm_layernorm(c->y, c->x, c->w, c->b, c->n, 1e-5f);
    else nvlm_rmsnorm(c->y, c->x, c->w, c->n, c->n, 1e-6f);
    return dotd(c->y, c->R, (size_t)c->n);
}
static void check_norms(void) {
    norm_ctx c = {rnd(19, 1), rnd(19, 1), rnd(19, 1), malloc(sizeof(float) * 19), rnd(19, 1), 19, 0};
    float dx[19], dw[19] = {0}, db[19] = {0};
    nvlm_t_rmsnorm_bwd(dx, c.R, c.x, c.w, dw, 19, 1e-6f);
    fd_check("rmsnorm dx", norm_obj, &c, c.x, dx, 19, 1e-2f, 1e-3);
    fd_check("rmsnorm dw", norm_obj, &c, c.w, dw, 19, 1e-2f, 1e-3);
    c.layer = 1;
    memset(dw, 0, sizeof dw);
    nvlm_t_layernorm_bwd_x(dx, c.R, c.x, c.w, 19, 1e-5f);
    nvlm_t_layernorm_bwd_params(c.R, c.x, dw, db, 19, 1e-5f);
    fd_check("layernorm dx", norm_obj, &c, c.x, dx, 19, 1e-2f, 1e-3);
    fd_check("layernorm dw", norm_obj, &c, c.w, dw, 19, 1e-2f, 1e-3);
    fd_check("layernorm db", norm_obj, &c, c.b, db, 19, 1e-2f, 1e-3);
    free(c.x), free(c.w), free(c.b), free(c.y), free(c.R);
}

typedef struct act_ctx {
    float *g, *u, *y, *R;
    int n, swiglu;
} act_ctx;
static double act_obj(void *p) {
    act_ctx *c = p;
    memcpy(c->y, c->g, sizeof(float) * (size_t)c->n);
    if (c->swiglu) nvlm_silu_mul(c->y, c->u, (size_t)c->n);
    else nvlm_gelu(c->y, (size_t)c->n);
    return dotd(c->y, c->R, (size_t)c->n);
}
static void check_activations(void) {
    act_ctx c = {rnd(23, 3), rnd(23, 2), malloc(sizeof(float) * 23), rnd(23, 1), 23, 0};
    float dg[23], du[23];
    nvlm_t_gelu_bwd(dg, c.R, c.g, 23);
    fd_check("gelu", act_obj, &c, c.g, dg, 23, 1e-2f, 1e-3);
    c.swiglu = 1;
    nvlm_t_swiglu_bwd(dg, du, c.R, c.g, c.u, 23);
    fd_check("swiglu gate", act_obj, &c, c.g, dg, 23, 1e-2f, 1e-3);
    fd_check("swiglu up", act_obj, &c, c.u, du, 23, 1e-2f, 1e-3);
    free(c.g), free(c.u), free(c.y), free(c.R);
}

/* RoPE then causal GQA attention: 3 query heads sharing 1 kv head, head dim 6, 7 positions. */
typedef struct att_ctx {
    float *q, *k, *v, *qr, *kr, *o, *R, *cs, *sn;
    int n, nh, nkv, d;
} att_ctx;
static double att_obj(void *p) {
    att_ctx *c = p;
    memcpy(c->qr, c->q, sizeof(float) * (size_t)c->n * c->nh * c->d);
    memcpy(c->kr, c->k, sizeof(float) * (size_t)c->n * c->nkv * c->d);
    nvlm_t_rope(c->qr, c->n, c->nh, c->d, c->cs, c->sn, 0);
    nvlm_t_rope(c->kr, c->n, c->nkv, c->d, c->cs, c->sn, 0);
    nvlm_t_attention(NULL, c->o, c->qr, c->kr, c->v, c->n, c->nh, c->nkv, c->d);
    return dotd(c->o, c->R, (size_t)c->n * c->nh * c->d);
}
static void check_attention(void) {
    for (int variant = 0; variant < 2; variant++) {
        att_ctx c = {0};
        c.n = 7, c.nh = 3, c.nkv = variant ? 3 : 1, c.d = 6;
        size_t qn = (size_t)c.n * c.nh * c.d, kn = (size_t)c.n * c.nkv * c.d;
        c.q = rnd(qn, 1), c.k = rnd(kn, 1), c.v = rnd(kn, 1), c.R = rnd(qn, 1);
        c.qr = malloc(sizeof(float) * qn), c.kr = malloc(sizeof(float) * kn), c.o = malloc(sizeof(float) * qn);
        c.cs = malloc(sizeof(float) * (size_t)c.n * 3), c.sn = malloc(sizeof(float) * (size_t)c.n * 3);
        nvlm_llm_config lc = {0};
        lc.rope_theta = 100.0;
        nvlm_t_rope_table(&lc, c.d, c.n, c.cs, c.sn);
        att_obj(&c);
        float *dq = malloc(sizeof(float) * qn), *dk = malloc(sizeof(float) * kn), *dv = malloc(sizeof(float) * kn);
        int rc = nvlm_t_attention_bwd(NULL, dq, dk, dv, c.R, c.qr, c.kr, c.v, c.n, c.nh, c.nkv, c.d);
        CHECK(rc == 0, "attention backward");
        nvlm_t_rope(dq, c.n, c.nh, c.d, c.cs, c.sn, 1);
        nvlm_t_rope(dk, c.n, c.nkv, c.d, c.cs, c.sn, 1);
        fd_check(variant ? "attention dq (MHA)" : "attention+rope dq (GQA)", att_obj, &c, c.q, dq, qn, 1e-2f, 1e-3);
        fd_check(variant ? "attention dk (MHA)" : "attention+rope dk (GQA)", att_obj, &c, c.k, dk, kn, 1e-2f, 1e-3);
        fd_check(variant ? "attention dv (MHA)" : "attention dv (GQA)", att_obj, &c, c.v, dv, kn, 1e-2f, 1e-3);
        free(c.q), free(c.k), free(c.v), free(c.R), free(c.qr), free(c.kr), free(c.o), free(c.cs), free(c.sn);
        free(dq), free(dk), free(dv);
    }
}


/* Cross-attention over memory ranges: 9 rows (some see nothing, ranges overlap), 3 query heads
 * over 1 kv head (GQA) and over 3 (MHA), head dim 5, 11 memory rows. */
typedef struct xatt_ctx {
    float *q, *K, *V, *o, *R;
    const int *lo, *hi;
    int n, nh, nkv, d;
} xatt_ctx;
static double xatt_obj(void *p) {
    xatt_ctx *c = p;
    nvlm_t_xattention(NULL, c->o, c->q, c->K, c->V, c->lo, c->hi, c->n, c->nh, c->nkv, c->d);
    return dotd(c->o, c->R, (size_t)c->n * c->nh * c->d);
}
static void check_xattention(void) {
    static const int lo[9] = {0, 0, 3, 3, 0, 7, 0, 10, 5}, hi[9] = {0, 3, 7, 3, 11, 11, 11, 11, 9};
    for (int variant = 0; variant < 2; variant++) {
        xatt_ctx c = {0};
        c.n = 9, c.nh = 3, c.nkv = variant ? 3 : 1, c.d = 5, c.lo = lo, c.hi = hi;
        const int S = 11;
        size_t qn = (size_t)c.n * c.nh * c.d, kn = (size_t)S * c.nkv * c.d;
        c.q = rnd(qn, 1), c.K = rnd(kn, 1), c.V = rnd(kn, 1), c.R = rnd(qn, 1), c.o = malloc(sizeof(float) * qn);
        xatt_obj(&c);
        int empty_zero = 1;
        for (int k = 0; k < c.nh * c.d; k++) empty_zero &= c.o[k] == 0.0f && c.o[3 * c.nh * c.d + k] == 0.0f;
        CHECK(empty_zero, "rows with an empty memory range give zeros");
        float *dq = malloc(sizeof(float) * qn), *dK = malloc(sizeof(float) * kn), *dV = malloc(sizeof(float) * kn);
        int rc = nvlm_t_xattention_bwd(NULL, dq, dK, dV, c.R, c.q, c.K, c.V, c.lo, c.hi, c.n, c.nh, c.nkv, c.d, S);
        CHECK(rc == 0, "cross-attention backward");
        fd_check(variant ? "xattention dq (MHA)" : "xattention dq (GQA)", xatt_obj, &c, c.q, dq, qn, 1e-2f, 1e-3);
        fd_check(variant ? "xattention dK (MHA)" : "xattention dK (GQA)", xatt_obj, &c, c.K, dK, kn, 1e-2f, 1e-3);
        fd_check(variant ? "xattention dV (MHA)" : "xattention dV (GQA)", xatt_obj, &c, c.V, dV, kn, 1e-2f, 1e-3);
        free(c.q), free(c.K), free(c.V), free(c.R), free(c.o), free(dq), free(dK), free(dV);
    }
}

/* ------------------------------------------------------------ the whole pass */

typedef struct seq_ctx {
    nvlm_tmodel *tm;
    nvlm_tseq q;
    double norm;
} seq_ctx;
static double seq_obj(void *p) {
    seq_ctx *c = p;
    nvlm_tresult r = {0};
    nvlm_err err = {0};
    if (nvlm_train_seq(c->tm, &c->q, 0, c->norm, &r, &err)) return NAN;
    return r.loss_sum / c->norm;
}

/* A hand-made sequence of each architecture (13 tokens, tokens per tile 4):
 *  D: 4 image-context positions (3..6) take feature rows 0..3;
 *  X: no image rows in the decoder; memory = 2 tiles (8 feature rows); positions 0..2 see
 *     nothing, 3 (tag 1) sees tile 0, 4 (tag 2) sees tile 1, 5.. see both;
 *  H: positions 3..6 take the thumbnail (feature rows 8..11); memory = [tag A; tile 0; tag B
 *     tag C; tile 1] (11 rows, 3 of them token embeddings); positions <= 6 see nothing. */
typedef struct seq_spec {
    int32_t ids[13], labels[13];
    int ctx_rows[4], mem_src[11], lo[13], hi[13];
    float *img;
} seq_spec;

static void make_seq(const nvlm_model *m, seq_spec *sp, nvlm_tseq *q) {
    const int n = 13, C4 = 4 * m->cfg.vision.hidden_size;
    static const int32_t base[13] = {5, 17, 99, 23, 24, 25, 26, 300, 17, 42, 7, 64, 8};
    memcpy(sp->ids, base, sizeof base);
    for (int t = 0; t < n; t++) sp->labels[t] = t >= 8 ? (base[t] * 7 + 1) % 500 : -100;
    sp->labels[2] = 11; /* supervised positions that see no memory too (before the image) */
    sp->labels[5] = 12;
    *q = (nvlm_tseq){.ids = sp->ids, .labels = sp->labels, .n = n};
    if (m->cfg.arch == NVLM_ARCH_D) {
        for (int t = 3; t < 7; t++) sp->ids[t] = m->id_img_context;
        sp->img = rnd((size_t)4 * C4, 1);
        q->img = sp->img, q->n_img = 4;
        return;
    }
    for (int t = 0; t < n; t++) sp->lo[t] = sp->hi[t] = 0;
    q->mem_lo = sp->lo, q->mem_hi = sp->hi, q->mem_src = sp->mem_src;
    if (m->cfg.arch == NVLM_ARCH_X) {
        sp->img = rnd((size_t)8 * C4, 1);
        q->img = sp->img, q->n_img = 8, q->n_mem = 8;
        for (int r = 0; r < 8; r++) sp->mem_src[r] = r;
        sp->hi[3] = 4, sp->lo[4] = 4, sp->hi[4] = 8;
        for (int t = 5; t < n; t++) sp->hi[t] = 8;
        return;
    }
    for (int t = 3; t < 7; t++) sp->ids[t] = m->id_img_context;
    sp->img = rnd((size_t)12 * C4, 1);
    q->img = sp->img, q->n_img = 12, q->n_mem = 11, q->ctx_rows = sp->ctx_rows, q->n_ctx = 4;
    for (int k = 0; k < 4; k++) sp->ctx_rows[k] = 8 + k;
    static const int src[11] = {-201, 0, 1, 2, 3, -31, -478, 4, 5, 6, 7}; /* token ids 200, 30, 477 */
    memcpy(sp->mem_src, src, sizeof src);
    for (int t = 7; t < n; t++) sp->hi[t] = 11;
}

/* Rows that see no memory are the identity: the loss at positions before the image does not
 * depend on the cross-attention blocks, which get exactly zero gradient from it. */
static void check_identity(nvlm_tmodel *tm, const nvlm_tseq *full) {
    int32_t labels[13];
    for (int t = 0; t < 13; t++) labels[t] = t == 1 || t == 2 ? full->ids[t] : -100;
    nvlm_tseq q = *full;
    q.labels = labels;
    nvlm_err err = {0};
    nvlm_tresult r1 = {0}, r2 = {0};
    nvlm_tmodel_zero_grad(tm);
    int rc = nvlm_train_seq(tm, &q, 1, 2.0, &r1, &err);
    double gx = 0;
    for (int i = 0; i < tm->n_p; i++)
        if (strstr(tm->p[i].name, "xattn_layers"))
            for (size_t k = 0; k < tm->p[i].n; k++) gx += fabs(tm->p[i].g[k]);
    for (int k = 0; k < tm->n_x; k++) tm->X[k].attn_gate->w[0] += 0.3f, tm->X[k].mlp_gate->w[0] -= 0.2f;
    if (!rc) rc = nvlm_train_seq(tm, &q, 0, 2.0, &r2, &err);
    for (int k = 0; k < tm->n_x; k++) tm->X[k].attn_gate->w[0] -= 0.3f, tm->X[k].mlp_gate->w[0] += 0.2f;
    CHECK(rc == 0, "identity rows: %s", err.msg);
    CHECK(r1.loss_sum == r2.loss_sum, "loss before the image changed with the gates: %.9g vs %.9g", r1.loss_sum,
          r2.loss_sum);
    CHECK(gx == 0.0, "cross-attention gradient %.3g from rows that see no memory", gx);
}

static void check_model(const char *dir) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 1};
    int rc = nvlm_model_load(dir, &lo, &m, &err);
    CHECK(rc == 0, "load: %s", err.msg);
    if (rc) return;
    /* every tensor but the vision encoder's (dummy heads here: check_vit trains a ViT) */
    nvlm_train_select sel = {2, "mlp1.*,language_model.*", 1}, vit = {2, "*", 1};
    nvlm_tmodel *tm = NULL;
    rc = nvlm_tmodel_new(m, &vit, &tm, &err);
    CHECK(rc == NVLM_E_UNSUPPORTED && strstr(err.msg, "dummy heads"), "a ViT with dummy heads is not trained: %s",
          err.msg);
    err = (nvlm_err){0};
    rc = nvlm_tmodel_new(m, &sel, &tm, &err);
    CHECK(rc == 0, "tmodel: %s", err.msg);
    if (rc) return nvlm_model_free(m);
    const char *arch = nvlm_arch_name(m->cfg.arch);
    seq_spec sp;
    seq_ctx c = {tm, {0}, 0};
    make_seq(m, &sp, &c.q);
    c.norm = nvlm_tseq_supervised(&c.q);
    if (tm->n_x) check_identity(tm, &c.q);
    /* the whole pass, then with recomputation (X/H: only the blocks; D covers the layers) at
     * fewer elements per tensor for X/H and under AddressSanitizer (the suite runs on 2 cores) */
    for (int pass = 0; pass < 2; pass++) {
        tm->recompute = pass;
        fd_samples = SANITIZED ? (pass ? 3 : 5) : tm->n_x ? (pass ? 5 : 11) : 23;
        nvlm_tmodel_zero_grad(tm);
        nvlm_tresult r = {0};
        rc = nvlm_train_seq(tm, &c.q, 1, c.norm, &r, &err);
        CHECK(rc == 0 && r.count == (int)c.norm, "%s train_seq: %s", arch, err.msg);
        for (int i = 0; i < tm->n_p && !rc; i++) {
            nvlm_tparam *p = &tm->p[i];
            if (pass && tm->n_x && !strstr(p->name, "xattn_layers")) continue;
            char what[240];
            snprintf(what, sizeof what, "%s %s%s", arch, p->name, pass ? " (recompute)" : "");
            float *g = malloc(sizeof(float) * p->n);
            memcpy(g, p->g, sizeof(float) * p->n);
            fd_check(what, seq_obj, &c, p->w, g, p->n, 2e-3f, 4e-3);
            free(g);
        }
    }
    free(sp.img);
    nvlm_tmodel_free(tm);
    nvlm_model_free(m);
}

/* ------------------------------------------------------------ the vision encoder */

/* Two tiles (8 image rows) through a trained 2-layer ViT, then the D pass: positions 1..8 are
 * the image, 9..12 supervised. */
typedef struct vit_ctx {
    nvlm_tmodel *tm;
    nvlm_tseq q;
    const float *px;
    float *z;
    double norm;
} vit_ctx;
static double vit_obj(void *p) {
    vit_ctx *c = p;
    nvlm_tresult r = {0};
    nvlm_err err = {0};
    nvlm_tvit_acts *a = NULL;
    int rc = nvlm_tvit_forward(c->tm, c->px, 2, c->z, &a, &err);
    nvlm_tvit_acts_free(a);
    if (rc || nvlm_train_seq(c->tm, &c->q, 0, c->norm, &r, &err)) return NAN;
    return r.loss_sum / c->norm;
}

static void check_vit(const char *dir) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 1};
    int rc = nvlm_model_load(dir, &lo, &m, &err);
    CHECK(rc == 0, "load: %s", err.msg);
    if (rc) return;
    nvlm_train_select sel = {1, "vision_model.*,mlp1.0.*", 1};
    nvlm_tmodel *tm = NULL;
    rc = nvlm_tmodel_new(m, &sel, &tm, &err);
    CHECK(rc == 0 && tm->n_v == 2, "tmodel with the ViT: %s", err.msg);
    if (rc) return nvlm_model_free(m);
    const int S = m->cfg.image_size, C = m->cfg.vision.hidden_size, G = S / m->cfg.vision.patch_size;
    float *px = rnd((size_t)2 * 3 * S * S, 1.5f), *z = malloc(sizeof(float) * 2 * G * G * C);
    float *ref = malloc(sizeof(float) * 2 * G * G * C), *shuf = malloc(sizeof(float) * 2 * G * G * C);
    /* the training forward is the engine's forward, on the same (float32) weights */
    nvlm_tvit_acts *acts = NULL;
    rc = nvlm_tvit_forward(tm, px, 2, z, &acts, &err);
    CHECK(rc == 0, "tvit forward: %s", err.msg);
    if (!rc) rc = nvlm_vit_forward(m, px, 2, ref, &err);
    double worst = 0;
    for (int i = 0; i < 2 && !rc; i++) nvlm_pixel_shuffle(ref + (size_t)i * G * G * C, G, C, shuf + (size_t)i * G * G * C);
    for (size_t k = 0; !rc && k < (size_t)2 * G * G * C; k++)
        worst = fmax(worst, fabs(z[k] - shuf[k]) / (1.0 + fabs(shuf[k])));
    CHECK(rc == 0 && worst < 1e-4, "training ViT forward = the engine's: worst relative difference %.3g", worst);
    int32_t ids[13], labels[13];
    for (int t = 0; t < 13; t++) ids[t] = t >= 1 && t <= 8 ? m->id_img_context : 17 + 31 * t, labels[t] = -100;
    for (int t = 9; t < 13; t++) labels[t] = 40 + 7 * t;
    float *dz = calloc((size_t)2 * G * G * C, sizeof(float));
    vit_ctx c = {tm, {.ids = ids, .labels = labels, .n = 13, .img = z, .n_img = 8, .dimg = dz}, px, z, 0};
    c.norm = nvlm_tseq_supervised(&c.q);
    nvlm_tmodel_zero_grad(tm);
    nvlm_tresult r = {0};
    if (!rc) rc = nvlm_train_seq(tm, &c.q, 1, c.norm, &r, &err);
    if (!rc) rc = nvlm_tvit_backward(tm, acts, dz, &err);
    CHECK(rc == 0, "ViT backward: %s", err.msg);
    nvlm_tvit_acts_free(acts);
    c.q.dimg = NULL;
    fd_samples = SANITIZED ? 3 : 9;
    for (int i = 0; i < tm->n_p && !rc; i++) {
        nvlm_tparam *p = &tm->p[i];
        if (!p->g) continue;
        float *g = malloc(sizeof(float) * p->n);
        memcpy(g, p->g, sizeof(float) * p->n);
        fd_check(p->name, vit_obj, &c, p->w, g, p->n, 2e-3f, 4e-3);
        free(g);
    }
    free(px), free(z), free(ref), free(shuf), free(dz);
    nvlm_tmodel_free(tm);
    nvlm_model_free(m);
}

int main(void) {
    check_linear();
    check_norms();
    check_activations();
    check_attention();
    check_xattention();
    char dir[] = "/tmp/nvlm_train_grad_XXXXXX";
    if (!mkdtemp(dir)) return check_done("test_train_grad");
    for (int a = 0; a < 3; a++) {
        nvlm_mkmodel_opts o;
        nvlm_mkmodel_defaults(&o);
        o.tokenizer_dir = shared_path("reference/tiny-tokenizer");
        o.seed = 5, o.image_size = 56, o.patch_size = 14;
        o.vit_hidden = 10, o.vit_layers = 1, o.vit_heads = 2, o.vit_dummy_heads = 1, o.vit_intermediate = 14;
        o.llm_hidden = 18, o.llm_layers = 2, o.llm_heads = 3, o.llm_kv_heads = 1, o.llm_intermediate = 22;
        o.dtype = NVLM_MK_F32;
        if (a == 1) { /* X: a block before each layer, a 3-layer projector, an odd MLP width */
            o.arch = NVLM_ARCH_X, o.n_xattn = 2, o.xattn_layers[0] = 0, o.xattn_layers[1] = 1;
            o.projector_depth = 3, o.xattn_intermediate = 13;
        } else if (a == 2) { /* H: one block before layer 1, a one-layer projector */
            o.arch = NVLM_ARCH_H, o.n_xattn = 1, o.xattn_layers[0] = 1, o.projector_depth = 1;
        }
        nvlm_err err = {0};
        int rc = nvlm_mkmodel(&o, dir, NULL, &err);
        CHECK(rc == 0, "mkmodel: %s", err.msg);
        if (!rc) check_model(dir);
    }
    /* a ViT without dummy heads, 2 layers, trained (--trainable "vision_model.*") */
    nvlm_mkmodel_opts o;
    nvlm_mkmodel_defaults(&o);
    o.tokenizer_dir = shared_path("reference/tiny-tokenizer");
    o.seed = 7, o.image_size = 56, o.patch_size = 14;
    o.vit_hidden = 12, o.vit_layers = 2, o.vit_heads = 3, o.vit_dummy_heads = 0, o.vit_intermediate = 14;
    o.llm_hidden = 18, o.llm_layers = 1, o.llm_heads = 3, o.llm_kv_heads = 1, o.llm_intermediate = 22;
    o.dtype = NVLM_MK_F32;
    nvlm_err err = {0};
    int rc = nvlm_mkmodel(&o, dir, NULL, &err);
    CHECK(rc == 0, "mkmodel: %s", err.msg);
    if (!rc) check_vit(dir);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_train_grad");
}
