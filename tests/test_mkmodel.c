/* mkmodel round trips: D, X, H and sharded checkpoints load through the config parser,
 * nvlm_st_open and nvlm_check_tensors; with the reference's shapes and tokenizer they have
 * exactly the tensor names, shapes and storage dtypes of shared/reference/models/tiny-*. */
#include "check.h"
#include "core/file.h"
#include "model/config.h"
#include "model/mkmodel.h"
#include "model/safetensors.h"
#include "model/tensors.h"
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[64];
static char tok_dir[4096];


static const char *out_dir(const char *name) {
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmp_root, name);
    return p[k];
}

static float as_float(const nvlm_tensor *t, int64_t i) {
    if (t->dtype == NVLM_DT_F32) {
        float f;
        memcpy(&f, (const char *)t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)t->data + 2 * i, 2);
    if (t->dtype == NVLM_DT_BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e ? ldexpf((float)(1024 + m), e - 25) : ldexpf((float)m, -24);
    return (h & 0x8000) ? -v : v;
}

/* Loads dir fully; returns 0 when config, weights and tensor check pass. */
static int load_ok(const char *dir, nvlm_config *cfg, nvlm_st **st, const char *what) {
    nvlm_err err = {0};
    int rc = nvlm_config_load(dir, cfg, &err);
    if (!rc) {
        rc = nvlm_st_open(dir, st, &err);
        if (!rc && (rc = nvlm_check_tensors(cfg, *st, &err))) nvlm_st_close(*st);
        if (rc) nvlm_config_free(cfg);
    }
    CHECK(rc == 0, "%s: %s", what, err.msg);
    return rc;
}

/* Same names, shapes and dtypes as a reference model. */
static void same_layout(const nvlm_st *a, const char *ref, const char *what) {
    nvlm_st *b;
    nvlm_err err = {0};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", shared_path(ref));
    if (nvlm_st_open(dir, &b, &err)) {
        CHECK(0, "open %s: %s", ref, err.msg);
        return;
    }
    CHECK(nvlm_st_count(a) == nvlm_st_count(b), "%s: %zu vs %zu tensors", what, nvlm_st_count(a), nvlm_st_count(b));
    int bad = 0;
    for (size_t i = 0; i < nvlm_st_count(a) && i < nvlm_st_count(b); i++) {
        const nvlm_tensor *x = nvlm_st_at(a, i), *y = nvlm_st_at(b, i);
        int same = !strcmp(x->name, y->name) && x->dtype == y->dtype && x->ndim == y->ndim;
        for (int d = 0; same && d < x->ndim; d++) same = x->shape[d] == y->shape[d];
        if (!same && bad++ < 3) CHECK(0, "%s: %s (%s) vs %s (%s)", what, x->name, nvlm_dtype_name(x->dtype), y->name, nvlm_dtype_name(y->dtype));
    }
    CHECK(bad == 0, "%s: %d tensors differ from %s", what, bad, ref);
    nvlm_st_close(b);
}

static int files_equal(const char *a, const char *b, const char *name) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", a, name);
    snprintf(pb, sizeof pb, "%s/%s", b, name);
    char *x, *y;
    size_t lx, ly;
    nvlm_err e;
    if (nvlm_read_file(pa, 0, &x, &lx, &e)) return -1;
    if (nvlm_read_file(pb, 0, &y, &ly, &e)) {
        free(x);
        return -1;
    }
    int eq = lx == ly && !memcmp(x, y, lx);
    free(x);
    free(y);
    return eq;
}

