/* Load: 64 concurrent clients on plain sockets against one server (4 slots), each sending a
 * mix of text and image questions, plain and streamed, for a bounded time; two rounds. Every
 * request must succeed with the greedy answer a lone client gets (content, finish reason,
 * token counts), and the second round must not grow the server: resident memory (VmRSS),
 * threads and open descriptors come back to where the first round left them.
 *
 * The model is the reference model's shape with 112-pixel tiles (mkmodel, random weights,
 * the reference tokenizer): an image costs about what a short text answer costs instead of
 * ten times more, so the suite can afford many of them, under ASan too. */
#include "model/mkmodel.h"
#include "test_serve_util.h"
#include <dirent.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/stat.h>

enum { CLIENTS = 64, KINDS = 4 };

/* Client i's n-th request is of kind (i + n) % 4: text, streamed text, image (an 800x600
 * picture: 2x2 tiles and a thumbnail), streamed image. A round stops sending after
 * ROUND_SECONDS and ends when the requests in flight are answered. */
#ifdef __SANITIZE_ADDRESS__
static const double ROUND_SECONDS = 1.0; /* everything is ~10x slower */
#else
static const double ROUND_SECONDS = 2.0;
#endif
static const int MAX_TOKENS = 8;

typedef struct kind {
    const char *name;
    char *body;
    answer want;     /* the lone client's answer */
} kind;

typedef struct client {
    pthread_t th;
    int port, index;
    kind *kinds;
    double deadline;
    int sent, failed;
    double max_latency;
    char first_error[256];
} client;

static char *body_for(const char *image_url, int stream) {
    cJSON *req = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(req, "messages");
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    if (image_url) {
        cJSON *content = cJSON_AddArrayToObject(u, "content"), *im = cJSON_CreateObject(), *t = cJSON_CreateObject();
        cJSON_AddStringToObject(im, "type", "image_url");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(im, "image_url"), "url", image_url);
        cJSON_AddStringToObject(t, "type", "text");
        cJSON_AddStringToObject(t, "text", "What is in the picture?");
        cJSON_AddItemToArray(content, im);
        cJSON_AddItemToArray(content, t);
    } else {
        cJSON_AddStringToObject(u, "content", "Tell me a joke about load tests.");
    }
    cJSON_AddItemToArray(msgs, u);
    cJSON_AddNumberToObject(req, "max_tokens", MAX_TOKENS);
    if (stream) {
        cJSON_AddTrueToObject(req, "stream");
        cJSON_AddTrueToObject(cJSON_AddObjectToObject(req, "stream_options"), "include_usage");
    }
    char *s = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    return s;
}

static int same(const answer *a, const answer *b) {
    return a->status == 200 && b->status == 200 && a->content && b->content && !strcmp(a->content, b->content) &&
           a->finish && b->finish && !strcmp(a->finish, b->finish) && a->prompt == b->prompt &&
           a->completion == b->completion;
}

static void *client_main(void *arg) {
    client *c = arg;
    for (int i = 0; i == 0 || serve_now() < c->deadline; i++) { /* at least one: 64 at once */
        kind *k = &c->kinds[(c->index + i) % KINDS];
        double t0 = serve_now();
        answer a;
        ask(c->port, NULL, k->body, &a);
        double lat = serve_now() - t0;
        if (lat > c->max_latency) c->max_latency = lat;
        c->sent++;
        if (!same(&a, &k->want) || (strstr(k->name, "stream") && a.done != 1)) {
            if (!c->failed++)
                snprintf(c->first_error, sizeof c->first_error, "%s: status %d content '%s' finish %s done %d", k->name,
                         a.status, a.content ? a.content : "", a.finish ? a.finish : "", a.done);
        }
        answer_free(&a);
    }
    return NULL;
}

/* A value of /proc/self/status ("VmRSS:", "Threads:"). */
static long proc_status(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    if (f) fclose(f);
    return v;
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    while (d && readdir(d)) n++;
    if (d) closedir(d);
    return n;
}

typedef struct round_stats {
    int sent, failed;
    double secs, max_latency;
    long rss_kb, threads;
    double heap_mib;  /* bytes malloc has handed out and not got back (glibc) */
    int fds;
} round_stats;

static round_stats load_round(int port, kind *kinds) {
    static client cl[CLIENTS];
    round_stats r = {0};
    double t0 = serve_now();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1u << 20);
    for (int i = 0; i < CLIENTS; i++) {
        cl[i] = (client){0};
        cl[i].port = port, cl[i].index = i, cl[i].kinds = kinds, cl[i].deadline = t0 + ROUND_SECONDS;
        CHECK(!pthread_create(&cl[i].th, &attr, client_main, &cl[i]), "client thread %d", i);
    }
    pthread_attr_destroy(&attr);
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(cl[i].th, NULL);
        r.sent += cl[i].sent;
        r.failed += cl[i].failed;
        if (cl[i].failed) CHECK(0, "client %d: %d of %d failed, first: %s", i, cl[i].failed, cl[i].sent, cl[i].first_error);
        if (cl[i].max_latency > r.max_latency) r.max_latency = cl[i].max_latency;
    }
    r.secs = serve_now() - t0;
    /* the connection threads finish after their last byte went out */
    for (int i = 0; i < 200 && metric(port, "\nnvlm_active_requests ") != 0; i++) usleep(10000);
    usleep(100000);
    /* descriptors: the fewest seen over half a second, before any further probe. The server
     * closes a connection (the /metrics probes above included) when its poll thread next looks,
     * so one may still be open for a moment; a leaked descriptor stays, and so stays counted. */
    r.fds = open_fds();
    for (int i = 0; i < 50; i++) {
        usleep(10000);
        int n = open_fds();
        if (n < r.fds) r.fds = n;
    }
    malloc_trim(0); /* what the allocator keeps cached is not a leak: hand it back first */
    r.rss_kb = proc_status("VmRSS:");
    struct mallinfo2 mi = mallinfo2();
    /* the KV store keeps its pages (and finished requests' prefixes) for reuse: not a leak */
    r.heap_mib = (double)(mi.uordblks + mi.hblkhd - metric(port, "\nnvlm_kv_bytes_allocated ")) / (1 << 20);
    r.threads = proc_status("Threads:");
    return r;
}

