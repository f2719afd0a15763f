/* mkmodel.c - random-weight checkpoints in the released layout (see mkmodel.h).
 *
 * Weight scales follow shared/reference/pyref/make_checkpoint.py so that a forward pass
 * stays in a sane range: projections ~ N(0, 1/fan_in), norms 1 + N(0, 0.1), layer scales
 * U(0.2, 1), lm_head std 1.5 with the <|im_end|> row x1.8 (greedy decoding stops now and
 * then), X/H gates +-U(0.5, 1) so the cross-attention visibly matters. Every tensor has its
 * own random stream (seed, name), so the result does not depend on the writing order and
 * tensors are produced one at a time while writing (memory bounded by the largest one). */
#include "model/mkmodel.h"
#include "core/err.h"
#include "core/file.h"
#include "model/safetensors.h"
#include "model/safetensors_write.h"
#include "model/tensors.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void nvlm_mkmodel_defaults(nvlm_mkmodel_opts *o) {
    memset(o, 0, sizeof *o);
    o->arch = NVLM_ARCH_D;
    o->image_size = 448;
    o->patch_size = 14;
    o->vit_hidden = 80;
    o->vit_layers = 2;
    o->vit_heads = 5;
    o->vit_dummy_heads = 3;
    o->vit_intermediate = 320;
    o->llm_hidden = 64;
    o->llm_layers = 2;
    o->llm_heads = 4;
    o->llm_kv_heads = 2;
    o->llm_intermediate = 160;
    o->dtype = NVLM_MK_MIXED;
    o->shards = 1;
}

/* ---------------------------------------------------------------- random */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s) { return (double)(splitmix(s) >> 11) * (1.0 / 9007199254740992.0); }

static double normal(uint64_t *s) { /* Box-Muller; one value per call keeps it simple */
    double u = uniform(s), v = uniform(s);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (; *name; name++) h = (h ^ (unsigned char)*name) * 1099511628211ull;
    uint64_t s = seed ^ h;
    return splitmix(&s);
}

/* ---------------------------------------------------------------- dtypes */

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static uint16_t to_f16(float f) { /* round to nearest even, with subnormals and overflow */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                                    /* subnormal half */
        float af;
        memcpy(&af, &a, 4);
        uint32_t q = (uint32_t)lrintf(af * 16777216.0f);      /* units of 2^-24, RNE */
        return (uint16_t)(sign | q);
    }
    uint32_t m = a + 0xfffu + ((a >> 13) & 1) - 0x38000000u;
    return (uint16_t)(sign | (m >> 13));
}

/* The storage dtype of a tensor: the release keeps the F32 set of §2 in F32 (the table's f32
 * column; the xattn blocks have no member of it). */
static nvlm_dtype storage_dtype(const nvlm_tensor_spec *t, nvlm_mk_dtype mode) {
    int f32set = nvlm_roles[t->role].f32;
    switch (mode) {
    case NVLM_MK_MIXED: return f32set ? NVLM_DT_F32 : NVLM_DT_BF16;
    case NVLM_MK_MIXED_F16: return f32set ? NVLM_DT_F32 : NVLM_DT_F16;
    case NVLM_MK_BF16: return NVLM_DT_BF16;
    case NVLM_MK_F16: return NVLM_DT_F16;
    default: return NVLM_DT_F32;
    }
}

/* --------------------------------------------------------------- weights */

typedef struct gen {
    const nvlm_mkmodel_opts *o;
    const nvlm_config *cfg;
    int eos_id;
    nvlm_tensor_spec *specs;
    size_t n, cap;
} gen;

typedef struct fill_arg {
    const gen *g;
    const nvlm_tensor_spec *t;
} fill_arg;

typedef enum init_kind { I_NORMAL, I_NEAR1, I_UNIFORM, I_GATE } init_kind;

