/* config.c - parsing and validating an NVLM config.json (docs/spec.md §1 and §12).
 *
 * Order of the checks (the first failure is reported, as §12 requires):
 *   1. model_type / architectures[0]: NVLM_D, NVLM_X or NVLM_H, and equal;
 *   2. the shared fields (top level, vision_config, llm_config) and their sanity;
 *   3. the X/H fields: cross_attention_layers, projector_depth, use_thumbnail,
 *      xattn_intermediate_size (and, for D, the absence of cross-attention fields).
 * Tensor-level checks live in tensors.c. Every message starts with "<origin>: <field>". */
#include "model/config.h"
#include "core/err.h"
#include "core/file.h"
#include "model/tensors.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Generous bounds that keep every derived product inside int64 and reject nonsense early. */
#define MAX_WIDTH (1 << 20)    /* hidden / intermediate sizes */
#define MAX_LAYERS 4096
#define MAX_HEADS 4096
#define MAX_VOCAB (1 << 24)
#define MAX_IMAGE 16384
#define MAX_PROJECTOR_DEPTH 64
#define CONFIG_MAX_BYTES (16u << 20)

typedef struct ctx {
    const char *origin;
    nvlm_err *err;
} ctx;

static const char *const arch_names[] = {"NVLM_D", "NVLM_X", "NVLM_H"};

const char *nvlm_arch_name(nvlm_arch a) {
    return (unsigned)a < 3 ? arch_names[a] : "unknown";
}

/* ------------------------------------------------------------ field readers */

/* Each reader: `obj` the object holding the field, `path` its printable prefix ("" or
 * "vision_config."), `key` the field. Absent (or null) fields take `def` when `required`
 * is 0. */

static int bad(const ctx *c, const char *path, const char *key, const char *what) {
    return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: %s%s %s", c->origin, path, key, what);
}

static const cJSON *field(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int is_integer(const cJSON *v, long lo, long hi) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    return isfinite(d) && d == floor(d) && d >= (double)lo && d <= (double)hi;
}

