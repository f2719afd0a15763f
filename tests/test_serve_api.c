/* The OpenAI API of issue 20 over HTTP on tiny-nvlm-d: logprobs against the reference logits,
 * response_format json_schema/json_object, n = 2 and 8, /v1/completions (plain and streamed,
 * images refused), max_dynamic_patch giving the 12-tile reference answer (in the body and in
 * mm_processor_kwargs, capped by --max-tiles), /v1/models and /props. */
#include "check.h"
#include "ref_cases.h"
#include "test_serve_util.h"
#include <math.h>

static cJSON *case_by_id(cJSON **all, const char *id) {
    for (int i = 0; all[i]; i++)
        if (!strcmp(cJSON_GetObjectItem(all[i], "id")->valuestring, id)) return all[i];
    return NULL;
}

static cJSON *post(int port, const char *path, const char *body, int *status) {
    resp r;
    *status = 0;
    if (http(port, "POST", path, NULL, body, &r)) return NULL;
    *status = r.status;
    if (r.status >= 400 && getenv("NVLM_TEST_VERBOSE")) fprintf(stderr, "%s: %d %.400s\n", path, r.status, r.body);
    cJSON *j = cJSON_Parse(r.body);
    resp_free(&r);
    return j;
}

static const cJSON *choice(const cJSON *j, int i) { return cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), i); }
static const char *content_of(const cJSON *ch) {
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* text_only over the API: logprob of the first token = log_softmax of the reference logits. */
static void check_logprobs(int port, const cJSON *cs) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "messages", case_messages(cs, NULL));
    cJSON_AddNumberToObject(req, "max_tokens", 3);
    cJSON_AddTrueToObject(req, "logprobs");
    cJSON_AddNumberToObject(req, "top_logprobs", 5);
    char *body = cJSON_PrintUnformatted(req);
    int st;
    cJSON *j = post(port, "/v1/chat/completions", body, &st);
    CHECK(st == 200, "logprobs request: %d", st);
    char path[512];
    snprintf(path, sizeof path, "reference/%s", cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "logits"), "path")->valuestring);
    int V = 4272;
    float *ref = ref_read_f32(path, (size_t)V);
    const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(choice(j, 0), "logprobs"), "content");
    const cJSON *first = cJSON_GetArrayItem(content, 0);
    CHECK(ref && cJSON_GetArraySize(content) == 3 && first, "3 logprob entries");
    if (ref && first) {
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) mx = ref[i] > mx ? ref[i] : mx;
        for (int i = 0; i < V; i++) s += exp(ref[i] - mx);
        int id0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cs, "output_ids"), 0)->valueint;
        double want = ref[id0] - mx - log(s), got = cJSON_GetNumberValue(cJSON_GetObjectItem(first, "logprob"));
        CHECK(fabs(got - want) <= 1e-4, "first token logprob %.6f, reference %.6f", got, want);
        const cJSON *top = cJSON_GetObjectItem(first, "top_logprobs");
        CHECK(cJSON_GetArraySize(top) == 5, "5 top_logprobs");
        CHECK(fabs(cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "logprob")) - want) <= 1e-4,
              "greedy: the first alternative is the chosen token");
        CHECK(cJSON_IsArray(cJSON_GetObjectItem(first, "bytes")) && cJSON_IsString(cJSON_GetObjectItem(first, "token")),
              "token and bytes");
    }
    free(ref);
    cJSON_Delete(j);
    free(body);
    cJSON_Delete(req);
}

