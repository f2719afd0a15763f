/* Continuous batching in the server (src/serve/sched.c): 8 concurrent greedy requests, text
 * and image mixed, give exactly their solo answers (and share engine steps); a request whose
 * client leaves in the middle of a batch frees its KV pages at once while the others go on; a
 * request that cannot fit in the KV cache gets HTTP 503 with an OpenAI error body. */
#include "check.h"
#include "core/err.h"
#include "serve/serve.h"
#include <cjson/cJSON.h>
#include <pthread.h>
#include "test_serve_util.h"
#include <unistd.h>

enum { N_REQ = 8 };

static char *text_body(const char *q, int max_tokens, int stream) {
    char *b = malloc(strlen(q) + 256);
    sprintf(b, "{\"max_tokens\":%d,%s\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", max_tokens,
            stream ? "\"stream\":true," : "", q);
    return b;
}

static char *image_req(const char *rel, const char *q, int max_tokens) {
    char *url = data_url(rel);
    const char *fmt = "{\"max_tokens\":%d,\"messages\":[{\"role\":\"user\",\"content\":["
                      "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"%s\"}]}]}";
    char *b = malloc(strlen(fmt) + strlen(url) + strlen(q) + 64);
    sprintf(b, fmt, max_tokens, url, q);
    free(url);
    return b;
}

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

static void test_concurrent_equals_solo(int port) {
    char *bodies[N_REQ] = {
        text_body("Tell me a story about a fox.", 40, 0),
        image_req("reference/images/grid_448x448.png", "What is in the picture?", 24),
        text_body("Hi", 32, 1),
        text_body("Count from one to ten, please.", 40, 0),
        image_req("reference/images/grid_896x448.png", "Describe the colours.", 24),
        text_body("Name three rivers.", 48, 1),
        image_req("reference/images/grid_448x448.png", "Is it wide or tall?", 24), /* the same image again */
        text_body("What is 2+2?", 40, 0),
    };
    answer solo[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        ask(port, NULL, bodies[i], &solo[i]);
        CHECK(solo[i].status == 200 && solo[i].content && (solo[i].events || solo[i].completion > 0), "solo %d: status %d", i,
              solo[i].status);
    }
    long steps0 = metric(port, "\nnvlm_engine_steps_total ");
    client cl[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        cl[i] = (client){.port = port, .body = bodies[i]};
        pthread_create(&cl[i].th, NULL, client_main, &cl[i]);
    }
    long gen = 0;
    for (int i = 0; i < N_REQ; i++) {
        pthread_join(cl[i].th, NULL);
        CHECK(cl[i].a.status == 200 && cl[i].a.content && solo[i].content && !strcmp(cl[i].a.content, solo[i].content),
              "request %d concurrent: '%.80s' solo: '%.80s'", i, cl[i].a.content ? cl[i].a.content : "(none)",
              solo[i].content ? solo[i].content : "(none)");
        CHECK(cl[i].a.completion == solo[i].completion && !strcmp(cl[i].a.finish ? cl[i].a.finish : "", solo[i].finish ? solo[i].finish : ""),
              "request %d: %ld tokens (%s), solo %ld", i, cl[i].a.completion, cl[i].a.finish, solo[i].completion);
        gen += cl[i].a.completion;
        answer_free(&cl[i].a);
        answer_free(&solo[i]);
        free(bodies[i]);
    }
    long steps = metric(port, "\nnvlm_engine_steps_total ") - steps0;
    CHECK(steps > 0 && steps < gen, "the 8 requests shared steps: %ld steps for %ld generated tokens", steps, gen);
    printf("8 concurrent requests (5 text, 3 image) equal their solo answers: %ld tokens in %ld engine steps\n", gen, steps);
}

/* Streams a long answer; closes the connection once `cut` is set. */
typedef struct streamer {
    pthread_t th;
    int port, fd;
    const char *body;
    volatile int cut, got;
} streamer;

static void *streamer_main(void *arg) {
    streamer *s = arg;
    s->fd = send_request(s->port, "POST", "/v1/chat/completions", NULL, s->body);
    char buf[4096];
    while (!s->cut) {
        ssize_t n = read(s->fd, buf, sizeof buf);
        if (n <= 0) break;
        s->got += (int)n;
    }
    close(s->fd);
    return NULL;
}