static int get_int(const ctx *c, const cJSON *obj, const char *path, const char *key, int required,
                   int def, long lo, long hi, int *out) {
    const cJSON *v = field(obj, key);
    if (!v) {
        if (required) return bad(c, path, key, "is missing");
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return bad(c, path, key, "must be an integer");
    if (!is_integer(v, lo, hi)) {
        char msg[128];
        snprintf(msg, sizeof msg, "must be an integer in [%ld, %ld], got %.17g", lo, hi,
                 v->valuedouble);
        return bad(c, path, key, msg);
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int get_double(const ctx *c, const cJSON *obj, const char *path, const char *key,
                      int required, double def, double *out) {
    const cJSON *v = field(obj, key);
    if (!v) {
        if (required) return bad(c, path, key, "is missing");
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return bad(c, path, key, "must be a number");
    *out = v->valuedouble;
    return 0;
}

/* Booleans: JSON true/false, or 0/1 as the release writes use_backbone_lora. */
static int get_bool(const ctx *c, const cJSON *obj, const char *path, const char *key, int def,
                    int *out) {
    const cJSON *v = field(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v);
    else if (is_integer(v, 0, 1)) *out = (int)v->valuedouble;
    else return bad(c, path, key, "must be true or false");
    return 0;
}

static int get_str(const ctx *c, const cJSON *obj, const char *path, const char *key, int required,
                   const char *def, char *out, size_t cap) {
    const cJSON *v = field(obj, key);
    const char *s = def;
    if (v) {
        if (!cJSON_IsString(v)) return bad(c, path, key, "must be a string");
        s = v->valuestring;
    } else if (required) {
        return bad(c, path, key, "is missing");
    }
    if (strlen(s) >= cap) return bad(c, path, key, "is too long");
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

/* Positive size with an upper bound. */
static int get_size(const ctx *c, const cJSON *obj, const char *path, const char *key, long hi,
                    int *out) {
    return get_int(c, obj, path, key, 1, 0, 1, hi, out);
}

/* ---------------------------------------------------------- architecture */

static int parse_arch(const ctx *c, const cJSON *root, nvlm_arch *out) {
    const cJSON *mt = field(root, "model_type");
    const cJSON *ar = field(root, "architectures");
    if (!mt) return bad(c, "", "model_type", "is missing (expected NVLM_D, NVLM_X or NVLM_H)");
    if (!cJSON_IsString(mt)) return bad(c, "", "model_type", "must be a string");
    int found = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(mt->valuestring, arch_names[i])) found = i;
    if (found < 0)
        return nvlm_fail(c->err, NVLM_E_UNSUPPORTED,
                         "%s: model_type: unknown architecture '%.200s' (nvlm supports NVLM_D, "
                         "NVLM_X and NVLM_H)", c->origin, mt->valuestring);
    if (ar) {
        const cJSON *a0 = cJSON_IsArray(ar) ? cJSON_GetArrayItem(ar, 0) : NULL;
        if (!a0 || !cJSON_IsString(a0))
            return bad(c, "", "architectures", "must be a list whose first entry is a string");
        if (strcmp(a0->valuestring, mt->valuestring))
            return nvlm_fail(c->err, NVLM_E_FORMAT,
                             "%s: architectures[0] '%.200s' disagrees with model_type '%s'",
                             c->origin, a0->valuestring, mt->valuestring);
    }
    *out = (nvlm_arch)found;
    return 0;
}

/* -------------------------------------------------------------- sections */

static int parse_vision(const ctx *c, const cJSON *v, nvlm_vision_config *o) {
    const char *p = "vision_config.";
    int rc;
    if ((rc = get_size(c, v, p, "hidden_size", MAX_WIDTH, &o->hidden_size)) ||
        (rc = get_size(c, v, p, "intermediate_size", MAX_WIDTH, &o->intermediate_size)) ||
        (rc = get_size(c, v, p, "num_attention_heads", MAX_HEADS, &o->num_heads)) ||
        (rc = get_int(c, v, p, "num_dummy_heads", 0, -1, 0, MAX_HEADS, &o->num_dummy_heads)) ||
        (rc = get_size(c, v, p, "num_hidden_layers", MAX_LAYERS, &o->num_layers)) ||
        (rc = get_int(c, v, p, "image_size", 0, 224, 1, MAX_IMAGE, &o->image_size)) ||
        (rc = get_int(c, v, p, "patch_size", 0, 14, 1, MAX_IMAGE, &o->patch_size)) ||
        (rc = get_int(c, v, p, "num_channels", 0, 3, 1, 3, &o->num_channels)) ||
        (rc = get_bool(c, v, p, "qk_normalization", 1, &o->qk_normalization)) ||
        (rc = get_bool(c, v, p, "qkv_bias", 0, &o->qkv_bias)) ||
        (rc = get_str(c, v, p, "norm_type", 0, "rms_norm", o->norm_type, sizeof o->norm_type)) ||
        (rc = get_str(c, v, p, "hidden_act", 0, "gelu", o->hidden_act, sizeof o->hidden_act)))
        return rc;
    double eps;
    if ((rc = get_double(c, v, p, "layer_norm_eps", 0, 1e-6, &eps))) return rc;
    if (!(eps > 0 && eps < 1)) return bad(c, p, "layer_norm_eps", "must be in (0, 1)");
    o->layer_norm_eps = (float)eps;
    if (o->num_channels != 3) return bad(c, p, "num_channels", "must be 3 (RGB)");
    if (!o->qk_normalization)
        return bad(c, p, "qk_normalization", "must be true (InternViT-6B normalises q and k)");
    if (strcmp(o->norm_type, "rms_norm"))
        return bad(c, p, "norm_type", "must be \"rms_norm\" (InternViT-6B)");
    if (strcmp(o->hidden_act, "gelu")) return bad(c, p, "hidden_act", "must be \"gelu\"");
    if (o->hidden_size % o->num_heads)
        return bad(c, p, "hidden_size", "must be divisible by num_attention_heads");
    return 0;
}

/* rope_scaling: null, or {"type"|"rope_type": "dynamic", "factor": f}. */
static int parse_rope_scaling(const ctx *c, const cJSON *l, nvlm_llm_config *o) {
    const char *p = "llm_config.";
    const cJSON *rs = field(l, "rope_scaling");
    o->rope_scaling_type[0] = 0;
    o->rope_scaling_factor = 1.0;
    if (!rs) return 0;
    if (!cJSON_IsObject(rs)) return bad(c, p, "rope_scaling", "must be an object or null");
    const char *key = field(rs, "type") ? "type" : "rope_type";
    int rc;
    if ((rc = get_str(c, rs, "llm_config.rope_scaling.", key, 1, "", o->rope_scaling_type,
                      sizeof o->rope_scaling_type)))
        return rc;
    if (strcmp(o->rope_scaling_type, "dynamic") && strcmp(o->rope_scaling_type, "default"))
        return nvlm_fail(c->err, NVLM_E_UNSUPPORTED,
                         "%s: llm_config.rope_scaling.%s '%s' is not supported (only \"dynamic\")",
                         c->origin, key, o->rope_scaling_type);
    if (!strcmp(o->rope_scaling_type, "default")) {
        o->rope_scaling_type[0] = 0;
        return 0;
    }
    if ((rc = get_double(c, rs, "llm_config.rope_scaling.", "factor", 1, 1.0,
                         &o->rope_scaling_factor)))
        return rc;
    if (!(o->rope_scaling_factor >= 1.0 && o->rope_scaling_factor <= 1e6))
        return bad(c, "llm_config.rope_scaling.", "factor", "must be in [1, 1e6]");
    return 0;
}

/* bos/eos ids may be an integer, a list (first entry used) or absent (-1). */
static int get_token_id(const ctx *c, const cJSON *l, const char *key, int vocab, int *out) {
    const cJSON *v = field(l, key);
    *out = -1;
    if (!v) return 0;
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v) return 0;
    if (!is_integer(v, 0, vocab - 1)) {
        char msg[96];
        snprintf(msg, sizeof msg, "must be a token id in [0, %d)", vocab);
        return bad(c, "llm_config.", key, msg);
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int parse_llm(const ctx *c, const cJSON *l, nvlm_llm_config *o) {
    const char *p = "llm_config.";
    int rc;
    const cJSON *ar = field(l, "architectures");
    if (ar) {
        const cJSON *a0 = cJSON_IsArray(ar) ? cJSON_GetArrayItem(ar, 0) : NULL;
        if (!a0 || !cJSON_IsString(a0) || strcmp(a0->valuestring, "Qwen2ForCausalLM"))
            return nvlm_fail(c->err, NVLM_E_UNSUPPORTED,
                             "%s: llm_config.architectures[0] must be \"Qwen2ForCausalLM\" (the "
                             "release builds nothing else)", c->origin);
    }
    if ((rc = get_size(c, l, p, "hidden_size", MAX_WIDTH, &o->hidden_size)) ||
        (rc = get_size(c, l, p, "intermediate_size", MAX_WIDTH, &o->intermediate_size)) ||
        (rc = get_size(c, l, p, "num_attention_heads", MAX_HEADS, &o->num_heads)) ||
        (rc = get_int(c, l, p, "num_key_value_heads", 0, o->num_heads, 1, MAX_HEADS,
                      &o->num_kv_heads)) ||
        (rc = get_size(c, l, p, "num_hidden_layers", MAX_LAYERS, &o->num_layers)) ||
        (rc = get_size(c, l, p, "vocab_size", MAX_VOCAB, &o->vocab_size)) ||
        (rc = get_double(c, l, p, "rope_theta", 0, 10000.0, &o->rope_theta)) ||
        (rc = get_int(c, l, p, "max_position_embeddings", 0, 32768, 1, 1 << 30,
                      &o->max_position_embeddings)) ||
        (rc = get_bool(c, l, p, "tie_word_embeddings", 0, &o->tie_word_embeddings)) ||
        (rc = get_str(c, l, p, "hidden_act", 0, "silu", o->hidden_act, sizeof o->hidden_act)) ||
        (rc = parse_rope_scaling(c, l, o)) ||
        (rc = get_token_id(c, l, "bos_token_id", o->vocab_size, &o->bos_token_id)) ||
        (rc = get_token_id(c, l, "eos_token_id", o->vocab_size, &o->eos_token_id)))
        return rc;
    double eps;
    if ((rc = get_double(c, l, p, "rms_norm_eps", 0, 1e-6, &eps))) return rc;
    if (!(eps > 0 && eps < 1)) return bad(c, p, "rms_norm_eps", "must be in (0, 1)");
    o->rms_norm_eps = (float)eps;
    if (!(o->rope_theta > 1.0)) return bad(c, p, "rope_theta", "must be > 1");
    if (strcmp(o->hidden_act, "silu")) return bad(c, p, "hidden_act", "must be \"silu\" (Qwen2)");
    if (o->hidden_size % o->num_heads)
        return bad(c, p, "hidden_size", "must be divisible by num_attention_heads");
    if ((o->hidden_size / o->num_heads) % 2)
        return bad(c, p, "num_attention_heads", "gives an odd head dimension (RoPE needs even)");
    if (o->num_heads % o->num_kv_heads)
        return bad(c, p, "num_key_value_heads", "must divide num_attention_heads");
    return 0;
}

static int parse_top(const ctx *c, const cJSON *root, nvlm_config *cfg) {
    int rc;
    /* force_image_size null (or absent) falls back to vision_config.image_size. */
    if ((rc = get_int(c, root, "", "force_image_size", 0, cfg->vision.image_size, 1, MAX_IMAGE,
                      &cfg->image_size)) ||
        (rc = get_double(c, root, "", "downsample_ratio", 0, 0.5, &cfg->downsample_ratio)) ||
        (rc = get_int(c, root, "", "select_layer", 0, -1, -MAX_LAYERS, MAX_LAYERS,
                      &cfg->select_layer)) ||
        (rc = get_bool(c, root, "", "dynamic_image_size", 0, &cfg->dynamic_image_size)) ||
        (rc = get_bool(c, root, "", "use_thumbnail", 0, &cfg->use_thumbnail)) ||
        (rc = get_int(c, root, "", "min_dynamic_patch", 0, 1, 1, 1 << 16,
                      &cfg->min_dynamic_patch)) ||
        (rc = get_int(c, root, "", "max_dynamic_patch", 0, 6, 1, 1 << 16,
                      &cfg->max_dynamic_patch)))
        return rc;
    /* The release's defaults are ps_version "v1" and template None; nvlm implements v2 and
     * chatml only, so absence is an error that says why. */
    const cJSON *ps = field(root, "ps_version");
    if (!ps) return bad(c, "", "ps_version", "is missing (the release's default is v1; nvlm implements v2)");
    if ((rc = get_str(c, root, "", "ps_version", 1, "", cfg->ps_version, sizeof cfg->ps_version)))
        return rc;
    if (strcmp(cfg->ps_version, "v2")) return bad(c, "", "ps_version", "must be \"v2\" (pixel shuffle v1 is not implemented)");
    if ((rc = get_str(c, root, "", "template", 1, "", cfg->template_name, sizeof cfg->template_name)))
        return rc;
    if (strcmp(cfg->template_name, "chatml")) return bad(c, "", "template", "must be \"chatml\"");
    if (cfg->downsample_ratio != 0.5) return bad(c, "", "downsample_ratio", "must be 0.5");
    int p = cfg->vision.patch_size;
    if (cfg->image_size % p)
        return bad(c, "", cfg->image_size == cfg->vision.image_size && !field(root, "force_image_size")
                              ? "vision_config.image_size" : "force_image_size",
                   "must be a multiple of vision_config.patch_size");
    if ((cfg->image_size / p) % 2)
        return bad(c, "", field(root, "force_image_size") ? "force_image_size" : "vision_config.image_size",
                   "/ patch_size must be even (pixel shuffle with ratio 0.5)");
    int L = cfg->vision.num_layers;
    if (cfg->select_layer < -(L + 1) || cfg->select_layer > L)
        return bad(c, "", "select_layer", "is outside the vision layers");
    if (cfg->max_dynamic_patch < cfg->min_dynamic_patch)
        return bad(c, "", "max_dynamic_patch", "must be >= min_dynamic_patch");
    return 0;
}

/* ------------------------------------------------------------ X/H fields */

static int parse_xattn_layers(const ctx *c, const cJSON *root, nvlm_config *cfg) {
    const char *an = nvlm_arch_name(cfg->arch);
    const cJSON *cal = field(root, "cross_attention_layers");
    if (!cal) return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers is missing (required for %s)", c->origin, an);
    int n = cJSON_IsArray(cal) ? cJSON_GetArraySize(cal) : 0;
    if (!cJSON_IsArray(cal) || n == 0)
        return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers must be a non-empty list of integers (%s)", c->origin, an);
    cfg->xattn_layers = malloc(sizeof(int) * (size_t)n);
    if (!cfg->xattn_layers) return nvlm_fail(c->err, NVLM_E_NOMEM, "out of memory");
    int L = cfg->llm.num_layers, i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cal) {
        if (!cJSON_IsNumber(e) || !is_integer(e, -(1L << 30), 1L << 30))
            return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers[%d] is not an integer: the field must be a list of integers", c->origin, i);
        cfg->xattn_layers[i++] = (int)e->valuedouble;
    }
    cfg->num_xattn = n;
    for (i = 1; i < n; i++)
        if (cfg->xattn_layers[i] <= cfg->xattn_layers[i - 1])
            return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers must be strictly increasing (entry %d = %d after %d)", c->origin, i, cfg->xattn_layers[i], cfg->xattn_layers[i - 1]);
    for (i = 0; i < n; i++)
        if (cfg->xattn_layers[i] < 0 || cfg->xattn_layers[i] >= L)
            return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers[%d] = %d is outside [0, %d) (llm_config.num_hidden_layers)", c->origin, i, cfg->xattn_layers[i], L);
    return 0;
}

static int parse_xh(const ctx *c, const cJSON *root, nvlm_config *cfg) {
    if (cfg->arch == NVLM_ARCH_D) {
        /* D has no cross-attention; a D config naming it was most likely an X/H one. */
        if (cJSON_GetObjectItemCaseSensitive(root, "cross_attention_layers"))
            return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: cross_attention_layers: NVLM_D has no cross-attention (is model_type wrong?)", c->origin);
        const cJSON *pd = field(root, "projector_depth");
        if (pd && !is_integer(pd, 2, 2))
            return bad(c, "", "projector_depth", "must be 2 for NVLM_D (its mlp1 has two Linear layers)");
        cfg->projector_depth = 2;
        if (field(root, "xattn_intermediate_size"))
            return bad(c, "", "xattn_intermediate_size", "is meaningless for NVLM_D (no cross-attention)");
        cfg->xattn_intermediate_size = 0;
        return 0;
    }
    int rc;
    if ((rc = parse_xattn_layers(c, root, cfg))) return rc;
    const cJSON *pd = field(root, "projector_depth");
    if (!pd) return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: projector_depth is missing (required for %s)", c->origin, nvlm_arch_name(cfg->arch));
    if (!is_integer(pd, 1, MAX_PROJECTOR_DEPTH))
        return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: projector_depth must be an integer in [1, %d]", c->origin, MAX_PROJECTOR_DEPTH);
    cfg->projector_depth = (int)pd->valuedouble;
    if (!cfg->use_thumbnail)
        return nvlm_fail(c->err, NVLM_E_FORMAT, "%s: use_thumbnail must be true for %s", c->origin, nvlm_arch_name(cfg->arch));
    return get_int(c, root, "", "xattn_intermediate_size", 0, cfg->llm.intermediate_size, 1,
                   MAX_WIDTH, &cfg->xattn_intermediate_size);
}

/* ------------------------------------------------------------------ entry */

int nvlm_config_parse(const char *json, size_t len, const char *origin, nvlm_config *cfg,
                      nvlm_err *err) {
    memset(cfg, 0, sizeof *cfg);
    ctx c = {origin ? origin : "config", err};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t off = end && end >= json ? (size_t)(end - json) : 0;
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: invalid JSON near byte %zu", c.origin, off);
    }
    int rc;
    const cJSON *v, *l;
    if (!cJSON_IsObject(root)) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: the top level must be a JSON object", c.origin);
    } else if ((rc = parse_arch(&c, root, &cfg->arch))) {
    } else if (!(v = field(root, "vision_config")) || !cJSON_IsObject(v)) {
        rc = bad(&c, "", "vision_config", v ? "must be an object" : "is missing");
    } else if (!(l = field(root, "llm_config")) || !cJSON_IsObject(l)) {
        rc = bad(&c, "", "llm_config", l ? "must be an object" : "is missing");
    } else if (!(rc = parse_vision(&c, v, &cfg->vision)) && !(rc = parse_llm(&c, l, &cfg->llm)) &&
               !(rc = parse_top(&c, root, cfg))) {
        rc = parse_xh(&c, root, cfg);
    }
    cJSON_Delete(root);
    if (rc) nvlm_config_free(cfg);
    return rc;
}

int nvlm_config_load(const char *dir, nvlm_config *cfg, nvlm_err *err) {
    memset(cfg, 0, sizeof *cfg);
    char *path = nvlm_path_join(dir, "config.json");
    if (!path) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    char *data;
    size_t len;
    int rc = nvlm_read_file(path, CONFIG_MAX_BYTES, &data, &len, err);
    if (!rc) {
        rc = nvlm_config_parse(data, len, path, cfg, err);
        free(data);
    }
    free(path);
    return rc;
}

void nvlm_config_free(nvlm_config *cfg) {
    if (!cfg) return;
    free(cfg->xattn_layers);
    cfg->xattn_layers = NULL;
    cfg->num_xattn = 0;
}

/* ----------------------------------------------------------- param count */

typedef struct count_ctx {
    nvlm_param_count *pc;
} count_ctx;

static int count_one(void *user, const nvlm_tensor_spec *t) {
    nvlm_param_count *pc = ((count_ctx *)user)->pc;
    uint64_t n = (uint64_t)t->numel;
    switch (t->part) {
    case NVLM_PART_VISION: pc->vision += n; break;
    case NVLM_PART_PROJECTOR: pc->projector += n; break;
    case NVLM_PART_LLM: pc->llm += n; break;
    case NVLM_PART_XATTN: pc->xattn += n; break;
    }
    pc->total += n;
    return 0;
}

void nvlm_config_count_params(const nvlm_config *cfg, nvlm_param_count *out) {
    memset(out, 0, sizeof *out);
    int dummy = cfg->vision.num_dummy_heads >= 0 ? cfg->vision.num_dummy_heads : 7;
    count_ctx c = {out};
    nvlm_expected_tensors(cfg, dummy, count_one, &c);
}
