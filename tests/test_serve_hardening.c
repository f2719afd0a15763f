/* The server under abuse (issue 21): image bombs against the image memory budget, a client
 * that leaves while its images decode, many slow connections while /health answers, the
 * header/body deadline, the per-IP limit, and a stop with answers in flight (each complete or
 * saying it was cut). Loopback only, everything bounded in time. */
#include "test_serve_util.h"
#include "image/decode.h"
#include "model/model.h"
#include <dirent.h>
#include <sys/stat.h>
#include <libdeflate.h>
#include <malloc.h>
#include <pthread.h>
#include <errno.h>
#include <poll.h>


/* A W x H one-colour RGB PNG in base64 data-URL form: a few KB that decode to W*H*3 bytes. */
static char *bomb_url(int w, int h) {
    size_t row = 1 + (size_t)w * 3, raw_n = row * (size_t)h;
    uint8_t *raw = malloc(raw_n);
    for (size_t y = 0; y < (size_t)h; y++) {
        raw[y * row] = 0;
        for (size_t x = 0; x < (size_t)w; x++) raw[y * row + 1 + 3 * x] = 200, raw[y * row + 2 + 3 * x] = 30,
                                              raw[y * row + 3 + 3 * x] = 90;
    }
    struct libdeflate_compressor *c = libdeflate_alloc_compressor(9);
    size_t cap = libdeflate_zlib_compress_bound(c, raw_n);
    uint8_t *z = malloc(cap);
    size_t zn = libdeflate_zlib_compress(c, raw, raw_n, z, cap);
    libdeflate_free_compressor(c);
    free(raw);
    size_t n = 0;
    uint8_t *png = malloc(zn + 128);
    memcpy(png, "\x89PNG\r\n\x1a\n", 8), n = 8;
    uint8_t ihdr[13] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                        (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h, 8, 2, 0, 0, 0};
    const struct { const char *t; const uint8_t *d; size_t n; } chunks[3] = {{"IHDR", ihdr, 13}, {"IDAT", z, zn}, {"IEND", NULL, 0}};
    for (int k = 0; k < 3; k++) {
        uint32_t len = (uint32_t)chunks[k].n;
        uint8_t be[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
        memcpy(png + n, be, 4), n += 4;
        size_t at = n;
        memcpy(png + n, chunks[k].t, 4), n += 4;
        if (len) memcpy(png + n, chunks[k].d, len), n += len;
        uint32_t crc = libdeflate_crc32(0, png + at, 4 + len);
        uint8_t cb[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc};
        memcpy(png + n, cb, 4), n += 4;
    }
    free(z);
    char *e = b64(png, n), *u = malloc(strlen(e) + 32);
    sprintf(u, "data:image/png;base64,%s", e);
    free(png), free(e);
    return u;
}

/* A request with n copies of url, then a question. */
static char *images_body(const char *url, int n, int max_tokens) {
    char *b = malloc((strlen(url) + 80) * (size_t)n + 256), *p = b;
    p += sprintf(p, "{\"max_tokens\":%d,\"messages\":[{\"role\":\"user\",\"content\":[", max_tokens);
    for (int i = 0; i < n; i++) p += sprintf(p, "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},", url);
    sprintf(p, "{\"type\":\"text\",\"text\":\"What is it?\"}]}]}");
    return b;
}

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    if (f) fclose(f);
    return v;
}

static nvlm_server *start(nvlm_model *m, nvlm_serve_options *o) {
    nvlm_server *s = NULL;
    nvlm_err err = {0};
    o->model_id = "tiny-nvlm-d";
    CHECK(!nvlm_server_start(m, o, &s, &err), "start: %s", err.msg);
    return s;
}

/* ------------------------------------------------------------ image memory */

typedef struct client {
    pthread_t th;
    int port;
    const char *body;
    answer a;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    ask(c->port, NULL, c->body, &c->a);
    return NULL;
}

/* The header probe the budget relies on agrees with the decoders on every reference image. */
static void test_probe(void) {
    char dirp[4096];
    snprintf(dirp, sizeof dirp, "%s", shared_path("reference/images"));
    DIR *d = opendir(dirp);
    int n = 0, exact_n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dirp, e->d_name);
        struct stat st;
        if (stat(p, &st) || !S_ISREG(st.st_mode)) continue; /* bad/ is a folder */
        size_t len;
        char *data = slurp(p, &len);
        if (!data) continue;
        uint64_t w, h;
        int exact;
        int f = img_probe((const uint8_t *)data, len, &w, &h, &exact);
        nvlm_image img;
        nvlm_err err = {0};
        if (nvlm_image_decode((const uint8_t *)data, len, NULL, &img, &err) == NVLM_OK) {
            n++;
            exact_n += exact;
            CHECK(f != IMG_UNKNOWN, "%s: decodes but the probe does not know it", e->d_name);
            CHECK(!exact || (w == (uint64_t)img.width && h == (uint64_t)img.height), "%s: probe %llux%llu, decoded %dx%d",
                  e->d_name, (unsigned long long)w, (unsigned long long)h, img.width, img.height);
            nvlm_image_free(&img);
        }
        free(data);
    }
    if (d) closedir(d);
    CHECK(n > 100 && exact_n > 90, "probed %d reference images (%d exact)", n, exact_n);
}