static void remove_model(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4400];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') snprintf(path, sizeof path, "%.4000s/%.255s", dir, e->d_name), unlink(path);
    if (d) closedir(d);
    rmdir(dir);
}

int main(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    char dir[] = "/tmp/nvlm_serve_load_XXXXXX";
    char tok[4096];
    snprintf(tok, sizeof tok, "%s", shared_path("reference/models/tiny-nvlm-d"));
    nvlm_mkmodel_opts mk;
    nvlm_mkmodel_defaults(&mk);
    mk.tokenizer_dir = tok;
    mk.image_size = 112;
    mk.seed = 6;
    if (!mkdtemp(dir) || nvlm_mkmodel(&mk, dir, NULL, &err) || nvlm_model_load(dir, NULL, &m, &err)) {
        CHECK(0, "model: %s", err.msg);
        remove_model(dir);
        return check_done("test_serve_load");
    }
    remove_model(dir); /* loaded (the weights stay mapped) */
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    nvlm_server *srv = NULL;
    CHECK(!nvlm_server_start(m, &o, &srv, &err), "start: %s", err.msg);
    if (!srv) return check_done("test_serve_load");
    int port = nvlm_server_port(srv);

    char *url = data_url("reference/images/grid_800x600.png");
    kind kinds[KINDS] = {{"text", body_for(NULL, 0), {0}}, {"text_stream", body_for(NULL, 1), {0}},
                         {"image", body_for(url, 0), {0}}, {"image_stream", body_for(url, 1), {0}}};
    free(url);
    for (int k = 0; k < KINDS; k++) {
        ask(port, NULL, kinds[k].body, &kinds[k].want);
        CHECK(kinds[k].want.status == 200 && kinds[k].want.content && kinds[k].want.completion > 0,
              "lone %s: status %d", kinds[k].name, kinds[k].want.status);
        CHECK(k < 2 || kinds[k].want.prompt > 5 * 16, "the image gives 5 tiles of 16 tokens: prompt %ld", kinds[k].want.prompt);
    }
    CHECK(same(&kinds[0].want, &kinds[1].want) && same(&kinds[2].want, &kinds[3].want),
          "streamed answers equal the plain ones");

    round_stats r1 = load_round(port, kinds);
    round_stats r2 = load_round(port, kinds);
    for (int i = 0; i < 2; i++) {
        const round_stats *r = i ? &r2 : &r1;
        printf("load round %d: %d clients, %d requests (text/image x plain/stream, %d tokens) in %.2f s: %.1f req/s, "
               "max latency %.2f s, %d failed; after it: RSS %.1f MiB, heap in use %.2f MiB, %ld threads, %d fds\n",
               i + 1, CLIENTS, r->sent, MAX_TOKENS, r->secs, r->sent / r->secs, r->max_latency, r->failed,
               r->rss_kb / 1024.0, r->heap_mib, r->threads, r->fds);
        CHECK(r->sent >= CLIENTS && r->failed == 0, "round %d: %d requests, %d failed", i + 1, r->sent, r->failed);
    }
    /* A round allocates and frees hundreds of MiB (bodies, images, KV caches). The heap in use
     * is exact: anything a request leaves behind shows there. RSS also holds the thread-stack
     * cache and allocator slack of 128 threads, which moves by +-10 MiB from round to round:
     * its bound catches only gross growth. Under ASan, mallinfo means nothing and freed memory
     * sits in the quarantine: LeakSanitizer checks at exit instead. */
    double grow = (r2.rss_kb - r1.rss_kb) / 1024.0;
#ifdef __SANITIZE_ADDRESS__
    CHECK(grow < 128, "RSS grew by %.1f MiB between the rounds", grow);
#else
    CHECK(grow < 24, "RSS grew by %.1f MiB between the rounds", grow);
    CHECK(r2.heap_mib - r1.heap_mib < 0.25, "heap in use grew by %.2f MiB between the rounds (%d requests)",
          r2.heap_mib - r1.heap_mib, r2.sent);
#endif
    CHECK(r2.threads <= r1.threads, "threads %ld -> %ld", r1.threads, r2.threads);
    CHECK(r2.fds <= r1.fds, "open descriptors %d -> %d", r1.fds, r2.fds);
    CHECK(metric(port, "\nnvlm_queue_depth ") == 0 && metric(port, "\nnvlm_active_requests ") == 0, "idle after the load");
    long errors = metric(port, "nvlm_chat_completions_total{finish=\"error\"} ");
    CHECK(errors == 0, "%ld chat errors in /metrics", errors);
    CHECK(healthy(port), "healthy after the load");

    nvlm_server_stop(srv);
    for (int k = 0; k < KINDS; k++) free(kinds[k].body), answer_free(&kinds[k].want);
    nvlm_model_free(m);
    return check_done("test_serve_load");
}
