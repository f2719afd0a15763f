/* NVLM-X and NVLM-H (docs/spec.md §12) against tests/data/reference/model_cases_xh.jsonl:
 * prompt ids, num_patches_list, greedy ids, response, last-prompt logits (<= 6e-4), the X
 * per-segment layout and the memory rows of every case; the cross-attention block's identity
 * on rows that see no image; multi-turn reuse of the cached cross-attention keys/values;
 * every inconsistent config of model_cases_xh/bad_configs.jsonl refused naming the field.
 * NVLM_MODEL_CASES=id1,id2 restricts the cases (debugging). */
#include "check.h"
#include "ref_cases.h"
#include "core/file.h"
#include "generate/layout_xh.h"
#include "generate/prompt.h"
#include "model/llm.h"
#include "model/xattn.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

static void run_case(nvlm_model *m, const cJSON *cs) {
    const char *id = ref_str(cs, "id");
    nvlm_err err = {0};
    nvlm_chat *c = ref_case_chat(m, cs, id);
    if (!c) return;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = ref_int(cs, "max_new_tokens");
    nvlm_answer a;
    int rc = nvlm_chat_ask(c, ref_str(cs, "question"), &s, NULL, NULL, &a, &err);
    CHECK(rc == 0, "%s: ask: %s", id, err.msg);
    if (rc == 0) {
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "prompt_ids"), a.prompt_ids, a.n_prompt), "%s: prompt ids differ (%zu ids)", id, a.n_prompt);
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "output_ids"), a.output_ids, a.n_output), "%s: output ids differ", id);
        CHECK(!strcmp(a.response, ref_str(cs, "response")), "%s: response '%s' != '%s'", id, a.response, ref_str(cs, "response"));
        const cJSON *npl = cJSON_GetObjectItem(cs, "num_patches_list");
        int same = (size_t)cJSON_GetArraySize(npl) == a.n_images;
        for (size_t i = 0; same && i < a.n_images; i++) same = cJSON_GetArrayItem(npl, (int)i)->valueint == a.num_patches[i];
        CHECK(same, "%s: num_patches_list differs", id);
        char path[512];
        snprintf(path, sizeof path, "reference/%s", ref_str(cJSON_GetObjectItem(cs, "logits"), "path"));
        float *ref = ref_read_f32(path, (size_t)m->cfg.llm.vocab_size);
        CHECK(ref != NULL, "%s: no reference logits", id);
        if (ref) {
            double d = ref_max_abs_diff(a.last_logits, ref, (size_t)m->cfg.llm.vocab_size);
            CHECK(d <= 6e-4, "%s: logits max abs diff %.3g > 6e-4", id, d);
        }
        free(ref);
        size_t self_kv, cross_kv;
        nvlm_chat_cache_bytes(c, &self_kv, &cross_kv);
        size_t want = 2 * sizeof(float) * (size_t)m->cfg.num_xattn * (size_t)ref_int(cs, "memory_rows") *
                      (size_t)(m->cfg.llm.num_kv_heads * nvlm_cfg_head_dim(&m->cfg));
        CHECK(cross_kv == want, "%s: cross-attention cache %zu bytes, want %zu (memory_rows %d)", id, cross_kv, want,
              ref_int(cs, "memory_rows"));
        nvlm_answer_free(&a);
    }
    nvlm_chat_free(c);
}

/* The layout alone, with zero features: memory rows of the case, and for NVLM-X the token
 * ranges of the tags (each sees its tile) and of "</Image>" (images visible after it). */
