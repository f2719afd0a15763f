/* The HTTP side of `nvlm serve` on libmicrohttpd: routes, authentication, body limits, and
 * the connection threads waiting for their job. MHD runs one thread per connection, so a
 * handler may block while its request is queued or generating; while it waits it polls its
 * socket and cancels the job as soon as the client has gone: a queued job leaves the queue at
 * once, a running one ends at the engine's next poll (an image tile, a prefill chunk, a token). */
#include "core/err.h"
#include "model/model.h"
#include "serve/serve_int.h"
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { WAIT_SLICE_MS = 50 };

struct nvlm_server {
    nvlm_model *m;
    nvlm_serve_options o;
    char *model_id, *api_key, *local_dir, *system;
    int ctx;
    long started;
    atomic_int stopping;
    atomic_ulong counter;
    atomic_int in_flight;        /* chat requests between their headers and their completion */
    serve_metrics metrics;
    serve_sched sched;
    struct MHD_Daemon *d;
    int port;
};

typedef struct conn_state {
    nvlm_server *srv;
    int counted;             /* a chat request counted in srv->in_flight */
    nvlm_buf body;
    size_t received;
    int too_big;
    serve_job *job;          /* cancelled and released when the request completes */
} conn_state;

void nvlm_serve_options_default(nvlm_serve_options *o) {
    memset(o, 0, sizeof *o);
    nvlm_sampling_default(&o->defaults);
}

/* -------------------------------------------------------------- replies */

