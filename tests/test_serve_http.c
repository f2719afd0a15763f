/* The server over HTTP on 127.0.0.1 (ephemeral ports), talked to with plain sockets: the
 * reference conversations (text, images, history) give chat()'s answers and token counts,
 * streaming adds up to the same answer, concurrent greedy answers equal lone ones, every bad
 * input gets its status and the server stays healthy, a client that disconnects frees its
 * slot, and stopping the server ends the requests in flight. */
#include "serve/serve_int.h"
#include "test_serve_util.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

typedef struct resp {
    int status;
    char *head, *body;
    size_t len;
} resp;

static void resp_free(resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {120, 0}; /* bounded: a hung server fails the test instead of blocking it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *d, size_t n) {
    while (n) {
        ssize_t k = send(fd, d, n, MSG_NOSIGNAL);
        if (k <= 0) return; /* the server may answer (413) and close before reading it all */
        d += k, n -= (size_t)k;
    }
}

static int send_request(int port, const char *method, const char *path, const char *hdrs, const char *body) {
    int fd = dial(port);
    if (fd < 0) return -1;
    char head[1024];
    size_t bl = body ? strlen(body) : 0;
    snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s",
             method, path, hdrs ? hdrs : "", body ? "Content-Type: application/json\r\n" : "");
    if (body) snprintf(head + strlen(head), sizeof head - strlen(head), "Content-Length: %zu\r\n", bl);
    strcat(head, "\r\n");
    send_all(fd, head, strlen(head));
    if (body) send_all(fd, body, bl);
    return fd;
}

/* Undoes chunked transfer encoding in place. */
static size_t dechunk(char *b, size_t n) {
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long k = strtoul(b + in, &end, 16);
        char *nl = strstr(end, "\r\n");
        if (!nl || !k) break;
        in = (size_t)(nl + 2 - b);
        if (in + k > n) k = n - in;
        memmove(b + out, b + in, k);
        out += k, in += k + 2;
    }
    b[out] = 0;
    return out;
}

static int read_resp(int fd, resp *r) {
    memset(r, 0, sizeof *r);
    nvlm_buf b = {0};
    char tmp[65536];
    ssize_t k;
    while ((k = recv(fd, tmp, sizeof tmp, 0)) > 0) nvlm_buf_append(&b, tmp, (size_t)k);
    close(fd);
    char *sep = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
    if (!sep) {
        nvlm_buf_free(&b);
        return -1;
    }
    *sep = 0;
    r->head = strdup(b.data);
    r->len = b.len - (size_t)(sep + 4 - b.data);
    r->body = malloc(r->len + 1);
    memcpy(r->body, sep + 4, r->len);
    r->body[r->len] = 0;
    sscanf(r->head, "HTTP/1.%*d %d", &r->status);
    if (strcasestr(r->head, "Transfer-Encoding: chunked")) r->len = dechunk(r->body, r->len);
    nvlm_buf_free(&b);
    return 0;
}

static int http(int port, const char *method, const char *path, const char *hdrs, const char *body, resp *r) {
    int fd = send_request(port, method, path, hdrs, body);
    if (fd < 0) return memset(r, 0, sizeof *r), -1;
    return read_resp(fd, r);
}

/* The error code of an OpenAI error body, or "". */
static const char *err_code(const resp *r, char *buf, size_t n) {
    cJSON *j = cJSON_Parse(r->body), *c = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code");
    snprintf(buf, n, "%s", cJSON_IsString(c) ? c->valuestring : "");
    cJSON_Delete(j);
    return buf;
}

static int healthy(int port) {
    resp r;
    int ok = !http(port, "GET", "/health", NULL, NULL, &r) && r.status == 200;
    resp_free(&r);
    return ok;
}

/* ------------------------------------------------------------ answers */

typedef struct answer {
    int status;
    char *content, *finish;
    long prompt, completion;
    int events, done, role_first;
} answer;

static void answer_free(answer *a) {
    free(a->content);
    free(a->finish);
    memset(a, 0, sizeof *a);
}

static void parse_plain(const resp *r, answer *a) {
    cJSON *j = cJSON_Parse(r->body), *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "message"), "content"), *f = cJSON_GetObjectItem(ch, "finish_reason");
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    a->content = cJSON_IsString(c) ? strdup(c->valuestring) : NULL;
    a->finish = cJSON_IsString(f) ? strdup(f->valuestring) : NULL;
    a->prompt = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "prompt_tokens"));
    a->completion = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "completion_tokens"));
    cJSON_Delete(j);
}

/* SSE: "data: {...}\n\n" events, the role first, content deltas, finish, usage, [DONE]. */
static void parse_stream(const resp *r, answer *a) {
    nvlm_buf text = {0};
    nvlm_buf_puts(&text, "");
    char *save = NULL, *copy = strdup(r->body);
    for (char *ev = strtok_r(copy, "\n", &save); ev; ev = strtok_r(NULL, "\n", &save)) {
        if (strncmp(ev, "data: ", 6)) continue;
        a->events++;
        if (!strcmp(ev + 6, "[DONE]")) {
            a->done++;
            continue;
        }
        cJSON *j = cJSON_Parse(ev + 6), *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        cJSON *d = cJSON_GetObjectItem(ch, "delta"), *u = cJSON_GetObjectItem(j, "usage");
        if (a->events == 1) a->role_first = cJSON_IsString(cJSON_GetObjectItem(d, "role"));
        cJSON *c = cJSON_GetObjectItem(d, "content"), *f = cJSON_GetObjectItem(ch, "finish_reason");
        if (cJSON_IsString(c)) nvlm_buf_puts(&text, c->valuestring);
        if (cJSON_IsString(f)) a->finish = strdup(f->valuestring);
        if (u) {
            a->prompt = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "prompt_tokens"));
            a->completion = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "completion_tokens"));
        }
        cJSON_Delete(j);
    }
    free(copy);
    a->content = text.data;
}