/* Streamed with logprobs: the chunks' entries, in order, are the plain answer's. */
static void check_stream_logprobs(int port) {
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello, who are you?\"}],\"max_tokens\":12,"
                       "\"logprobs\":true,\"top_logprobs\":3%s}";
    char plain[512], streamed[512];
    snprintf(plain, sizeof plain, body, "");
    snprintf(streamed, sizeof streamed, body, ",\"stream\":true");
    int st;
    cJSON *j = post(port, "/v1/chat/completions", plain, &st);
    const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(choice(j, 0), "logprobs"), "content");
    resp r;
    int ok = !http(port, "POST", "/v1/chat/completions", NULL, streamed, &r) && r.status == 200;
    CHECK(ok && st == 200 && cJSON_GetArraySize(want) > 0, "logprobs plain %d / streamed", st);
    int k = 0, same = 1;
    char *save = NULL;
    for (char *ev = ok ? strtok_r(r.body, "\n", &save) : NULL; ev; ev = strtok_r(NULL, "\n", &save)) {
        if (strncmp(ev, "data: {", 7)) continue;
        cJSON *c = cJSON_Parse(ev + 6);
        const cJSON *e, *lc = cJSON_GetObjectItem(cJSON_GetObjectItem(choice(c, 0), "logprobs"), "content");
        cJSON_ArrayForEach(e, lc) {
            const cJSON *w = cJSON_GetArrayItem(want, k++);
            same &= w && !strcmp(cJSON_GetObjectItem(w, "token")->valuestring, cJSON_GetObjectItem(e, "token")->valuestring) &&
                    cJSON_GetNumberValue(cJSON_GetObjectItem(w, "logprob")) == cJSON_GetNumberValue(cJSON_GetObjectItem(e, "logprob")) &&
                    cJSON_GetArraySize(cJSON_GetObjectItem(e, "top_logprobs")) == 3;
        }
        cJSON_Delete(c);
    }
    CHECK(same && k == cJSON_GetArraySize(want), "streamed logprobs: %d entries vs %d plain, same %d", k,
          cJSON_GetArraySize(want), same);
    if (ok) resp_free(&r);
    cJSON_Delete(j);
}

static void check_json_schema(int port) {
    static const char *const bodies[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"A receipt, please.\"}],\"max_tokens\":300,\"seed\":%d,"
        "\"temperature\":%s,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"r\",\"strict\":true,"
        "\"schema\":{\"type\":\"object\",\"properties\":{\"shop\":{\"type\":\"string\",\"maxLength\":20},\"n\":{\"type\":"
        "\"integer\",\"minimum\":1,\"maximum\":50},\"paid\":{\"type\":\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":"
        "{\"enum\":[\"a\",\"b\"]},\"maxItems\":3}},\"required\":[\"shop\",\"n\",\"paid\",\"tags\"],"
        "\"additionalProperties\":false}}}}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"JSON!\"}],\"max_tokens\":300,\"seed\":%d,\"temperature\":%s,"
        "\"response_format\":{\"type\":\"json_object\"}}",
    };
    for (int b = 0; b < 2; b++)
        for (int seed = 0; seed < 4; seed++) {
            char body[2048];
            snprintf(body, sizeof body, bodies[b], seed, seed % 2 ? "1.0" : "0");
            int st;
            cJSON *j = post(port, "/v1/chat/completions", body, &st);
            const char *text = content_of(choice(j, 0));
            const cJSON *fin = cJSON_GetObjectItem(choice(j, 0), "finish_reason");
            CHECK(st == 200 && text, "schema %d seed %d: status %d", b, seed, st);
            if (text && cJSON_IsString(fin) && !strcmp(fin->valuestring, "stop")) {
                cJSON *v = cJSON_Parse(text);
                CHECK(cJSON_IsObject(v), "schema %d seed %d: not a JSON object: %s", b, seed, text);
                if (b == 0 && v) {
                    const cJSON *n = cJSON_GetObjectItem(v, "n");
                    CHECK(cJSON_IsString(cJSON_GetObjectItem(v, "shop")) && cJSON_IsNumber(n) && n->valuedouble >= 1 &&
                              n->valuedouble <= 50 && cJSON_IsBool(cJSON_GetObjectItem(v, "paid")) &&
                              cJSON_GetArraySize(cJSON_GetObjectItem(v, "tags")) <= 3 && cJSON_GetArraySize(v) == 4,
                          "seed %d: does not validate: %s", seed, text);
                }
                cJSON_Delete(v);
            } else if (text) {
                CHECK(b == 1, "schema %d seed %d: cut by max_tokens: %s", b, seed, text);
            }
            cJSON_Delete(j);
        }
    int st;
    cJSON *j = post(port, "/v1/chat/completions",
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\","
                    "\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"oneOf\":[]}}}}}}",
                    &st);
    const cJSON *msg = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
    CHECK(st == 400 && cJSON_IsString(msg) && strstr(msg->valuestring, "'oneOf'"), "oneOf refused naming it");
    cJSON_Delete(j);
}