static void test_budget_unit(void) {
    serve_budget b;
    CHECK(!serve_budget_init(&b, 100), "budget init");
    CHECK(serve_budget_take(&b, 101, 1, NULL, NULL) == 1, "over the whole budget: never fits");
    CHECK(serve_budget_take(&b, 70, 1, NULL, NULL) == 0, "fits");
    double t0 = serve_now();
    CHECK(serve_budget_take(&b, 40, 0.2, NULL, NULL) == 2, "no room in time");
    CHECK(serve_now() - t0 < 1.0, "the wait is bounded");
    serve_budget_give(&b, 70);
    CHECK(serve_budget_take(&b, 40, 0.2, NULL, NULL) == 0 && serve_budget_used(&b) == 40, "room again");
    serve_budget_destroy(&b);
}

/* Four concurrent requests of four 2048x2048 images (12 MiB each decoded) under a 40 MiB
 * budget: all answered, and the process grows by far less than the images decoded at once
 * would take (4 x 4 x 12 MiB). A request needing more than the whole budget gets 413. */
static void test_bombs(nvlm_model *m) {
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.max_image_memory = 40u << 20;
    o.max_tiles = 1; /* short prompts: the test is about decoding */
    nvlm_server *s = start(m, &o);
    if (!s) return;
    int port = nvlm_server_port(s);
    char *url = bomb_url(2048, 2048);
    char *four = images_body(url, 4, 2), *eight = images_body(url, 16, 2);
    answer a;
    ask(port, NULL, eight, &a);
    CHECK(a.status == 413, "16 bombs over a 40 MiB budget: %d", a.status);
    answer_free(&a);
    resp r;
    CHECK(!http(port, "POST", "/v1/chat/completions", NULL, eight, &r) && strstr(r.body, "\"images_too_large\"") &&
              strstr(r.body, "--max-image-memory"), "413 body: %.300s", r.body);
    resp_free(&r);
    /* as `nvlm serve` sets it: large buffers from mmap, back to the system when freed */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5": the peak RSS starts again from now */
    if (f) fputs("5", f), fclose(f);
    long before = status_kb("VmRSS:");
    client cl[4];
    double t0 = serve_now();
    for (int i = 0; i < 4; i++) cl[i] = (client){0, port, four, {0}}, pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(cl[i].th, NULL);
        ok += cl[i].a.status == 200 && cl[i].a.completion == 2;
        answer_free(&cl[i].a);
    }
    long grew = (status_kb("VmHWM:") - before) / 1024;
    CHECK(ok == 4, "four bomb requests answered: %d", ok);
    /* 40 MiB of images, plus bodies, threads and the answers: not 4 x 4 x 12 MiB */
    if (!UNDER_ASAN) CHECK(grew < 40 + 40, "the server grew by %ld MiB under a 40 MiB image budget", grew);
    CHECK(metric(port, "\nnvlm_image_memory_bytes ") == 0, "image memory given back");
    printf("bombs: 4 concurrent requests of 4 PNGs of 2048x2048 (12 MiB each decoded) under a 40 MiB budget: "
           "%.1f s, peak growth %ld MiB\n", serve_now() - t0, grew);
    nvlm_server_stop(s);
    free(four), free(eight), free(url);
}

/* A client that leaves while its 16 images decode: decoding stops at the next image. */
static void test_leave_while_decoding(nvlm_model *m) {
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.max_tiles = 1;
    nvlm_server *s = start(m, &o);
    if (!s) return;
    int port = nvlm_server_port(s);
    char *url = bomb_url(2048, 2048), *body = images_body(url, 16, 2);
    int fd = send_request(port, "POST", "/v1/chat/completions", NULL, body);
    CHECK(await_metric(port, "\nnvlm_image_memory_bytes ", 1) > 0, "decoding started");
    double t0 = serve_now();
    close(fd);
    long v = 1;
    while (v != 0 && serve_now() - t0 < 10) usleep(5000), v = metric(port, "\nnvlm_image_memory_bytes ");
    double took = serve_now() - t0;
    CHECK(v == 0, "image memory not given back after the client left");
    printf("leave: decoding of 16 images stopped %.0f ms after the client left\n", took * 1e3);
    CHECK(took < 3, "decoding went on %.1f s after the client left", took);
    CHECK(healthy(port), "healthy after");
    nvlm_server_stop(s);
    free(body), free(url);
}

