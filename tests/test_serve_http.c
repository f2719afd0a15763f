/* The server over HTTP on 127.0.0.1 (ephemeral ports), talked to with plain sockets: the
 * reference conversations (text, images, history) give chat()'s answers and token counts,
 * streaming adds up to the same answer, concurrent greedy answers equal lone ones, every bad
 * input gets its status and the server stays healthy, a client that disconnects frees its
 * slot, and stopping the server ends the requests in flight. */
#include "test_serve_util.h"
#include <unistd.h>

/* ------------------------------------------------------- reference cases */

typedef struct refcase {
    char id[64];
    char *body;         /* request without "stream" */
    char *response, *finish;
    long prompt_len, n_output;
} refcase;

static char *request_body(cJSON *msgs, int max_tokens, int stream, const char *stop) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "model", "tiny-nvlm-d");
    cJSON_AddItemToObject(req, "messages", msgs);
    cJSON_AddNumberToObject(req, "max_tokens", max_tokens);
    if (stream) {
        cJSON_AddTrueToObject(req, "stream");
        cJSON_AddTrueToObject(cJSON_AddObjectToObject(req, "stream_options"), "include_usage");
    }
    if (stop) cJSON_AddStringToObject(req, "stop", stop);
    char *s = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    return s;
}

static int load_cases(refcase *out, int max, const char *const *ids) {
    size_t len;
    char *all = slurp(shared_path("reference/model_cases.jsonl"), &len);
    int n = 0;
    for (char *line = all, *nl; all && line && *line && n < max; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *c = cJSON_Parse(line);
        const char *id = c ? cJSON_GetObjectItem(c, "id")->valuestring : "";
        int want = 0;
        for (int i = 0; ids[i]; i++) want |= !strcmp(ids[i], id);
        if (!want || !expressible(c)) {
            cJSON_Delete(c);
            continue;
        }
        const cJSON *imgs = cJSON_GetObjectItem(c, "images");
        char *urls[8] = {0};
        for (int i = 0; i < cJSON_GetArraySize(imgs) && i < 8; i++) {
            char rel[256];
            snprintf(rel, sizeof rel, "reference/%s", cJSON_GetArrayItem(imgs, i)->valuestring);
            urls[i] = data_url(rel);
        }
        refcase *rc = &out[n++];
        snprintf(rc->id, sizeof rc->id, "%s", id);
        rc->body = request_body(case_messages(c, (const char *const *)urls),
                                cJSON_GetObjectItem(c, "max_new_tokens")->valueint, 0, NULL);
        rc->response = strdup(cJSON_GetObjectItem(c, "response")->valuestring);
        rc->finish = strdup(cJSON_IsTrue(cJSON_GetObjectItem(c, "stopped_on_im_end")) ? "stop" : "length");
        rc->prompt_len = cJSON_GetObjectItem(c, "prompt_len")->valueint;
        rc->n_output = cJSON_GetArraySize(cJSON_GetObjectItem(c, "output_ids"));
        for (int i = 0; i < 8; i++) free(urls[i]);
        cJSON_Delete(c);
    }
    free(all);
    return n;
}

static int matches(const refcase *c, const answer *a) {
    return a->status == 200 && a->content && !strcmp(a->content, c->response) && a->finish &&
           !strcmp(a->finish, c->finish) && a->prompt == c->prompt_len && a->completion == c->n_output;
}

