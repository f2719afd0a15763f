/* Finite-difference checks of the trainer's backward passes on odd shapes (not multiples of
 * any SIMD width): each kernel alone, then the whole NVLM-D training pass (projector, embedding,
 * RMSNorm, GQA attention with RoPE and biases, SwiGLU, final norm, lm_head, cross-entropy) on
 * a random model made here with odd sizes. */
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

/* Compares an analytic gradient with central differences of f at a few elements of x. */
typedef double (*objective)(void *ctx);
static void fd_check(const char *what, objective f, void *ctx, float *x, const float *grad, size_t n, float h,
                     double tol) {
    double worst = 0;
    for (size_t k = 0; k < n; k += 1 + n / 23) {
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

static void check_model(const char *dir) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {1, NULL, NULL};
    int rc = nvlm_model_load(dir, &lo, &m, &err);
    CHECK(rc == 0, "load: %s", err.msg);
    if (rc) return;
    nvlm_train_select sel = {2, "*", 1};
    nvlm_tmodel *tm = NULL;
    rc = nvlm_tmodel_new(m, &sel, &tm, &err);
    CHECK(rc == 0, "tmodel: %s", err.msg);
    if (rc) return nvlm_model_free(m);
    /* a sequence of 11 tokens with 4 image-context positions in the middle */
    const int n = 11, n_img = 4, C4 = 4 * m->cfg.vision.hidden_size;
    int32_t ids[11] = {5, 17, 99, 0, 0, 0, 0, 300, 17, 42, 7}, labels[11];
    for (int t = 0; t < n; t++) {
        if (t >= 3 && t < 7) ids[t] = m->id_img_context;
        labels[t] = t >= 8 ? (ids[t] + 1) % 500 : -100;
    }
    labels[4] = 11; /* a supervised position inside the image span, too */
    float *img = rnd((size_t)n_img * C4, 1);
    seq_ctx c = {tm, {ids, labels, n, img, n_img}, 0};
    c.norm = nvlm_tseq_supervised(&c.q);
    for (int pass = 0; pass < 2; pass++) {
        tm->recompute = pass;
        nvlm_tmodel_zero_grad(tm);
        nvlm_tresult r = {0};
        rc = nvlm_train_seq(tm, &c.q, 1, c.norm, &r, &err);
        CHECK(rc == 0 && r.count == (int)c.norm, "train_seq: %s", err.msg);
        for (int i = 0; i < tm->n_p && !rc; i++) {
            nvlm_tparam *p = &tm->p[i];
            char what[200];
            snprintf(what, sizeof what, "%s%s", p->name, pass ? " (recompute)" : "");
            float *g = malloc(sizeof(float) * p->n);
            memcpy(g, p->g, sizeof(float) * p->n);
            fd_check(what, seq_obj, &c, p->w, g, p->n, 2e-3f, 4e-3);
            free(g);
        }
    }
    free(img);
    nvlm_tmodel_free(tm);
    nvlm_model_free(m);
}

int main(void) {
    check_linear();
    check_norms();
    check_activations();
    check_attention();
    char dir[] = "/tmp/nvlm_train_grad_XXXXXX";
    if (!mkdtemp(dir)) return check_done("test_train_grad");
    nvlm_mkmodel_opts o;
    nvlm_mkmodel_defaults(&o);
    o.tokenizer_dir = shared_path("reference/tiny-tokenizer");
    o.seed = 5, o.image_size = 56, o.patch_size = 14;
    o.vit_hidden = 10, o.vit_layers = 1, o.vit_heads = 2, o.vit_dummy_heads = 1, o.vit_intermediate = 14;
    o.llm_hidden = 18, o.llm_layers = 2, o.llm_heads = 3, o.llm_kv_heads = 1, o.llm_intermediate = 22;
    o.dtype = NVLM_MK_F32;
    nvlm_err err = {0};
    int rc = nvlm_mkmodel(&o, dir, NULL, &err);
    CHECK(rc == 0, "mkmodel: %s", err.msg);
    if (!rc) check_model(dir);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_train_grad");
}
