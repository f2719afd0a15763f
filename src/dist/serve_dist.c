/* `mpirun -np N nvlm serve`: rank 0 leads the scheduler's steps, the other ranks follow them
 * (serve_dist.h says why the ranks stay in step). */
#include "dist/serve_dist.h"
#include "core/err.h"
#include "dist/dist.h"
#include "model/model.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What rank 0 keeps of a request for the other ranks. */
typedef struct dist_req {
    char *body;
    size_t len;
    int completions, n_img;
    uint64_t max_pixels;
    uint8_t **img;
    size_t *img_len;
} dist_req;

enum { SLOT_CANCELLED = 1, SLOT_NEW = 2 };

nvlm_dist *serve_dist_of(const nvlm_model *m) {
    /* every matrix of a job's model carries the job; the embedding is always split */
    nvlm_dist *d = m ? m->embed.dist : NULL;
    return nvlm_dist_size(d) > 1 ? d : NULL;
}

int serve_dist_follower(const serve_sched *s) { return nvlm_dist_rank(s->dist) > 0; }

void serve_dist_req_free(void *p) {
    dist_req *q = p;
    if (!q) return;
    for (int i = 0; i < q->n_img; i++) free(q->img[i]);
    free(q->img);
    free(q->img_len);
    free(q->body);
    free(q);
}

int serve_dist_capture(const nvlm_model *m, const char *body, size_t len, int completions, const serve_request *r,
                       uint64_t max_pixels, void **out) {
    *out = NULL;
    if (!serve_dist_of(m)) return 0;
    dist_req *q = calloc(1, sizeof *q);
    if (!q) return -1;
    q->completions = completions, q->max_pixels = max_pixels, q->len = len;
    int n = r->n_images;
    q->body = malloc(len + 1);
    q->img = calloc((size_t)n + 1, sizeof *q->img);
    q->img_len = calloc((size_t)n + 1, sizeof *q->img_len);
    int ok = q->body && q->img && q->img_len;
    if (ok) memcpy(q->body, body, len);
    for (int i = 0; ok && i < n; i++, q->n_img++) {
        size_t k = r->image_src[i].len;
        ok = (q->img[i] = malloc(k ? k : 1)) != NULL;
        if (ok && k) memcpy(q->img[i], r->image_src[i].data, k);
        q->img_len[i] = k;
    }
    if (!ok) {
        serve_dist_req_free(q);
        return -1;
    }
    *out = q;
    return 0;
}

/* ------------------------------------------------------------ the wire form */

typedef struct wire {
    char *p;
    size_t len, at;
    int bad;
} wire;

static void put(wire *w, const void *v, size_t n) {
    if (w->p) memcpy(w->p + w->len, v, n);
    w->len += n;
}
static void put_i64(wire *w, int64_t v) { put(w, &v, sizeof v); }

static void get(wire *w, void *v, size_t n) {
    if (w->bad || n > w->len - w->at) {
        w->bad = 1;
        memset(v, 0, n);
        return;
    }
    memcpy(v, w->p + w->at, n);
    w->at += n;
}
static int64_t get_i64(wire *w) {
    int64_t v;
    get(w, &v, sizeof v);
    return v;
}

/* The request as rank 0 settled it: its body and images, and the values rank 0 chose around
 * the parse (tile bound, the default system message, the new-token bound that fits the
 * context). Sized first with w->p NULL, then written. */
static void write_job(wire *w, const serve_job *j) {
    const dist_req *q = j->dist_req;
    const serve_request *r = &j->req;
    put_i64(w, q->completions), put_i64(w, r->max_tiles), put_i64(w, r->sampling.max_new_tokens);
    put_i64(w, (int64_t)q->max_pixels), put_i64(w, q->n_img);
    put_i64(w, r->system ? (int64_t)strlen(r->system) : -1);
    if (r->system) put(w, r->system, strlen(r->system));
    put_i64(w, (int64_t)q->len), put(w, q->body, q->len);
    for (int i = 0; i < q->n_img; i++) put_i64(w, (int64_t)q->img_len[i]), put(w, q->img[i], q->img_len[i]);
}