/* How a tensor is drawn: kind and scale, from its role (make_checkpoint.py's rules). */
static void init_rule(const nvlm_tensor_spec *t, init_kind *k, double *s) {
    double fan = t->ndim >= 2 ? (double)t->shape[1] : 1.0;
    if (t->ndim == 4) fan = (double)(t->shape[1] * t->shape[2] * t->shape[3]);
    *k = I_NORMAL;
    *s = 1.0 / sqrt(fan);
    switch (t->role) {
    case NVLM_R_X_ATTN_GATE: case NVLM_R_X_MLP_GATE: *k = I_GATE; break;
    case NVLM_R_V_LS1: case NVLM_R_V_LS2: *k = I_UNIFORM; break;
    case NVLM_R_V_NORM1: case NVLM_R_V_NORM2: case NVLM_R_L_IN_NORM: case NVLM_R_L_POST_NORM:
    case NVLM_R_X_IN_NORM: case NVLM_R_X_POST_NORM: case NVLM_R_NORM: case NVLM_R_P_LN_W:
        *k = I_NEAR1, *s = 0.1;
        break;
    case NVLM_R_V_Q_NORM: case NVLM_R_V_K_NORM: case NVLM_R_X_Q_NORM: case NVLM_R_X_K_NORM:
        *k = I_NEAR1, *s = 0.2;
        break;
    case NVLM_R_L_Q_B: case NVLM_R_L_K_B: case NVLM_R_L_V_B: case NVLM_R_P_LN_B: *s = 0.1; break;
    case NVLM_R_PATCH_B: case NVLM_R_V_PROJ_B: case NVLM_R_V_FC1_B: case NVLM_R_V_FC2_B: *s = 0.02; break;
    case NVLM_R_CLS: *s = 0.5; break;
    case NVLM_R_POS: *s = 0.3; break;
    case NVLM_R_EMBED: *s = 0.7; break;
    case NVLM_R_LM_HEAD: *s = 1.5; break;
    case NVLM_R_L_Q: case NVLM_R_L_K: case NVLM_R_X_Q: case NVLM_R_X_K: *s = 1.5 / sqrt(fan); break;
    case NVLM_R_V_FC2: case NVLM_R_V_PROJ: case NVLM_R_L_O: case NVLM_R_L_DOWN: *s = 0.7 / sqrt(fan); break;
    default: break;
    }
}

/* Dummy heads of the ViT (the last D_v heads): zero qkv rows / proj columns, norm 1. */
static int is_dummy(const gen *g, const nvlm_tensor_spec *t, int64_t row, int64_t col) {
    if (g->o->random_dummy || t->part != NVLM_PART_VISION) return 0;
    int64_t C = g->cfg->vision.hidden_size, dv = C / g->cfg->vision.num_heads;
    int64_t real = g->cfg->vision.num_heads * dv, E = real + (int64_t)g->o->vit_dummy_heads * dv;
    if (t->role == NVLM_R_V_QKV) return row % E >= real;
    if (t->role == NVLM_R_V_PROJ) return col >= real;
    if (t->role == NVLM_R_V_Q_NORM || t->role == NVLM_R_V_K_NORM) return row >= real;
    return 0;
}

static int fill_tensor(void *user, const char *name, nvlm_dtype dt, void *dst, uint64_t nbytes,
                       nvlm_err *err) {
    const fill_arg *fa = user;
    const gen *g = fa->g;
    const nvlm_tensor_spec *t = fa->t;
    init_kind kind;
    double scale;
    init_rule(t, &kind, &scale);
    uint64_t s = name_seed(g->o->seed, name);
    int64_t cols = t->ndim >= 2 ? t->numel / t->shape[0] : 1;
    int eos_row = t->role == NVLM_R_LM_HEAD ? g->eos_id : -1;
    int norm_like = kind == I_NEAR1;
    for (int64_t i = 0; i < t->numel; i++) {
        double v;
        switch (kind) {
        case I_NEAR1: v = 1.0 + scale * normal(&s); break;
        case I_UNIFORM: v = 0.2 + 0.8 * uniform(&s); break;
        case I_GATE: {
            double a = 0.5 + 0.5 * uniform(&s);
            v = uniform(&s) < 0.7 ? a : -a;
            break;
        }
        default: v = scale * normal(&s);
        }
        int64_t row = t->ndim >= 2 ? i / cols : i, col = t->ndim >= 2 ? i % cols : 0;
        if (is_dummy(g, t, row, col)) v = norm_like ? 1.0 : 0.0;
        if (row == eos_row) v *= 1.8;
        float f = (float)v;
        if (dt == NVLM_DT_F32) memcpy((char *)dst + 4 * i, &f, 4);
        else {
            uint16_t h = dt == NVLM_DT_BF16 ? to_bf16(f) : to_f16(f);
            memcpy((char *)dst + 2 * i, &h, 2);
        }
    }
    if ((uint64_t)t->numel * nvlm_dtype_size(dt) != nbytes)
        return nvlm_fail(err, NVLM_E_INTERNAL, "mkmodel: size mismatch for %s", name);
    return 0;
}