static enum MHD_Result send_text(nvlm_server *s, struct MHD_Connection *c, int status, const char *ctype, char *body) {
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                              "\"code\":null}}";
    if (!body) {
        status = 500, ctype = "application/json";
        body = strdup(oom);
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    serve_metrics_status(&s->metrics, status);
    return ret;
}

static enum MHD_Result send_error(nvlm_server *s, struct MHD_Connection *c, const serve_error *e) {
    return send_text(s, c, e->status, "application/json", serve_error_json(e));
}

static enum MHD_Result fail(nvlm_server *s, struct MHD_Connection *c, int status, const char *code, const char *msg) {
    serve_error e;
    serve_fail(&e, status, code, NULL, "%s", msg);
    return send_error(s, c, &e);
}

/* ------------------------------------------------------- client presence */

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* 1 when the peer closed or reset the connection (pipelined bytes are not a close). */
static int peer_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    if (!(p.revents & POLLIN)) return 0;
    char ch;
    ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static int job_finished(const serve_job *j) { return j->state == JOB_DONE || j->state == JOB_FAILED; }
static int stream_ready(const serve_job *j) { return j->events_read < j->events.len || job_finished(j); }

/* Waits (j->mu held) until ready(j); returns 0, or -1 when the client left (the caller
 * cancels the job once it has let go of j->mu). */
static int wait_job(serve_job *j, int fd, int (*ready)(const serve_job *)) {
    while (!ready(j)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WAIT_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (ready(j)) break;
        if (peer_gone(fd)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ streaming */

typedef struct stream_ctx {
    nvlm_server *srv;
    serve_job *job;
    int fd;
} stream_ctx;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *sc = cls;
    serve_job *j = sc->job;
    (void)pos;
    pthread_mutex_lock(&j->mu);
    ssize_t n;
    int gone = wait_job(j, sc->fd, stream_ready);
    if (gone) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (j->events_read < j->events.len) {
        size_t k = j->events.len - j->events_read;
        if (k > max) k = max;
        memcpy(buf, j->events.data + j->events_read, k);
        j->events_read += k;
        n = (ssize_t)k;
    } else {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&j->mu);
    if (gone) serve_sched_cancel(&sc->srv->sched, j);
    return n;
}

static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    serve_sched_cancel(&sc->srv->sched, sc->job); /* no-op when finished; stops it when the client left */
    serve_job_release(sc->job);
    free(sc);
}

static enum MHD_Result start_stream(nvlm_server *s, struct MHD_Connection *c, serve_job *j) {
    stream_ctx *sc = malloc(sizeof *sc);
    struct MHD_Response *r = NULL;
    if (sc) {
        *sc = (stream_ctx){s, j, conn_fd(c)};
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, sc, stream_free);
        if (!r) stream_free(sc);
    }
    if (!r) return fail(s, c, 500, NULL, "out of memory");
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    serve_metrics_status(&s->metrics, 200);
    return ret;
}

/* --------------------------------------------------------- chat requests */

static enum MHD_Result finish_plain(nvlm_server *s, struct MHD_Connection *c, serve_job *j) {
    pthread_mutex_lock(&j->mu);
    int gone = wait_job(j, conn_fd(c), job_finished);
    pthread_mutex_unlock(&j->mu);
    if (gone) {
        serve_sched_cancel(&s->sched, j);
        return MHD_NO; /* nobody to answer: close */
    }
    if (j->state == JOB_FAILED) {
        int code = j->err.code;
        if (code == NVLM_E_CANCELLED) return fail(s, c, 503, "shutting_down", "the server is shutting down");
        if (code == NVLM_E_BUSY) return fail(s, c, 503, "kv_cache_full", j->err.msg);
        int status = code == NVLM_E_LIMIT || code == NVLM_E_INVALID_ARG ? 400 : 500;
        return fail(s, c, status, NULL, j->err.msg);
    }
    const nvlm_answer *a = &j->answer;
    return send_text(s, c, 200, "application/json",
                     serve_completion_json(j->id, j->model, j->created, a->response, a->finish_length ? "length" : "stop",
                                           a->n_prompt, a->n_output));
}

static void new_id(nvlm_server *s, char out[48]) {
    unsigned char r[12];
    if (RAND_bytes(r, sizeof r) != 1) memset(r, 0, sizeof r);
    unsigned long n = atomic_fetch_add(&s->counter, 1);
    char *p = out + sprintf(out, "chatcmpl-");
    for (size_t i = 0; i < sizeof r; i++) p += sprintf(p, "%02x", r[i]);
    sprintf(p, "%04lx", n & 0xffff);
}

/* Prompt length against the context; sets the generation limit. */
static int fit_context(nvlm_server *s, serve_request *r, size_t *n_prompt, serve_error *e) {
    int32_t *ids = NULL;
    nvlm_err err = {0};
    int rc = serve_prompt_ids(s->m, r, s->o.max_tiles, &ids, n_prompt, &err);
    free(ids);
    if (rc) return serve_fail(e, rc == NVLM_E_NOMEM ? 500 : 400, NULL, "messages", "%s", err.msg);
    size_t ctx = (size_t)s->ctx;
    if (r->max_tokens && *n_prompt + (size_t)r->max_tokens > ctx)
        return serve_fail(e, 400, "context_length_exceeded", "messages",
                          "This model's maximum context length is %zu tokens. However, you requested %zu tokens "
                          "(%zu in the messages, %d in the completion).", ctx, *n_prompt + (size_t)r->max_tokens,
                          *n_prompt, r->max_tokens);
    if (*n_prompt >= ctx)
        return serve_fail(e, 400, "context_length_exceeded", "messages",
                          "This model's maximum context length is %zu tokens; the messages have %zu.", ctx, *n_prompt);
    size_t room = ctx - *n_prompt, want = r->max_tokens ? (size_t)r->max_tokens : (size_t)r->sampling.max_new_tokens;
    r->sampling.max_new_tokens = (int)(want < room ? want : room);
    return 0;
}

static enum MHD_Result handle_chat(nvlm_server *s, struct MHD_Connection *c, conn_state *cs) {
    serve_error e;
    if (cs->too_big) {
        serve_fail(&e, 413, "request_too_large", NULL, "the request body is over %zu bytes", s->o.max_body);
        return send_error(s, c, &e);
    }
    serve_limits lim = {s->o.max_image_bytes, s->o.max_image_pixels, s->o.max_images, s->local_dir};
    serve_request r;
    if (serve_parse_request(cs->body.data ? cs->body.data : "", cs->body.len, &lim, &s->o.defaults, &r, &e))
        return send_error(s, c, &e);
    nvlm_buf_free(&cs->body);
    if (!r.system && s->system && !(r.system = strdup(s->system))) {
        serve_request_free(&r);
        return fail(s, c, 500, NULL, "out of memory");
    }
    size_t n_prompt = 0;
    if (s->o.strict_model && r.model && strcmp(r.model, s->model_id))
        serve_fail(&e, 404, "model_not_found", "model", "The model '%.200s' does not exist (this server has '%.200s')",
                   r.model, s->model_id);
    else if (!fit_context(s, &r, &n_prompt, &e))
        e.status = 0;
    if (e.status) {
        serve_request_free(&r);
        return send_error(s, c, &e);
    }
    nvlm_err err = {0};
    nvlm_chat *chat = NULL;
    serve_job *j = NULL;
    int rc = serve_make_chat(s->m, &r, s->o.max_tiles, &chat, &err);
    if (rc) {
        serve_request_free(&r);
        return fail(s, c, rc == NVLM_E_NOMEM ? 500 : 400, NULL, err.msg);
    }
    size_t tiles = 0;
    for (int i = 0; i < r.n_images; i++) tiles += (size_t)serve_image_tiles(s->m, &r.images[i], s->o.max_tiles);
    if (serve_job_new(&r, chat, &j)) {
        nvlm_chat_free(chat);
        serve_request_free(&r);
        return fail(s, c, 500, NULL, "out of memory");
    }
    j->n_tiles = tiles;
    new_id(s, j->id);
    snprintf(j->model, sizeof j->model, "%s", s->model_id);
    j->created = (long)time(NULL);
    cs->job = j;
    if (peer_gone(conn_fd(c))) { /* left while the body was parsed: not worth a slot */
        serve_metrics_chat(&s->metrics, SERVE_FIN_CANCELLED, 0, 0, 0, -1, -1, -1);
        return MHD_NO;
    }
    rc = serve_sched_submit(&s->sched, j);
    if (rc) return fail(s, c, 503, rc == -1 ? "server_overloaded" : "shutting_down",
                        rc == -1 ? "too many requests are waiting; retry later" : "the server is shutting down");
    return j->req.stream ? start_stream(s, c, j) : finish_plain(s, c, j);
}

/* --------------------------------------------------------------- routing */

static int authorized(nvlm_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = a != b;
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned char)h[i] ^ (unsigned char)s->api_key[i];
    return diff == 0;
}