static void test_d(void) {
    nvlm_mkmodel_opts o;
    nvlm_mkmodel_defaults(&o);
    o.tokenizer_dir = tok_dir;
    o.seed = 3;
    nvlm_err err = {0};
    uint64_t n = 0;
    const char *d = out_dir("d");
    CHECK(nvlm_mkmodel(&o, d, &n, &err) == 0, "mkmodel D: %s", err.msg);
    CHECK(n == 1011120, "D params %llu (the reference tiny model's count)", (unsigned long long)n);
    nvlm_config cfg;
    nvlm_st *st;
    if (load_ok(d, &cfg, &st, "D")) return;
    CHECK(cfg.arch == NVLM_ARCH_D && cfg.llm.vocab_size == 4272 && cfg.llm.eos_token_id == 4258 &&
          cfg.llm.bos_token_id == 4256 && cfg.vision.num_dummy_heads == 3, "D config");
    same_layout(st, "reference/models/tiny-nvlm-d", "D");
    /* dummy heads zero: qkv rows of heads 5..7 in each of q, k, v; q_norm dummies 1 */
    const nvlm_tensor *qkv = nvlm_st_find(st, "vision_model.encoder.layers.1.attn.qkv.weight");
    const nvlm_tensor *qn = nvlm_st_find(st, "vision_model.encoder.layers.1.attn.q_norm.weight");
    const nvlm_tensor *proj = nvlm_st_find(st, "vision_model.encoder.layers.0.attn.proj.weight");
    int zero = 1, nonzero = 0;
    for (int64_t r = 0; r < 384; r++)
        for (int64_t c = 0; c < 80; c++) {
            float v = as_float(qkv, r * 80 + c);
            if (r % 128 >= 80) zero &= v == 0.0f;
            else nonzero += v != 0.0f;
        }
    CHECK(zero && nonzero > 19000, "dummy qkv rows zero, real rows random");
    CHECK(as_float(qn, 100) == 1.0f && as_float(qn, 10) != 1.0f, "q_norm dummy 1");
    CHECK(as_float(proj, 5 * 128 + 100) == 0.0f && as_float(proj, 5 * 128 + 10) != 0.0f, "proj dummy cols zero");
    /* scales: layer scales in [0.2, 1], norms near 1, lm_head std ~1.5, eos row boosted */
    const nvlm_tensor *ls = nvlm_st_find(st, "vision_model.encoder.layers.0.ls1");
    int ls_ok = 1;
    for (int i = 0; i < 80; i++) ls_ok &= as_float(ls, i) >= 0.199f && as_float(ls, i) <= 1.001f;
    CHECK(ls_ok, "ls1 in [0.2, 1]");
    const nvlm_tensor *lm = nvlm_st_find(st, "language_model.lm_head.weight");
    double s2 = 0, e2 = 0;
    for (int64_t i = 0; i < 4272 * 64; i++) s2 += (double)as_float(lm, i) * as_float(lm, i);
    for (int i = 0; i < 64; i++) e2 += (double)as_float(lm, 4258 * 64 + i) * as_float(lm, 4258 * 64 + i);
    double sd = sqrt(s2 / (4272.0 * 64));
    CHECK(sd > 1.4 && sd < 1.6, "lm_head std %.3f", sd);
    CHECK(sqrt(e2 / 64) > 1.8, "eos row boosted (%.3f)", sqrt(e2 / 64));
    const nvlm_tensor *nw = nvlm_st_find(st, "language_model.model.norm.weight");
    double mean = 0;
    for (int i = 0; i < 64; i++) mean += as_float(nw, i) / 64.0;
    CHECK(fabs(mean - 1.0) < 0.1, "norm mean %.3f", mean);
    nvlm_st_close(st);
    nvlm_config_free(&cfg);
    /* tokenizer copied byte for byte */
    const char *tf[] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                        "special_tokens_map.json", "added_tokens.json"};
    for (int i = 0; i < 6; i++) CHECK(files_equal(d, tok_dir, tf[i]) == 1, "copied %s", tf[i]);
    /* deterministic: same seed -> same bytes; other seed -> other bytes */
    const char *d2 = out_dir("d2");
    CHECK(nvlm_mkmodel(&o, d2, NULL, &err) == 0, "again: %s", err.msg);
    CHECK(files_equal(d, d2, "model.safetensors") == 1 && files_equal(d, d2, "config.json") == 1, "deterministic");
    o.seed = 4;
    CHECK(nvlm_mkmodel(&o, d2, NULL, &err) == 0, "seed 4: %s", err.msg);
    CHECK(files_equal(d, d2, "model.safetensors") == 0, "seed changes weights");
    /* sharded into the same folder: the single file is replaced */
    o.shards = 3;
    o.seed = 3;
    CHECK(nvlm_mkmodel(&o, d2, NULL, &err) == 0, "sharded: %s", err.msg);
    if (!load_ok(d2, &cfg, &st, "D sharded")) {
        CHECK(nvlm_st_file_count(st) == 3, "3 shards");
        same_layout(st, "reference/models/tiny-nvlm-d-sharded", "D sharded");
        char p[300];
        snprintf(p, sizeof p, "%s/model.safetensors", d2);
        CHECK(!nvlm_file_exists(p), "old single file removed");
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    check_rm_flat_dir(d);
    check_rm_flat_dir(d2);
}