static void test_cancel_frees_pages(int port) {
    /* <|im_end|> is in the prompt: a strong repetition penalty keeps the answer from ending on its own */
    const char *body = "{\"max_tokens\":12000,\"stream\":true,\"repetition_penalty\":2,\"messages\":"
                       "[{\"role\":\"user\",\"content\":\"Write a very long story about the sea.\"}]}";
    streamer st[3];
    for (int i = 0; i < 3; i++) {
        st[i] = (streamer){.port = port, .body = body};
        pthread_create(&st[i].th, NULL, streamer_main, &st[i]);
    }
    long act = await_metric(port, "\nnvlm_active_requests ", 3);
    CHECK(act == 3, "3 streams running: %ld (received %d %d %d bytes)", act, st[0].got, st[1].got, st[2].got);
    /* ~700 tokens (44 pages) each before the cut: far more than the others add while it is noticed */
    for (int i = 0; i < 3000 && st[0].got < 150000; i++) usleep(10000);
    long cancelled0 = metric(port, "nvlm_chat_completions_total{finish=\"cancelled\"} ");
    long used0 = metric(port, "\nnvlm_kv_pages_used ");
    st[0].cut = 1;
    pthread_join(st[0].th, NULL);
    long cancelled = await_metric(port, "nvlm_chat_completions_total{finish=\"cancelled\"} ", cancelled0 + 1);
    long used1 = metric(port, "\nnvlm_kv_pages_used "), active = metric(port, "\nnvlm_active_requests ");
    CHECK(cancelled == cancelled0 + 1, "the stream whose client left was cancelled (%ld -> %ld)", cancelled0, cancelled);
    CHECK(active == 2, "the two others go on: %ld active", active);
    CHECK(used0 > 0 && used1 < used0, "its pages were freed at once: %ld -> %ld pages in use", used0, used1);
    printf("cancel mid-batch: KV pages in use %ld -> %ld while 2 streams go on\n", used0, used1);
    for (int i = 1; i < 3; i++) {
        st[i].cut = 1;
        pthread_join(st[i].th, NULL);
    }
    for (int i = 0; i < 300 && metric(port, "\nnvlm_active_requests ") != 0; i++) usleep(10000);
}

/* A KV cache of 64 positions: a prompt that cannot fit gets 503 kv_cache_full; small ones still work. */
static void test_kv_full(nvlm_model *m) {
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    o.kv_tokens = 64;
    nvlm_server *s = NULL;
    nvlm_err err = {0};
    CHECK(!nvlm_server_start(m, &o, &s, &err), "start: %s", err.msg);
    if (!s) return;
    int port = nvlm_server_port(s);
    char *big = image_req("reference/images/grid_448x448.png", "What is in the picture?", 4);
    resp r;
    char code[64];
    CHECK(!http(port, "POST", "/v1/chat/completions", NULL, big, &r) && r.status == 503 &&
          !strcmp(err_code(&r, code, sizeof code), "kv_cache_full") && strstr(r.body, "\"error\"") &&
          strstr(r.body, "--kv-size"), "a prompt over the KV size: %d %.300s", r.status, r.body ? r.body : "");
    resp_free(&r);
    char *small = text_body("Hi", 4, 0);
    answer a;
    ask(port, NULL, small, &a);
    CHECK(a.status == 200 && a.completion > 0, "a small request after it: %d", a.status);
    answer_free(&a);
    free(big), free(small);
    nvlm_server_stop(s);
}

int main(void) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 2};
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err)) {
        CHECK(0, "load: %s", err.msg);
        return check_done("test_serve_batch");
    }
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    nvlm_server *s = NULL;
    CHECK(!nvlm_server_start(m, &o, &s, &err), "start: %s", err.msg);
    if (s) {
        int port = nvlm_server_port(s);
        CHECK(metric(port, "\nnvlm_slots ") == 8, "8 slots by default");
        test_concurrent_equals_solo(port);
        CHECK(metric(port, "\nnvlm_kv_pages_free ") > 0 && metric(port, "\nnvlm_batch_size ") > 0, "engine gauges");
        nvlm_server_stop(s);
    }
    o.ctx = 16384; /* long answers: the streams are still going when one is cut */
    s = NULL;
    CHECK(!nvlm_server_start(m, &o, &s, &err), "start: %s", err.msg);
    if (s) {
        test_cancel_frees_pages(nvlm_server_port(s));
        nvlm_server_stop(s);
    }
    test_kv_full(m);
    nvlm_model_free(m);
    return check_done("test_serve_batch");
}