/* "stream": true version of a case's body. */
static char *streamed(const char *body) {
    cJSON *j = cJSON_Parse(body);
    cJSON_AddTrueToObject(j, "stream");
    cJSON_AddTrueToObject(cJSON_AddObjectToObject(j, "stream_options"), "include_usage");
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static void test_reference(int port, refcase *cs, int n) {
    for (int i = 0; i < n; i++) {
#ifdef __SANITIZE_ADDRESS__
        /* 7 tiles take ~15 s under ASan; the plain build checks this case, the others cover its code */
        if (!strcmp(cs[i].id, "history_with_image")) continue;
#endif
        answer a;
        ask(port, NULL, cs[i].body, &a);
        CHECK(matches(&cs[i], &a), "%s: status %d content '%s' (want '%s') finish %s prompt %ld/%ld completion %ld/%ld",
              cs[i].id, a.status, a.content, cs[i].response, a.finish, a.prompt, cs[i].prompt_len, a.completion,
              cs[i].n_output);
        answer_free(&a);
        if (strcmp(cs[i].id, "one_tile") && strcmp(cs[i].id, "text_only") && strcmp(cs[i].id, "stops_at_im_end")) continue;
        char *sb = streamed(cs[i].body);
        ask(port, NULL, sb, &a);
        CHECK(matches(&cs[i], &a) && a.role_first && a.done == 1, "%s streamed: content '%s' finish %s role %d done %d",
              cs[i].id, a.content, a.finish, a.role_first, a.done);
        answer_free(&a);
        free(sb);
    }
}

static void test_stop_string(int port, const refcase *text_only) {
    cJSON *j = cJSON_Parse(text_only->body);
    cJSON_AddStringToObject(j, "stop", " dig");
    char *b = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    const char *want = "fa.Formsicy"; /* the reference answer is "fa.Formsicy dig </_se ..." */
    answer a;
    ask(port, NULL, b, &a);
    CHECK(a.status == 200 && a.content && !strcmp(a.content, want) && !strcmp(a.finish, "stop"), "stop: '%s' %s", a.content,
          a.finish);
    answer_free(&a);
    char *sb = streamed(b);
    ask(port, NULL, sb, &a);
    CHECK(a.status == 200 && a.content && !strcmp(a.content, want) && a.finish && !strcmp(a.finish, "stop"),
          "stop streamed: '%s'", a.content);
    answer_free(&a);
    free(sb);
    free(b);
}

/* ---------------------------------------------------------- concurrency */

typedef struct client {
    pthread_t th;
    int port;
    const refcase *c;
    int stream, ok, n;
    double secs;
} client;

static void *client_main(void *arg) {
    client *cl = arg;
    char *b = cl->stream ? streamed(cl->c->body) : strdup(cl->c->body);
    double t0 = serve_now();
    cl->ok = 1;
    for (int i = 0; i < cl->n; i++) {
        answer a;
        ask(cl->port, NULL, b, &a);
        cl->ok &= matches(cl->c, &a);
        answer_free(&a);
    }
    cl->secs = serve_now() - t0;
    free(b);
    return NULL;
}

static void test_concurrent(int port, const refcase *text, const refcase *image) {
    enum { N = 8 };
#ifdef __SANITIZE_ADDRESS__
    const int per = 1; /* the same mix, fewer rounds: ASan makes the image path ~10x slower */
#else
    const int per = 2;
#endif
    client cl[N];
    double t0 = serve_now();
    for (int i = 0; i < N; i++) {
        cl[i] = (client){0, port, (i % 4 == 3) ? image : text, i % 2, 0, per, 0};
        pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    }
    int ok = 1, reqs = 0;
    double lat = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(cl[i].th, NULL);
        ok &= cl[i].ok;
        reqs += cl[i].n;
        lat += cl[i].secs;
    }
    double wall = serve_now() - t0;
    CHECK(ok, "concurrent greedy answers equal the lone ones");
    printf("load: %d requests from %d clients (text/image, plain/stream) in %.2f s: %.1f req/s, mean latency %.0f ms\n",
           reqs, N, wall, reqs / wall, 1e3 * lat / reqs);
}

/* A question about one reference image (seven_tiles: skimage_coffee.png is 6 tiles and a
 * thumbnail, the longest image encoding of the cases). */