static enum MHD_Result handle_get(nvlm_server *s, struct MHD_Connection *c, const char *url) {
    if (!strcmp(url, "/health"))
        return atomic_load(&s->stopping) ? fail(s, c, 503, "shutting_down", "the server is shutting down")
                                         : send_text(s, c, 200, "application/json", strdup("{\"status\":\"ok\"}"));
    if (!strcmp(url, "/metrics"))
        return send_text(s, c, 200, "text/plain; version=0.0.4; charset=utf-8", serve_metrics_text(&s->metrics));
    if (!strcmp(url, "/v1/models")) return send_text(s, c, 200, "application/json", serve_models_json(s->model_id, s->started));
    return fail(s, c, 404, "not_found", "unknown path");
}

static int known_path(const char *url) {
    return !strcmp(url, "/health") || !strcmp(url, "/metrics") || !strcmp(url, "/v1/models") ||
           !strcmp(url, "/v1/chat/completions");
}

/* First call of a request (headers only): everything that needs no body. */
static enum MHD_Result on_headers(nvlm_server *s, struct MHD_Connection *c, const char *url, const char *method) {
    int is_chat = !strcmp(url, "/v1/chat/completions");
    if (!known_path(url)) return fail(s, c, 404, "not_found", "unknown path");
    if (atomic_load(&s->stopping)) return fail(s, c, 503, "shutting_down", "the server is shutting down");
    if (!strncmp(url, "/v1/", 4) && !authorized(s, c))
        return fail(s, c, 401, "invalid_api_key", "Incorrect or missing API key (send 'Authorization: Bearer KEY').");
    if (is_chat != !strcmp(method, "POST") || (!is_chat && strcmp(method, "GET")))
        return fail(s, c, 405, "method_not_allowed", is_chat ? "use POST" : "use GET");
    if (!is_chat) return handle_get(s, c, url);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > s->o.max_body) {
        serve_error e;
        serve_fail(&e, 413, "request_too_large", NULL, "the request body is over %zu bytes", s->o.max_body);
        return send_error(s, c, &e);
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    nvlm_server *s = cls;
    (void)version;
    conn_state *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        cs->srv = s;
        if (!strcmp(url, "/v1/chat/completions")) {
            cs->counted = 1;
            atomic_fetch_add(&s->in_flight, 1);
        }
        return on_headers(s, c, url, method);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        cs->received += n;
        if (cs->received > 4 * s->o.max_body) return MHD_NO; /* someone pushing forever: drop */
        if (cs->too_big || cs->body.len + n > s->o.max_body) {
            cs->too_big = 1;
            nvlm_buf_free(&cs->body);
        } else if (nvlm_buf_append(&cs->body, upload_data, n)) {
            return MHD_NO;
        }
        return MHD_YES;
    }
    if (cs->job) return MHD_NO; /* answered already */
    return handle_chat(s, c, cs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c, (void)why;
    conn_state *cs = *con_cls;
    if (!cs) return;
    if (cs->job) {
        serve_sched_cancel(&cs->srv->sched, cs->job);
        serve_job_release(cs->job);
    }
    if (cs->counted) atomic_fetch_sub(&cs->srv->in_flight, 1);
    nvlm_buf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ------------------------------------------------------------ lifecycle */

static int resolve(const char *host, int port, struct sockaddr_storage *ss, nvlm_err *err) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g || !res) return nvlm_fail(err, NVLM_E_INVALID_ARG, "cannot resolve host '%s': %s", host, gai_strerror(g));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return NVLM_OK;
}