static void check_layout(nvlm_model *m, const cJSON *cs) {
    const char *id = ref_str(cs, "id");
    const cJSON *npl = cJSON_GetObjectItem(cs, "num_patches_list"), *hist = cJSON_GetObjectItem(cs, "history");
    int n_img = cJSON_GetArraySize(npl), tpt = nvlm_cfg_tokens_per_tile(&m->cfg), h = m->cfg.llm.hidden_size;
    nvlm_err err = {0};
    nvlm_xattn xa;
    if (nvlm_xattn_init(&xa, m, &err)) {
        CHECK(0, "%s: %s", id, err.msg);
        return;
    }
    int patches[16];
    for (int i = 0; i < n_img && i < 16; i++) {
        patches[i] = cJSON_GetArrayItem(npl, i)->valueint;
        float *f = calloc((size_t)patches[i] * tpt * h, sizeof(float));
        CHECK(f && nvlm_layout_add_image(&xa, f, patches[i], &err) == 0, "%s: %s", id, err.msg);
        free(f);
    }
    CHECK(xa.rows == ref_int(cs, "memory_rows"), "%s: %d memory rows, want %d", id, xa.rows, ref_int(cs, "memory_rows"));
    /* the template as chat() builds it */
    nvlm_turn turns[8];
    int n_turns = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, hist) if (n_turns < 8) turns[n_turns++] =
        (nvlm_turn){cJSON_GetArrayItem(t, 0)->valuestring, cJSON_GetArrayItem(t, 1)->valuestring};
    char q[1024];
    const char *question = ref_str(cs, "question");
    snprintf(q, sizeof q, "%s%s", !cJSON_IsArray(hist) && n_img && !strstr(question, "<image>") ? "<image>\n" : "", question);
    nvlm_buf tmpl = {0};
    const cJSON *sys = cJSON_GetObjectItem(cs, "system_message");
    CHECK(nvlm_prompt_template(cJSON_IsString(sys) ? sys->valuestring : NULL, turns, n_turns, q, &tmpl) == 0, "%s", id);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(nvlm_layout_prompt(&xa, tmpl.data, patches, n_img, &ids, &n, &err) == 0, "%s: layout: %s", id, err.msg);
    CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "prompt_ids"), ids, n), "%s: layout prompt ids differ", id);
    CHECK(xa.n_visible == n_img, "%s: %d images laid out, want %d", id, xa.n_visible, n_img);
    const cJSON *segs = cJSON_GetObjectItem(cs, "prompt_segments");
    if (cJSON_IsArray(segs)) {
        int tag = 0, img = 0, ok = 1;
        const cJSON *sg;
        cJSON_ArrayForEach(sg, segs) {
            const char *kind = ref_str(sg, "kind");
            const cJSON *r = cJSON_GetObjectItem(sg, "ids");
            int p0 = cJSON_GetArrayItem(r, 0)->valueint, p1 = cJSON_GetArrayItem(r, 1)->valueint;
            if (!strcmp(kind, "tag")) {
                ok &= tag < xa.n_spans && xa.spans[tag].pos0 == p0 && xa.spans[tag].pos1 == p1 &&
                      xa.spans[tag].row1 - xa.spans[tag].row0 == tpt;
                tag++;
            } else if (!strcmp(kind, "image_end")) {
                ok &= img < xa.n_visible && xa.visible_after[img] == p1 - 1;
                img++;
            }
        }
        CHECK(ok && tag == xa.n_spans && img == n_img, "%s: tag spans / image ends differ from prompt_segments", id);
        /* a tag sees its own tile; the token after "</Image>" sees every earlier image */
        int lo, hi;
        for (int s = 0; s < xa.n_spans; s++) {
            nvlm_xattn_rows_of(&xa, xa.spans[s].pos1 - 1, &lo, &hi);
            CHECK(lo == xa.spans[s].row0 && hi == xa.spans[s].row1, "%s: tag %d rows [%d,%d)", id, s, lo, hi);
        }
        for (int i = 0; i < n_img; i++) {
            nvlm_xattn_rows_of(&xa, xa.visible_after[i], &lo, &hi);
            CHECK(hi == nvlm_xattn_image_row0(&xa, i), "%s: image %d visible at its own end", id, i);
            nvlm_xattn_rows_of(&xa, xa.visible_after[i] + 1, &lo, &hi);
            CHECK(lo == 0 && hi == xa.rows_end[i], "%s: after image %d sees [%d,%d)", id, i, lo, hi);
        }
    }
    free(ids);
    nvlm_buf_free(&tmpl);
    nvlm_xattn_free(&xa);
}

/* Rows that see no memory leave the block bit-identical; the others change; a text-only
 * forward with the hook equals the plain Qwen2 forward bit for bit. */
