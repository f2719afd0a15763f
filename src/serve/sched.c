/* Scheduling: a FIFO queue of requests, `parallel` worker threads (the slots), and a FIFO
 * ticket lock on the model's compute that a request gives back after every unit of work the
 * engine polls between (an image tile, a 512-token prefill chunk, a generated token). The
 * model's thread pool runs one parallel loop at a time, so two chats may not compute at once;
 * with the ticket lock the slots take turns in arrival order, and a long image or prompt never
 * holds the others back for more than one tile or chunk. The same poll cancels: a job whose
 * client left, or that the server stops, ends at its next tile, chunk or token. */
#include "core/err.h"
#include "serve/serve_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double serve_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ ticket lock */

static void ticket_acquire(serve_ticket_lock *l) {
    pthread_mutex_lock(&l->mu);
    uint64_t t = l->next++;
    while (t != l->serving) pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

static void ticket_release(serve_ticket_lock *l) {
    pthread_mutex_lock(&l->mu);
    l->serving++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* Lets every waiter that arrived earlier go first; free when nobody waits. */
static void ticket_yield(serve_ticket_lock *l) {
    pthread_mutex_lock(&l->mu);
    if (l->next != l->serving + 1) {
        l->serving++;
        pthread_cond_broadcast(&l->cv);
        uint64_t t = l->next++;
        while (t != l->serving) pthread_cond_wait(&l->cv, &l->mu);
    }
    pthread_mutex_unlock(&l->mu);
}

/* -------------------------------------------------------------------- jobs */

int serve_job_new(serve_request *req, nvlm_chat *chat, serve_job **out) {
    serve_job *j = calloc(1, sizeof *j);
    *out = NULL;
    if (!j) return NVLM_E_NOMEM;
    if (pthread_mutex_init(&j->mu, NULL)) {
        free(j);
        return NVLM_E_INTERNAL;
    }
    if (pthread_cond_init(&j->cv, NULL)) {
        pthread_mutex_destroy(&j->mu);
        free(j);
        return NVLM_E_INTERNAL;
    }
    j->req = *req;
    memset(req, 0, sizeof *req);
    j->chat = chat;
    j->refs = 1;
    j->state = JOB_QUEUED;
    j->ts.stop = j->req.sampling.stop;
    j->ts.raw = j->req.raw;
    j->t_queued = serve_now();
    *out = j;
    return NVLM_OK;
}

void serve_job_release(serve_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    nvlm_chat_free(j->chat);
    serve_request_free(&j->req);
    nvlm_answer_free(&j->answer);
    for (int i = 0; i < j->n_extra; i++) nvlm_answer_free(&j->extra[i]);
    free(j->extra);
    free(j->lp_pending);
    nvlm_buf_free(&j->events);
    serve_textstream_free(&j->ts);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* Appends "data: <json>\n\n" (or an out-of-memory error event) and wakes the reader. */
static void sse_event(serve_job *j, char *json) {
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}";
    pthread_mutex_lock(&j->mu);
    const char *d = json ? json : oom;
    if (nvlm_buf_puts(&j->events, "data: ") || nvlm_buf_puts(&j->events, d) || nvlm_buf_puts(&j->events, "\n\n"))
        atomic_store(&j->cancelled, 1); /* cannot tell the client anything: end it */
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    free(json);
}

static void sse_done(serve_job *j) {
    pthread_mutex_lock(&j->mu);
    if (nvlm_buf_puts(&j->events, "data: [DONE]\n\n")) atomic_store(&j->cancelled, 1);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* A content chunk; with logprobs it carries those of the tokens generated since the last one
 * (flush: also when the text is empty, so that none is lost at the end). */
static void sse_content(serve_job *j, char *delta, size_t dlen, int flush) {
    if (j->n_pending && (dlen || flush) && !j->req.raw) {
        sse_event(j, serve_chunk_logprobs_json(j->id, j->model, j->created, delta ? delta : "", dlen, NULL, j->tok,
                                               j->lp_pending, j->n_pending));
        j->n_pending = 0;
    } else if (dlen) {
        sse_event(j, j->req.raw ? serve_text_chunk_json(j->id, j->model, j->created, delta, dlen, NULL)
                                : serve_chunk_json(j->id, j->model, j->created, NULL, delta, dlen, NULL));
    }
    free(delta);
}

/* The sampler's logprobs of each token, kept until its text goes out in a chunk. */
static void stash_logprobs(void *user, const nvlm_logprobs *lp) {
    serve_job *j = user;
    if (j->n_pending == j->cap_pending) {
        size_t cap = j->cap_pending ? 2 * j->cap_pending : 16;
        nvlm_logprobs *n = realloc(j->lp_pending, sizeof *n * cap);
        if (!n) {
            atomic_store(&j->cancelled, 1);
            return;
        }
        j->lp_pending = n, j->cap_pending = cap;
    }
    j->lp_pending[j->n_pending++] = *lp;
}

typedef struct token_ctx {
    serve_sched *s;
    serve_job *j;
} token_ctx;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    token_ctx *t = user;
    serve_job *j = t->j;
    (void)id;
    if (!j->n_generated++) {
        pthread_mutex_lock(&j->mu);
        j->t_first = serve_now();
        pthread_mutex_unlock(&j->mu);
    }
    if (j->req.stream) {
        char *delta = NULL;
        size_t dlen = 0;
        if (serve_textstream_push(&j->ts, text, len, &delta, &dlen)) atomic_store(&j->cancelled, 1);
        sse_content(j, delta, dlen, 0);
    }
    if (!atomic_load(&j->cancelled)) ticket_yield(&t->s->compute);
    if (!atomic_load(&j->cancelled)) return 0;
    j->cut = 1; /* ended here, short of its end: the reply must not say "stop" */
    return 1;
}

/* The engine's cancellation poll, called before every image tile, prefill chunk and token.
 * Before the first token it ends a cancelled job at once (NVLM_E_CANCELLED) and otherwise
 * gives the other slots their turn, so a long image encoding or prompt neither outlives its
 * client nor stalls the others' tokens for more than a tile or a chunk. Once tokens flow,
 * on_token does both and ends the answer with a finish reason instead. */
static int on_poll(void *user) {
    token_ctx *t = user;
    serve_job *j = t->j;
    if (j->n_generated) return 0;
    if (atomic_load(&j->cancelled)) return 1;
    ticket_yield(&t->s->compute);
    return atomic_load(&j->cancelled);
}

/* The stream's closing events: the rest of the answer, the finish reason, usage, [DONE]. */
static void stream_end(serve_job *j, int rc) {
    if (rc) {
        serve_error e;
        if (rc == NVLM_E_CANCELLED)
            serve_fail(&e, 503, "cancelled", NULL, "the request was cancelled before its answer began "
                                                   "(the server is shutting down)");
        else if (rc == NVLM_E_NUMERIC)
            serve_fail(&e, 500, "non_finite_values", NULL, "generation failed: %s", j->err.msg);
        else
            serve_fail(&e, 500, NULL, NULL, "generation failed: %s", j->err.msg);
        sse_event(j, serve_error_json(&e));
    } else {
        char *delta = NULL;
        size_t dlen = 0;
        if (serve_textstream_finish(&j->ts, j->answer.response, &delta, &dlen)) atomic_store(&j->cancelled, 1);
        const nvlm_answer *a = &j->answer; /* the closing stop token has no logprobs entry */
        if (j->n_pending && !a->finish_length && a->n_output && a->output_ids[a->n_output - 1] == j->lp_pending[j->n_pending - 1].chosen.id &&
            nvlm_tokenizer_is_special(j->tok, a->output_ids[a->n_output - 1]))
            j->n_pending--;
        sse_content(j, delta, dlen, 1);
        const char *fin = j->cut ? "cancelled" : j->answer.finish_length ? "length" : "stop";
        sse_event(j, j->req.raw ? serve_text_chunk_json(j->id, j->model, j->created, "", 0, fin)
                                : serve_chunk_json(j->id, j->model, j->created, NULL, NULL, 0, fin));
        if (j->cut) { /* and said as an error too, for clients that only look for one */
            serve_error e;
            serve_fail(&e, 503, "cancelled", NULL, "the answer was cut after %zu tokens: the server is shutting down",
                       j->n_generated);
            sse_event(j, serve_error_json(&e));
        }
        if (j->req.include_usage)
            sse_event(j, serve_usage_chunk_json(j->id, j->model, j->created, j->answer.n_prompt, j->answer.n_output));
    }
    sse_done(j);
}

static void run_job(serve_sched *s, serve_job *j) {
    pthread_mutex_lock(&j->mu);
    j->state = JOB_RUNNING;
    j->t_start = serve_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    int rc;
    if (atomic_load(&j->cancelled)) {
        rc = nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled before it started (client gone or server stopping)");
        if (j->req.stream) stream_end(j, rc);
    } else {
        if (j->req.stream && !j->req.raw)
            sse_event(j, serve_chunk_json(j->id, j->model, j->created, "assistant", "", 0, NULL));
        token_ctx t = {s, j};
        if (j->req.stream && j->req.sampling.logprobs) {
            j->tok = nvlm_model_tokenizer(s->model);
            j->req.sampling.on_logprobs = stash_logprobs, j->req.sampling.logprobs_user = j;
        }
        nvlm_chat_set_abort(j->chat, on_poll, &t);
        ticket_acquire(&s->compute);
        rc = j->req.raw ? nvlm_chat_complete(j->chat, j->req.question, &j->req.sampling, on_token, &t, &j->answer, &j->err)
                        : nvlm_chat_ask(j->chat, j->req.question, &j->req.sampling, on_token, &t, &j->answer, &j->err);
        if (!rc) rc = serve_extra_choices(j, on_token, &t);
        ticket_release(&s->compute);
        nvlm_chat_set_abort(j->chat, NULL, NULL);
        if (j->req.stream) stream_end(j, rc);
    }
    int cancelled = atomic_load(&j->cancelled);
    int fin = cancelled ? SERVE_FIN_CANCELLED : rc ? SERVE_FIN_ERROR
              : j->answer.finish_length ? SERVE_FIN_LENGTH : SERVE_FIN_STOP;
    pthread_mutex_lock(&j->mu);
    j->state = rc ? JOB_FAILED : JOB_DONE;
    j->t_end = serve_now();
    double ttft = j->t_first > 0 ? j->t_first - j->t_queued : -1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    size_t completion = j->answer.n_output; /* every choice's tokens */
    for (int i = 0; i < j->n_extra; i++) completion += j->extra[i].n_output;
    serve_metrics_chat(s->metrics, fin, j->answer.n_prompt, completion, j->n_tiles, j->t_end - j->t_queued, ttft,
                       j->t_start - j->t_queued);
}

/* --------------------------------------------------------------- workers */

typedef struct worker_arg {
    serve_sched *s;
    int index;
} worker_arg;

static void *worker_main(void *arg) {
    serve_sched *s = ((worker_arg *)arg)->s;
    int me = ((worker_arg *)arg)->index;
    free(arg);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        serve_job *j = s->head;
        if (!j) {
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->depth--;
        s->active++;
        s->running[me] = j;
        serve_metrics_gauges(s->metrics, s->depth, s->active);
        pthread_mutex_unlock(&s->mu);
        run_job(s, j);
        pthread_mutex_lock(&s->mu);
        s->active--;
        s->running[me] = NULL;
        serve_metrics_gauges(s->metrics, s->depth, s->active);
        pthread_mutex_unlock(&s->mu);
        serve_job_release(j);
    }
}

int serve_sched_start(serve_sched *s, nvlm_model *m, serve_metrics *metrics, int parallel, int max_queue,
                      nvlm_err *err) {
    memset(s, 0, sizeof *s);
    s->model = m;
    s->metrics = metrics;
    s->max_queue = max_queue;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->compute.mu, NULL);
    pthread_cond_init(&s->compute.cv, NULL);
    s->workers = calloc((size_t)parallel, sizeof *s->workers);
    s->running = calloc((size_t)parallel, sizeof *s->running);
    if (!s->workers || !s->running) {
        serve_sched_stop(s);
        serve_sched_destroy(s);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < parallel; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){s, i};
        if (!a || pthread_create(&s->workers[i], NULL, worker_main, a)) {
            free(a);
            serve_sched_stop(s);
            serve_sched_destroy(s);
            return nvlm_fail(err, NVLM_E_INTERNAL, "cannot start worker thread %d", i);
        }
        s->n_workers++;
    }
    return NVLM_OK;
}

