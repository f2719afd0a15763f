/* Prometheus metrics of the server: request counts by status, tokens, latencies
 * (histograms), queue depth and busy slots. One mutex; updates are a few additions. */
#include "serve/serve_int.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double bucket_le[SERVE_NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                 1, 2.5, 5, 10, 30, 60, 120};

int serve_metrics_init(serve_metrics *m, int slots) {
    memset(m, 0, sizeof *m);
    m->slots = slots;
    return pthread_mutex_init(&m->mu, NULL) ? NVLM_E_INTERNAL : NVLM_OK;
}

void serve_metrics_destroy(serve_metrics *m) { pthread_mutex_destroy(&m->mu); }

void serve_metrics_status(serve_metrics *m, int status) {
    pthread_mutex_lock(&m->mu);
    if (status >= 100 && status < 600) m->by_status[status]++;
    pthread_mutex_unlock(&m->mu);
}

static void observe(serve_histogram *h, double v) {
    if (v < 0) return;
    int b = 0;
    while (b < SERVE_NBUCKETS && v > bucket_le[b]) b++;
    h->counts[b]++;
    h->sum += v;
    h->n++;
}

void serve_metrics_chat(serve_metrics *m, int fin, size_t prompt, size_t completion, size_t tiles, double latency,
                        double ttft, double queue_wait) {
    pthread_mutex_lock(&m->mu);
    if (fin >= 0 && fin < 4) m->chat_finished[fin]++;
    m->prompt_tokens += prompt;
    m->completion_tokens += completion;
    m->image_tiles += tiles;
    observe(&m->latency, latency);
    observe(&m->ttft, ttft);
    observe(&m->queue_wait, queue_wait);
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_gauges(serve_metrics *m, int queue_depth, int active) {
    pthread_mutex_lock(&m->mu);
    m->queue_depth = queue_depth;
    m->active = active;
    pthread_mutex_unlock(&m->mu);
}

void serve_metrics_engine(serve_metrics *m, long pages_used, long pages_free, long kv_bytes, int batch,
                          uint64_t steps, uint64_t tokens, double tok_per_s) {
    pthread_mutex_lock(&m->mu);
    m->kv_pages_used = pages_used, m->kv_pages_free = pages_free, m->kv_bytes = kv_bytes, m->batch_last = batch;
    m->steps = steps, m->batch_tokens = tokens, m->gen_tok_per_s = tok_per_s;
    pthread_mutex_unlock(&m->mu);
}

static int out(nvlm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int out(nvlm_buf *b, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) return NVLM_E_INTERNAL;
    return nvlm_buf_append(b, line, (size_t)n);
}

static int histogram(nvlm_buf *b, const char *name, const char *help, const serve_histogram *h) {
    int rc = out(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < SERVE_NBUCKETS && !rc; i++) {
        cum += h->counts[i];
        rc = out(b, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], (unsigned long long)cum);
    }
    if (!rc) rc = out(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->n);
    if (!rc) rc = out(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
    return rc;
}

static int counter(nvlm_buf *b, const char *name, const char *help, uint64_t v) {
    return out(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
}

static int gauge(nvlm_buf *b, const char *name, const char *help, long v) {
    return out(b, "# HELP %s %s\n# TYPE %s gauge\n%s %ld\n", name, help, name, name, v);
}

char *serve_metrics_text(serve_metrics *m) {
    static const char *fin[4] = {"stop", "length", "cancelled", "error"};
    nvlm_buf b = {0};
    pthread_mutex_lock(&m->mu);
    int rc = out(&b, "# HELP nvlm_requests_total HTTP requests answered, by status code.\n"
                     "# TYPE nvlm_requests_total counter\n");
    for (int s = 100; s < 600 && !rc; s++)
        if (m->by_status[s]) rc = out(&b, "nvlm_requests_total{code=\"%d\"} %llu\n", s, (unsigned long long)m->by_status[s]);
    if (!rc) rc = out(&b, "# HELP nvlm_chat_completions_total Chat completions ended, by how.\n"
                          "# TYPE nvlm_chat_completions_total counter\n");
    for (int i = 0; i < 4 && !rc; i++)
        rc = out(&b, "nvlm_chat_completions_total{finish=\"%s\"} %llu\n", fin[i], (unsigned long long)m->chat_finished[i]);
    if (!rc) rc = counter(&b, "nvlm_prompt_tokens_total", "Prompt tokens processed (image tokens included).", m->prompt_tokens);
    if (!rc) rc = counter(&b, "nvlm_completion_tokens_total", "Tokens generated.", m->completion_tokens);
    if (!rc) rc = counter(&b, "nvlm_image_tiles_total", "Image tiles encoded.", m->image_tiles);
    if (!rc) rc = histogram(&b, "nvlm_request_duration_seconds", "Chat completion time, arrival to last byte.", &m->latency);
    if (!rc) rc = histogram(&b, "nvlm_time_to_first_token_seconds", "Arrival to first generated token.", &m->ttft);
    if (!rc) rc = histogram(&b, "nvlm_queue_wait_seconds", "Time waiting for a slot.", &m->queue_wait);
    if (!rc) rc = gauge(&b, "nvlm_queue_depth", "Requests waiting for a slot.", m->queue_depth);
    if (!rc) rc = gauge(&b, "nvlm_active_requests", "Requests generating now.", m->active);
    if (!rc) rc = gauge(&b, "nvlm_slots", "Requests that may generate at once (--parallel).", m->slots);
    if (!rc) rc = gauge(&b, "nvlm_slots_busy", "Slots holding a request (encoding, prefilling or generating).", m->active);
    if (!rc) rc = gauge(&b, "nvlm_kv_pages_used", "KV cache pages in use (requests and kept prefixes).", m->kv_pages_used);
    if (!rc) rc = gauge(&b, "nvlm_kv_pages_free", "KV cache pages that may still be taken (--kv-size).", m->kv_pages_free);
    if (!rc) rc = gauge(&b, "nvlm_kv_bytes_allocated", "Bytes of KV pages allocated (in use or kept for reuse).", m->kv_bytes);
    if (!rc) rc = gauge(&b, "nvlm_batch_size", "Tokens in the last engine step.", m->batch_last);
    if (!rc) rc = counter(&b, "nvlm_engine_steps_total", "Engine steps (one batch each).", m->steps);
    if (!rc) rc = counter(&b, "nvlm_batch_tokens_total", "Tokens over all engine steps.", m->batch_tokens);
    if (!rc) rc = out(&b, "# HELP nvlm_generation_tokens_per_second Tokens generated per second, all requests, last second.\n"
                          "# TYPE nvlm_generation_tokens_per_second gauge\nnvlm_generation_tokens_per_second %.3f\n",
                      m->gen_tok_per_s);
    pthread_mutex_unlock(&m->mu);
    if (rc) {
        nvlm_buf_free(&b);
        return NULL;
    }
    return b.data;
}