static void check_n(int port) {
    for (int n = 2; n <= 8; n += 6) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story.\"}],\"max_tokens\":8,\"n\":%d,"
                 "\"temperature\":2,\"seed\":11}", n);
        int st;
        cJSON *j = post(port, "/v1/chat/completions", body, &st);
        int count = cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), distinct = 0, indexed = 1;
        for (int i = 0; i < count; i++) {
            indexed &= (int)cJSON_GetNumberValue(cJSON_GetObjectItem(choice(j, i), "index")) == i;
            int seen = 0;
            for (int k = 0; k < i; k++)
                seen |= content_of(choice(j, i)) && content_of(choice(j, k)) && !strcmp(content_of(choice(j, i)), content_of(choice(j, k)));
            distinct += !seen;
        }
        CHECK(st == 200 && count == n && indexed, "n=%d: status %d, %d choices", n, st, count);
        CHECK(distinct >= 2, "n=%d: the choices are all the same (each should have its own seed)", n);
        long comp = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens"));
        CHECK(comp >= n && comp <= 8L * n, "n=%d: usage completion_tokens %ld", n, comp);
        /* the first choice is what a single request with the same seed gives */
        char one[512];
        snprintf(one, sizeof one,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story.\"}],\"max_tokens\":8,\"temperature\":2,"
                 "\"seed\":11}");
        cJSON *k = post(port, "/v1/chat/completions", one, &st);
        CHECK(content_of(choice(k, 0)) && content_of(choice(j, 0)) && !strcmp(content_of(choice(k, 0)), content_of(choice(j, 0))),
              "n=%d: choice 0 differs from n=1 with the same seed", n);
        cJSON_Delete(k);
        /* and choice 1 what n = 1 with seed + 1 gives (the reused prompt cache changes nothing) */
        snprintf(one, sizeof one,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story.\"}],\"max_tokens\":8,\"temperature\":2,"
                 "\"seed\":12}");
        k = post(port, "/v1/chat/completions", one, &st);
        CHECK(content_of(choice(k, 0)) && content_of(choice(j, 1)) && !strcmp(content_of(choice(k, 0)), content_of(choice(j, 1))),
              "n=%d: choice 1 '%s' differs from n=1 with seed + 1 '%s'", n, content_of(choice(j, 1)), content_of(choice(k, 0)));
        cJSON_Delete(k);
        cJSON_Delete(j);
    }
}

/* n = 3 on an image question: the image is encoded once, every choice answers it. */
static void check_n_image(int port) {
    char *url = data_url("reference/images/skimage_astronaut.png");
    char *body = malloc(strlen(url) + 512);
    sprintf(body, "{\"max_tokens\":6,\"n\":3,\"temperature\":1.5,\"seed\":4,\"messages\":[{\"role\":\"user\",\"content\":["
                  "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"What is it?\"}]}]}", url);
    int st;
    cJSON *j = post(port, "/v1/chat/completions", body, &st);
    int ok = st == 200 && cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")) == 3;
    for (int i = 0; ok && i < 3; i++) ok = content_of(choice(j, i)) != NULL;
    CHECK(ok, "n=3 with an image: status %d", st);
    cJSON_Delete(j);
    free(body);
    free(url);
}

/* n = 2 on /v1/completions: choice k is what n = 1 with seed + k gives (the prompt completed
 * again on the same cache, raw). */