static int collect_spec(void *user, const nvlm_tensor_spec *t) {
    gen *g = user;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        nvlm_tensor_spec *ns = realloc(g->specs, cap * sizeof *ns);
        if (!ns) return NVLM_E_NOMEM;
        g->specs = ns;
        g->cap = cap;
    }
    g->specs[g->n] = *t;
    /* suffix points into the spec's own name: rebase it onto the copy */
    g->specs[g->n].suffix = g->specs[g->n].name + (t->suffix - t->name);
    g->n++;
    return 0;
}

/* -------------------------------------------------------------- tokenizer */

typedef struct tok_info {
    int size;       /* max id + 1 */
    int bos, eos;   /* <|endoftext|>, <|im_end|>; -1 when absent */
} tok_info;

static int read_tokenizer(const char *dir, tok_info *ti, nvlm_err *err) {
    ti->size = 0;
    ti->bos = ti->eos = -1;
    char *path = nvlm_path_join(dir, "tokenizer.json");
    if (!path) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    char *text;
    size_t len;
    int rc = nvlm_read_file(path, 512u << 20, &text, &len, err);
    if (rc) {
        free(path);
        return rc;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *model = root ? cJSON_GetObjectItemCaseSensitive(root, "model") : NULL;
    const cJSON *vocab = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    const cJSON *added = root ? cJSON_GetObjectItemCaseSensitive(root, "added_tokens") : NULL;
    if (!cJSON_IsObject(vocab)) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: no model.vocab object", path);
    } else {
        const cJSON *e;
        cJSON_ArrayForEach(e, vocab) if (cJSON_IsNumber(e) && e->valuedouble + 1 > ti->size && e->valuedouble < (1 << 24))
            ti->size = (int)e->valuedouble + 1;
        cJSON_ArrayForEach(e, added) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
            const cJSON *ct = cJSON_GetObjectItemCaseSensitive(e, "content");
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24)) continue;
            int v = (int)id->valuedouble;
            if (v + 1 > ti->size) ti->size = v + 1;
            if (cJSON_IsString(ct) && !strcmp(ct->valuestring, "<|endoftext|>")) ti->bos = v;
            if (cJSON_IsString(ct) && !strcmp(ct->valuestring, "<|im_end|>")) ti->eos = v;
        }
        if (!ti->size) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: empty vocabulary", path);
    }
    cJSON_Delete(root);
    free(path);
    return rc;
}

/* What --tokenizer DIR contributes (config.json is mkmodel's own). */
static const char *const tokenizer_files[] = {"tokenizer.json", "vocab.json", "merges.txt",
                                              "tokenizer_config.json", "special_tokens_map.json",
                                              "added_tokens.json"};

/* ----------------------------------------------------------------- config */

