/* NVLM-D end to end against tests/data/reference/model_cases.jsonl (pass criteria in the
 * reference README): prompt ids, projector output, last-prompt logits, greedy ids, response;
 * plus the mlp1 unit data. NVLM_MODEL_CASES=id1,id2 restricts the cases (debugging). */
#include "check.h"
#include "ref_cases.h"
#include "core/file.h"
#include "generate/chat_internal.h"
#include "model/model.h"
#include <cjson/cJSON.h>
#include <math.h>

/* Projector output of every image of the case (as the conversation computed it), compared
 * to the reference file. */
static void check_projector(nvlm_model *m, nvlm_chat *c, const cJSON *cs, const char *id) {
    const cJSON *ve = cJSON_GetObjectItem(cs, "vit_embeds");
    if (!cJSON_IsObject(ve)) return;
    size_t per_tile = (size_t)nvlm_cfg_tokens_per_tile(&m->cfg) * m->cfg.llm.hidden_size, total = 0;
    char path[512];
    snprintf(path, sizeof path, "reference/%s", cJSON_GetObjectItem(ve, "path")->valuestring);
    int ref_tiles = cJSON_GetArrayItem(cJSON_GetObjectItem(ve, "shape"), 0)->valueint;
    float *ref = ref_read_f32(path, per_tile * ref_tiles);
    int n_tiles;
    const float *feat;
    for (int i = 0; ref && (feat = nvlm_chat_image_features(c, i, &n_tiles)); i++) {
        if (total + per_tile * n_tiles > per_tile * ref_tiles) break;
        double d = ref_max_abs_diff(feat, ref + total, per_tile * n_tiles);
        CHECK(d <= 3e-5, "%s: image %d projector output max abs diff %.3g > 3e-5", id, i, d);
        total += per_tile * n_tiles;
    }
    CHECK(total == per_tile * ref_tiles, "%s: projector output covers %zu of %zu values", id, total, per_tile * ref_tiles);
    free(ref);
}

static void run_case(nvlm_model *m, const cJSON *cs) {
    const char *id = cJSON_GetObjectItem(cs, "id")->valuestring;
    nvlm_err err = {0};
    nvlm_chat *c = ref_case_chat(m, cs, id);
    if (!c) return;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = cJSON_GetObjectItem(cs, "max_new_tokens")->valueint;
    nvlm_answer a;
    int rc = nvlm_chat_ask(c, cJSON_GetObjectItem(cs, "question")->valuestring, &s, NULL, NULL, &a, &err);
    CHECK(rc == 0, "%s: ask: %s", id, err.msg);
    if (rc == 0) {
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "prompt_ids"), a.prompt_ids, a.n_prompt), "%s: prompt ids differ (%zu ids)", id, a.n_prompt);
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "output_ids"), a.output_ids, a.n_output), "%s: output ids differ", id);
        const char *want = cJSON_GetObjectItem(cs, "response")->valuestring;
        CHECK(!strcmp(a.response, want), "%s: response '%s' != '%s'", id, a.response, want);
        const cJSON *npl = cJSON_GetObjectItem(cs, "num_patches_list");
        int same = (size_t)cJSON_GetArraySize(npl) == a.n_images;
        for (size_t i = 0; same && i < a.n_images; i++) same = cJSON_GetArrayItem(npl, (int)i)->valueint == a.num_patches[i];
        CHECK(same, "%s: num_patches_list differs", id);
        char path[512];
        snprintf(path, sizeof path, "reference/%s", cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "logits"), "path")->valuestring);
        float *ref = ref_read_f32(path, (size_t)m->cfg.llm.vocab_size);
        if (ref) {
            double d = ref_max_abs_diff(a.last_logits, ref, (size_t)m->cfg.llm.vocab_size);
            CHECK(d <= 5e-4, "%s: logits max abs diff %.3g > 5e-4", id, d);
        }
        free(ref);
        nvlm_answer_free(&a);
    }
    check_projector(m, c, cs, id);
    nvlm_chat_free(c);
}