static void test_xh(void) {
    nvlm_mkmodel_opts o;
    nvlm_err err = {0};
    nvlm_config cfg;
    nvlm_st *st;
    uint64_t n;
    /* X like the reference: layer 1, depth 1 */
    nvlm_mkmodel_defaults(&o);
    o.arch = NVLM_ARCH_X;
    o.tokenizer_dir = tok_dir;
    o.n_xattn = 1;
    o.xattn_layers[0] = 1;
    o.projector_depth = 1;
    const char *d = out_dir("x");
    CHECK(nvlm_mkmodel(&o, d, &n, &err) == 0, "mkmodel X: %s", err.msg);
    CHECK(n == 1013330, "X params %llu", (unsigned long long)n);
    if (!load_ok(d, &cfg, &st, "X")) {
        CHECK(cfg.arch == NVLM_ARCH_X && cfg.num_xattn == 1 && cfg.projector_depth == 1, "X config");
        same_layout(st, "reference/models/tiny-nvlm-x", "X");
        const nvlm_tensor *g = nvlm_st_find(st, NVLM_XATTN_PREFIX "0.cross_attn_attn_gate");
        const nvlm_tensor *g2 = nvlm_st_find(st, NVLM_XATTN_PREFIX "0.cross_attn_mlp_gate");
        float a = g ? fabsf(as_float(g, 0)) : 0, b = g2 ? fabsf(as_float(g2, 0)) : 0;
        CHECK(a >= 0.49f && a <= 1.01f && b >= 0.49f && b <= 1.01f, "gates nonzero: %g %g", a, b);
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    check_rm_flat_dir(d);
    /* H like the reference: layers 0,1, depth 2, sharded in 2 */
    o.arch = NVLM_ARCH_H;
    o.n_xattn = 2;
    o.xattn_layers[0] = 0;
    o.xattn_layers[1] = 1;
    o.projector_depth = 2;
    o.shards = 2;
    d = out_dir("h");
    CHECK(nvlm_mkmodel(&o, d, &n, &err) == 0, "mkmodel H: %s", err.msg);
    CHECK(n == 1097460, "H params %llu", (unsigned long long)n);
    if (!load_ok(d, &cfg, &st, "H")) {
        CHECK(nvlm_st_file_count(st) == 2, "H in 2 shards");
        same_layout(st, "reference/models/tiny-nvlm-h", "H");
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    check_rm_flat_dir(d);
    /* other shapes: deeper projector, own xattn MLP, GQA 8/2, random dummies, all-F16 */
    nvlm_mkmodel_defaults(&o);
    o.arch = NVLM_ARCH_X;
    o.vocab = 300;
    o.vit_hidden = 48;
    o.vit_heads = 3;
    o.vit_dummy_heads = 1;
    o.vit_intermediate = 64;
    o.vit_layers = 1;
    o.image_size = 224;
    o.llm_hidden = 32;
    o.llm_heads = 8;
    o.llm_kv_heads = 2;
    o.llm_layers = 3;
    o.llm_intermediate = 48;
    o.projector_depth = 3;
    o.xattn_intermediate = 40;
    o.random_dummy = 1;
    o.dtype = NVLM_MK_F16;
    d = out_dir("x2");
    CHECK(nvlm_mkmodel(&o, d, &n, &err) == 0, "mkmodel X2: %s", err.msg);
    if (!load_ok(d, &cfg, &st, "X2")) {
        CHECK(cfg.num_xattn == 2 && cfg.xattn_layers[0] == 0 && cfg.xattn_layers[1] == 2, "default layers 0,2");
        CHECK(cfg.xattn_intermediate_size == 40 && cfg.projector_depth == 3 && cfg.image_size == 224 &&
              cfg.llm.bos_token_id == -1, "X2 config");
        CHECK(nvlm_st_find(st, "mlp1.5.weight") != NULL, "depth 3 projector");
        int all16 = 1;
        for (size_t i = 0; i < nvlm_st_count(st); i++) all16 &= nvlm_st_at(st, i)->dtype == NVLM_DT_F16;
        CHECK(all16, "all F16");
        const nvlm_tensor *q = nvlm_st_find(st, "vision_model.encoder.layers.0.attn.qkv.weight");
        CHECK(q && q->shape[0] == 3 * 4 * 16 && as_float(q, 3 * 16 * 48 + 5) != 0.0f, "random dummy rows");
        nvlm_param_count pc;
        nvlm_config_count_params(&cfg, &pc);
        CHECK(pc.total == n, "count %llu vs written %llu", (unsigned long long)pc.total, (unsigned long long)n);
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    check_rm_flat_dir(d);
    /* mixed-f16 and f32 storage */
    nvlm_mkmodel_defaults(&o);
    o.vocab = 64;
    o.dtype = NVLM_MK_MIXED_F16;
    d = out_dir("f16");
    CHECK(nvlm_mkmodel(&o, d, NULL, &err) == 0, "mixed-f16: %s", err.msg);
    if (!load_ok(d, &cfg, &st, "mixed-f16")) {
        CHECK(nvlm_st_find(st, "language_model.model.layers.0.self_attn.q_proj.weight")->dtype == NVLM_DT_F32 &&
              nvlm_st_find(st, "language_model.model.layers.0.mlp.up_proj.weight")->dtype == NVLM_DT_F16, "mixed-f16 dtypes");
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    o.dtype = NVLM_MK_F32;
    CHECK(nvlm_mkmodel(&o, d, NULL, &err) == 0, "f32: %s", err.msg);
    if (!load_ok(d, &cfg, &st, "f32")) {
        CHECK(nvlm_st_find(st, "mlp1.0.weight")->dtype == NVLM_DT_F32, "f32 dtypes");
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
    }
    check_rm_flat_dir(d);
}

static void test_errors(void) {
    nvlm_mkmodel_opts o;
    nvlm_err err = {0};
    nvlm_mkmodel_defaults(&o);
    const char *d = out_dir("err");
    CHECK(nvlm_mkmodel(&o, d, NULL, &err) == NVLM_E_INVALID_ARG && strstr(err.msg, "--vocab"), "no vocab: %s", err.msg);
    o.vocab = 64;
    o.arch = NVLM_ARCH_X;
    o.n_xattn = 1;
    o.xattn_layers[0] = 5;
    int rc = nvlm_mkmodel(&o, d, NULL, &err);
    CHECK(rc < 0 && strstr(err.msg, "cross_attention_layers"), "layer out of range: %s", err.msg);
    nvlm_mkmodel_defaults(&o);
    o.vocab = 64;
    o.llm_heads = 3;
    rc = nvlm_mkmodel(&o, d, NULL, &err);
    CHECK(rc < 0 && strstr(err.msg, "num_attention_heads"), "bad heads: %s", err.msg);
    nvlm_mkmodel_defaults(&o);
    o.vocab = 64;
    o.tokenizer_dir = tok_dir;
    rc = nvlm_mkmodel(&o, d, NULL, &err);
    CHECK(rc < 0 && strstr(err.msg, "smaller than the tokenizer"), "vocab too small: %s", err.msg);
    nvlm_mkmodel_defaults(&o);
    o.vocab = 64;
    o.n_xattn = 1;
    rc = nvlm_mkmodel(&o, d, NULL, &err);
    CHECK(rc == NVLM_E_INVALID_ARG, "D with xattn layers: %s", err.msg);
    rc = nvlm_mkmodel(&o, "/nonexistent/a/b", NULL, &err);
    CHECK(rc < 0, "unwritable folder: %s", err.msg);
    check_rm_flat_dir(d);
}

/* The table of tensor names: every role's name at a few indices parses back to the same role
 * and index; names of no role (a projector index that is even, an unknown suffix, a layer that
 * is not a number) are refused. */
static void test_name_table(void) {
    for (int r = 0; r < NVLM_R_COUNT; r++)
        for (int i = 0; i < 12; i += 5) {
            char name[160];
            nvlm_tensor_name((nvlm_role)r, i, name, sizeof name);
            nvlm_role back;
            int idx = -2;
            int want = nvlm_roles[r].index == NVLM_IDX_NONE ? -1 : i;
            CHECK(name[0] && !nvlm_role_of_name(name, &back, &idx) && back == (nvlm_role)r && idx == want,
                  "role %d index %d: %s parses as role %d index %d", r, i, name, (int)back, idx);
        }
    static const char *bad[] = {"mlp1.2.weight", "mlp1.1.bias", "language_model.model.layers.x.mlp.up_proj.weight",
                                "language_model.model.layers.3.mlp.up_proj.bias", "vision_model.encoder.layers.1",
                                "language_model.model.xattn_layers.0.cross_attn.gate", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        nvlm_role r;
        int k;
        CHECK(nvlm_role_of_name(bad[i], &r, &k) == -1, "%s: taken for role %d", bad[i], (int)r);
    }
}

int main(void) {
    test_name_table();
    snprintf(tmp_root, sizeof tmp_root, "/tmp/nvlm_test_mk_XXXXXX");
    if (!mkdtemp(tmp_root)) return 1;
    snprintf(tok_dir, sizeof tok_dir, "%s", shared_path("reference/tiny-tokenizer"));
    test_d();
    test_xh();
    test_errors();
    rmdir(tmp_root);
    return check_done("test_mkmodel");
}
