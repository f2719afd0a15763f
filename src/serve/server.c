/* The HTTP side of `nvlm serve` on libmicrohttpd: routes, authentication, body limits,
 * connection limits, and the threads that keep a slow request from blocking the others.
 *
 * Threads: MHD's poll threads (epoll, a fixed pool) only move bytes and answer what is quick
 * (/health, /metrics, errors). A chat request whose body is whole is suspended and handed to
 * a preparation thread (JSON, images decoded one at a time against the image memory budget,
 * prompt length, job queued); while it is queued or generating it stays suspended, and the
 * pump thread resumes it when its answer (or the next streamed bytes) is ready or its client
 * has gone. A job whose client left is cancelled: a queued job leaves the queue at once, a
 * running one ends at the engine's next poll (an image tile, a prefill chunk, a token). */
#include "core/err.h"
#include "model/model.h"
#include "serve/serve_int.h"
#include "dist/serve_dist.h"
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    PUMP_TICK_US = 2000,      /* how often suspended requests are looked at */
    GONE_EVERY_MS = 50,       /* how often their sockets are checked for a client that left */
    SWEEP_EVERY_MS = 250,     /* header/body deadline */
    CUT_GRACE_MS = 5000,      /* after cutting answers at a stop: time to send them */
};

typedef struct conn_state conn_state;

/* A suspended connection the pump resumes when ready(). */
typedef struct waiter {
    struct MHD_Connection *c;
    int fd;
    int kind;                 /* W_PREP, W_PLAIN, W_STREAM */
    serve_job *job;           /* W_PLAIN, W_STREAM */
    conn_state *cs;           /* W_PREP */
    struct waiter *next;
} waiter;

enum { W_PREP, W_PLAIN, W_STREAM };

struct nvlm_server {
    nvlm_model *m;
    nvlm_serve_options o;
    char *model_id, *api_key, *local_dir, *system;
    unsigned char key_sha[32];   /* SHA-256 of api_key */
    int ctx;
    long started;
    int curl;                    /* libcurl initialised (remote images) */
    atomic_int stopping;         /* no new requests */
    atomic_int cutting;          /* the drain time is over: what is in flight ends now */
    atomic_ulong counter;
    atomic_int in_flight;        /* chat requests between their headers and their completion */
    serve_metrics metrics;
    serve_sched sched;
    serve_budget images;         /* decoded images and tiles, bytes */
    serve_conns conns;
    struct MHD_Daemon *d;
    int port;
    /* preparation threads and the pump, under mu */
    pthread_mutex_t mu;
    pthread_cond_t prep_cv, pump_cv;
    conn_state *prep_head, *prep_tail;
    waiter *waiting;
    int prep_stop, pump_stop, force_resume;
    pthread_t *prep;
    int n_prep;
    pthread_t pump;
    int pump_started;
};

enum { PH_HEADERS, PH_PREP, PH_READY, PH_DONE };

struct conn_state {
    nvlm_server *srv;
    struct MHD_Connection *c;
    int fd;
    int completions;         /* /v1/completions (else /v1/chat/completions) */
    int counted;             /* a chat request counted in srv->in_flight */
    nvlm_buf body;
    size_t received;
    int too_big;
    int phase;
    serve_error e;           /* preparation's failure (e.status 0: none) */
    serve_job *job;          /* cancelled and released when the request completes */
    uint64_t held;           /* image bytes counted in srv->images until completion */
    waiter w;
    conn_state *next_prep;
};

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
    if (status == 429 || status == 503) MHD_add_response_header(r, "Retry-After", "1");
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