static void check_mlp1_unit(nvlm_model *m) {
    float *in = ref_read_f32("reference/model_cases/mlp1_unit.input.f32", 16 * 320);
    float *ref = ref_read_f32("reference/model_cases/mlp1_unit.output.f32", 16 * 64);
    float out[16 * 64];
    nvlm_err err = {0};
    if (in && ref) {
        CHECK(nvlm_projector(m, in, 16, out, &err) == 0, "mlp1: %s", err.msg);
        double d = ref_max_abs_diff(out, ref, 16 * 64);
        CHECK(d <= 1e-5, "mlp1 unit max abs diff %.3g > 1e-5", d);
    } else {
        CHECK(0, "mlp1 unit data missing");
    }
    free(in), free(ref);
}

static int cancel_after(void *user) {
    int *left = user;
    return (*left)-- <= 0;
}

/* Cancelling mid-way (during the vision encoder, prefill or generation) returns
 * NVLM_E_CANCELLED and leaves the conversation usable: the next ask answers as a fresh one. */
static void check_cancel(nvlm_model *m) {
    const char *image = shared_path("reference/images/skimage_astronaut.png");
    char path[4096];
    snprintf(path, sizeof path, "%s", image);
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 6;
    nvlm_err err = {0};
    nvlm_answer want, got;
    nvlm_chat *c = NULL;
    nvlm_chat_new(m, &c, &err);
    nvlm_chat_add_image_file(c, path, &err);
    int rc = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &want, &err);
    CHECK(rc == 0, "uncancelled ask: %s", err.msg);
    nvlm_chat_free(c);
    for (int polls = 0; polls < 4 && rc == 0; polls++) {
        int left = polls;
        nvlm_chat_new(m, &c, &err);
        nvlm_chat_add_image_file(c, path, &err);
        nvlm_chat_set_abort(c, cancel_after, &left);
        int r1 = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &got, &err);
        CHECK(r1 == NVLM_E_CANCELLED, "cancel after %d polls: rc %d", polls, r1);
        nvlm_chat_set_abort(c, NULL, NULL);
        int r2 = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &got, &err);
        CHECK(r2 == 0 && got.n_output == want.n_output && !strcmp(got.response, want.response) &&
                  got.n_prompt == want.n_prompt,
              "after cancel (%d polls): %s", polls, err.msg);
        if (!r2) nvlm_answer_free(&got);
        nvlm_chat_free(c);
    }
    if (!rc) nvlm_answer_free(&want);
}

/* A matrix product that cannot get its scratch (the pool's limit at 0 stands for a failed
 * allocation) fails the ask with NVLM_E_NOMEM and a message, in the vision encoder and in the
 * LLM, instead of answering from skipped work; with the limit lifted the chat answers as before. */
static void check_scratch_failure(nvlm_model *m) {
    char path[4096];
    snprintf(path, sizeof path, "%s", shared_path("reference/images/skimage_astronaut.png"));
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 4;
    nvlm_err err = {0};
    nvlm_answer want, got;
    for (int image = 0; image < 2; image++) {
        nvlm_chat *c = NULL;
        CHECK(nvlm_chat_new(m, &c, &err) == 0, "%s", err.msg);
        if (!c) return;
        if (image) nvlm_chat_add_image_file(c, path, &err);
        int rc = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &want, &err);
        CHECK(rc == 0, "ask: %s", err.msg);
        nvlm_chat_free(c);
        c = NULL;
        nvlm_chat_new(m, &c, &err);
        if (image) nvlm_chat_add_image_file(c, path, &err);
        nvlm_pool_set_scratch_limit(m->pool, 0);
        err = (nvlm_err){0};
        int r1 = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &got, &err);
        CHECK(r1 == NVLM_E_NOMEM && strstr(err.msg, "out of memory") && strstr(err.msg, "scratch"),
              "ask without scratch (image %d): rc %d: %s", image, r1, err.msg);
        if (!r1) nvlm_answer_free(&got);
        nvlm_pool_set_scratch_limit(m->pool, SIZE_MAX);
        nvlm_chat_free(c);
        c = NULL;
        nvlm_chat_new(m, &c, &err);
        if (image) nvlm_chat_add_image_file(c, path, &err);
        int r2 = nvlm_chat_ask(c, "Describe.", &s, NULL, NULL, &got, &err);
        CHECK(r2 == 0 && !rc && got.n_output == want.n_output && !strcmp(got.response, want.response),
              "after the scratch failure (image %d): %s", image, err.msg);
        if (!r2) nvlm_answer_free(&got);
        if (!rc) nvlm_answer_free(&want);
        nvlm_chat_free(c);
    }
}