static char *image_body(const char *rel, int max_tokens, int stream) {
    char *url = data_url(rel);
    const char *fmt = "{\"model\":\"tiny-nvlm-d\",\"max_tokens\":%d,%s\"messages\":[{\"role\":\"user\",\"content\":["
                      "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"Describe.\"}]}]}";
    char *b = malloc(strlen(fmt) + strlen(url) + 64);
    sprintf(b, fmt, max_tokens, stream ? "\"stream\":true," : "", url);
    free(url);
    return b;
}

#define SEVEN_TILES "reference/images/skimage_coffee.png"

/* ------------------------------------------------- limits, auth, errors */

static void expect(int port, const char *method, const char *path, const char *hdrs, const char *body, int status,
                   const char *code) {
    resp r;
    char buf[64];
    int rc = http(port, method, path, hdrs, body, &r);
    CHECK(!rc && r.status == status && (!code || !strcmp(err_code(&r, buf, sizeof buf), code)),
          "%s %s: status %d want %d, body %.300s", method, path, r.status, status, r.body ? r.body : "");
    if (status >= 400) CHECK(r.head && strcasestr(r.head, "application/json") && strstr(r.body, "\"error\""), "json error");
    resp_free(&r);
    CHECK(healthy(port), "healthy after %s %s -> %d", method, path, status);
}