int serve_sched_submit(serve_sched *s, serve_job *j) {
    pthread_mutex_lock(&s->mu);
    int rc = s->stopping ? -2 : s->depth >= s->max_queue ? -1 : 0;
    if (!rc) {
        pthread_mutex_lock(&j->mu);
        j->refs++;
        pthread_mutex_unlock(&j->mu);
        j->next = NULL;
        if (s->tail) s->tail->next = j;
        else s->head = j;
        s->tail = j;
        s->depth++;
        serve_metrics_gauges(s->metrics, s->depth, s->active);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void serve_sched_cancel(serve_sched *s, serve_job *j) {
    atomic_store(&j->cancelled, 1);
    pthread_mutex_lock(&s->mu);
    serve_job **p = &s->head, *prev = NULL;
    while (*p && *p != j) prev = *p, p = &(*p)->next;
    int queued = *p != NULL;
    if (queued) {
        *p = j->next;
        if (s->tail == j) s->tail = prev;
        j->next = NULL;
        s->depth--;
        serve_metrics_gauges(s->metrics, s->depth, s->active);
    }
    pthread_mutex_unlock(&s->mu);
    if (!queued) return; /* running: the engine's poll or on_token ends it; done: nothing to do */
    pthread_mutex_lock(&j->mu);
    nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled while queued");
    j->state = JOB_FAILED;
    j->t_end = serve_now();
    double waited = j->t_end - j->t_queued;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    serve_metrics_chat(s->metrics, SERVE_FIN_CANCELLED, 0, 0, 0, waited, -1, waited);
    serve_job_release(j); /* the queue's reference */
}

void serve_sched_stop(serve_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    for (serve_job *j = s->head; j; j = j->next) atomic_store(&j->cancelled, 1);
    for (int i = 0; s->running && i < s->n_workers; i++)
        if (s->running[i]) atomic_store(&s->running[i]->cancelled, 1);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    s->n_workers = 0;
}

void serve_sched_destroy(serve_sched *s) {
    free(s->workers);
    free(s->running);
    pthread_cond_destroy(&s->compute.cv);
    pthread_mutex_destroy(&s->compute.mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    memset(s, 0, sizeof *s);
}