static void check_completions_n(int port) {
    int st, st1;
    cJSON *j = post(port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":6,\"n\":2,"
                                             "\"temperature\":2,\"seed\":21}", &st);
    cJSON *k = post(port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":6,\"temperature\":2,"
                                             "\"seed\":22}", &st1);
    const cJSON *a = cJSON_GetObjectItem(choice(j, 1), "text"), *b = cJSON_GetObjectItem(choice(k, 0), "text");
    CHECK(st == 200 && st1 == 200 && cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")) == 2 && cJSON_IsString(a) &&
              cJSON_IsString(b) && !strcmp(a->valuestring, b->valuestring),
          "completions n=2: status %d/%d, choice 1 '%s' vs n=1 with seed + 1 '%s'", st, st1,
          cJSON_IsString(a) ? a->valuestring : "?", cJSON_IsString(b) ? b->valuestring : "?");
    cJSON_Delete(j);
    cJSON_Delete(k);
}

static void check_completions(int port, nvlm_model *m) {
    int st;
    cJSON *j = post(port, "/v1/completions", "{\"prompt\":\"Hello there, friend\",\"max_tokens\":6,\"logprobs\":2}", &st);
    const cJSON *ch = choice(j, 0), *text = cJSON_GetObjectItem(ch, "text");
    CHECK(st == 200 && cJSON_IsString(text) && !strcmp(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion"),
          "completions: status %d", st);
    /* the engine directly: no template */
    nvlm_chat *c = NULL;
    nvlm_err err = {0};
    nvlm_answer a;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 6;
    nvlm_chat_new(m, &c, &err);
    CHECK(c && nvlm_chat_complete(c, "Hello there, friend", &s, NULL, NULL, &a, &err) == 0, "complete: %s", err.msg);
    if (c && cJSON_IsString(text)) {
        CHECK(!strcmp(a.response, text->valuestring), "completions text '%s' vs engine '%s'", text->valuestring, a.response);
        CHECK(a.n_prompt == 5 || a.n_prompt < 12, "a raw prompt has no template (%zu ids)", a.n_prompt);
        nvlm_answer_free(&a);
    }
    nvlm_chat_free(c);
    const cJSON *lp = cJSON_GetObjectItem(ch, "logprobs");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")) == 6 &&
              cJSON_GetArraySize(cJSON_GetObjectItem(lp, "token_logprobs")) == 6 &&
              cJSON_GetArraySize(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0)) >= 1,
          "legacy logprobs shape");
    cJSON_Delete(j);
    /* streamed: the text pieces add up to the plain answer (not stripped: leading spaces stay) */
    resp r;
    j = post(port, "/v1/completions", "{\"prompt\":\"Once upon\",\"max_tokens\":10}", &st);
    const cJSON *plain = cJSON_GetObjectItem(choice(j, 0), "text");
    int ok = !http(port, "POST", "/v1/completions", NULL, "{\"prompt\":\"Once upon\",\"max_tokens\":10,\"stream\":true}", &r) &&
             r.status == 200 && strstr(r.body, "data: [DONE]") && strstr(r.body, "\"text_completion\"");
    nvlm_buf joined = {0};
    nvlm_buf_puts(&joined, "");
    char *save = NULL;
    for (char *ev = ok ? strtok_r(r.body, "\n", &save) : NULL; ev; ev = strtok_r(NULL, "\n", &save)) {
        cJSON *c2 = strncmp(ev, "data: {", 7) ? NULL : cJSON_Parse(ev + 6);
        const cJSON *t = cJSON_GetObjectItem(choice(c2, 0), "text");
        if (cJSON_IsString(t)) nvlm_buf_puts(&joined, t->valuestring);
        cJSON_Delete(c2);
    }
    CHECK(ok && cJSON_IsString(plain) && !strcmp(joined.data, plain->valuestring), "streamed completion '%s' vs '%s'",
          joined.data, cJSON_IsString(plain) ? plain->valuestring : "");
    nvlm_buf_free(&joined);
    cJSON_Delete(j);
    if (ok) resp_free(&r);
    static const char *const refused[] = {
        "{\"prompt\":\"look <|vision_pad|>\"}",
        "{\"prompt\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"prompt\":\"x\",\"images\":[\"data:image/png;base64,AA==\"]}",
        "{\"prompt\":[1,2,3]}",
        "{\"max_tokens\":3}",
        "{\"prompt\":\"x\",\"echo\":true}",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        j = post(port, "/v1/completions", refused[i], &st);
        CHECK(st == 400 && cJSON_GetObjectItem(j, "error"), "completions %s: status %d", refused[i], st);
        cJSON_Delete(j);
    }
}