/* ------------------------------------------------------------------ rank 0 */

static void send_header(serve_sched *s, int stop) {
    int32_t h[2 + s->parallel];
    memset(h, 0, sizeof h);
    h[0] = stop;
    for (int i = 0; !stop && i < s->parallel; i++) {
        serve_job *j = s->slots[i];
        if (!j) continue;
        j->dist = 1;
        j->cancel_seen = atomic_load(&j->cancelled);
        h[2 + i] = (j->cancel_seen ? SLOT_CANCELLED : 0) | (j->phase == PHASE_NEW ? SLOT_NEW : 0);
        h[1] += j->phase == PHASE_NEW;
    }
    nvlm_dist_bcast(s->dist, h, sizeof h);
}

void serve_dist_lead(serve_sched *s) {
    if (!s->dist) return;
    send_header(s, 0);
    for (int i = 0; i < s->parallel; i++) {
        serve_job *j = s->slots[i];
        if (!j || j->phase != PHASE_NEW) continue;
        if (!j->dist_req) nvlm_dist_abort(s->dist, 1, "serve: a queued request without its copy for the other ranks");
        wire w = {0};
        write_job(&w, j);
        int64_t n = (int64_t)w.len;
        if (!(w.p = malloc(w.len))) nvlm_dist_abort(s->dist, 1, "serve: out of memory sending a request to the other ranks");
        w.len = 0;
        write_job(&w, j);
        nvlm_dist_bcast(s->dist, &n, sizeof n);
        nvlm_dist_bcast(s->dist, w.p, w.len);
        free(w.p);
        serve_dist_req_free(j->dist_req); /* sent: the other ranks hold their own job now */
        j->dist_req = NULL;
    }
}

void serve_dist_lead_stop(serve_sched *s) {
    if (s->dist) send_header(s, 1);
}

/* ----------------------------------------------------------------- followers */

/* The same job as rank 0's from its wire form; 0, or -1 with why. */
static int make_job(serve_sched *s, wire *w, serve_job **out, char *why, size_t why_len) {
    int completions = (int)get_i64(w), max_tiles = (int)get_i64(w), max_new = (int)get_i64(w);
    uint64_t max_pixels = (uint64_t)get_i64(w);
    int64_t n_img = get_i64(w), sys_len = get_i64(w);
    if (w->bad || n_img < 0 || n_img > 1 << 20 || sys_len < -1 || sys_len > (int64_t)(w->len - w->at))
        return snprintf(why, why_len, "a malformed request from rank 0"), -1;
    char *system = sys_len >= 0 ? strndup(w->p + w->at, (size_t)sys_len) : NULL;
    w->at += sys_len > 0 ? (size_t)sys_len : 0;
    int64_t body_len = get_i64(w);
    const char *body = w->p + w->at;
    if (w->bad || body_len < 0 || body_len > (int64_t)(w->len - w->at)) w->bad = 1;
    else w->at += (size_t)body_len;
    uint8_t **img = calloc((size_t)n_img + 1, sizeof *img);
    size_t *img_len = calloc((size_t)n_img + 1, sizeof *img_len);
    for (int64_t i = 0; img && img_len && !w->bad && i < n_img; i++) {
        int64_t k = get_i64(w);
        if (k < 0 || k > (int64_t)(w->len - w->at)) w->bad = 1;
        else img[i] = (uint8_t *)w->p + w->at, img_len[i] = (size_t)k, w->at += (size_t)k;
    }
    int rc = -1;
    serve_request r;
    serve_error e = {0};
    nvlm_chat *chat = NULL;
    serve_limits lim = {.max_image_bytes = SIZE_MAX, .max_image_pixels = max_pixels, .max_images = (int)n_img,
                        .given = img, .given_len = img_len};
    if (w->bad || !img || !img_len || (sys_len >= 0 && !system))
        snprintf(why, why_len, "%s", w->bad ? "a malformed request from rank 0" : "out of memory");
    else if (completions ? serve_parse_completion(body, (size_t)body_len, &s->dist_defaults, &r, &e)
                         : serve_parse_request(body, (size_t)body_len, &lim, &s->dist_defaults, &r, &e))
        snprintf(why, why_len, "rank 0's request does not parse here: %s", e.message);
    else {
        free(r.system);
        r.system = system, system = NULL;
        r.max_tiles = max_tiles;
        r.stream = 0, r.include_usage = 0; /* rank 0 alone answers the client */
        serve_image_ctl ic = {max_pixels, NULL, NULL};
        if (serve_make_chat(s->model, &r, r.max_tiles, &ic, &chat, &e))
            snprintf(why, why_len, "cannot make rank 0's request here: %s", e.message);
        else {
            r.sampling.max_new_tokens = max_new;
            rc = serve_job_new(&r, chat, out) ? (snprintf(why, why_len, "out of memory"), -1) : 0;
            if (rc) nvlm_chat_free(chat);
        }
        serve_request_free(&r);
    }
    free(system);
    free(img);
    free(img_len);
    return rc;
}

