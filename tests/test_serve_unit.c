/* The server's pieces without HTTP: base64, request parsing and every validation error,
 * the prompt a request maps to (against chat()'s reference prompt ids), the streamed-text
 * filter, the JSON replies and the metrics text. */
#include "check.h"
#include "generate/prompt.h"
#include "serve/serve_int.h"
#include "test_serve_util.h"

static const serve_limits LIM = {.max_image_bytes = 1 << 20, .max_image_pixels = 1 << 22, .max_images = 4};

static void test_base64(void) {
    struct { const char *in, *out; int ok; } cases[] = {
        {"", "", 1}, {"TQ==", "M", 1}, {"TWE=", "Ma", 1}, {"TWFu", "Man", 1}, {"TQ", "M", 1}, {"TWE", "Ma", 1},
        {"TW Fu\r\n", "Man", 1}, {"T", NULL, 0}, {"TQ=", NULL, 0}, {"TWFu=", NULL, 0}, {"TQ==TQ==", NULL, 0},
        {"TW$u", NULL, 0}, {"TQ===", NULL, 0}, {"=", NULL, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *o;
        size_t n;
        int rc = serve_base64_decode(cases[i].in, strlen(cases[i].in), &o, &n);
        CHECK((rc == 0) == cases[i].ok, "base64 '%s' rc %d", cases[i].in, rc);
        if (!rc && cases[i].out) CHECK(n == strlen(cases[i].out) && !memcmp(o, cases[i].out, n), "base64 '%s'", cases[i].in);
        free(o);
    }
}

/* Parses body; returns the status (0 when accepted) and checks code/param when given. */
static int parse_status(const char *body, const char *code, const char *param) {
    nvlm_sampling def;
    nvlm_sampling_default(&def);
    serve_request r;
    serve_error e = {0};
    int rc = serve_parse_request(body, strlen(body), &LIM, &def, &r, &e);
    if (!rc) {
        serve_request_free(&r);
        return 0;
    }
    if (code) CHECK(e.code && !strcmp(e.code, code), "%s: code %s, want %s (%s)", body, e.code, code, e.message);
    if (param) CHECK(!strcmp(e.param, param), "%s: param '%s', want '%s'", body, e.param, param);
    CHECK(e.message[0] && e.type, "%s: message", body);
    return e.status;
}

static void test_parse_errors(const char *png_url) {
    struct { const char *body, *code, *param; int status; } cases[] = {
        {"", "invalid_json", NULL, 400},
        {"{\"messages\": [", "invalid_json", NULL, 400},
        {"[1,2]", "invalid_type", NULL, 400},
        {"{}", "missing_required_parameter", "messages", 400},
        {"{\"messages\": null}", "missing_required_parameter", "messages", 400},
        {"{\"messages\": {}}", "invalid_type", "messages", 400},
        {"{\"messages\": []}", "invalid_value", "messages", 400},
        {"{\"model\": 3, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "model", 400},
        {"{\"messages\": [1]}", "invalid_type", "messages[0]", 400},
        {"{\"messages\": [{\"content\":\"hi\"}]}", "invalid_type", "messages[0]", 400},
        {"{\"messages\": [{\"role\":\"tool\",\"content\":\"hi\"}]}", "invalid_value", "messages[0]", 400},
        {"{\"messages\": [{\"role\":\"user\"}]}", "invalid_value", "messages[0]", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":5}]}", "invalid_type", "messages[0].content", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[5]}]}", "invalid_type", "messages[0].content[0]", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", "invalid_type", "messages[0].content[0]", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}", "invalid_value", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", "invalid_type", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/a.png\"}}]}]}", "remote_images_disabled", "messages[0].content[0].image_url", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"/etc/passwd\"}}]}]}", "local_images_disabled", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,@@@@\"}}]}]}", "invalid_base64", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,aGVsbG8=\"}}]}]}", "invalid_image", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png,abc\"}}]}]}", "invalid_image_url", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:text/plain;base64,aGVsbG8=\"}}]}]}", "invalid_image_url", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64\"}}]}]}", "invalid_image_url", NULL, 400},
        {"{\"messages\": [{\"role\":\"assistant\",\"content\":\"hi\"},{\"role\":\"user\",\"content\":\"x\"}]}", "invalid_value", "messages", 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"x\"}]}", "invalid_value", "messages", 400},
        {"{\"messages\": [{\"role\":\"system\",\"content\":\"s\"}]}", "invalid_value", "messages", 400},
        {"{\"messages\": [{\"role\":\"assistant\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AA==\"}}]},{\"role\":\"user\",\"content\":\"x\"}]}", "invalid_value", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\",\"tool_calls\":[{}]},{\"role\":\"user\",\"content\":\"c\"}]}", "unsupported_value", NULL, 400},
        {"{\"messages\": [{\"role\":\"user\",\"content\":\"<|vision_pad|>\"}]}", "invalid_value", NULL, 400},
        {"{\"n\": 9, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "n", 400},
        {"{\"n\": 2, \"stream\": true, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "unsupported_value", "n", 400},
        {"{\"n\": 1.5, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "n", 400},
        {"{\"max_tokens\": 0, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "max_tokens", 400},
        {"{\"max_tokens\": \"5\", \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "max_tokens", 400},
        {"{\"max_completion_tokens\": -1, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "max_completion_tokens", 400},
        {"{\"temperature\": 3, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "temperature", 400},
        {"{\"temperature\": \"hot\", \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "temperature", 400},
        {"{\"top_p\": 0, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "top_p", 400},
        {"{\"top_p\": 1.5, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "top_p", 400},
        {"{\"seed\": 0.5, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "seed", 400},
        {"{\"stop\": 5, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "stop", 400},
        {"{\"stop\": [\"a\", 5], \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "stop", 400},
        {"{\"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"], \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "stop", 400},
        {"{\"stream\": 1, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "stream", 400},
        {"{\"stream_options\": 1, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "stream_options", 400},
        {"{\"stream_options\": {\"include_usage\": \"yes\"}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", NULL, 400},
        {"{\"presence_penalty\": 2.5, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "presence_penalty", 400},
        {"{\"frequency_penalty\": \"x\", \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "frequency_penalty", 400},
        {"{\"logit_bias\": {\"abc\": 1}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "logit_bias", 400},
        {"{\"logit_bias\": {\"5\": 101}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "logit_bias", 400},
        {"{\"max_dynamic_patch\": 41, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "max_dynamic_patch", 400},
        {"{\"mm_processor_kwargs\": {\"max_dynamic_patch\": 0}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "max_dynamic_patch", 400},
        {"{\"top_logprobs\": 2, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "top_logprobs", 400},
        {"{\"logprobs\": true, \"top_logprobs\": 21, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "top_logprobs", 400},
        {"{\"logprobs\": 1, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_type", "logprobs", 400},
        {"{\"tools\": [{}], \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "unsupported_parameter", "tools", 400},
        {"{\"response_format\": {\"type\":\"yaml\"}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "response_format.type", 400},
        {"{\"response_format\": {\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"string\",\"pattern\":\"a\"}}}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "response_format.json_schema.schema", 400},
        {"{\"response_format\": {\"type\":\"json_schema\"}, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "response_format.json_schema", 400},
        {"{\"top_k\": -1, \"messages\": [{\"role\":\"user\",\"content\":\"hi\"}]}", "invalid_value", "top_k", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = parse_status(cases[i].body, cases[i].code, cases[i].param);
        CHECK(st == cases[i].status, "case %zu (%s): status %d", i, cases[i].body, st);
    }
    /* accepted: neutral values of unsupported fields, nulls, extras */
    const char *ok[] = {
        "{\"messages\": [{\"role\":\"user\",\"content\":\"hi\"}], \"presence_penalty\": 0, \"logprobs\": false, "
        "\"tools\": [], \"response_format\": {\"type\":\"text\"}, \"n\": 1, \"max_tokens\": null, \"user\": \"u\"}",
        "{\"messages\": [{\"role\":\"user\",\"content\":[]}], \"stop\": \"x\", \"seed\": -5, \"top_k\": 3, \"min_p\": 0.1}",
        "{\"messages\": [{\"role\":\"developer\",\"content\":\"d\"},{\"role\":\"user\",\"content\":\"<image> as text\"}]}"};
    for (int i = 0; i < 3; i++) CHECK(parse_status(ok[i], NULL, NULL) == 0, "accepted %d", i);
    /* image limits: count, pixels, bytes */
    char *big = malloc(strlen(png_url) * 5 + 512);
    sprintf(big, "{\"messages\": [{\"role\":\"user\",\"content\":[");
    for (int i = 0; i < 5; i++)
        sprintf(big + strlen(big), "%s{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}", i ? "," : "", png_url);
    strcat(big, "]}]}");
    CHECK(parse_status(big, "too_many_images", NULL) == 400, "5 images over 4");
    free(big);
    nvlm_sampling def;
    nvlm_sampling_default(&def);
    char *one = malloc(strlen(png_url) + 256);
    sprintf(one, "{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},"
                 "{\"type\":\"text\",\"text\":\"<image>\"}]}]}", png_url);
    CHECK(parse_status(one, "invalid_value", "messages") == 400, "<image> in text with images");
    sprintf(one, "{\"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}]}]}",
            png_url);
    serve_limits small = {.max_image_bytes = 1 << 20, .max_image_pixels = 1000, .max_images = 4};
    serve_request r;
    serve_error e;
    CHECK(serve_parse_request(one, strlen(one), &small, &def, &r, &e) && e.status == 400 && !strcmp(e.code, "image_too_large"),
          "pixels: %d %s", e.status, e.message);
    small = (serve_limits){.max_image_bytes = 1000, .max_image_pixels = 1 << 22, .max_images = 4};
    CHECK(serve_parse_request(one, strlen(one), &small, &def, &r, &e) && e.status == 413 && !strcmp(e.code, "image_too_large"),
          "bytes: %d %s", e.status, e.message);
    free(one);
}

/* Messages with images/text become chat()'s question, history and system. */
static void test_mapping(const char *png_url) {
    const char *fmt =
        "{\"messages\": [{\"role\":\"system\",\"content\":\"S1\"},{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"S2\"}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"Q1\"}]},"
        "{\"role\":\"assistant\",\"content\":\"A1\"},{\"role\":\"user\",\"content\":\"Q2a\"},{\"role\":\"user\",\"content\":\"Q2b\"},"
        "{\"role\":\"assistant\",\"content\":null},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"L: \"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"R\"}]}],"
        "\"max_completion_tokens\": 7, \"temperature\": 0.5, \"seed\": 9, \"stop\": [\"x\",\"y\"], \"stream\": true,"
        "\"stream_options\": {\"include_usage\": true}}";
    char *body = malloc(strlen(fmt) + 2 * strlen(png_url) + 1);
    sprintf(body, fmt, png_url, png_url);
    nvlm_sampling def;
    nvlm_sampling_default(&def);
    serve_request r;
    serve_error e;
    int rc = serve_parse_request(body, strlen(body), &LIM, &def, &r, &e);
    CHECK(rc == 0, "mapping parse: %s", e.message);
    if (!rc) {
        CHECK(r.system && !strcmp(r.system, "S1\nS2"), "system '%s'", r.system);
        CHECK(r.n_history == 2, "history %d", r.n_history);
        CHECK(r.n_history == 2 && !strcmp(r.history[0].question, "<image>\nQ1") && !strcmp(r.history[0].answer, "A1") &&
                  !strcmp(r.history[1].question, "Q2a\nQ2b") && !strcmp(r.history[1].answer, ""),
              "history turns");
        CHECK(!strcmp(r.question, "L: <image>\nR"), "question '%s'", r.question);
        CHECK(r.n_images == 2 && r.images[0].width == 512 && r.images[0].height == 512, "images");
        CHECK(r.max_tokens == 7 && r.sampling.temperature == 0.5f && r.sampling.seed == 9, "sampling");
        CHECK(r.sampling.stop && !strcmp(r.sampling.stop[1], "y") && !r.sampling.stop[2], "stop");
        CHECK(r.stream && r.include_usage, "stream");
        serve_request_free(&r);
    }
    free(body);
}

static void test_reference_prompts(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 1};
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err)) {
        CHECK(0, "load tiny model: %s", err.msg);
        return;
    }
    size_t len;
    char *all = slurp(shared_path("reference/model_cases.jsonl"), &len);
    CHECK(all != NULL, "model_cases.jsonl");
    int done = 0;
    for (char *line = all, *nl; all && line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *c = cJSON_Parse(line);
        if (!c || !expressible(c)) {
            cJSON_Delete(c);
            continue;
        }
        const cJSON *imgs = cJSON_GetObjectItem(c, "images");
        int n = cJSON_GetArraySize(imgs);
        char *urls[8] = {0};
        for (int i = 0; i < n && i < 8; i++) {
            char rel[256];
            snprintf(rel, sizeof rel, "reference/%s", cJSON_GetArrayItem(imgs, i)->valuestring);
            urls[i] = data_url(rel);
        }
        cJSON *req = cJSON_CreateObject();
        cJSON_AddItemToObject(req, "messages", case_messages(c, (const char *const *)urls));
        char *body = cJSON_PrintUnformatted(req);
        nvlm_sampling def;
        nvlm_sampling_default(&def);
        serve_request r;
        serve_error e;
        const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
        serve_limits lim = {.max_image_bytes = 8 << 20, .max_image_pixels = 1 << 24, .max_images = 8};
        int rc = serve_parse_request(body, strlen(body), &lim, &def, &r, &e);
        CHECK(rc == 0, "%s: %s", id, e.message);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (!rc) {
            rc = serve_prompt_ids(m, &r, 0, &ids, &n_ids, &err);
            const cJSON *want = cJSON_GetObjectItem(c, "prompt_ids");
            int same = !rc && (int)n_ids == cJSON_GetArraySize(want);
            for (size_t i = 0; same && i < n_ids; i++) same = ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
            CHECK(same, "%s: prompt ids differ (%zu vs %d) %s", id, n_ids, cJSON_GetArraySize(want), rc ? err.msg : "");
            const cJSON *np = cJSON_GetObjectItem(c, "num_patches_list");
            for (int i = 0; i < r.n_images; i++)
                CHECK(serve_image_tiles(m, &r.images[i], 0) == cJSON_GetArrayItem(np, i)->valueint, "%s: tiles", id);
            done++;
            free(ids);
            serve_request_free(&r);
        }
        free(body);
        cJSON_Delete(req);
        for (int i = 0; i < 8; i++) free(urls[i]);
        cJSON_Delete(c);
    }
    CHECK(done >= 8, "reference cases mapped: %d", done);
    free(all);
    nvlm_model_free(m);
}

/* Concatenated deltas equal the engine's final text: strip + stop strings held back. */
static void test_textstream(void) {
    struct { const char *pieces[8]; const char *stop[3]; const char *final; } cases[] = {
        {{"  He", "llo", " ", "wor", "ld ", "\n", NULL}, {NULL}, "Hello world"},
        {{"abc", "ST", "OPdef", NULL}, {"STOP", NULL}, "abc"},
        {{"ab", "S", "Tx", "yz", NULL}, {"STOP", NULL}, "abSTxyz"},
        {{"a ", "b", " \xe2\x80\x83", NULL}, {NULL}, "a b"},
        {{" ", "\n", NULL}, {NULL}, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        serve_textstream t = {.stop = cases[i].stop};
        nvlm_buf got = {0};
        nvlm_buf_puts(&got, "");
        for (int k = 0; cases[i].pieces[k]; k++) {
            char *d;
            size_t n;
            CHECK(!serve_textstream_push(&t, cases[i].pieces[k], strlen(cases[i].pieces[k]), &d, &n), "push");
            nvlm_buf_append(&got, d, n);
            free(d);
        }
        char *d;
        size_t n;
        serve_textstream_finish(&t, cases[i].final, &d, &n);
        nvlm_buf_append(&got, d, n);
        free(d);
        CHECK(!strcmp(got.data, cases[i].final), "textstream %zu: '%s'", i, got.data);
        nvlm_buf_free(&got);
        serve_textstream_free(&t);
    }
    /* a divergent final answer adds nothing */
    serve_textstream t = {.stop = NULL};
    char *d;
    size_t n;
    serve_textstream_push(&t, "xyz", 3, &d, &n);
    free(d);
    serve_textstream_finish(&t, "abc", &d, &n);
    CHECK(n == 0 && !strcmp(d, ""), "diverged");
    free(d);
    serve_textstream_free(&t);
}

static void test_replies(void) {
    serve_error e;
    serve_fail(&e, 401, "invalid_api_key", NULL, "bad \"key\"");
    char *s = serve_error_json(&e);
    cJSON *j = cJSON_Parse(s), *er = cJSON_GetObjectItem(j, "error");
    CHECK(er && !strcmp(cJSON_GetObjectItem(er, "message")->valuestring, "bad \"key\"") &&
              !strcmp(cJSON_GetObjectItem(er, "type")->valuestring, "authentication_error") &&
              cJSON_IsNull(cJSON_GetObjectItem(er, "param")),
          "error json %s", s);
    cJSON_Delete(j), free(s);
    s = serve_completion_json("id1", "m", 5, "hi\n\"", "length", 3, 4);
    j = cJSON_Parse(s);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK(ch && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content")->valuestring, "hi\n\"") &&
              !strcmp(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "length") &&
              cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint == 7 &&
              !strcmp(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion"),
          "completion json %s", s);
    cJSON_Delete(j), free(s);
    s = serve_chunk_json("id1", "m", 5, NULL, "abcdef", 3, NULL);
    j = cJSON_Parse(s);
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK(ch && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content")->valuestring, "abc") &&
              cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")),
          "chunk json %s", s);
    cJSON_Delete(j), free(s);
    s = serve_models_json("tiny", 1);
    CHECK(s && strstr(s, "\"id\":\"tiny\"") && strstr(s, "\"object\":\"list\""), "models %s", s);
    free(s);
    serve_metrics mt;
    serve_metrics_init(&mt, 4);
    serve_metrics_status(&mt, 200);
    serve_metrics_status(&mt, 401);
    serve_metrics_chat(&mt, SERVE_FIN_STOP, 10, 5, 1, 0.3, 0.1, 0.0);
    serve_metrics_gauges(&mt, 2, 1);
    s = serve_metrics_text(&mt);
    CHECK(s && strstr(s, "nvlm_requests_total{code=\"401\"} 1") && strstr(s, "nvlm_prompt_tokens_total 10") &&
              strstr(s, "nvlm_request_duration_seconds_bucket{le=\"0.5\"} 1") && strstr(s, "nvlm_queue_depth 2") &&
              strstr(s, "nvlm_request_duration_seconds_count 1"),
          "metrics:\n%s", s);
    free(s);
    serve_metrics_destroy(&mt);
}

int main(void) {
    char *url = data_url("reference/images/skimage_astronaut.png");
    CHECK(url != NULL, "astronaut image");
    test_base64();
    if (url) test_parse_errors(url), test_mapping(url);
    test_textstream();
    test_replies();
    test_reference_prompts();
    free(url);
    return check_done("test_serve_unit");
}