static serve_conn *conn_entry(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* ------------------------------------------------------------------ pump */

/* Queues w (its connection just suspended) for the pump to resume. */
static void pump_add(nvlm_server *s, waiter *w) {
    pthread_mutex_lock(&s->mu);
    if (s->force_resume) { /* stopping: nothing is waited for any more */
        pthread_mutex_unlock(&s->mu);
        MHD_resume_connection(w->c);
        return;
    }
    w->next = s->waiting;
    s->waiting = w;
    pthread_cond_signal(&s->pump_cv);
    pthread_mutex_unlock(&s->mu);
}

static int waiter_ready(waiter *w) {
    if (w->kind == W_PREP) return w->cs->phase != PH_PREP;
    serve_job *j = w->job;
    pthread_mutex_lock(&j->mu);
    int ready = job_finished(j) || (w->kind == W_STREAM && j->events_read < j->events.len);
    pthread_mutex_unlock(&j->mu);
    return ready;
}

static void *pump_main(void *arg) {
    nvlm_server *s = arg;
    double last_gone = 0, last_sweep = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->pump_stop || s->waiting) {
        double now = serve_now();
        if (now - last_sweep >= SWEEP_EVERY_MS / 1e3) {
            serve_conns_sweep(&s->conns);
            last_sweep = now;
        }
        int check_gone = now - last_gone >= GONE_EVERY_MS / 1e3;
        if (check_gone) last_gone = now;
        for (waiter **p = &s->waiting; *p;) {
            waiter *w = *p;
            /* a client that left while its request is prepared is seen by the preparation */
            if (s->force_resume || waiter_ready(w) || (check_gone && w->kind != W_PREP && peer_gone(w->fd))) {
                *p = w->next;
                MHD_resume_connection(w->c);
            } else {
                p = &w->next;
            }
        }
        if (s->waiting) {
            pthread_mutex_unlock(&s->mu);
            nanosleep(&(struct timespec){0, PUMP_TICK_US * 1000L}, NULL);
            pthread_mutex_lock(&s->mu);
        } else if (!s->pump_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += SWEEP_EVERY_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&s->pump_cv, &s->mu, &ts);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------ streaming */

typedef struct stream_ctx {
    nvlm_server *srv;
    serve_job *job;
    waiter w;
} stream_ctx;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *sc = cls;
    serve_job *j = sc->job;
    (void)pos;
    pthread_mutex_lock(&j->mu);
    ssize_t n = 0;
    if (j->events_read < j->events.len) {
        size_t k = j->events.len - j->events_read;
        if (k > max) k = max;
        memcpy(buf, j->events.data + j->events_read, k);
        j->events_read += k;
        n = (ssize_t)k;
    } else if (job_finished(j)) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&j->mu);
    if (n) return n;
    if (peer_gone(sc->w.fd)) {
        serve_sched_cancel(&sc->srv->sched, j);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    /* nothing yet: give the poll thread back until the pump sees more */
    MHD_suspend_connection(sc->w.c);
    pump_add(sc->srv, &sc->w);
    return 0;
}

static void stream_free(void *cls) {
    stream_ctx *sc = cls;
    serve_sched_cancel(&sc->srv->sched, sc->job); /* no-op when finished; stops it when the client left */
    serve_job_release(sc->job);
    free(sc);
}

static enum MHD_Result start_stream(nvlm_server *s, struct MHD_Connection *c, conn_state *cs) {
    serve_job *j = cs->job;
    stream_ctx *sc = malloc(sizeof *sc);
    struct MHD_Response *r = NULL;
    if (sc) {
        *sc = (stream_ctx){s, j, {c, cs->fd, W_STREAM, j, NULL, NULL}};
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

/* The answer of a finished plain job. */
static enum MHD_Result reply_plain(nvlm_server *s, struct MHD_Connection *c, serve_job *j) {
    if (j->state == JOB_FAILED) {
        int code = j->err.code;
        if (code == NVLM_E_CANCELLED) return fail(s, c, 503, "shutting_down", "the server is shutting down");
        if (code == NVLM_E_NUMERIC) return fail(s, c, 500, "non_finite_values", j->err.msg);
        if (code == NVLM_E_BUSY) return fail(s, c, 503, "kv_cache_full", j->err.msg);
        int status = code == NVLM_E_LIMIT || code == NVLM_E_INVALID_ARG ? 400 : 500;
        return fail(s, c, status, NULL, j->err.msg);
    }
    nvlm_answer all[SERVE_MAX_N];
    all[0] = j->answer;
    for (int i = 0; i < j->n_extra && i + 1 < SERVE_MAX_N; i++) all[i + 1] = j->extra[i];
    /* an answer the stop cut is not complete: never "stop" or "length" */
    return send_text(s, c, 200, "application/json",
                     serve_answers_json(j->id, j->model, j->created, &j->req, nvlm_model_tokenizer(s->m),
                                        nvlm_tokenizer_token_id(nvlm_model_tokenizer(s->m), "<|im_end|>"), all,
                                        1 + j->n_extra, j->cut));
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
    int rc = r->raw ? nvlm_tokenizer_encode(nvlm_model_tokenizer(s->m), r->question, strlen(r->question), &ids, n_prompt, &err)
                    : serve_prompt_ids(s->m, r, r->max_tiles, &ids, n_prompt, &err);
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

/* A request being prepared stops for a client that left, or once a stop's drain time is over. */
static int prep_gone(void *user) {
    conn_state *cs = user;
    return peer_gone(cs->fd) || atomic_load(&cs->srv->cutting);
}

/* Room in the image memory for the request's images (before any is decoded). */
static int reserve_images(nvlm_server *s, conn_state *cs, const serve_request *r, serve_error *e) {
    uint64_t need = serve_images_need(s->m, r, r->max_tiles, s->o.max_image_pixels);
    int rc = serve_budget_take(&s->images, need, s->o.timeout, prep_gone, cs);
    if (rc == 1)
        return serve_fail(e, 413, "images_too_large", "messages",
                          "the request's images need up to %.0f MiB to decode, more than this server's image memory "
                          "(%.0f MiB, --max-image-memory); send fewer or smaller images", need / 1048576.0,
                          s->images.cap / 1048576.0);
    if (rc == 2)
        return atomic_load(&s->cutting)
                   ? serve_fail(e, 503, "shutting_down", NULL, "the server is shutting down")
                   : serve_fail(e, 429, "rate_limit_exceeded", "messages",
                                "the server's image memory is busy with other requests' images (%.0f MiB needed); "
                                "retry later", need / 1048576.0);
    cs->held = need;
    return 0;
}

/* Everything between a whole body and a queued job, on a preparation thread: parse, decode
 * the images against the budget, fit the context, queue. Leaves cs->job or cs->e. */
static void prepare(nvlm_server *s, conn_state *cs) {
    serve_error *e = &cs->e;
    e->status = 0;
    serve_limits lim = {s->o.max_image_bytes, s->o.max_image_pixels, s->o.max_images, s->local_dir,
                        s->o.allow_remote_images,
                        {s->o.max_image_bytes, s->o.remote_timeout_ms, s->o.remote_max_redirects,
                         s->o.allow_private_image_hosts}, NULL, NULL};
    serve_request r;
    if (atomic_load(&s->cutting)) {
        serve_fail(e, 503, "shutting_down", NULL, "the server is shutting down");
        return;
    }
    const char *body = cs->body.data ? cs->body.data : "";
    if (cs->completions ? serve_parse_completion(body, cs->body.len, &s->o.defaults, &r, e)
                        : serve_parse_request(body, cs->body.len, &lim, &s->o.defaults, &r, e))
        return;
    void *dreq = NULL; /* mpirun: the body and image bytes for the other ranks (src/dist/serve_dist.c) */
    if (serve_dist_capture(s->m, body, cs->body.len, cs->completions, &r, s->o.max_image_pixels, &dreq)) {
        serve_request_free(&r);
        serve_fail(e, 500, NULL, NULL, "out of memory");
        return;
    }
    /* the request's max_dynamic_patch, capped by --max-tiles (40 without it); else the server's */
    int cap = s->o.max_tiles ? s->o.max_tiles : SERVE_MAX_TILES;
    r.max_tiles = r.max_tiles ? (r.max_tiles < cap ? r.max_tiles : cap) : s->o.max_tiles;
    nvlm_buf_free(&cs->body);
    size_t n_prompt = 0;
    nvlm_chat *chat = NULL;
    serve_image_ctl ic = {s->o.max_image_pixels, prep_gone, cs};
    if (!r.system && s->system && !(r.system = strdup(s->system)))
        serve_fail(e, 500, NULL, NULL, "out of memory");
    else if (s->o.strict_model && r.model && strcmp(r.model, s->model_id))
        serve_fail(e, 404, "model_not_found", "model", "The model '%.200s' does not exist (this server has '%.200s')",
                   r.model, s->model_id);
    else if (!reserve_images(s, cs, &r, e) && !serve_make_chat(s->m, &r, r.max_tiles, &ic, &chat, e)) {
        /* what the images hold from now on: their 8-bit tiles */
        uint64_t held = serve_images_held(s->m, &r, r.max_tiles);
        if (held < cs->held) serve_budget_give(&s->images, cs->held - held), cs->held = held;
        fit_context(s, &r, &n_prompt, e);
    }
    serve_job *j = NULL;
    if (!e->status && serve_job_new(&r, chat, &j)) serve_fail(e, 500, NULL, NULL, "out of memory");
    if (j) j->dist_req = dreq, dreq = NULL;
    serve_dist_req_free(dreq);
    if (e->status) {
        nvlm_chat_free(chat);
        serve_request_free(&r);
        if (e->status == 499 && atomic_load(&s->cutting)) {
            serve_fail(e, 503, "shutting_down", NULL, "the server is shutting down");
        } else if (e->status == 499) { /* the client left: nobody to answer */
            serve_metrics_chat(&s->metrics, SERVE_FIN_CANCELLED, 0, 0, 0, -1, -1, -1);
            e->status = 0;
        }
        return;
    }
    for (int i = 0; i < j->req.n_images; i++)
        j->n_tiles += (size_t)serve_image_tiles(s->m, &j->req.images[i], j->req.max_tiles);
    new_id(s, j->id);
    snprintf(j->model, sizeof j->model, "%s", s->model_id);
    j->created = (long)time(NULL);
    if (peer_gone(cs->fd)) { /* left while the request was prepared: not worth a slot */
        serve_metrics_chat(&s->metrics, SERVE_FIN_CANCELLED, 0, 0, 0, -1, -1, -1);
        serve_job_release(j);
        return;
    }
    int rc = serve_sched_submit(&s->sched, j);
    if (rc) {
        serve_job_release(j);
        serve_fail(e, 503, rc == -1 ? "server_overloaded" : "shutting_down",
                   NULL, rc == -1 ? "too many requests are waiting; retry later" : "the server is shutting down");
        return;
    }
    cs->job = j;
}

static void *prep_main(void *arg) {
    nvlm_server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->prep_head && !s->prep_stop) pthread_cond_wait(&s->prep_cv, &s->mu);
        conn_state *cs = s->prep_head;
        if (!cs) break;
        s->prep_head = cs->next_prep;
        if (!s->prep_head) s->prep_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        prepare(s, cs);
        pthread_mutex_lock(&s->mu);
        cs->phase = PH_READY; /* the pump resumes it (under mu: it reads the phase there) */
        pthread_cond_signal(&s->pump_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The body is whole: suspend the connection and let a preparation thread take it. */
static enum MHD_Result start_prepare(nvlm_server *s, struct MHD_Connection *c, conn_state *cs) {
    serve_conns_busy(&s->conns, conn_entry(c), 1);
    cs->phase = PH_PREP;
    cs->w = (waiter){c, cs->fd, W_PREP, NULL, cs, NULL};
    MHD_suspend_connection(c);
    pthread_mutex_lock(&s->mu);
    cs->next_prep = NULL;
    if (s->prep_tail) s->prep_tail->next_prep = cs;
    else s->prep_head = cs;
    s->prep_tail = cs;
    cs->w.next = s->waiting;
    s->waiting = &cs->w;
    pthread_cond_signal(&s->prep_cv);
    pthread_mutex_unlock(&s->mu);
    return MHD_YES;
}

/* Called again after each resume: answer, stream, or wait (suspended) for the job. */
static enum MHD_Result continue_chat(nvlm_server *s, struct MHD_Connection *c, conn_state *cs) {
    if (cs->phase == PH_READY) {
        if (cs->e.status) {
            cs->phase = PH_DONE;
            return send_error(s, c, &cs->e);
        }
        if (!cs->job) return MHD_NO; /* the client left */
        if (cs->job->req.stream) {
            cs->phase = PH_DONE;
            return start_stream(s, c, cs);
        }
    }
    serve_job *j = cs->job;
    if (cs->phase == PH_DONE || !j) return MHD_NO;
    pthread_mutex_lock(&j->mu);
    int done = job_finished(j);
    pthread_mutex_unlock(&j->mu);
    if (done) {
        cs->phase = PH_DONE;
        return reply_plain(s, c, j);
    }
    if (peer_gone(cs->fd)) {
        serve_sched_cancel(&s->sched, j);
        return MHD_NO; /* nobody to answer: close */
    }
    cs->w = (waiter){c, cs->fd, W_PLAIN, j, NULL, NULL};
    MHD_suspend_connection(c);
    pump_add(s, &cs->w);
    return MHD_YES;
}

/* --------------------------------------------------------------- routing */

/* SHA-256 of the key: the given and the configured key are compared as digests, 32 bytes
 * always, so the time taken tells nothing of either length or of where they differ. */
static int key_digest(const char *key, unsigned char out[32]) {
    unsigned int n = 0;
    return EVP_Digest(key, strlen(key), out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

static int authorized(nvlm_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    unsigned char given[32];
    if (!key_digest(h + 7, given)) return 0;
    volatile unsigned diff = 0;
    for (int i = 0; i < 32; i++) diff |= given[i] ^ s->key_sha[i];
    return diff == 0;
}

static enum MHD_Result handle_get(nvlm_server *s, struct MHD_Connection *c, const char *url) {
    if (!strcmp(url, "/health"))
        return atomic_load(&s->stopping) ? fail(s, c, 503, "shutting_down", "the server is shutting down")
                                         : send_text(s, c, 200, "application/json", strdup("{\"status\":\"ok\"}"));
    if (!strcmp(url, "/metrics")) {
        char extra[256];
        snprintf(extra, sizeof extra,
                 "# TYPE nvlm_image_memory_bytes gauge\nnvlm_image_memory_bytes %llu\n"
                 "# TYPE nvlm_connections gauge\nnvlm_connections %d\n"
                 "# TYPE nvlm_connections_dropped_total counter\nnvlm_connections_dropped_total %llu\n",
                 (unsigned long long)serve_budget_used(&s->images), serve_conns_count(&s->conns),
                 (unsigned long long)s->conns.n_dropped);
        char *m = serve_metrics_text(&s->metrics);
        char *all = m ? malloc(strlen(m) + strlen(extra) + 1) : NULL;
        if (all) strcpy(all, m), strcat(all, extra);
        free(m);
        return send_text(s, c, 200, "text/plain; version=0.0.4; charset=utf-8", all);
    }
    int tiles = s->o.max_tiles ? s->o.max_tiles : nvlm_model_max_tiles(s->m);
    if (!strcmp(url, "/v1/models"))
        return send_text(s, c, 200, "application/json", serve_model_list_json(s->model_id, s->started, s->ctx, tiles));
    if (!strcmp(url, "/props"))
        return send_text(s, c, 200, "application/json",
                         serve_props_json(&s->o, s->model_id, nvlm_model_arch(s->m), s->ctx, tiles));
    return fail(s, c, 404, "not_found", "unknown path");
}

static int known_path(const char *url) {
    return !strcmp(url, "/health") || !strcmp(url, "/metrics") || !strcmp(url, "/v1/models") || !strcmp(url, "/props") ||
           !strcmp(url, "/v1/chat/completions") || !strcmp(url, "/v1/completions");
}

/* First call of a request (headers only): everything that needs no body. */
static enum MHD_Result on_headers(nvlm_server *s, struct MHD_Connection *c, const char *url, const char *method) {
    int is_chat = !strcmp(url, "/v1/chat/completions") || !strcmp(url, "/v1/completions");
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
        cs->c = c;
        cs->fd = conn_fd(c);
        cs->completions = !strcmp(url, "/v1/completions");
        if (!strcmp(url, "/v1/chat/completions") || cs->completions) {
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
    if (cs->phase != PH_HEADERS) return continue_chat(s, c, cs);
    if (cs->too_big) {
        serve_error e;
        cs->phase = PH_DONE;
        serve_fail(&e, 413, "request_too_large", NULL, "the request body is over %zu bytes", s->o.max_body);
        return send_error(s, c, &e);
    }
    return start_prepare(s, c, cs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    nvlm_server *s = cls;
    (void)why;
    conn_state *cs = *con_cls;
    serve_conns_busy(&s->conns, conn_entry(c), 0); /* a keep-alive connection's next request starts now */
    if (!cs) return;
    if (cs->job) {
        serve_sched_cancel(&s->sched, cs->job);
        serve_job_release(cs->job);
    }
    serve_budget_give(&s->images, cs->held);
    if (cs->counted) atomic_fetch_sub(&s->in_flight, 1);
    nvlm_buf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    nvlm_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ai = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        const struct sockaddr *sa = ai ? ai->client_addr : NULL;
        socklen_t len = !sa ? 0 : sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        *socket_context = serve_conns_open(&s->conns, conn_fd(c), sa, len);
    } else {
        serve_conns_close(&s->conns, *socket_context);
        *socket_context = NULL;
    }
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
    if (s->curl) serve_fetch_global_cleanup();
    free(s->model_id);
    free(s->api_key);
    free(s->local_dir);
    free(s->system);
    free(s->prep);
    free(s);
}

/* Fills the defaults of the options left 0; an error for values out of range. */
static int settle_options(nvlm_serve_options *o, const nvlm_model *m, nvlm_err *err) {
    if (!o->parallel) o->parallel = 8;
    if (!o->max_queue) o->max_queue = 256;
    if (!o->max_body) o->max_body = 64u << 20;
    if (!o->max_image_bytes) o->max_image_bytes = 20u << 20;
    if (!o->max_image_pixels) o->max_image_pixels = 32u << 20;
    if (!o->max_images) o->max_images = 16;
    if (!o->max_image_memory) o->max_image_memory = serve_image_memory_default();
    if (!o->timeout) o->timeout = 60;
    if (!o->max_connections) o->max_connections = 2048;
    if (!o->max_connections_per_ip) o->max_connections_per_ip = 1024;
    if (!o->http_threads) o->http_threads = 4;
    if (!o->remote_timeout_ms) o->remote_timeout_ms = 10000;
    if (!o->remote_max_redirects) o->remote_max_redirects = 3;
    if (o->remote_max_redirects < 0) o->remote_max_redirects = 0;
    /* every connection is a descriptor: stay clear of the process's limit */
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 128 &&
        (rlim_t)o->max_connections > rl.rlim_cur - 96)
        o->max_connections = (int)(rl.rlim_cur - 96);
    if (o->parallel < 1 || o->parallel > 1024)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "parallel must be 1..1024, not %d", o->parallel);
    if (o->timeout < 0 || o->shutdown_timeout < 0 || o->max_connections < 1 || o->max_connections_per_ip < 0 ||
        o->http_threads < 1 || o->http_threads > 256)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "bad timeout, connection limit or thread count");
    (void)m;
    return NVLM_OK;
}

static int start_threads(nvlm_server *s, nvlm_err *err) {
    s->n_prep = 0;
    s->prep = calloc((size_t)s->o.parallel, sizeof *s->prep);
    if (!s->prep) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (pthread_create(&s->pump, NULL, pump_main, s)) return nvlm_fail(err, NVLM_E_INTERNAL, "cannot start a thread");
    s->pump_started = 1;
    /* as many preparers as slots: one waiting for image memory never holds up the others for long */
    for (int i = 0; i < s->o.parallel; i++) {
        if (pthread_create(&s->prep[i], NULL, prep_main, s)) return nvlm_fail(err, NVLM_E_INTERNAL, "cannot start a thread");
        s->n_prep++;
    }
    return NVLM_OK;
}

/* Stops the preparation threads (their queue drained: each request answered) and the pump
 * (every suspended connection resumed). */
static void stop_threads(nvlm_server *s) {
    pthread_mutex_lock(&s->mu);
    s->prep_stop = 1;
    pthread_cond_broadcast(&s->prep_cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_prep; i++) pthread_join(s->prep[i], NULL);
    s->n_prep = 0;
    if (!s->pump_started) return;
    pthread_mutex_lock(&s->mu);
    s->pump_stop = 1;
    s->force_resume = 1;
    pthread_cond_signal(&s->pump_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->pump, NULL);
    s->pump_started = 0;
}

static void teardown(nvlm_server *s, int sched, int conns) {
    stop_threads(s);
    if (sched) {
        serve_sched_stop(&s->sched);
        serve_sched_destroy(&s->sched);
    }
    if (conns) serve_conns_destroy(&s->conns);
    serve_budget_destroy(&s->images);
    pthread_cond_destroy(&s->pump_cv);
    pthread_cond_destroy(&s->prep_cv);
    pthread_mutex_destroy(&s->mu);
    serve_metrics_destroy(&s->metrics);
    server_free(s);
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
    int rc = settle_options(&s->o, m, err);
    if (!rc && s->o.allow_remote_images) {
        if (serve_fetch_global_init()) rc = nvlm_fail(err, NVLM_E_INTERNAL, "cannot initialise libcurl for --allow-remote-images");
        else s->curl = 1;
    }
    if (!rc && s->api_key && !key_digest(s->api_key, s->key_sha))
        rc = nvlm_fail(err, NVLM_E_INTERNAL, "SHA-256 of the API key failed (libcrypto)");
    struct sockaddr_storage ss;
    if (!rc) rc = resolve(opt->host ? opt->host : "127.0.0.1", opt->port, &ss, err);
    if (!rc && serve_metrics_init(&s->metrics, s->o.parallel)) rc = nvlm_fail(err, NVLM_E_INTERNAL, "mutex init failed");
    if (rc) {
        server_free(s);
        return rc;
    }
    if (pthread_mutex_init(&s->mu, NULL) || pthread_cond_init(&s->prep_cv, NULL) || pthread_cond_init(&s->pump_cv, NULL) ||
        serve_budget_init(&s->images, s->o.max_image_memory)) {
        serve_metrics_destroy(&s->metrics);
        server_free(s);
        return nvlm_fail(err, NVLM_E_INTERNAL, "mutex init failed");
    }
    if (serve_conns_init(&s->conns, s->o.max_connections, s->o.max_connections_per_ip, s->o.timeout)) {
        teardown(s, 0, 0);
        return nvlm_fail(err, NVLM_E_INTERNAL, "mutex init failed");
    }
    rc = serve_sched_start(&s->sched, m, &s->metrics, &s->o, err);
    if (rc) {
        teardown(s, 0, 1);
        return rc;
    }
    rc = start_threads(s, err);
    if (rc) {
        teardown(s, 1, 1);
        return rc;
    }
    /* epoll on a fixed pool of poll threads; suspended requests wait without holding one. MHD's
     * own connection limit sits above ours, which makes room by dropping slow connections. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)s->o.http_threads, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)s->o.max_connections + 64u, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->o.timeout,
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_END);
    if (!s->d) {
        teardown(s, 1, 1);
        return nvlm_fail(err, NVLM_E_IO, "cannot listen on %s:%d (address in use or not allowed)",
                         opt->host ? opt->host : "127.0.0.1", opt->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : opt->port;
    *out = s;
    return NVLM_OK;
}

int nvlm_server_port(const nvlm_server *s) { return s ? s->port : -1; }

static void wait_in_flight(nvlm_server *s, double seconds) {
    double end = serve_now() + seconds;
    while (atomic_load(&s->in_flight) > 0 && serve_now() < end) nanosleep(&(struct timespec){0, 10000000L}, NULL);
}

void nvlm_server_stop(nvlm_server *s) {
    if (!s) return;
    /* no new connections; new requests on open ones get a 503 */
    atomic_store(&s->stopping, 1);
    MHD_socket lfd = MHD_quiesce_daemon(s->d);
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    /* the answers in flight may finish ... */
    wait_in_flight(s, s->o.shutdown_timeout);
    /* ... then the rest end honestly: cut answers say so, queued ones get a 503 */
    atomic_store(&s->cutting, 1);
    serve_sched_stop(&s->sched);
    stop_threads(s);
    wait_in_flight(s, CUT_GRACE_MS / 1e3);
    MHD_stop_daemon(s->d);
    serve_sched_destroy(&s->sched);
    serve_conns_destroy(&s->conns);
    serve_budget_destroy(&s->images);
    pthread_cond_destroy(&s->pump_cv);
    pthread_cond_destroy(&s->prep_cv);
    pthread_mutex_destroy(&s->mu);
    serve_metrics_destroy(&s->metrics);
    server_free(s);
}