static void test_errors(int port, const char *astronaut) {
    const char *key = "Authorization: Bearer sekret\r\n";
    const char *hi = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2}";
    expect(port, "POST", "/v1/chat/completions", NULL, hi, 401, "invalid_api_key");
    expect(port, "POST", "/v1/chat/completions", "Authorization: Bearer nope\r\n", hi, 401, "invalid_api_key");
    /* a prefix or an extension of the key is as wrong as any other (digests compared) */
    expect(port, "GET", "/v1/models", "Authorization: Bearer sekre\r\n", NULL, 401, "invalid_api_key");
    expect(port, "GET", "/v1/models", "Authorization: Bearer sekretX\r\n", NULL, 401, "invalid_api_key");
    expect(port, "GET", "/v1/models", "Authorization: Bearer \r\n", NULL, 401, "invalid_api_key");
    expect(port, "GET", "/v1/models", NULL, NULL, 401, "invalid_api_key");
    expect(port, "GET", "/v1/models", key, NULL, 200, NULL);
    expect(port, "POST", "/v1/chat/completions", key, hi, 200, NULL);
    expect(port, "GET", "/v1/chat/completions", key, NULL, 405, NULL);
    expect(port, "POST", "/health", key, hi, 405, NULL);
    expect(port, "GET", "/v2/nothing", key, NULL, 404, NULL);
    expect(port, "POST", "/v1/chat/completions", key, "{\"messages\":", 400, "invalid_json");
    expect(port, "POST", "/v1/chat/completions", key, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":7}]}]}", 400,
           "invalid_type");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 404, "model_not_found");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":5000}", 400, "context_length_exceeded");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,!!\"}}]}]}",
           400, "invalid_base64");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}]}",
           400, "invalid_image");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://example.com/a.png\"}}]}]}",
           400, "remote_images_disabled");
    expect(port, "POST", "/v1/chat/completions", key, "", 400, "invalid_json");
    expect(port, "POST", "/v1/chat/completions", key, "[1,2]", 400, NULL);
    expect(port, "POST", "/v1/chat/completions", key, "{\"messages\":\"hi\"}", 400, "invalid_type");
    expect(port, "POST", "/v1/chat/completions", key, "{\"model\":\"tiny-nvlm-d\"}", 400, "missing_required_parameter");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":\"5\"}", 400, "invalid_type");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":\"hot\"}", 400, "invalid_type");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":\"yes\"}", 400, "invalid_type");
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"robot\",\"content\":\"hi\"}]}", 400, NULL);
    expect(port, "POST", "/v1/chat/completions", key,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":9}", 400, NULL);
    expect(port, "POST", "/v1/chat/completions", "Authorization: Basic c2VrcmV0\r\n", hi, 401, "invalid_api_key");
    /* a prompt longer than the context by itself (this server: 4096 tokens) */
    nvlm_buf longp = {0};
    nvlm_buf_puts(&longp, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < 5000; i++) nvlm_buf_puts(&longp, "word ");
    nvlm_buf_puts(&longp, "\"}]}");
    expect(port, "POST", "/v1/chat/completions", key, longp.data, 400, "context_length_exceeded");
    nvlm_buf_free(&longp);
    /* more images than allowed (16) */
    char *tiny = data_url("reference/images/tiny_2x3.png");
    nvlm_buf many = {0};
    nvlm_buf_puts(&many, "{\"messages\":[{\"role\":\"user\",\"content\":[");
    for (int i = 0; i < 17; i++) {
        nvlm_buf_puts(&many, i ? ",{\"type\":\"image_url\",\"image_url\":{\"url\":\"" : "{\"type\":\"image_url\",\"image_url\":{\"url\":\"");
        nvlm_buf_puts(&many, tiny);
        nvlm_buf_puts(&many, "\"}}");
    }
    nvlm_buf_puts(&many, "]}]}");
    expect(port, "POST", "/v1/chat/completions", key, many.data, 400, "too_many_images");
    nvlm_buf_free(&many);
    free(tiny);
    /* an image over the pixel limit (this server: 1 Mpx; 1400x1600 is 2.24 Mpx in 415 KB) */
    char *wide = data_url("reference/images/grid_1400x1600.png"), *wb = malloc(strlen(wide) + 256);
    sprintf(wb, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}]}]}",
            wide);
    expect(port, "POST", "/v1/chat/completions", key, wb, 400, "image_too_large");
    free(wb);
    free(wide);
    /* image over the byte limit (astronaut is 791 KB; this server allows 500 KB) */
    char *b = malloc(strlen(astronaut) + 256);
    sprintf(b, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}]}]}",
            astronaut);
    expect(port, "POST", "/v1/chat/completions", key, b, 413, "image_too_large");
    free(b);
    /* body over the limit: announced by Content-Length (answered before the body) */
    size_t big = (2u << 20) + 10;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = 0;
    huge[0] = '{', huge[big - 1] = '}';
    expect(port, "POST", "/v1/chat/completions", key, huge, 413, "request_too_large");
    /* the same without Content-Length (chunked upload): counted while it arrives */
    int fd = dial(port);
    const char *head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer sekret\r\n"
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    send_all(fd, head, strlen(head));
    for (size_t off = 0; off < big; off += 65536) {
        char sz[32];
        size_t k = big - off < 65536 ? big - off : 65536;
        snprintf(sz, sizeof sz, "%zx\r\n", k);
        send_all(fd, sz, strlen(sz));
        send_all(fd, huge + off, k);
        send_all(fd, "\r\n", 2);
    }
    send_all(fd, "0\r\n\r\n", 5);
    resp r;
    char buf[64];
    CHECK(!read_resp(fd, &r) && r.status == 413 && !strcmp(err_code(&r, buf, sizeof buf), "request_too_large"),
          "chunked body over the limit: %d %.200s", r.status, r.body ? r.body : "");
    resp_free(&r);
    CHECK(healthy(port), "healthy after a chunked body over the limit");
    free(huge);
}

/* ----------------------------------------------------------- disconnect */

/* On a one-slot server: a client whose request is computing (a 7-tile image: a long
 * prefill) leaves, and so does one queued behind it; both are cancelled and the slot serves a
 * third client at once. */
#ifdef __SANITIZE_ADDRESS__
#define RUNNING_ON_ASAN 1
#else
#define RUNNING_ON_ASAN 0
/* Seconds a 7-tile image question takes alone on this one-slot server (max_tokens 1: nearly
 * all of it is the image encoding). */