static void server_free(nvlm_server *s) {
    free(s->model_id);
    free(s->api_key);
    free(s->local_dir);
    free(s->system);
    free(s);
}

int nvlm_server_start(nvlm_model *m, const nvlm_serve_options *opt, nvlm_server **out, nvlm_err *err) {
    *out = NULL;
    if (!m || !opt || !opt->model_id) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no model or no model id");
    if (opt->port < 0 || opt->port > 65535) return nvlm_fail(err, NVLM_E_INVALID_ARG, "bad port %d", opt->port);
    nvlm_server *s = calloc(1, sizeof *s);
    if (!s) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    s->m = m;
    s->o = *opt;
    s->o.defaults.stop = NULL;
    if (!s->o.parallel) s->o.parallel = 8;
    if (!s->o.max_queue) s->o.max_queue = 256;
    if (!s->o.max_body) s->o.max_body = 64u << 20;
    if (!s->o.max_image_bytes) s->o.max_image_bytes = 20u << 20;
    if (!s->o.max_image_pixels) s->o.max_image_pixels = 32u << 20;
    if (!s->o.max_images) s->o.max_images = 16;
    s->ctx = opt->ctx > 0 ? opt->ctx : m->cfg.llm.max_position_embeddings;
    s->started = (long)time(NULL);
    s->model_id = strdup(opt->model_id);
    s->api_key = opt->api_key && *opt->api_key ? strdup(opt->api_key) : NULL;
    s->local_dir = opt->local_image_dir ? strdup(opt->local_image_dir) : NULL;
    s->system = opt->default_system ? strdup(opt->default_system) : NULL;
    if ((opt->default_system && !s->system) || !s->model_id || (opt->api_key && *opt->api_key && !s->api_key) || (opt->local_image_dir && !s->local_dir)) {
        server_free(s);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    if (s->o.parallel < 1 || s->o.parallel > 1024) {
        int p = s->o.parallel;
        server_free(s);
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "parallel must be 1..1024, not %d", p);
    }
    struct sockaddr_storage ss;
    int rc = resolve(opt->host ? opt->host : "127.0.0.1", opt->port, &ss, err);
    if (!rc && serve_metrics_init(&s->metrics, s->o.parallel)) rc = nvlm_fail(err, NVLM_E_INTERNAL, "mutex init failed");
    if (rc) {
        server_free(s);
        return rc;
    }
    rc = serve_sched_start(&s->sched, m, &s->metrics, &s->o, err);
    if (rc) {
        serve_metrics_destroy(&s->metrics);
        server_free(s);
        return rc;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT, 1024u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 300u, MHD_OPTION_END);
    if (!s->d) {
        serve_sched_stop(&s->sched);
        serve_sched_destroy(&s->sched);
        serve_metrics_destroy(&s->metrics);
        server_free(s);
        return nvlm_fail(err, NVLM_E_IO, "cannot listen on %s:%d (address in use or not allowed)",
                         opt->host ? opt->host : "127.0.0.1", opt->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : opt->port;
    *out = s;
    return NVLM_OK;
}

int nvlm_server_port(const nvlm_server *s) { return s ? s->port : -1; }

void nvlm_server_stop(nvlm_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, 1);
    serve_sched_stop(&s->sched);   /* running answers end at their next token */
    /* Let the requests in flight send their (last) bytes; MHD_stop_daemon would cut them. */
    for (int i = 0; i < 1000 && atomic_load(&s->in_flight) > 0; i++) nanosleep(&(struct timespec){0, 10000000L}, NULL);
    MHD_stop_daemon(s->d);
    serve_sched_destroy(&s->sched);
    serve_metrics_destroy(&s->metrics);
    server_free(s);
}