static cJSON *make_config_json(const nvlm_mkmodel_opts *o, int vocab, const tok_info *ti) {
    cJSON *c = cJSON_CreateObject(), *a;
    const char *an = nvlm_arch_name(o->arch);
    cJSON_AddNullToObject(c, "_commit_hash");
    a = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(an));
    if (o->arch == NVLM_ARCH_D) {
        cJSON *am = cJSON_AddObjectToObject(c, "auto_map");
        cJSON_AddStringToObject(am, "AutoConfig", "configuration_nvlm_d.NVLM_D_Config");
        cJSON_AddStringToObject(am, "AutoModel", "modeling_nvlm_d.NVLM_D_Model");
        cJSON_AddStringToObject(am, "AutoModelForCausalLM", "modeling_nvlm_d.NVLM_D_Model");
    }
    cJSON_AddNumberToObject(c, "downsample_ratio", 0.5);
    cJSON_AddTrueToObject(c, "dynamic_image_size");
    cJSON_AddNumberToObject(c, "force_image_size", o->image_size);
    cJSON *l = cJSON_AddObjectToObject(c, "llm_config");
    cJSON_AddStringToObject(l, "_name_or_path", "Qwen/Qwen2-72B-Instruct");
    cJSON_AddFalseToObject(l, "add_cross_attention");
    a = cJSON_AddArrayToObject(l, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString("Qwen2ForCausalLM"));
    cJSON_AddTrueToObject(l, "attention_bias");
    cJSON_AddNumberToObject(l, "attention_dropout", 0.0);
    if (ti->bos >= 0 && ti->bos < vocab) cJSON_AddNumberToObject(l, "bos_token_id", ti->bos);
    else cJSON_AddNullToObject(l, "bos_token_id");
    if (ti->eos >= 0 && ti->eos < vocab) cJSON_AddNumberToObject(l, "eos_token_id", ti->eos);
    else cJSON_AddNullToObject(l, "eos_token_id");
    cJSON_AddStringToObject(l, "hidden_act", "silu");
    cJSON_AddNumberToObject(l, "hidden_size", o->llm_hidden);
    cJSON_AddNumberToObject(l, "initializer_range", 0.02);
    cJSON_AddNumberToObject(l, "intermediate_size", o->llm_intermediate);
    cJSON_AddNumberToObject(l, "max_position_embeddings", 32768);
    cJSON_AddFalseToObject(l, "mlp_bias");
    cJSON_AddStringToObject(l, "model_type", "llama");
    cJSON_AddNumberToObject(l, "num_attention_heads", o->llm_heads);
    cJSON_AddNumberToObject(l, "num_hidden_layers", o->llm_layers);
    cJSON_AddNumberToObject(l, "num_key_value_heads", o->llm_kv_heads);
    cJSON_AddNumberToObject(l, "pretraining_tp", 1);
    cJSON_AddNumberToObject(l, "rms_norm_eps", 1e-06);
    cJSON *rs = cJSON_AddObjectToObject(l, "rope_scaling");
    cJSON_AddNumberToObject(rs, "factor", 3.0);
    cJSON_AddStringToObject(rs, "type", "dynamic");
    cJSON_AddNumberToObject(l, "rope_theta", 1000000.0);
    cJSON_AddFalseToObject(l, "tie_word_embeddings");
    cJSON_AddStringToObject(l, "torch_dtype", "bfloat16");
    cJSON_AddStringToObject(l, "transformers_version", "4.39.3");
    cJSON_AddTrueToObject(l, "use_bfloat16");
    cJSON_AddTrueToObject(l, "use_cache");
    cJSON_AddNumberToObject(l, "vocab_size", vocab);
    cJSON_AddNumberToObject(c, "max_dynamic_patch", 6);
    cJSON_AddNumberToObject(c, "min_dynamic_patch", 1);
    cJSON_AddStringToObject(c, "model_type", an);
    cJSON_AddStringToObject(c, "ps_version", "v2");
    cJSON_AddNumberToObject(c, "select_layer", -1);
    cJSON_AddStringToObject(c, "template", "chatml");
    cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
    cJSON_AddNullToObject(c, "transformers_version");
    cJSON_AddNumberToObject(c, "use_backbone_lora", 0);
    cJSON_AddNumberToObject(c, "use_llm_lora", 0);
    cJSON_AddTrueToObject(c, "use_thumbnail");
    cJSON *v = cJSON_AddObjectToObject(c, "vision_config");
    a = cJSON_AddArrayToObject(v, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString("InternVisionModel"));
    cJSON_AddNumberToObject(v, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(v, "drop_path_rate", 0.0);
    cJSON_AddNumberToObject(v, "dropout", 0.0);
    cJSON_AddStringToObject(v, "hidden_act", "gelu");
    cJSON_AddNumberToObject(v, "hidden_size", o->vit_hidden);
    cJSON_AddNumberToObject(v, "image_size", o->image_size);
    cJSON_AddNumberToObject(v, "initializer_factor", 0.1);
    cJSON_AddNumberToObject(v, "initializer_range", 1e-10);
    cJSON_AddNumberToObject(v, "intermediate_size", o->vit_intermediate);
    cJSON_AddNumberToObject(v, "layer_norm_eps", 1e-06);
    cJSON_AddStringToObject(v, "model_type", "intern_vit_6b");
    cJSON_AddStringToObject(v, "norm_type", "rms_norm");
    cJSON_AddNumberToObject(v, "num_attention_heads", o->vit_heads);
    cJSON_AddNumberToObject(v, "num_channels", 3);
    cJSON_AddNumberToObject(v, "num_dummy_heads", o->vit_dummy_heads);
    cJSON_AddNumberToObject(v, "num_hidden_layers", o->vit_layers);
    cJSON_AddNumberToObject(v, "patch_size", o->patch_size);
    cJSON_AddTrueToObject(v, "qk_normalization");
    cJSON_AddFalseToObject(v, "qkv_bias");
    cJSON_AddStringToObject(v, "torch_dtype", "bfloat16");
    cJSON_AddStringToObject(v, "transformers_version", "4.39.3");
    cJSON_AddTrueToObject(v, "use_bfloat16");
    cJSON_AddTrueToObject(v, "use_flash_attn");
    if (o->arch != NVLM_ARCH_D) {
        a = cJSON_AddArrayToObject(c, "cross_attention_layers");
        for (int i = 0; i < o->n_xattn; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(o->xattn_layers[i]));
        cJSON_AddNumberToObject(c, "projector_depth", o->projector_depth ? o->projector_depth : 2);
        if (o->xattn_intermediate) cJSON_AddNumberToObject(c, "xattn_intermediate_size", o->xattn_intermediate);
    }
    return c;
}

