/* test_serve_util.h - what the server tests share: reading reference files, data: URLs of
 * reference images, a reference case's conversation as OpenAI messages, and a small HTTP/1.1
 * client on plain sockets (requests, chunked and server-sent-event answers). */
#ifndef NVLM_TESTS_TEST_SERVE_UTIL_H
#define NVLM_TESTS_TEST_SERVE_UTIL_H
#include "check.h"
#include "serve/serve_int.h"
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static inline char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) free(d), d = NULL;
    if (d) d[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return d;
}

static inline char *b64(const unsigned char *d, size_t n) {
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(n / 3 * 4 + 8), *p = o;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = d[i] << 16 | (i + 1 < n ? d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *p++ = A[v >> 18], *p++ = A[v >> 12 & 63];
        *p++ = i + 1 < n ? A[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? A[v & 63] : '=';
    }
    *p = 0;
    return o;
}

/* "data:image/png;base64,..." of a reference image (malloc'ed). */
static inline char *data_url(const char *rel) {
    size_t n;
    char *d = slurp(shared_path(rel), &n);
    if (!d) return NULL;
    char *e = b64((unsigned char *)d, n), *u = malloc(strlen(e) + 32);
    sprintf(u, "data:image/png;base64,%s", e);
    free(d), free(e);
    return u;
}

/* The conversation of a reference case as an API request: each "<image>\n" of the texts
 * becomes an image part (chat()'s implicit one in front when history is None). */
static inline void add_parts(cJSON *content, const char *text, const char *const *urls, int *next) {
    const char *p = text;
    for (const char *hit; (hit = strstr(p, "<image>\n")); p = hit + 8) {
        if (hit > p) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "type", "text");
            char *s = strndup(p, (size_t)(hit - p));
            cJSON_AddStringToObject(t, "text", s);
            free(s);
            cJSON_AddItemToArray(content, t);
        }
        cJSON *im = cJSON_CreateObject(), *iu = cJSON_AddObjectToObject(im, "image_url");
        cJSON_AddStringToObject(im, "type", "image_url");
        cJSON_AddStringToObject(iu, "url", urls[(*next)++]);
        cJSON_AddItemToArray(content, im);
    }
    if (*p) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "type", "text");
        cJSON_AddStringToObject(t, "text", p);
        cJSON_AddItemToArray(content, t);
    }
}

static inline cJSON *case_messages(const cJSON *c, const char *const *urls) {
    cJSON *msgs = cJSON_CreateArray();
    const cJSON *sys = cJSON_GetObjectItem(c, "system_message"), *hist = cJSON_GetObjectItem(c, "history");
    const char *q = cJSON_GetObjectItem(c, "question")->valuestring;
    int n_img = cJSON_GetArraySize(cJSON_GetObjectItem(c, "images")), next = 0;
    if (cJSON_IsString(sys)) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", sys->valuestring);
        cJSON_AddItemToArray(msgs, m);
    }
    for (const cJSON *t = cJSON_IsArray(hist) ? hist->child : NULL; t; t = t->next) {
        cJSON *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        add_parts(cJSON_AddArrayToObject(u, "content"), cJSON_GetArrayItem(t, 0)->valuestring, urls, &next);
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", cJSON_GetArrayItem(t, 1)->valuestring);
        cJSON_AddItemToArray(msgs, u);
        cJSON_AddItemToArray(msgs, a);
    }
    char *qq = malloc(strlen(q) + 16);
    sprintf(qq, "%s%s", (!cJSON_IsArray(hist) && n_img && !strstr(q, "<image>")) ? "<image>\n" : "", q);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    add_parts(cJSON_AddArrayToObject(u, "content"), qq, urls, &next);
    cJSON_AddItemToArray(msgs, u);
    free(qq);
    return msgs;
}

/* The cases whose conversation the API can express (every placeholder followed by "\n";
 * the config's tile bound). */
static inline int expressible(const cJSON *c) {
    const char *q = cJSON_GetObjectItem(c, "question")->valuestring;
    const char *model = cJSON_GetObjectItem(c, "model")->valuestring;
    for (const char *p = q; (p = strstr(p, "<image>")); p += 7)
        if (p[7] != '\n') return 0;
    return !strcmp(model, "models/tiny-nvlm-d") && cJSON_GetObjectItem(c, "max_num")->valueint == 6;
}

/* ------------------------------------------------------------ HTTP client */

typedef struct resp {
    int status;
    char *head, *body;
    size_t len;
} resp;

static inline void resp_free(resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static inline int dial(int port) {
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

static inline void send_all(int fd, const char *d, size_t n) {
    while (n) {
        ssize_t k = send(fd, d, n, MSG_NOSIGNAL);
        if (k <= 0) return; /* the server may answer (413) and close before reading it all */
        d += k, n -= (size_t)k;
    }
}

static inline int send_request(int port, const char *method, const char *path, const char *hdrs, const char *body) {
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
static inline size_t dechunk(char *b, size_t n) {
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

static inline int read_resp(int fd, resp *r) {
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

static inline int http(int port, const char *method, const char *path, const char *hdrs, const char *body, resp *r) {
    int fd = send_request(port, method, path, hdrs, body);
    if (fd < 0) return memset(r, 0, sizeof *r), -1;
    return read_resp(fd, r);
}

/* The error code of an OpenAI error body, or "". */
static inline const char *err_code(const resp *r, char *buf, size_t n) {
    cJSON *j = cJSON_Parse(r->body), *c = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code");
    snprintf(buf, n, "%s", cJSON_IsString(c) ? c->valuestring : "");
    cJSON_Delete(j);
    return buf;
}

static inline int healthy(int port) {
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

static inline void answer_free(answer *a) {
    free(a->content);
    free(a->finish);
    memset(a, 0, sizeof *a);
}

static inline void parse_plain(const resp *r, answer *a) {
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
static inline void parse_stream(const resp *r, answer *a) {
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

static inline void ask(int port, const char *hdrs, const char *body, answer *a) {
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

static inline long metric(int port, const char *name) {
    resp r;
    long v = -1;
    if (!http(port, "GET", "/metrics", NULL, NULL, &r) && r.body) {
        const char *p = strstr(r.body, name);
        if (p) v = atol(p + strlen(name));
    }
    resp_free(&r);
    return v;
}

/* Polls a metric until it reaches want (bounded); returns its last value. */
static inline long await_metric(int port, const char *name, long want) {
    long v = metric(port, name);
    for (int i = 0; i < 600 && v < want; i++) {
        usleep(20 * 1000);
        v = metric(port, name);
    }
    return v;
}
#endif
