/* config.json: the shared configs (tiny D/X/H, the 72B), parameter counts, every line of
 * bad_configs.jsonl (refused naming the field or tensor), bad JSON, missing fields and the
 * sanity checks. */
#include "check.h"
#include "core/file.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tensors.h"
#include <cjson/cJSON.h>

static char *read_text(const char *path) {
    char *d = NULL;
    size_t n;
    nvlm_err e;
    if (nvlm_read_file(path, 0, &d, &n, &e)) return NULL;
    return d;
}

/* Sets (json_value != NULL) or removes a dotted path ("llm_config.hidden_size") in a JSON
 * text; returns the new text (malloc'ed). */
static char *mutate(const char *text, const char *path, const char *json_value) {
    cJSON *root = cJSON_Parse(text);
    cJSON *obj = root;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    char *key = buf, *dot;
    while ((dot = strchr(key, '.'))) {
        *dot = 0;
        obj = cJSON_GetObjectItemCaseSensitive(obj, key);
        key = dot + 1;
    }
    if (json_value) {
        cJSON *v = cJSON_Parse(json_value);
        if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
        else cJSON_AddItemToObject(obj, key, v);
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}

static int parse_text(const char *text, nvlm_config *cfg, nvlm_err *err) {
    return nvlm_config_parse(text, strlen(text), "test/config.json", cfg, err);
}

/* A mutation of base must be refused with a message containing `mention`. */
static void expect_refused(const char *base, const char *path, const char *value, const char *mention) {
    char *t = mutate(base, path, value);
    nvlm_config cfg;
    nvlm_err err = {0};
    int rc = parse_text(t, &cfg, &err);
    if (getenv("NVLM_TEST_VERBOSE")) fprintf(stderr, "%s: %s\n", path, err.msg);
    CHECK(rc < 0 && strstr(err.msg, mention) && strstr(err.msg, "test/config.json"),
          "%s=%s: rc %d msg '%s' (want '%s')", path, value ? value : "(removed)", rc, err.msg, mention);
    if (!rc) nvlm_config_free(&cfg);
    free(t);
}

static void test_shared_configs(void) {
    nvlm_config c;
    nvlm_err err = {0};
    nvlm_param_count pc;
    int rc = nvlm_config_load(shared_path("reference/nvlm-d-72b"), &c, &err);
    CHECK(rc == 0, "72B: %s", err.msg);
    if (!rc) {
        CHECK(c.arch == NVLM_ARCH_D && !strcmp(nvlm_arch_name(c.arch), "NVLM_D"), "arch");
        CHECK(c.vision.hidden_size == 3200 && c.vision.num_heads == 25 && c.vision.num_layers == 45 &&
              c.vision.intermediate_size == 12800 && c.vision.num_dummy_heads == -1, "vision fields");
        CHECK(c.llm.hidden_size == 8192 && c.llm.num_heads == 64 && c.llm.num_kv_heads == 8 &&
              c.llm.num_layers == 80 && c.llm.vocab_size == 152064 && c.llm.intermediate_size == 29568, "llm fields");
        CHECK(c.llm.rope_theta == 1e6 && !strcmp(c.llm.rope_scaling_type, "dynamic") &&
              c.llm.rope_scaling_factor == 3.0 && c.llm.max_position_embeddings == 32768, "rope");
        CHECK(c.llm.bos_token_id == 151643 && c.llm.eos_token_id == 151645 && !c.llm.tie_word_embeddings, "ids");
        CHECK(c.image_size == 448 && c.downsample_ratio == 0.5 && !strcmp(c.ps_version, "v2") &&
              c.select_layer == -1 && !strcmp(c.template_name, "chatml") && c.use_thumbnail &&
              c.dynamic_image_size && c.min_dynamic_patch == 1 && c.max_dynamic_patch == 6, "top level");
        CHECK(c.projector_depth == 2 && c.num_xattn == 0 && !c.xattn_layers, "D projector");
        CHECK(nvlm_cfg_head_dim(&c) == 128 && nvlm_cfg_vit_head_dim(&c) == 128 &&
              nvlm_cfg_patches_per_side(&c) == 32 && nvlm_cfg_tokens_per_tile(&c) == 256, "derived");
        nvlm_config_count_params(&c, &pc);
        CHECK(pc.vision == 6052672640ull, "vision %llu", (unsigned long long)pc.vision);
        CHECK(pc.projector == 620717056ull, "mlp1 %llu", (unsigned long long)pc.projector);
        CHECK(pc.llm == 72706203648ull, "llm %llu", (unsigned long long)pc.llm);
        CHECK(pc.xattn == 0 && pc.total == 79379593344ull, "total %llu", (unsigned long long)pc.total);
        nvlm_config_free(&c);
    }
    const char *tiny[] = {"reference/models/tiny-nvlm-d", "reference/models/tiny-nvlm-d-sharded",
                          "reference/models/tiny-nvlm-x", "reference/models/tiny-nvlm-h"};
    const nvlm_arch arch[] = {NVLM_ARCH_D, NVLM_ARCH_D, NVLM_ARCH_X, NVLM_ARCH_H};
    const uint64_t total[] = {1011120, 1011120, 1013330, 1097460};
    for (int i = 0; i < 4; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", shared_path(tiny[i]));
        rc = nvlm_config_load(dir, &c, &err);
        CHECK(rc == 0, "%s: %s", tiny[i], err.msg);
        if (rc) continue;
        CHECK(c.arch == arch[i], "%s arch", tiny[i]);
        CHECK(c.vision.num_dummy_heads == 3 && c.llm.vocab_size == 4272 && c.llm.eos_token_id == 4258, "%s fields", tiny[i]);
        nvlm_config_count_params(&c, &pc);
        CHECK(pc.total == total[i], "%s params %llu", tiny[i], (unsigned long long)pc.total);
        CHECK(pc.vision + pc.projector + pc.llm + pc.xattn == pc.total, "parts add up");
        if (i == 2) CHECK(c.num_xattn == 1 && c.xattn_layers[0] == 1 && c.projector_depth == 1 &&
                          c.xattn_intermediate_size == 160 && pc.projector == 21120, "X fields");
        if (i == 3) CHECK(c.num_xattn == 2 && c.xattn_layers[0] == 0 && c.xattn_layers[1] == 1 &&
                          c.projector_depth == 2 && pc.xattn == 86340, "H fields");
        /* the weights agree with the config */
        nvlm_st *st;
        rc = nvlm_st_open(dir, &st, &err);
        CHECK(rc == 0, "%s open: %s", tiny[i], err.msg);
        if (!rc) {
            CHECK(nvlm_check_tensors(&c, st, &err) == 0, "%s check: %s", tiny[i], err.msg);
            CHECK(nvlm_vit_dummy_heads(&c, st) == 3, "%s dummy", tiny[i]);
            CHECK(nvlm_unknown_tensors(&c, st) == 0, "%s unknown", tiny[i]);
            nvlm_st_close(st);
        }
        nvlm_config_free(&c);
    }
}

/* Every line of bad_configs.jsonl: copy the model's config, apply config_set /
 * config_remove; loading (config + tensor check) must fail naming error_mentions. */
static void test_bad_configs(void) {
    char *lines = read_text(shared_path("reference/model_cases_xh/bad_configs.jsonl"));
    CHECK(lines != NULL, "bad_configs.jsonl readable");
    if (!lines) return;
    int n = 0;
    for (char *line = strtok(lines, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *c = cJSON_Parse(line);
        if (!c) continue;
        const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
        const char *model = cJSON_GetObjectItem(c, "model")->valuestring;
        const char *mention = cJSON_GetObjectItem(c, "error_mentions")->valuestring;
        char dir[4200], cpath[4300];
        snprintf(dir, sizeof dir, "%s/%s", shared_path("reference"), model);
        snprintf(cpath, sizeof cpath, "%s/config.json", dir);
        char *text = read_text(cpath);
        cJSON *cfgj = cJSON_Parse(text);
        free(text);
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "config_set"))
            if (cJSON_GetObjectItemCaseSensitive(cfgj, e->string))
                cJSON_ReplaceItemInObjectCaseSensitive(cfgj, e->string, cJSON_Duplicate(e, 1));
            else
                cJSON_AddItemToObject(cfgj, e->string, cJSON_Duplicate(e, 1));
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "config_remove"))
            cJSON_DeleteItemFromObjectCaseSensitive(cfgj, e->valuestring);
        char *mut = cJSON_Print(cfgj);
        cJSON_Delete(cfgj);
        nvlm_config cfg;
        nvlm_err err = {0};
        int rc = nvlm_config_parse(mut, strlen(mut), cpath, &cfg, &err);
        if (rc == 0) { /* config fine: the tensors must disagree */
            nvlm_st *st;
            rc = nvlm_st_open(dir, &st, &err);
            CHECK(rc == 0, "%s: open %s", id, err.msg);
            if (!rc) {
                rc = nvlm_check_tensors(&cfg, st, &err);
                nvlm_st_close(st);
            }
            nvlm_config_free(&cfg);
        }
        CHECK(rc < 0 && strstr(err.msg, mention), "%s: rc %d, message '%s' lacks '%s'", id, rc, err.msg, mention);
        if (getenv("NVLM_TEST_VERBOSE")) fprintf(stderr, "%s: %s\n", id, err.msg);
        n++;
        free(mut);
        cJSON_Delete(c);
    }
    CHECK(n == 15, "%d bad configs", n);
    free(lines);
}