static void check_identity(nvlm_model *m) {
    const int h = m->cfg.llm.hidden_size, tpt = nvlm_cfg_tokens_per_tile(&m->cfg), T = 12, V = m->cfg.llm.vocab_size;
    nvlm_err err = {0};
    nvlm_xattn xa;
    if (nvlm_xattn_init(&xa, m, &err)) return;
    float *f = malloc(sizeof(float) * (size_t)3 * tpt * h), *x = malloc(sizeof(float) * T * h), *x0 = malloc(sizeof(float) * T * h);
    uint32_t seed = 12345;
    for (size_t i = 0; i < (size_t)3 * tpt * h; i++) f[i] = (float)((seed = seed * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    for (size_t i = 0; i < (size_t)T * h; i++) x0[i] = (float)((seed = seed * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    memcpy(x, x0, sizeof(float) * T * h);
    CHECK(nvlm_layout_add_image(&xa, f, 3, &err) == 0, "add image: %s", err.msg);
    CHECK(nvlm_xattn_set_visible_after(&xa, 104, &err) == 0, "%s", err.msg); /* positions 100..111: 105.. see it */
    for (int k = 0; k < xa.n_blocks; k++) CHECK(nvlm_xattn_apply(&xa, k, x, T, 100, &err) == 0, "apply: %s", err.msg);
    CHECK(!memcmp(x, x0, sizeof(float) * 5 * h), "rows before the image changed");
    CHECK(memcmp(x + 5 * h, x0 + 5 * h, sizeof(float) * h), "a row after the image did not change");
    /* text-only prompt: hook on, no memory, same logits as without the hook */
    static const int32_t ids[] = {1, 50, 300, 7, 99, 1000, 4, 12};
    float *emb = malloc(sizeof(float) * 8 * h), *l1 = malloc(sizeof(float) * V), *l2 = malloc(sizeof(float) * V);
    nvlm_xattn empty;
    nvlm_kv kv1, kv2;
    nvlm_llm_hooks hk = {.before_layer = nvlm_xattn_before_layer, .user = &empty};
    CHECK(nvlm_xattn_init(&empty, m, &err) == 0 && nvlm_kv_init(&kv1, m, &err) == 0 && nvlm_kv_init(&kv2, m, &err) == 0, "%s", err.msg);
    CHECK(nvlm_embed_tokens(m, ids, 8, emb, &err) == 0, "%s", err.msg);
    CHECK(nvlm_llm_forward(m, &kv1, emb, 8, &hk, l1, 0, &err) == 0, "%s", err.msg);
    CHECK(nvlm_llm_forward(m, &kv2, emb, 8, NULL, l2, 0, &err) == 0, "%s", err.msg);
    CHECK(!memcmp(l1, l2, sizeof(float) * V), "text-only logits differ with the cross-attention hook");
    nvlm_kv_free(&kv1), nvlm_kv_free(&kv2), nvlm_xattn_free(&empty), nvlm_xattn_free(&xa);
    free(emb), free(l1), free(l2), free(f), free(x), free(x0);
}

/* Two turns in one chat (image, then another image) against a fresh chat given the first
 * turn as history: the second reuses the cached self- and cross-attention keys/values. */
static void check_multi_turn(nvlm_model *m, const char *name) {
    nvlm_err err = {0};
    nvlm_chat *a = NULL, *b = NULL;
    nvlm_answer a1 = {0}, a2 = {0}, b2 = {0};
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 6;
    char img1[4096], img2[4096];
    snprintf(img1, sizeof img1, "%s", shared_path("reference/images/grid_896x448.png"));
    snprintf(img2, sizeof img2, "%s", shared_path("reference/images/grid_448x448.png"));
    int rc = nvlm_chat_new(m, &a, &err);
    if (!rc) rc = nvlm_chat_add_image_file(a, img1, &err);
    if (!rc) rc = nvlm_chat_ask(a, "What is this?", &s, NULL, NULL, &a1, &err);
    size_t self1 = 0, cross1 = 0, self2, cross2;
    if (!rc) nvlm_chat_cache_bytes(a, &self1, &cross1);
    if (!rc) rc = nvlm_chat_add_image_file(a, img2, &err);
    if (!rc) rc = nvlm_chat_ask(a, "<image>\nAnd this one?", &s, NULL, NULL, &a2, &err);
    CHECK(rc == 0, "%s multi-turn: %s", name, err.msg);
    if (!rc) rc = nvlm_chat_new(m, &b, &err);
    if (!rc) rc = nvlm_chat_add_history(b, "<image>\nWhat is this?", a1.response, &err);
    if (!rc) rc = nvlm_chat_add_image_file(b, img1, &err);
    if (!rc) rc = nvlm_chat_add_image_file(b, img2, &err);
    if (!rc) rc = nvlm_chat_ask(b, "<image>\nAnd this one?", &s, NULL, NULL, &b2, &err);
    CHECK(rc == 0, "%s fresh chat: %s", name, err.msg);
    if (!rc) {
        nvlm_chat_cache_bytes(a, &self2, &cross2);
        CHECK(cross2 > cross1 || m->cfg.arch == NVLM_ARCH_H, "%s: the second image added no cross-attention rows", name);
        size_t bs, bc;
        nvlm_chat_cache_bytes(b, &bs, &bc);
        CHECK(bc == cross2, "%s: cross-attention cache %zu vs fresh %zu", name, cross2, bc);
        CHECK(a2.n_prompt == b2.n_prompt && !memcmp(a2.prompt_ids, b2.prompt_ids, sizeof(int32_t) * a2.n_prompt),
              "%s: second-turn prompt differs from the fresh chat's", name);
        double d = ref_max_abs_diff(a2.last_logits, b2.last_logits, (size_t)m->cfg.llm.vocab_size);
        CHECK(d <= 1e-4, "%s: second-turn logits differ from a fresh chat by %.3g", name, d);
        CHECK(a2.n_output == b2.n_output && !memcmp(a2.output_ids, b2.output_ids, sizeof(int32_t) * a2.n_output),
              "%s: second-turn output differs from a fresh chat's", name);
    }
    nvlm_answer_free(&a1), nvlm_answer_free(&a2), nvlm_answer_free(&b2);
    nvlm_chat_free(a), nvlm_chat_free(b);
}

/* A copy of a model folder (files linked) with a mutated config.json. */
static int mutated_copy(const cJSON *bc, char *dir, size_t cap) {
    char src[4096];
    if (!realpath(shared_path(""), src)) return -1; /* the links must not be relative */
    strcat(src, "/");
    snprintf(dir, cap, "/tmp/nvlm-xh-bad-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    static const char *files[] = {"model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
                                  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"};
    char from[8192], to[1024];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(from, sizeof from, "%sreference/%s/%s", src, ref_str(bc, "model"), files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        if (access(from, F_OK) == 0 && symlink(from, to)) return -1;
    }
    snprintf(from, sizeof from, "%sreference/%s/config.json", src, ref_str(bc, "model"));
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(from, 0, &text, &len, &err)) return -1;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg) return -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(bc, "config_set")) {
        cJSON_DeleteItemFromObject(cfg, e->string);
        cJSON_AddItemToObject(cfg, e->string, cJSON_Duplicate(e, 1));
    }
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(bc, "config_remove")) cJSON_DeleteItemFromObject(cfg, e->valuestring);
    char *out = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    snprintf(to, sizeof to, "%s/config.json", dir);
    FILE *f = fopen(to, "w");
    int rc = f && out && fputs(out, f) >= 0 ? 0 : -1;
    if (f) fclose(f);
    free(out);
    return rc;
}

static void remove_copy(const char *dir) {
    static const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
                                  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"};
    char p[1024];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void check_bad_configs(void) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(shared_path("reference/model_cases_xh/bad_configs.jsonl"), 0, &text, &len, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *bc = cJSON_Parse(line);
        char dir[256];
        if (!bc || mutated_copy(bc, dir, sizeof dir)) {
            CHECK(0, "cannot prepare bad config %s", line);
            cJSON_Delete(bc);
            continue;
        }
        nvlm_model *m = NULL;
        nvlm_load_options lo = {.n_threads = 1};
        nvlm_err e = {0};
        int rc = nvlm_model_load(dir, &lo, &m, &e);
        CHECK(rc < 0 && !m, "%s: loaded", ref_str(bc, "id"));
        CHECK(strstr(e.msg, ref_str(bc, "error_mentions")) != NULL, "%s: error '%s' does not name %s", ref_str(bc, "id"), e.msg,
              ref_str(bc, "error_mentions"));
        nvlm_model_free(m);
        remove_copy(dir);
        cJSON_Delete(bc);
        n++;
    }
    CHECK(n == 15, "%d bad configs, want 15", n);
    free(text);
}

int main(void) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    check_bad_configs();
    if (nvlm_read_file(shared_path("reference/model_cases_xh.jsonl"), 0, &text, &len, &err)) {
        CHECK(0, "%s", err.msg);
        return check_done("test_xh");
    }
    nvlm_model *m = NULL;
    char loaded[512] = "";
    nvlm_load_options lo = {.n_threads = 2};
    int n_cases = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *cs = cJSON_Parse(line);
        const char *id = ref_str(cs, "id"), *model = ref_str(cs, "model");
        if (ref_selected(id) && strcmp(model, loaded)) {
            if (m) check_multi_turn(m, loaded);
            nvlm_model_free(m);
            m = NULL;
            char rel[512];
            snprintf(rel, sizeof rel, "reference/%s", model);
            CHECK(nvlm_model_load(shared_path(rel), &lo, &m, &err) == 0, "load %s: %s", rel, err.msg);
            snprintf(loaded, sizeof loaded, "%s", model);
            if (m) check_identity(m);
        }
        if (m && ref_selected(id)) {
            run_case(m, cs);
            check_layout(m, cs);
            n_cases++;
        }
        cJSON_Delete(cs);
    }
    if (m) check_multi_turn(m, loaded);
    CHECK(n_cases > 0, "no case ran");
    nvlm_model_free(m);
    free(text);
    printf("test_xh: %d model cases\n", n_cases);
    return check_done("test_xh");
}