/* ------------------------------------------------------------------ files */

static int make_dir(const char *dir, nvlm_err *err) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    }
    return nvlm_fail(err, NVLM_E_IO, "cannot create folder %s: %s", dir, errno ? strerror(errno) : "not a folder");
}

/* Removes weights of an earlier run (another shard count would otherwise linger). */
static int remove_stale_weights(const char *dir, nvlm_err *err) {
    DIR *d = opendir(dir);
    if (!d) return nvlm_fail(err, NVLM_E_IO, "cannot list %s: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (strcmp(e->d_name, "model.safetensors") && strcmp(e->d_name, "model.safetensors.index.json") &&
            fnmatch("model-*-of-*.safetensors", e->d_name, 0))
            continue;
        char *p = nvlm_path_join(dir, e->d_name);
        if (!p || (unlink(p) != 0 && errno != ENOENT))
            rc = nvlm_fail(err, NVLM_E_IO, "cannot remove stale %s", p ? p : e->d_name);
        free(p);
    }
    closedir(d);
    return rc;
}

/* ----------------------------------------------------------------- driver */

static int check_opts(const nvlm_mkmodel_opts *o, nvlm_err *err) {
    if (o->shards < 0 || o->shards > 99999) return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: --shards must be in [1, 99999]");
    if (o->arch != NVLM_ARCH_D && o->n_xattn <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: %s needs cross-attention layers", nvlm_arch_name(o->arch));
    if (o->arch == NVLM_ARCH_D && (o->n_xattn > 0 || (o->projector_depth && o->projector_depth != 2)))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: NVLM_D has no cross-attention layers and a projector of depth 2");
    if (o->vit_dummy_heads < 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: --vit-dummy-heads must be >= 0");
    return 0;
}

int nvlm_mkmodel(const nvlm_mkmodel_opts *opts, const char *out_dir, uint64_t *n_params,
                 nvlm_err *err) {
    nvlm_mkmodel_opts o = *opts;
    if (o.arch != NVLM_ARCH_D && o.n_xattn == 0) /* default: every other layer from 0 */
        for (int i = 0; i < o.llm_layers && o.n_xattn < NVLM_MK_MAX_XATTN; i += 2) o.xattn_layers[o.n_xattn++] = i;
    int rc = check_opts(&o, err);
    if (rc) return rc;
    tok_info ti = {0, -1, -1};
    if (o.tokenizer_dir && (rc = read_tokenizer(o.tokenizer_dir, &ti, err))) return rc;
    int vocab = o.vocab;
    if (!vocab) {
        if (!ti.size) return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: give --vocab or --tokenizer");
        vocab = (ti.size + 15) / 16 * 16;
    }
    if (ti.size > vocab)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "mkmodel: vocab %d is smaller than the tokenizer's %d ids", vocab, ti.size);
    if ((rc = make_dir(out_dir, err))) return rc;

    /* config.json first, then parse it back with the loader's own validation */
    cJSON *cj = make_config_json(&o, vocab, &ti);
    char *text = cj ? cJSON_Print(cj) : NULL;
    cJSON_Delete(cj);
    if (!text) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    nvlm_config cfg;
    rc = nvlm_config_parse(text, strlen(text), "mkmodel config", &cfg, err);
    if (rc) {
        free(text);
        return nvlm_fail_prefix(err, "mkmodel: the requested shape is not a valid NVLM model: ");
    }
    char *cpath = nvlm_path_join(out_dir, "config.json");
    size_t tl = strlen(text);
    text[tl] = '\n'; /* cJSON_Print has no final newline; the terminator becomes one */
    rc = cpath ? nvlm_write_file_atomic(cpath, text, tl + 1, err) : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    free(cpath);
    free(text);

    gen g = {&o, &cfg, ti.eos, NULL, 0, 0};
    nvlm_stw *w = NULL;
    fill_arg *users = NULL;
    if (!rc && nvlm_expected_tensors(&cfg, o.vit_dummy_heads, collect_spec, &g))
        rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = nvlm_stw_new(&w, err);
    if (!rc && !(users = malloc((g.n ? g.n : 1) * sizeof *users))) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    uint64_t total = 0;
    for (size_t i = 0; i < g.n && !rc; i++) {
        nvlm_tensor_spec *t = &g.specs[i];
        users[i].g = &g;
        users[i].t = t;
        total += (uint64_t)t->numel;
        rc = nvlm_stw_add_fill(w, t->name, storage_dtype(t, o.dtype), t->ndim, t->shape,
                               fill_tensor, &users[i], err);
    }
    if (!rc) rc = remove_stale_weights(out_dir, err);
    if (!rc) rc = nvlm_stw_write_dir(w, out_dir, o.shards, err);
    if (!rc && o.tokenizer_dir)
        rc = nvlm_copy_files(o.tokenizer_dir, out_dir, tokenizer_files, sizeof tokenizer_files / sizeof *tokenizer_files, err);
    nvlm_stw_free(w);
    free(users);
    free(g.specs);
    nvlm_config_free(&cfg);

    /* read back: what we wrote must load */
    nvlm_st *st = NULL;
    if (!rc && !(rc = nvlm_config_load(out_dir, &cfg, err))) {
        if (!(rc = nvlm_st_open(out_dir, &st, err))) rc = nvlm_check_tensors(&cfg, st, err);
        nvlm_st_close(st);
        nvlm_config_free(&cfg);
        if (rc) nvlm_fail_prefix(err, "mkmodel: the written checkpoint does not validate: ");
    }
    if (!rc && n_params) *n_params = total;
    return rc;
}