static void test_bad_json_and_fields(void) {
    char *base = read_text(shared_path("reference/models/tiny-nvlm-d/config.json"));
    CHECK(base != NULL, "tiny config");
    if (!base) return;
    nvlm_config cfg;
    nvlm_err err = {0};
    /* bad JSON */
    const char *bad_json[] = {"", "{", "[1,2]", "{\"model_type\": \"NVLM_D\",}", "nul\x01l", "42"};
    for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
        int rc = parse_text(bad_json[i], &cfg, &err);
        CHECK(rc == NVLM_E_FORMAT && strstr(err.msg, "test/config.json"), "bad json %zu: %d %s", i, rc, err.msg);
    }
    size_t bl = strlen(base);
    int rc = nvlm_config_parse(base, bl / 2, "half.json", &cfg, &err);
    CHECK(rc == NVLM_E_FORMAT && strstr(err.msg, "half.json") && strstr(err.msg, "JSON"), "truncated: %s", err.msg);
    rc = nvlm_config_load("/nonexistent/dir", &cfg, &err);
    CHECK(rc == NVLM_E_IO && strstr(err.msg, "/nonexistent/dir/config.json"), "no file: %s", err.msg);

    /* architecture */
    expect_refused(base, "model_type", NULL, "model_type");
    expect_refused(base, "model_type", "\"InternVLChatModel\"", "InternVLChatModel");
    expect_refused(base, "model_type", "3", "model_type");
    expect_refused(base, "architectures", "[\"NVLM_X\"]", "architectures[0]");
    expect_refused(base, "architectures", "[]", "architectures");
    expect_refused(base, "llm_config.architectures", "[\"LlamaForCausalLM\"]", "llm_config.architectures");
    /* missing sections and sizes */
    const char *required[] = {"vision_config", "llm_config", "vision_config.hidden_size",
                              "vision_config.num_attention_heads", "vision_config.num_hidden_layers",
                              "vision_config.intermediate_size", "llm_config.hidden_size",
                              "llm_config.intermediate_size", "llm_config.num_attention_heads",
                              "llm_config.num_hidden_layers", "llm_config.vocab_size", "ps_version", "template"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        const char *leaf = strrchr(required[i], '.');
        expect_refused(base, required[i], NULL, leaf ? leaf + 1 : required[i]);
    }
    /* sanity */
    expect_refused(base, "llm_config.vocab_size", "0", "llm_config.vocab_size");
    expect_refused(base, "llm_config.vocab_size", "-5", "llm_config.vocab_size");
    expect_refused(base, "llm_config.hidden_size", "65", "llm_config.hidden_size");
    expect_refused(base, "llm_config.hidden_size", "64.5", "llm_config.hidden_size");
    expect_refused(base, "llm_config.hidden_size", "\"64\"", "llm_config.hidden_size");
    expect_refused(base, "llm_config.num_key_value_heads", "3", "num_key_value_heads");
    expect_refused(base, "llm_config.num_attention_heads", "3", "num_attention_heads");
    expect_refused(base, "vision_config.hidden_size", "81", "vision_config.hidden_size");
    expect_refused(base, "vision_config.norm_type", "\"layer_norm\"", "norm_type");
    expect_refused(base, "vision_config.qk_normalization", "false", "qk_normalization");
    expect_refused(base, "vision_config.num_channels", "1", "num_channels");
    expect_refused(base, "vision_config.num_dummy_heads", "-1", "num_dummy_heads");
    expect_refused(base, "vision_config.layer_norm_eps", "0", "layer_norm_eps");
    expect_refused(base, "llm_config.hidden_act", "\"gelu\"", "hidden_act");
    expect_refused(base, "llm_config.rope_scaling", "{\"type\": \"linear\", \"factor\": 2}", "rope_scaling");
    expect_refused(base, "llm_config.rope_scaling", "{\"type\": \"dynamic\"}", "factor");
    expect_refused(base, "llm_config.rope_theta", "0", "rope_theta");
    expect_refused(base, "llm_config.eos_token_id", "99999", "eos_token_id");
    expect_refused(base, "force_image_size", "450", "force_image_size");
    expect_refused(base, "force_image_size", "434", "force_image_size"); /* 31 patches: odd */
    expect_refused(base, "downsample_ratio", "0.25", "downsample_ratio");
    expect_refused(base, "ps_version", "\"v1\"", "ps_version");
    expect_refused(base, "template", "\"Hermes-2\"", "template");
    expect_refused(base, "max_dynamic_patch", "0", "max_dynamic_patch");
    expect_refused(base, "select_layer", "7", "select_layer");
    expect_refused(base, "use_thumbnail", "\"yes\"", "use_thumbnail");
    expect_refused(base, "cross_attention_layers", "[0]", "cross_attention_layers");
    expect_refused(base, "projector_depth", "3", "projector_depth");
    expect_refused(base, "xattn_intermediate_size", "10", "xattn_intermediate_size");

    /* defaults as the release */
    char *t = mutate(base, "force_image_size", "null");
    char *t2 = mutate(t, "vision_config.image_size", "224");
    rc = parse_text(t2, &cfg, &err);
    CHECK(rc == 0 && cfg.image_size == 224, "force_image_size null -> vision image_size: %s", err.msg);
    if (!rc) nvlm_config_free(&cfg);
    free(t);
    free(t2);
    const char *opt[] = {"use_thumbnail", "dynamic_image_size", "min_dynamic_patch", "max_dynamic_patch",
                         "select_layer", "vision_config.num_dummy_heads", "llm_config.num_key_value_heads",
                         "llm_config.rope_scaling", "llm_config.bos_token_id"};
    char *cur = strdup(base);
    for (size_t i = 0; i < sizeof opt / sizeof *opt; i++) {
        char *nx = mutate(cur, opt[i], NULL);
        free(cur);
        cur = nx;
    }
    rc = parse_text(cur, &cfg, &err);
    CHECK(rc == 0, "optional fields absent: %s", err.msg);
    if (!rc) {
        CHECK(cfg.use_thumbnail == 0 && cfg.dynamic_image_size == 0 && cfg.min_dynamic_patch == 1 &&
              cfg.max_dynamic_patch == 6 && cfg.select_layer == -1, "top defaults");
        CHECK(cfg.vision.num_dummy_heads == -1 && cfg.llm.num_kv_heads == cfg.llm.num_heads &&
              cfg.llm.rope_scaling_type[0] == 0 && cfg.llm.rope_scaling_factor == 1.0 &&
              cfg.llm.bos_token_id == -1, "section defaults");
        nvlm_param_count a, b;
        nvlm_config_count_params(&cfg, &a);
        cfg.vision.num_dummy_heads = 7;
        nvlm_config_count_params(&cfg, &b);
        CHECK(a.total == b.total && a.vision == b.vision, "absent num_dummy_heads counts as 7");
        nvlm_config_free(&cfg);
    }
    free(cur);
    /* X/H field checks directly (bad_configs covers the rest) */
    char *x = read_text(shared_path("reference/models/tiny-nvlm-x/config.json"));
    if (x) {
        expect_refused(x, "cross_attention_layers", "[0, 0]", "cross_attention_layers");
        expect_refused(x, "cross_attention_layers", "[-1]", "cross_attention_layers");
        expect_refused(x, "cross_attention_layers", "[0.5]", "cross_attention_layers");
        expect_refused(x, "cross_attention_layers", "3", "cross_attention_layers");
        expect_refused(x, "projector_depth", "\"1\"", "projector_depth");
        expect_refused(x, "projector_depth", "true", "projector_depth");
        expect_refused(x, "xattn_intermediate_size", "0", "xattn_intermediate_size");
        t = mutate(x, "xattn_intermediate_size", "96");
        rc = parse_text(t, &cfg, &err);
        CHECK(rc == 0 && cfg.xattn_intermediate_size == 96, "xattn_intermediate_size parsed: %s", err.msg);
        if (!rc) nvlm_config_free(&cfg);
        free(t);
        free(x);
    }
    nvlm_config_free(NULL);
    free(base);
}

int main(void) {
    test_shared_configs();
    test_bad_configs();
    test_bad_json_and_fields();
    return check_done("test_config");
}
