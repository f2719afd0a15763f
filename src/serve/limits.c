/* limits.c - what bounds the server's memory and connections, apart from the HTTP code:
 *   - the image memory budget: every request's decoded images and tiles are counted against
 *     one server-wide number of bytes before they exist (reserved up front from the images'
 *     headers, so a request either has all it needs or waits holding nothing: no deadlock);
 *   - the connection table: total and per-IP limits, and the deadline for a request's header
 *     and body. At a limit the oldest connection still sending its request is dropped to make
 *     room, so that slow clients cannot lock out a new one (/health included). */
#include "core/file.h"
#include "image/decode.h"
#include "model/model.h"
#include "serve/serve_int.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------- image budget */

uint64_t serve_image_memory_default(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t total = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    uint64_t cap = (uint64_t)SERVE_IMAGE_MEMORY_MAX_MIB << 20, v = total / 8;
    if (!v || v > cap) v = cap;
    return v < (64u << 20) ? 64u << 20 : v;
}

int serve_budget_init(serve_budget *b, uint64_t cap) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    if (pthread_mutex_init(&b->mu, NULL)) return -1;
    if (pthread_cond_init(&b->cv, NULL)) {
        pthread_mutex_destroy(&b->mu);
        return -1;
    }
    return 0;
}

void serve_budget_destroy(serve_budget *b) {
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
}