static double seven_tile_seconds(int port, const char *key) {
    char *body = image_body(SEVEN_TILES, 1, 0);
    double t0 = serve_now();
    answer a;
    ask(port, key, body, &a);
    double secs = serve_now() - t0;
    CHECK(a.status == 200 && a.completion == 1, "7-tile question: %d", a.status);
    answer_free(&a);
    free(body);
    return secs;
}
#endif

/* Polls a metric until it drops to want (bounded); returns the seconds it took, -1 if never. */
static double await_drop(int port, const char *name, long want) {
    double t0 = serve_now();
    for (int i = 0; i < 3000; i++) {
        if (metric(port, name) == want) return serve_now() - t0;
        usleep(2000);
    }
    return -1;
}

/* On a one-slot server a 7-tile image question is being encoded and a second request waits
 * behind it. The waiting client leaves: its request leaves the queue at once. The encoding
 * client leaves: the encoding stops at the next tile and the slot is free long before the
 * image would have been encoded; both count as cancelled and the next client is served. */
static double test_disconnect(int port, const char *key) {
    const char *cancel = "nvlm_chat_completions_total{finish=\"cancelled\"} ";
#ifdef __SANITIZE_ADDRESS__
    double full = 10; /* not measured (~15 s under ASan): a lower bound */
#else
    double full = seven_tile_seconds(port, key);
#endif
    long before = metric(port, cancel);
    char *body = image_body(SEVEN_TILES, 1, 0);
    int fd = send_request(port, "POST", "/v1/chat/completions", key, body);
    free(body);
    CHECK(await_metric(port, "\nnvlm_active_requests ", 1) == 1, "image request running");
    int fd2 = send_request(port, "POST", "/v1/chat/completions", key,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"queued\"}],\"max_tokens\":3}");
    CHECK(await_metric(port, "\nnvlm_queue_depth ", 1) == 1, "second request queued");
    close(fd2);
    double dequeued = await_drop(port, "\nnvlm_queue_depth ", 0);
    close(fd);
    double freed = await_drop(port, "\nnvlm_active_requests ", 0);
    /* noticing takes up to 50 ms (the connection threads poll their socket), then one tile */
    double bound = 0.2 + full / 3;
    CHECK(dequeued >= 0 && dequeued < bound, "the queued request left the queue after %.3f s (bound %.3f s)", dequeued,
          bound);
    CHECK(freed >= 0 && freed < bound, "the slot was free %.3f s after its client left during the encoding (bound %.3f s, "
          "the whole encoding takes %.3f s)", freed, bound, full);
    long after = await_metric(port, cancel, before + 2);
    CHECK(after == before + 2, "both clients that left were cancelled (%ld -> %ld)", before, after);
    double t0 = serve_now();
    answer a;
    ask(port, key, "{\"messages\":[{\"role\":\"user\",\"content\":\"after\"}],\"max_tokens\":4}", &a);
    CHECK(a.status == 200 && a.completion == 4, "request after the disconnect: %d", a.status);
    answer_free(&a);
    printf("disconnect: a 7-tile question takes %s%.0f ms alone; a queued request whose client left was dropped in %.0f ms, "
           "a slot whose client left during the image encoding was free in %.0f ms, the next answer took %.0f ms\n",
           RUNNING_ON_ASAN ? "over " : "", full * 1e3, dequeued * 1e3, freed * 1e3, (serve_now() - t0) * 1e3);
    return full;
}

/* ---------------------------------------------------------------- stop */

typedef struct stream_client {
    pthread_t th;
    int port;
    const char *body;
    resp r;
} stream_client;

static void *long_stream(void *arg) {
    stream_client *s = arg;
    http(s->port, "POST", "/v1/chat/completions", NULL, s->body, &s->r);
    return NULL;
}

/* Stopping the server while a streamed 7-tile question is being encoded: the encoding stops
 * at the next tile, the stream ends with an error event and [DONE], and stop returns at once. */