int main(void) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(shared_path("reference/model_cases.jsonl"), 0, &text, &len, &err)) {
        CHECK(0, "%s", err.msg);
        return check_done("test_model");
    }
    nvlm_model *m = NULL;
    char loaded[512] = "";
    nvlm_load_options lo = {.n_threads = 2, .weights_io = 42};
    CHECK(nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err) == NVLM_E_INVALID_ARG && !m &&
              strstr(err.msg, "weights_io 42"),
          "bad weights_io: %s", err.msg);
    /* the choice itself: AUTO reads under 3/4 of the available memory, READ refuses beyond it */
    CHECK(nvlm_weights_io_choice(NVLM_IO_AUTO, 75, 100, &err) == NVLM_IO_READ &&
              nvlm_weights_io_choice(NVLM_IO_AUTO, 76, 100, &err) == NVLM_IO_MMAP &&
              nvlm_weights_io_choice(NVLM_IO_AUTO, 1, 0, &err) == NVLM_IO_MMAP &&
              nvlm_weights_io_choice(NVLM_IO_MMAP, 1000, 100, &err) == NVLM_IO_MMAP &&
              nvlm_weights_io_choice(NVLM_IO_READ, 100, 100, &err) == NVLM_IO_READ &&
              nvlm_weights_io_choice(NVLM_IO_READ, 1, 0, &err) == NVLM_IO_READ,
          "weights_io choices");
    CHECK(nvlm_weights_io_choice(NVLM_IO_READ, 2000000000, 1000000000, &err) == NVLM_E_NOMEM && strstr(err.msg, "2.0 GB") &&
              strstr(err.msg, "1.0 GB") && strstr(err.msg, "--mmap"),
          "reading more than the available memory: %s", err.msg);
    int n_loaded = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *cs = cJSON_Parse(line);
        const char *id = cJSON_GetObjectItem(cs, "id")->valuestring;
        const char *model = cJSON_GetObjectItem(cs, "model")->valuestring;
        if (ref_selected(id) && strcmp(model, loaded)) {
            nvlm_model_free(m);
            m = NULL;
            char rel[512];
            snprintf(rel, sizeof rel, "reference/%s", model);
            lo.weights_io = n_loaded++ % 2 ? NVLM_IO_MMAP : NVLM_IO_READ; /* the cases hold either way */
            CHECK(nvlm_model_load(shared_path(rel), &lo, &m, &err) == 0, "load %s: %s", rel, err.msg);
            snprintf(loaded, sizeof loaded, "%s", model);
            if (m && !strcmp(model, "models/tiny-nvlm-d")) {
                check_mlp1_unit(m);
                if (ref_selected("cancel")) check_cancel(m);
                if (ref_selected("scratch")) check_scratch_failure(m);
            }
        }
        if (m && ref_selected(id)) run_case(m, cs);
        cJSON_Delete(cs);
    }
    nvlm_model_free(m);
    free(text);
    return check_done("test_model");
}