int serve_budget_take(serve_budget *b, uint64_t n, double wait_s, int (*stop)(void *), void *user) {
    if (n == 0) return 0;
    if (n > b->cap) return 1;
    double end = serve_now() + wait_s;
    pthread_mutex_lock(&b->mu);
    int rc = 0;
    while (b->used + n > b->cap) {
        if (serve_now() >= end || (stop && stop(user))) {
            rc = 2;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    if (!rc) {
        b->used += n;
        if (b->used > b->peak) b->peak = b->used;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void serve_budget_give(serve_budget *b, uint64_t n) {
    if (!n) return;
    pthread_mutex_lock(&b->mu);
    b->used = n > b->used ? 0 : b->used - n;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

uint64_t serve_budget_used(serve_budget *b) {
    pthread_mutex_lock(&b->mu);
    uint64_t u = b->used;
    pthread_mutex_unlock(&b->mu);
    return u;
}

/* Pixels the decoder may allocate for image i: the header's size when exact, else the limit. */
static uint64_t decode_pixels(const serve_image_src *src, uint64_t max_pixels) {
    return src->exact && src->width * src->height <= max_pixels ? src->width * src->height : max_pixels;
}

uint64_t serve_image_decode_bytes(const serve_image_src *src, uint64_t max_pixels) {
    uint64_t px = decode_pixels(src, max_pixels);
    /* RGB, plus the PNG fast path's inflated rows (as large again), plus resize scratch */
    return px * 3 * (src->format == IMG_PNG ? 2 : 1) + (4u << 20);
}

static uint64_t tile_bytes(const nvlm_model *m) { return (uint64_t)3 * m->cfg.image_size * m->cfg.image_size; }

uint64_t serve_images_need(const nvlm_model *m, const serve_request *r, int max_tiles, uint64_t max_pixels) {
    int bound = max_tiles > 0 ? max_tiles : m->cfg.max_dynamic_patch;
    uint64_t tiles = 0, decode = 0;
    for (int i = 0; i < r->n_images; i++) {
        uint64_t d = serve_image_decode_bytes(&r->image_src[i], max_pixels);
        if (d > decode) decode = d;
        tiles += (uint64_t)(bound + 1) * tile_bytes(m);
    }
    return r->n_images ? tiles + decode : 0;
}

uint64_t serve_images_held(nvlm_model *m, const serve_request *r, int max_tiles) {
    uint64_t n = 0;
    for (int i = 0; i < r->n_images; i++) n += (uint64_t)serve_image_tiles(m, &r->images[i], max_tiles) * tile_bytes(m);
    return n;
}

/* ------------------------------------------------------- connection table */

struct serve_conn {
    int fd;
    struct sockaddr_storage addr;
    double t_start;     /* when the current request began (connect, or the previous one's end) */
    int busy;           /* its request is whole: generating or answering, no deadline */
    int dropped;        /* shut down by us; MHD closes it at its next look */
    serve_conn *prev, *next;
};

int serve_conns_init(serve_conns *t, int max_total, int max_per_ip, double deadline_s) {
    memset(t, 0, sizeof *t);
    t->max_total = max_total;
    t->max_per_ip = max_per_ip;
    t->deadline_s = deadline_s;
    return pthread_mutex_init(&t->mu, NULL) ? -1 : 0;
}

void serve_conns_destroy(serve_conns *t) {
    while (t->head) {
        serve_conn *c = t->head;
        t->head = c->next;
        free(c);
    }
    pthread_mutex_destroy(&t->mu);
}

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
    return 1;
}

/* Shuts the socket down (never closes it: MHD owns the descriptor and closes it when it
 * sees the end, calling serve_conns_close first, under the same mutex as this). */
static void drop(serve_conns *t, serve_conn *c) {
    c->dropped = 1;
    shutdown(c->fd, SHUT_RDWR);
    t->n_dropped++;
}

/* The oldest connection still sending its request (of that IP when ip is non-NULL). */
static serve_conn *oldest_idle(serve_conns *t, const struct sockaddr_storage *ip, const serve_conn *skip) {
    serve_conn *best = NULL;
    for (serve_conn *c = t->head; c; c = c->next)
        if (c != skip && !c->busy && !c->dropped && (!ip || same_ip(&c->addr, ip)) && (!best || c->t_start < best->t_start))
            best = c;
    return best;
}

serve_conn *serve_conns_open(serve_conns *t, int fd, const struct sockaddr *addr, socklen_t len) {
    serve_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    if (addr && len <= sizeof c->addr) memcpy(&c->addr, addr, len);
    c->t_start = serve_now();
    pthread_mutex_lock(&t->mu);
    int total = 0, same = 0;
    for (serve_conn *o = t->head; o; o = o->next)
        if (!o->dropped) total++, same += same_ip(&o->addr, &c->addr);
    c->next = t->head;
    if (t->head) t->head->prev = c;
    t->head = c;
    if (t->max_per_ip > 0 && same >= t->max_per_ip) {
        serve_conn *v = oldest_idle(t, &c->addr, c);
        drop(t, v ? v : c);
    } else if (t->max_total > 0 && total >= t->max_total) {
        serve_conn *v = oldest_idle(t, NULL, c);
        drop(t, v ? v : c);
    }
    pthread_mutex_unlock(&t->mu);
    return c;
}

void serve_conns_close(serve_conns *t, serve_conn *c) {
    if (!c) return;
    pthread_mutex_lock(&t->mu);
    if (c->prev) c->prev->next = c->next;
    else t->head = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&t->mu);
    free(c);
}

void serve_conns_busy(serve_conns *t, serve_conn *c, int busy) {
    if (!c) return;
    pthread_mutex_lock(&t->mu);
    c->busy = busy;
    if (!busy) c->t_start = serve_now();
    pthread_mutex_unlock(&t->mu);
}

void serve_conns_sweep(serve_conns *t) {
    if (t->deadline_s <= 0) return;
    double now = serve_now();
    pthread_mutex_lock(&t->mu);
    for (serve_conn *c = t->head; c; c = c->next)
        if (!c->busy && !c->dropped && now - c->t_start > t->deadline_s) drop(t, c);
    pthread_mutex_unlock(&t->mu);
}

int serve_conns_count(serve_conns *t) {
    int n = 0;
    pthread_mutex_lock(&t->mu);
    for (serve_conn *c = t->head; c; c = c->next) n += !c->dropped;
    pthread_mutex_unlock(&t->mu);
    return n;
}