static void test_stop(nvlm_server *srv, int port, double full) {
    char *body = image_body(SEVEN_TILES, 16, 1);
    stream_client s = {0, port, body, {0}};
    pthread_create(&s.th, NULL, long_stream, &s);
    CHECK(await_metric(port, "\nnvlm_active_requests ", 1) == 1, "streamed image request running");
    double t0 = serve_now();
    nvlm_server_stop(srv);
    double took = serve_now() - t0;
    pthread_join(s.th, NULL);
    CHECK(took < 0.2 + full / 3, "stop took %.3f s (a 7-tile encoding: %.3f s)", took, full);
    CHECK(s.r.status == 200 && s.r.body && strstr(s.r.body, "\"code\":\"cancelled\"") && strstr(s.r.body, "data: [DONE]"),
          "stream cut by the stop: %d %.300s", s.r.status, s.r.body ? s.r.body : "");
    printf("stop: a streamed 7-tile question being encoded ended and the server stopped in %.0f ms\n", took * 1e3);
    resp_free(&s.r);
    free(body);
    CHECK(dial(port) < 0, "no longer listening");
}

static const refcase *find_case(const refcase *cs, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (!strcmp(cs[i].id, id)) return &cs[i];
    return NULL;
}

int main(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), NULL, &m, &err)) {
        CHECK(0, "load: %s", err.msg);
        return check_done("test_serve_http");
    }
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    nvlm_server *a = NULL, *b = NULL;
    CHECK(!nvlm_server_start(m, &o, &a, &err), "start A: %s", err.msg);
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    o.api_key = "sekret";
    o.strict_model = 1;
    o.parallel = 1;
    o.ctx = 4096;
    o.max_body = 2u << 20;
    o.max_image_bytes = 500000;
    o.max_image_pixels = 1000000;
    CHECK(!nvlm_server_start(m, &o, &b, &err), "start B: %s", err.msg);
    if (!a || !b) return check_done("test_serve_http");
    int pa = nvlm_server_port(a), pb = nvlm_server_port(b);
    CHECK(pa > 0 && pb > 0 && pa != pb, "ports %d %d", pa, pb);

    resp r;
    CHECK(!http(pa, "GET", "/health", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "ok"), "health");
    resp_free(&r);
    CHECK(!http(pa, "GET", "/v1/models", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "\"id\":\"tiny-nvlm-d\""),
          "models: %s", r.body);
    resp_free(&r);
    CHECK(!http(pb, "GET", "/health", NULL, NULL, &r) && r.status == 200, "health needs no key");
    resp_free(&r);

    static const char *ids[] = {"text_only", "one_tile", "two_images", "history_with_image", "custom_system_message",
                                "text_history", "empty_system_message", "stops_at_im_end", NULL};
    refcase cs[8];
    int n = load_cases(cs, 8, ids);
    const refcase *text = find_case(cs, n, "text_only"), *one = find_case(cs, n, "one_tile"),
                  *seven = find_case(cs, n, "history_with_image"), *two = find_case(cs, n, "two_images");
    CHECK(n == 8 && text && one && seven && two, "reference cases: %d", n);
    if (!text || !one || !seven || !two) return check_done("test_serve_http");
    test_reference(pa, cs, n);
    test_stop_string(pa, text);
    test_concurrent(pa, text, one);
    CHECK(!http(pa, "GET", "/metrics", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "nvlm_slots 8") &&
              strstr(r.body, "nvlm_requests_total{code=\"200\"}") && strstr(r.body, "nvlm_queue_depth 0"),
          "metrics: %.400s", r.body);
    resp_free(&r);

    char *astro = data_url("reference/images/skimage_astronaut.png");
    test_errors(pb, astro);
    free(astro);
    double full = test_disconnect(pb, "Authorization: Bearer sekret\r\n");

    nvlm_server_stop(b);
    test_stop(a, pa, full);
    for (int i = 0; i < n; i++) free(cs[i].body), free(cs[i].response), free(cs[i].finish);
    nvlm_model_free(m);
    return check_done("test_serve_http");
}