/* ------------------------------------------------------------ connections */

static int closed_by_peer(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN);
}

enum { N_SLOW = 300 };

/* N_SLOW connections that send half a header and then a byte now and then: /health answers
 * at once all along; past the deadline (--timeout 2) the server drops them; over the per-IP
 * limit the oldest slow ones make room. */
static void test_slow_clients(nvlm_model *m) {
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.timeout = 2;
    o.max_connections_per_ip = 200;
    nvlm_server *s = start(m, &o);
    if (!s) return;
    int port = nvlm_server_port(s);
    static int fds[N_SLOW];
    int opened = 0;
    for (int i = 0; i < N_SLOW; i++) {
        fds[i] = dial(port);
        if (fds[i] < 0) continue;
        opened++;
        static const char half[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        send_all(fds[i], half, sizeof half - 1);
    }
    CHECK(opened == N_SLOW, "opened %d of %d", opened, N_SLOW);
    double worst = 0;
    int ok = 0;
    for (int k = 0; k < 5; k++) {
        double t0 = serve_now();
        ok += healthy(port);
        double dt = serve_now() - t0;
        if (dt > worst) worst = dt;
        for (int i = 0; i < N_SLOW; i++)
            if (fds[i] >= 0) send_all(fds[i], "a", 1);
        usleep(300 * 1000);
    }
    CHECK(ok == 5 && worst < 2, "/health under %d slow connections: %d of 5, slowest %.3f s", N_SLOW, ok, worst);
    long dropped = metric(port, "\nnvlm_connections_dropped_total ");
    CHECK(dropped >= N_SLOW - 200, "the per-IP limit (200) dropped %ld of %d slow connections", dropped, N_SLOW);
    /* past the 2 s deadline every one is dropped, though each still sends */
    int gone = 0;
    for (int k = 0; k < 20 && gone < N_SLOW; k++) {
        usleep(250 * 1000);
        gone = 0;
        for (int i = 0; i < N_SLOW; i++) {
            if (fds[i] >= 0 && closed_by_peer(fds[i])) close(fds[i]), fds[i] = -1;
            if (fds[i] < 0) gone++;
            else send_all(fds[i], "a", 1);
        }
    }
    CHECK(gone == N_SLOW, "%d of %d slow connections dropped past the deadline", gone, N_SLOW);
    for (int i = 0; i < N_SLOW; i++)
        if (fds[i] >= 0) close(fds[i]);
    CHECK(healthy(port), "healthy after");
    printf("slow: %d slow connections, /health answered in %.0f ms at worst; all dropped past the 2 s deadline\n", N_SLOW,
           worst * 1e3);
    nvlm_server_stop(s);
}

/* ------------------------------------------------------------ stop */

/* Answers in flight when the server stops (shutdown_timeout 0; six requests, two slots): each
 * either ends complete (stop/length, all its tokens) or says it was cut ("cancelled", an error
 * event); a request still queued gets a 503. With a drain time, all finish whole. */
enum { N_STOP = 6 };

static void test_stop_in_flight(nvlm_model *m) {
    const char *long_plain = "{\"max_tokens\":3000,\"temperature\":2,\"seed\":%d,%s\"messages\":[{\"role\":\"user\","
                             "\"content\":\"Tell me everything.\"}]}";
    /* seeds whose sampled answers run longest on the tiny model (10, 6: ~300, ~175 tokens) */
    static const int seeds[N_STOP] = {10, 6, 10, 6, 1, 7};
    char bodies[N_STOP][256];
    for (int i = 0; i < N_STOP; i++)
        snprintf(bodies[i], sizeof bodies[i], long_plain, seeds[i], i % 2 ? "\"stream\":true," : "");
    for (int drain = 0; drain < 2; drain++) {
        nvlm_serve_options o;
        nvlm_serve_options_default(&o);
        o.parallel = 2;
        o.shutdown_timeout = drain ? 60 : 0;
        o.ctx = 4096;
        nvlm_server *s = start(m, &o);
        if (!s) return;
        int port = nvlm_server_port(s);
        client cl[N_STOP];
        for (int i = 0; i < N_STOP; i++) {
            cl[i] = (client){0, port, bodies[i], {0}};
            pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
        }
        CHECK(await_metric(port, "\nnvlm_active_requests ", 2) == 2, "two answers running");
        CHECK(await_metric(port, "\nnvlm_queue_depth ", 1) >= 1, "some queued");
        usleep(50 * 1000); /* tokens flowing */
        double t0 = serve_now();
        nvlm_server_stop(s);
        double took = serve_now() - t0;
        int cut = 0, whole = 0, refused = 0, lies = 0;
        for (int i = 0; i < N_STOP; i++) {
            pthread_join(cl[i].th, NULL);
            answer *a = &cl[i].a;
            int complete = a->finish && (!strcmp(a->finish, "length") || !strcmp(a->finish, "stop"));
            /* not started: a 503, or for a stream an error event and [DONE] without a finish */
            if (a->status == 503 || (a->status == 200 && !a->finish && a->done == 1)) refused++;
            else if (a->status == 200 && a->finish && !strcmp(a->finish, "cancelled")) cut++;
            else if (a->status == 200 && complete) whole++;
            /* a "length" answer has all its tokens; a cut one must never read as complete */
            if (complete && !strcmp(a->finish, "length") && a->completion && a->completion != 3000) lies++;
            answer_free(a);
        }
        CHECK(lies == 0, "an answer cut short reads as complete");
        if (!drain) {
            /* the running are cut (or end on their own just then); the queued never start */
            CHECK(cut + refused >= 1 && cut + whole + refused == N_STOP, "stop: %d cut, %d whole, %d refused", cut, whole,
                  refused);
            CHECK(took < 5, "stop took %.1f s", took);
        } else {
            CHECK(whole == N_STOP, "drain: %d whole, %d cut, %d refused (want all whole)", whole, cut, refused);
        }
        printf("stop%s: %d answers cut (finish_reason cancelled), %d whole, %d refused with 503; stop took %.0f ms\n",
               drain ? " with 60 s to drain" : "", cut, whole, refused, took * 1e3);
    }
}

/* ------------------------------------------------------------ non-finite */

/* A copy of the tiny model with a NaN in a norm weight: requests get a 500 that says so. */
static void test_nan_model(void) {
    char dir[] = "/tmp/nvlm-nan-XXXXXX", cmd[512], path[600];
    if (!mkdtemp(dir)) return;
    snprintf(cmd, sizeof cmd, "cp -r '%s/.' '%s/'", shared_path("reference/models/tiny-nvlm-d"), dir);
    CHECK(system(cmd) == 0, "copy the model");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    uint64_t hl = 0;
    char *h = NULL;
    int patched = 0;
    if (f && fread(&hl, 8, 1, f) == 1 && hl < (1u << 24) && (h = calloc(1, hl + 1)) && fread(h, 1, hl, f) == hl) {
        cJSON *root = cJSON_Parse(h);
        const cJSON *t = cJSON_GetObjectItem(root, "language_model.model.layers.0.post_attention_layernorm.weight");
        const cJSON *offs = cJSON_GetObjectItem(t, "data_offsets");
        const uint8_t nan_bf16[2] = {0xc0, 0x7f};
        if (cJSON_GetArraySize(offs) == 2 &&
            !fseek(f, (long)(8 + hl) + (long)cJSON_GetArrayItem(offs, 0)->valuedouble, SEEK_SET))
            patched = fwrite(nan_bf16, 1, 2, f) == 2;
        cJSON_Delete(root);
    }
    free(h);
    if (f) fclose(f);
    CHECK(patched, "NaN patched in");
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    if (patched && !nvlm_model_load(dir, NULL, &m, &err)) {
        nvlm_serve_options o;
        nvlm_serve_options_default(&o);
        nvlm_server *s = start(m, &o);
        if (s) {
            int port = nvlm_server_port(s);
            resp r;
            const char *hi = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3}";
            CHECK(!http(port, "POST", "/v1/chat/completions", NULL, hi, &r) && r.status == 500 &&
                      strstr(r.body, "non_finite_values") && strstr(r.body, "decoder layer 0"),
                  "NaN model: %d %.300s", r.status, r.body ? r.body : "");
            resp_free(&r);
            const char *hs = "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3}";
            CHECK(!http(port, "POST", "/v1/chat/completions", NULL, hs, &r) && strstr(r.body, "non_finite_values") &&
                      !strstr(r.body, "finish_reason\":\"stop"),
                  "NaN model streamed: %.300s", r.body ? r.body : "");
            resp_free(&r);
            nvlm_server_stop(s);
        }
        nvlm_model_free(m);
    } else if (patched) {
        CHECK(0, "load: %s", err.msg);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "clean up");
}

int main(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    test_budget_unit();
    test_probe();
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), NULL, &m, &err)) {
        CHECK(0, "load: %s", err.msg);
        return check_done("test_serve_hardening");
    }
    test_bombs(m);
    test_leave_while_decoding(m);
    test_slow_clients(m);
    test_stop_in_flight(m);
    nvlm_model_free(m);
    test_nan_model();
    return check_done("test_serve_hardening");
}