static void ask(int port, const char *hdrs, const char *body, answer *a) {
    resp r;
    memset(a, 0, sizeof *a);
    if (http(port, "POST", "/v1/chat/completions", hdrs, body, &r)) return;
    a->status = r.status;
    if (r.status == 200) {
        if (strstr(r.head, "text/event-stream")) parse_stream(&r, a);
        else parse_plain(&r, a);
    }
    resp_free(&r);
}

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

/* A one-tile image question (a short prefill that is still long enough to leave during). */
static char *one_tile_body(int stream) {
    char *url = data_url("reference/images/grid_448x448.png");
    const char *fmt = "{\"model\":\"tiny-nvlm-d\",\"max_tokens\":16,%s\"messages\":[{\"role\":\"user\",\"content\":["
                      "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"Describe.\"}]}]}";
    char *b = malloc(strlen(fmt) + strlen(url) + 64);
    sprintf(b, fmt, stream ? "\"stream\":true," : "", url);
    free(url);
    return b;
}

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
    free(huge);
}

/* ----------------------------------------------------------- disconnect */

static long metric(int port, const char *name) {
    resp r;
    long v = -1;
    if (!http(port, "GET", "/metrics", NULL, NULL, &r) && r.body) {
        const char *p = strstr(r.body, name);
        if (p) v = atol(p + strlen(name));
    }
    resp_free(&r);
    return v;
}

/* On a one-slot server: a client whose request is computing (a 7-tile image: a long
 * prefill) leaves, and so does one queued behind it; both are cancelled and the slot serves a
 * third client at once. */
/* Polls a metric until it reaches want (bounded); returns its last value. */
static long await_metric(int port, const char *name, long want) {
    long v = metric(port, name);
    for (int i = 0; i < 600 && v < want; i++) {
        usleep(20 * 1000);
        v = metric(port, name);
    }
    return v;
}

static void test_disconnect(int port, const char *key) {
    const char *cancel = "nvlm_chat_completions_total{finish=\"cancelled\"} ";
    long before = metric(port, cancel);
    char *body = one_tile_body(0);
    int fd = send_request(port, "POST", "/v1/chat/completions", key, body);
    free(body);
    CHECK(await_metric(port, "\nnvlm_active_requests ", 1) == 1, "image request running");
    int fd2 = send_request(port, "POST", "/v1/chat/completions", key,
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"queued\"}],\"max_tokens\":3}");
    CHECK(await_metric(port, "\nnvlm_queue_depth ", 1) == 1, "second request queued");
    close(fd2);
    close(fd);
    double t0 = serve_now();
    answer a;
    ask(port, key, "{\"messages\":[{\"role\":\"user\",\"content\":\"after\"}],\"max_tokens\":4}", &a);
    double waited = serve_now() - t0;
    CHECK(a.status == 200 && a.completion == 4, "request after the disconnect: %d", a.status);
    answer_free(&a);
    long after = await_metric(port, cancel, before + 2);
    CHECK(after == before + 2, "both clients that left were cancelled (%ld -> %ld)", before, after);
    printf("disconnect: the next request was answered %.0f ms after the clients left (the running one was in its prefill)\n",
           waited * 1e3);
}

/* ---------------------------------------------------------------- stop */

typedef struct stream_client {
    pthread_t th;
    int port;
    const char *body;
    answer a;
} stream_client;

static void *long_stream(void *arg) {
    stream_client *s = arg;
    ask(s->port, NULL, s->body, &s->a);
    return NULL;
}

/* Stopping the server while a streamed 7-tile answer is being computed ends it cleanly. */
static void test_stop(nvlm_server *srv, int port) {
    char *body = one_tile_body(1);
    stream_client s = {0, port, body, {0}};
    pthread_create(&s.th, NULL, long_stream, &s);
    CHECK(await_metric(port, "\nnvlm_active_requests ", 1) == 1, "streamed image request running");
    double t0 = serve_now();
    nvlm_server_stop(srv);
    double took = serve_now() - t0;
    pthread_join(s.th, NULL);
    CHECK(took < 10, "stop took %.1f s", took);
    CHECK(s.a.status == 200 && s.a.done == 1 && s.a.finish, "stream in flight ended cleanly: %d done %d", s.a.status, s.a.done);
    answer_free(&s.a);
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
    CHECK(!http(pa, "GET", "/metrics", NULL, NULL, &r) && r.status == 200 && strstr(r.body, "nvlm_slots 4") &&
              strstr(r.body, "nvlm_requests_total{code=\"200\"}") && strstr(r.body, "nvlm_queue_depth 0"),
          "metrics: %.400s", r.body);
    resp_free(&r);

    char *astro = data_url("reference/images/skimage_astronaut.png");
    test_errors(pb, astro);
    free(astro);
    test_disconnect(pb, "Authorization: Bearer sekret\r\n");

    nvlm_server_stop(b);
    test_stop(a, pa);
    for (int i = 0; i < n; i++) free(cs[i].body), free(cs[i].response), free(cs[i].finish);
    nvlm_model_free(m);
    return check_done("test_serve_http");
}