int serve_dist_follow(serve_sched *s) {
    int32_t h[2 + s->parallel];
    nvlm_dist_bcast(s->dist, h, sizeof h);
    if (h[0]) return 0;
    for (int i = 0; i < s->parallel; i++) {
        if (!(h[2 + i] & SLOT_NEW)) continue;
        char why[1400];
        int64_t n = 0;
        nvlm_dist_bcast(s->dist, &n, sizeof n);
        wire w = {.p = n > 0 ? malloc((size_t)n) : NULL, .len = (size_t)n};
        if (n <= 0 || !w.p) nvlm_dist_abort(s->dist, 1, "serve: out of memory receiving a request from rank 0");
        nvlm_dist_bcast(s->dist, w.p, w.len);
        serve_job *j = NULL;
        if (s->slots[i]) snprintf(why, sizeof why, "slot %d is still busy here", i);
        if (s->slots[i] || make_job(s, &w, &j, why, sizeof why)) {
            char msg[1500];
            snprintf(msg, sizeof msg, "serve: cannot follow rank 0's new request: %s", why);
            nvlm_dist_abort(s->dist, 1, msg); /* the ranks would part ways: end the job */
        }
        free(w.p);
        pthread_mutex_lock(&s->mu);
        s->slots[i] = j;
        s->active++;
        j->phase = PHASE_NEW;
        pthread_mutex_unlock(&s->mu);
    }
    for (int i = 0; i < s->parallel; i++) {
        serve_job *j = s->slots[i];
        if (!j) continue;
        j->dist = 1;
        j->cancel_seen = (h[2 + i] & SLOT_CANCELLED) != 0;
        if (j->cancel_seen) atomic_store(&j->cancelled, 1);
    }
    return 1;
}

int serve_dist_follow_main(nvlm_model *m, const nvlm_serve_options *o, nvlm_err *err) {
    serve_metrics metrics;
    if (serve_metrics_init(&metrics, o->parallel > 0 ? o->parallel : 8))
        return nvlm_fail(err, NVLM_E_INTERNAL, "mutex init failed");
    serve_sched s;
    nvlm_serve_options so = *o;
    so.defaults.stop = NULL; /* as rank 0's server: stop strings are per request */
    int rc = serve_sched_start(&s, m, &metrics, &so, err);
    if (!rc) {
        pthread_join(s.thread, NULL); /* until rank 0's server stops */
        s.running = 0;
        serve_sched_destroy(&s);
    }
    serve_metrics_destroy(&metrics);
    return rc;
}