/* max_num_12 (13 tiles) through the request's tile bound, with the server's default of 6. */
static void check_tiles(int port, int capped_port, const cJSON *cs) {
    char rel[512];
    snprintf(rel, sizeof rel, "reference/%s", cJSON_GetArrayItem(cJSON_GetObjectItem(cs, "images"), 0)->valuestring);
    char *url = data_url(rel);
    const char *urls[] = {url};
    for (int where = 0; where < 3; where++) {
        cJSON *req = cJSON_CreateObject();
        cJSON_AddItemToObject(req, "messages", case_messages(cs, urls));
        cJSON_AddNumberToObject(req, "max_tokens", cJSON_GetObjectItem(cs, "max_new_tokens")->valueint);
        if (where == 0) cJSON_AddNumberToObject(req, "max_dynamic_patch", 12);
        else cJSON_AddNumberToObject(cJSON_AddObjectToObject(req, "mm_processor_kwargs"), "max_dynamic_patch", 12);
        char *body = cJSON_PrintUnformatted(req);
        int st;
        cJSON *j = post(where == 2 ? capped_port : port, "/v1/chat/completions", body, &st);
        const char *got = content_of(choice(j, 0)), *want = cJSON_GetObjectItem(cs, "response")->valuestring;
        long prompt = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens"));
        long want_prompt = cJSON_GetArraySize(cJSON_GetObjectItem(cs, "prompt_ids"));
        if (where < 2)
            CHECK(st == 200 && got && !strcmp(got, want) && prompt == want_prompt,
                  "max_dynamic_patch 12 (%s): status %d '%s' vs '%s', %ld prompt ids vs %ld", where ? "mm_processor_kwargs" : "body",
                  st, got ? got : "", want, prompt, want_prompt);
        else /* --max-tiles 6 caps it: fewer image tokens */
            CHECK(st == 200 && prompt < want_prompt, "capped by --max-tiles: %ld prompt ids", prompt);
        cJSON_Delete(j);
        free(body);
        cJSON_Delete(req);
    }
    free(url);
}

static void check_info(int port) {
    resp r;
    CHECK(!http(port, "GET", "/v1/models", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "\"max_model_len\":4096"),
          "models with the context length: %s", r.body ? r.body : "");
    resp_free(&r);
    CHECK(!http(port, "GET", "/props", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "\"context_length\":4096") &&
              strstr(r.body, "\"max_tiles\""),
          "props: %s", r.body ? r.body : "");
    resp_free(&r);
}

int main(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    char *text;
    size_t len;
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), NULL, &m, &err) ||
        nvlm_read_file(shared_path("reference/model_cases.jsonl"), 0, &text, &len, &err)) {
        CHECK(0, "load: %s", err.msg);
        return check_done("test_serve_api");
    }
    cJSON *all[64] = {0};
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < 63; line = strtok(NULL, "\n")) all[n++] = cJSON_Parse(line);
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    o.ctx = 4096;
    nvlm_server *a = NULL, *b = NULL;
    CHECK(!nvlm_server_start(m, &o, &a, &err), "start: %s", err.msg);
    o.max_tiles = 6;
    CHECK(!nvlm_server_start(m, &o, &b, &err), "start capped: %s", err.msg);
    if (a && b) {
        int port = nvlm_server_port(a);
        check_info(port);
        check_logprobs(port, case_by_id(all, "text_only"));
        check_stream_logprobs(port);
        check_json_schema(port);
        check_n(port);
        check_n_image(port);
        check_completions_n(port);
        check_completions(port, m);
        check_tiles(port, nvlm_server_port(b), case_by_id(all, "max_num_12"));
    }
    nvlm_server_stop(a);
    nvlm_server_stop(b);
    for (int i = 0; i < n; i++) cJSON_Delete(all[i]);
    free(text);
    nvlm_model_free(m);
    return check_done("test_serve_api");
}
