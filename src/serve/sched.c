/* Scheduling: continuous batching. One engine thread owns the engine (its KV store holds
 * every request's pages) and runs steps: each step decodes one token of every generating
 * request plus a budget of prompt tokens of the requests being prefilled, after encoding a
 * ViT tile of a new image, so neither a long prompt nor an image stalls the others for more
 * than a step (docs/server.md, docs/engine.md). Up to `parallel` requests hold a slot; further
 * ones wait in a FIFO queue. Every token's values are the same whatever else is in its batch
 * (docs/engine.md), so a greedy answer is the same alone or concurrent. A request whose client
 * left, or that the server stops, ends at the next step and its pages are freed at once.
 * Finished requests leave their sequence's pages behind as a prefix (system prompt, images by
 * a hash of their bytes, history) that later requests fork instead of recomputing. */
#include "core/err.h"
#include "generate/chat_internal.h"
#include "generate/layout_xh.h"
#include "serve/serve_int.h"
#include "dist/serve_dist.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    /* Prompt tokens per step. A step of 64 prompt tokens costs ~3 generation steps, of 1 token
     * ~3 too (the packed product converts every weight once per call), of 256 ~10: 64 keeps a
     * newcomer's wait short for ~20% more prompt time than 256 (measured on Qwen2-0.5B, BF16). */
    PREFILL_BUDGET = 64,
    /* Prompt tokens per step when every prompt in it is short (a burst of new requests, each
     * within PREFILL_BUDGET): each call of the packed product costs ~165 ms of CPU before its
     * first token, so 8 prompts of 25 tokens take one step instead of four (no long prompt is
     * cut for them, and a newcomer waits one step as before). */
    SHORT_BUDGET = 256,
    TILES_PER_STEP = 1,    /* ViT tiles per step while others generate */
    PREFIX_MIN = 16,       /* shorter common prefixes are recomputed */
};

double serve_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* -------------------------------------------------------------------- jobs */

/* Whether the engine thread ends the job: under mpirun the flag as all ranks saw it at the
 * step's start (serve_dist_lead), so that every rank ends it at the same step. */
static int job_cancelled(serve_job *j) { return j->dist ? j->cancel_seen : atomic_load(&j->cancelled); }

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
    serve_dist_req_free(j->dist_req);
    free(j->keys);
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

/* The stream's closing events: the rest of the answer, the finish reason, usage, [DONE]. */
static void stream_end(serve_job *j, int rc) {
    if (rc) {
        serve_error e;
        if (rc == NVLM_E_CANCELLED)
            serve_fail(&e, 503, "cancelled", NULL, "the request was cancelled before its answer began "
                                                   "(the server is shutting down)");
        else if (rc == NVLM_E_NUMERIC)
            serve_fail(&e, 500, "non_finite_values", NULL, "generation failed: %s", j->err.msg);
        else if (rc == NVLM_E_BUSY)
            serve_fail(&e, 503, "kv_cache_full", NULL, "%s", j->err.msg);
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


static int on_token(void *user, int32_t id, const char *text, size_t len) {
    serve_job *j = user;
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
    if (!job_cancelled(j)) return 0;
    j->cut = 1; /* ended here, short of its end: the reply must not say "stop" */
    return 1;
}

/* ------------------------------------------------------------ prefix cache */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull, x ^= x >> 33;
    return x;
}

/* The prompt as reuse keys: token ids, and for the image-context positions the hash of the
 * image's bytes and the row within it (two images with the same placeholder tokens differ).
 * Only NVLM-D: the X/H decoder state also depends on the cross-attention memory. */
static int prompt_keys(serve_sched *s, serve_job *j, const int32_t *ids, size_t n) {
    nvlm_model *m = s->model;
    free(j->keys);
    j->keys = NULL, j->n_keys = 0;
    if (m->cfg.arch != NVLM_ARCH_D || (j->req.n_images && !j->req.image_hash)) return 0;
    j->keys = malloc(sizeof *j->keys * (n ? n : 1));
    if (!j->keys) return -1;
    int img = 0, first = 0;
    size_t row = 0, rows = j->req.n_images ? (size_t)nvlm_layout_decoder_rows(m, serve_image_tiles(m, &j->req.images[0], s->max_tiles), &first) : 0;
    uint64_t ih = j->req.n_images ? j->req.image_hash[0] : 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != m->id_img_context) {
            j->keys[i] = (uint64_t)(uint32_t)ids[i];
            continue;
        }
        while (row >= rows && img + 1 < j->req.n_images) {
            img++, row = 0;
            rows = (size_t)nvlm_layout_decoder_rows(m, serve_image_tiles(m, &j->req.images[img], s->max_tiles), &first);
            ih = j->req.image_hash[img];
        }
        j->keys[i] = mix64(ih + row++) | 1ull << 63;
    }
    j->n_keys = n;
    return 0;
}

static void prefix_drop(serve_sched *s, int i) {
    nvlm_kv_seq_free(nvlm_engine_kv(s->engine), s->prefix[i].seq);
    free(s->prefix[i].keys);
    s->prefix[i] = s->prefix[--s->n_prefix];
}

/* Frees the least recently used prefix; 0 when there was none. */
static int prefix_evict(serve_sched *s) {
    if (!s->n_prefix) return 0;
    int lru = 0;
    for (int i = 1; i < s->n_prefix; i++)
        if (s->prefix[i].used < s->prefix[lru].used) lru = i;
    prefix_drop(s, lru);
    return 1;
}

/* Keeps a finished request's cache (prompt and answer positions) as a prefix. */
static void prefix_keep(serve_sched *s, serve_job *j) {
    size_t n_cached = 0;
    const int32_t *cached = nvlm_chat_cached(j->chat, &n_cached);
    if (!j->keys || n_cached < PREFIX_MIN || n_cached < j->n_keys) return;
    uint64_t *keys = malloc(sizeof *keys * n_cached);
    if (!keys) return;
    memcpy(keys, j->keys, sizeof *keys * j->n_keys);
    for (size_t i = j->n_keys; i < n_cached; i++) keys[i] = (uint64_t)(uint32_t)cached[i];
    int seq;
    nvlm_err e = {0};
    if (nvlm_kv_seq_fork(nvlm_engine_kv(s->engine), nvlm_chat_seq(j->chat), (int)n_cached, &seq, &e)) {
        free(keys);
        return;
    }
    if (s->n_prefix == SERVE_PREFIXES) prefix_evict(s);
    s->prefix[s->n_prefix++] = (serve_prefix){.seq = seq, .keys = keys, .n = n_cached, .used = ++s->clock};
}

/* Forks the longest cached prefix of the job's prompt into its chat. */
static void prefix_reuse(serve_sched *s, serve_job *j) {
    size_t n_prompt;
    const int32_t *ids = nvlm_chat_prompt(j->chat, &n_prompt);
    if (!ids || prompt_keys(s, j, ids, n_prompt) || !j->keys) return;
    int best = -1;
    size_t best_n = 0;
    for (int i = 0; i < s->n_prefix; i++) {
        size_t k = 0;
        while (k < s->prefix[i].n && k < n_prompt && s->prefix[i].keys[k] == j->keys[k]) k++;
        if (k > best_n) best = i, best_n = k;
    }
    if (best_n >= n_prompt) best_n = n_prompt - 1; /* the last position is recomputed for its logits */
    if (best < 0 || best_n < PREFIX_MIN) return;
    int seq;
    nvlm_err e = {0};
    if (nvlm_kv_seq_fork(nvlm_engine_kv(s->engine), s->prefix[best].seq, (int)best_n, &seq, &e)) return;
    if (!nvlm_chat_adopt_prefix(j->chat, seq, best_n)) {
        nvlm_kv_seq_free(nvlm_engine_kv(s->engine), seq);
        return;
    }
    s->prefix[best].used = ++s->clock;
    j->n_reused = best_n;
}

/* Requests that arrive together often share a prefix (the system prompt, the same image): one
 * waits while a request in a lower slot (no cycles) computes the common part, then forks its
 * pages. 1: wait this step. */
static int wait_for_leader(serve_sched *s, int i) {
    serve_job *j = s->slots[i];
    size_t n_prompt;
    if (!j->keys || j->prefill_started || !nvlm_chat_prompt(j->chat, &n_prompt)) return 0;
    size_t best = 0;
    int lead = -1;
    for (int k = 0; k < i; k++) {
        const serve_job *o = s->slots[k];
        if (!o || o->phase != PHASE_RUN || !o->keys) continue;
        size_t n = 0;
        while (n < o->n_keys && n < j->n_keys && o->keys[n] == j->keys[n]) n++;
        if (n > best) best = n, lead = k;
    }
    if (best >= n_prompt) best = n_prompt - 1; /* the last position is recomputed for its logits */
    if (lead < 0 || best < PREFIX_MIN || best <= j->n_reused) return 0;
    size_t have = 0;
    nvlm_chat_cached(s->slots[lead]->chat, &have);
    if (have < best) return 1; /* the leader computes it first */
    int seq;
    nvlm_err e = {0};
    if (nvlm_kv_seq_fork(nvlm_engine_kv(s->engine), nvlm_chat_seq(s->slots[lead]->chat), (int)best, &seq, &e)) return 0;
    if (!nvlm_chat_adopt_prefix(j->chat, seq, best)) nvlm_kv_seq_free(nvlm_engine_kv(s->engine), seq);
    else j->n_reused = best;
    return 0;
}

/* ------------------------------------------------------------ job ends */

static void metrics_engine(serve_sched *s) {
    nvlm_kv_stats ks;
    nvlm_engine_stats es;
    nvlm_kvstore_stats(nvlm_engine_kv(s->engine), &ks);
    nvlm_engine_stats_get(s->engine, &es);
    double now = serve_now();
    if (now - s->rate_t0 >= 1.0) { /* tokens generated per second over the last second or more */
        s->rate = (double)(es.gen_tokens - s->rate_tok0) / (now - s->rate_t0);
        s->rate_t0 = now, s->rate_tok0 = es.gen_tokens;
    }
    serve_metrics_engine(s->metrics, (long)ks.pages_used, (long)ks.pages_free, (long)ks.bytes_allocated, es.last_batch, es.steps,
                         es.tokens, s->rate);
}

/* Ends a job (rc 0: its answer is complete), frees its pages, wakes its reader. */
static void end_job(serve_sched *s, int slot, int rc) {
    serve_job *j = s->slots[slot];
    if (!rc) rc = nvlm_chat_finish(j->chat, j->n_extra < j->n_begun ? &j->extra[j->n_extra] : &j->answer, &j->err);
    else nvlm_chat_cancel_ask(j->chat);
    if (!rc && j->n_extra < j->n_begun) j->n_extra++;
    if (!rc && !job_cancelled(j)) prefix_keep(s, j); /* a cancelled one frees its pages now */
    nvlm_chat_release_cache(j->chat);
    /* the slot and the gauges first: a client that has its answer sees the server as it is */
    pthread_mutex_lock(&s->mu);
    s->slots[slot] = NULL;
    s->active--;
    serve_metrics_gauges(s->metrics, s->depth, s->active);
    pthread_mutex_unlock(&s->mu);
    metrics_engine(s);
    int cancelled = job_cancelled(j);
    int fin = cancelled ? SERVE_FIN_CANCELLED : rc ? SERVE_FIN_ERROR
              : j->answer.finish_length ? SERVE_FIN_LENGTH : SERVE_FIN_STOP;
    double t_end = serve_now(), ttft = j->t_first > 0 ? j->t_first - j->t_queued : -1;
    size_t completion = j->answer.n_output; /* every choice's tokens */
    for (int i = 0; i < j->n_extra; i++) completion += j->extra[i].n_output;
    serve_metrics_chat(s->metrics, fin, j->answer.n_prompt, completion, j->n_tiles, t_end - j->t_queued, ttft,
                       j->t_start - j->t_queued);
    if (j->req.stream) stream_end(j, rc);
    pthread_mutex_lock(&j->mu);
    j->state = rc ? JOB_FAILED : JOB_DONE;
    j->t_end = t_end;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    serve_job_release(j);
}

/* n > 1: the answer just complete becomes its choice and the next choice begins on the same
 * conversation, in this slot: the question asked again (a completion's prompt completed again)
 * with seed + k, so the prompt's cache and the encoded images are reused and only its last
 * position is computed again; it then takes steps like any request. 1 when one began; 0 when
 * the job is to end (*rc: how). */
static int next_choice(serve_job *j, int *rc) {
    *rc = NVLM_OK;
    int k = j->n_begun + 1; /* the choice to begin */
    if (k >= j->req.n || j->cut || job_cancelled(j)) return 0;
    if (!j->extra && !(j->extra = calloc((size_t)j->req.n - 1, sizeof *j->extra))) {
        *rc = nvlm_fail(&j->err, NVLM_E_NOMEM, "out of memory");
        return 0;
    }
    *rc = nvlm_chat_finish(j->chat, k == 1 ? &j->answer : &j->extra[k - 2], &j->err);
    if (*rc) return 0;
    j->n_extra = k - 1, j->n_begun = k - 1;
    nvlm_sampling sm = j->req.sampling;
    sm.seed = j->req.sampling.seed + (uint64_t)k;
    *rc = j->req.raw ? nvlm_chat_begin_raw(j->chat, j->req.question, &sm, on_token, j, &j->err)
                     : nvlm_chat_begin_again(j->chat, &sm, on_token, j, &j->err);
    if (*rc) return 0;
    j->n_begun = k;
    j->phase = PHASE_ENCODE; /* nothing to encode: builds the prompt, keeps the cache */
    return 1;
}

/* A choice's answer is complete (rc 0) or failed: the next choice, or the job's end. */
static void choice_done(serve_sched *s, int slot, int rc) {
    int r2 = NVLM_OK;
    if (!rc && next_choice(s->slots[slot], &r2)) return;
    /* the last choice's answer is finished by end_job; a failed next_choice ends the job here */
    if (r2) {
        serve_job *j = s->slots[slot];
        nvlm_chat_cancel_ask(j->chat);
        end_job(s, slot, r2);
        return;
    }
    end_job(s, slot, rc);
}

/* A cancelled job: an answer under way ends as it stands, marked cut (finish_reason
 * "cancelled": never a cut answer said complete); one not begun fails as cancelled. */
static void end_cancelled(serve_sched *s, int slot) {
    serve_job *j = s->slots[slot];
    if (nvlm_chat_generating(j->chat) && j->n_generated) {
        j->cut = 1;
        end_job(s, slot, NVLM_OK);
        return;
    }
    end_job(s, slot, nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled (client gone or server stopping)"));
}

/* ------------------------------------------------------------ the steps */

/* Moves queued jobs into free slots; waits while there is nothing to do. 0: stop. */
static int admit(serve_sched *s) {
    pthread_mutex_lock(&s->mu);
    for (;;) {
        for (int i = 0; i < s->parallel && s->head; i++) {
            if (s->slots[i]) continue;
            serve_job *j = s->head;
            s->head = j->next;
            if (!s->head) s->tail = NULL;
            s->depth--;
            s->active++;
            s->slots[i] = j;
            j->phase = PHASE_NEW;
        }
        serve_metrics_gauges(s->metrics, s->depth, s->active);
        if (s->active) break;
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        pthread_cond_wait(&s->cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return 1;
}

static void start_job(serve_sched *s, int slot) {
    serve_job *j = s->slots[slot];
    pthread_mutex_lock(&j->mu);
    j->state = JOB_RUNNING;
    j->t_start = serve_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    j->phase = PHASE_ENCODE;
    if (job_cancelled(j)) {
        end_job(s, slot, nvlm_fail(&j->err, NVLM_E_CANCELLED, "cancelled before it started (client gone or server stopping)"));
        return;
    }
    if (j->req.stream && !j->req.raw)
        sse_event(j, serve_chunk_json(j->id, j->model, j->created, "assistant", "", 0, NULL));
    if (j->req.stream && j->req.sampling.logprobs) {
        j->tok = nvlm_model_tokenizer(s->model);
        j->req.sampling.on_logprobs = stash_logprobs, j->req.sampling.logprobs_user = j;
    }
    int rc = nvlm_chat_use_engine(j->chat, s->engine, &j->err);
    if (!rc) rc = j->req.raw ? nvlm_chat_begin_raw(j->chat, j->req.question, &j->req.sampling, on_token, j, &j->err)
                             : nvlm_chat_begin(j->chat, j->req.question, &j->req.sampling, on_token, j, &j->err);
    if (rc) end_job(s, slot, rc);
}

/* Reserves the job's KV pages for k more positions, dropping cached prefixes if that makes
 * room; the job fails with NVLM_E_BUSY (HTTP 503) when even that is not enough. */
static int reserve(serve_sched *s, serve_job *j, int k) {
    nvlm_kvstore *kv = nvlm_engine_kv(s->engine);
    for (;;) {
        int rc = nvlm_kv_seq_reserve(kv, nvlm_chat_seq(j->chat), k, &j->err);
        if (rc != NVLM_E_BUSY || !prefix_evict(s)) return rc;
    }
}

/* Prompt tokens a slot still has to run (SIZE_MAX: none running). */
static size_t prompt_left(const serve_sched *s, int i) {
    const serve_job *j = s->slots[i];
    if (!j || j->phase != PHASE_RUN || nvlm_chat_generating(j->chat)) return (size_t)-1;
    return nvlm_chat_prompt_left(j->chat);
}

/* One step: tiles, then the batch (generated tokens first, then prompt tokens within the
 * budget, the fewest prompt tokens left first), decode, and each job's tokens. */
static void step(serve_sched *s) {
    for (int i = 0; i < s->parallel; i++) {
        serve_job *j = s->slots[i];
        if (!j) continue;
        if (j->phase == PHASE_NEW) start_job(s, i);
        else if (job_cancelled(j)) end_cancelled(s, i);
    }
    /* ViT tiles: a few per step, so that generation goes on between them */
    for (int i = 0, tiles = TILES_PER_STEP; i < s->parallel; i++) { /* a tile at a time: cancellable */
        serve_job *j = s->slots[i];
        if (!j || j->phase != PHASE_ENCODE) continue;
        int before = nvlm_chat_tiles_pending(j->chat), done = 0;
        int rc = nvlm_chat_encode_step(j->chat, tiles, &done, &j->err);
        if (rc) {
            end_job(s, i, rc);
            continue;
        }
        if (tiles > 0) tiles -= before - nvlm_chat_tiles_pending(j->chat);
        if (!done) continue;
        j->phase = PHASE_RUN;
        prefix_reuse(s, j);
    }
    nvlm_batch *b = &s->batch;
    nvlm_batch_clear(b);
    int budget = PREFILL_BUDGET;
    for (int i = 0; i < s->parallel; i++)
        if (s->slots[i]) s->slots[i]->in_step = 0;
    int order[s->parallel > 0 ? s->parallel : 1]; /* prompts: the fewest tokens left first, so a short
                                                 * request is not held behind a long image prompt */
    for (int i = 0; i < s->parallel; i++) order[i] = i;
    for (int i = 1; i < s->parallel; i++)
        for (int k = i; k > 0 && prompt_left(s, order[k]) < prompt_left(s, order[k - 1]); k--) {
            int t = order[k];
            order[k] = order[k - 1], order[k - 1] = t;
        }
    /* a new short prompt does not share its step with a long one: its first token comes after
     * one cheap step, not after a chunk of somebody's image */
    int short_first = prompt_left(s, order[0]) <= PREFILL_BUDGET;
    if (short_first) budget = SHORT_BUDGET;
    for (int pass = 0; pass < 2; pass++) /* generating jobs, then prefilling ones */
        for (int oi = 0; oi < s->parallel; oi++) {
            int i = pass ? order[oi] : oi;
            serve_job *j = s->slots[i];
            if (!j || j->phase != PHASE_RUN || nvlm_chat_generating(j->chat) != !pass) continue;
            if (pass && wait_for_leader(s, i)) continue;
            size_t left = nvlm_chat_prompt_left(j->chat);
            if (pass && short_first && left > PREFILL_BUDGET) break; /* a short prompt takes a cheap step */
            int k = pass ? (int)(left < (size_t)budget ? left : (size_t)budget) : 1;
            if (k > b->cap - b->n_tok) k = b->cap - b->n_tok;
            if (k <= 0) continue;
            int rc = reserve(s, j, k);
            if (!rc) rc = nvlm_chat_add_to_batch(j->chat, b, k, &j->err);
            if (rc < 0) {
                end_job(s, i, rc);
                continue;
            }
            j->in_step = rc;
            if (pass) budget -= rc, j->prefill_started = 1;
        }
    if (!b->n_tok) return;
    nvlm_err err = {0};
    int rc = nvlm_decode(s->engine, b, 0, s->model->cfg.llm.num_layers, NULL, s->logits, &err);
    const int V = s->model->cfg.llm.vocab_size;
    int mark = 0;
    for (int i = 0; i < b->n_tok; i++) { /* the jobs in batch order: their marked rows */
        if (i && b->seq[i] == b->seq[i - 1]) continue;
        int slot = -1;
        for (int k = 0; k < s->parallel; k++)
            if (s->slots[k] && s->slots[k]->in_step && nvlm_chat_seq(s->slots[k]->chat) == b->seq[i]) slot = k;
        int n = 0, marked = 0;
        while (i + n < b->n_tok && b->seq[i + n] == b->seq[i]) marked |= b->logits[i + n], n++;
        const float *lg = marked ? s->logits + (size_t)mark * V : NULL;
        mark += marked;
        if (slot < 0) continue;
        serve_job *j = s->slots[slot];
        j->in_step = 0;
        if (rc) {
            j->err = err;
            end_job(s, slot, rc);
            continue;
        }
        int finished = 0, r2 = nvlm_chat_step_done(j->chat, lg, &finished, &j->err);
        if (r2 || finished) choice_done(s, slot, r2);
    }
    metrics_engine(s);
}

static void *engine_main(void *arg) {
    serve_sched *s = arg;
    if (serve_dist_follower(s)) { /* mpirun, rank > 0: rank 0's admissions, cancels and stop */
        while (serve_dist_follow(s)) step(s);
        return NULL;
    }
    while (admit(s)) {
        serve_dist_lead(s); /* mpirun: the step's new jobs and cancels to the other ranks */
        step(s);
    }
    serve_dist_lead_stop(s);
    return NULL;
}

int serve_sched_start(serve_sched *s, nvlm_model *m, serve_metrics *metrics, const nvlm_serve_options *o,
                      nvlm_err *err) {
    memset(s, 0, sizeof *s);
    s->model = m;
    s->metrics = metrics;
    s->max_queue = o->max_queue > 0 ? o->max_queue : 256;
    s->parallel = o->parallel > 0 ? o->parallel : 8;
    s->max_tiles = o->max_tiles;
    s->rate_t0 = serve_now();
    s->dist = serve_dist_of(m);
    s->dist_defaults = o->defaults;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int ctx = o->ctx > 0 ? o->ctx : m->cfg.llm.max_position_embeddings;
    nvlm_engine_opts eo = {
        .max_batch = SHORT_BUDGET + s->parallel,
        .gen_streams = s->parallel,
        .kv_bytes = o->kv_mib << 20,
        .kv_tokens = o->kv_tokens ? o->kv_tokens : o->kv_mib ? 0 : (size_t)ctx * (size_t)s->parallel,
    };
    int rc = nvlm_engine_new(m, &eo, &s->engine, err);
    if (!rc) rc = nvlm_batch_init(&s->batch, eo.max_batch, m->cfg.llm.hidden_size, err);
    s->slots = calloc((size_t)s->parallel, sizeof *s->slots);
    s->logits = malloc(sizeof(float) * (size_t)s->parallel * (size_t)m->cfg.llm.vocab_size);
    if (!rc && (!s->slots || !s->logits)) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc && pthread_create(&s->thread, NULL, engine_main, s))
        rc = nvlm_fail(err, NVLM_E_INTERNAL, "cannot start the engine thread");
    if (rc) {
        serve_sched_destroy(s);
        return rc;
    }
    s->running = 1;
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
    if (!queued) return; /* running: the next step ends it and frees its pages; done: nothing to do */
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
    for (int i = 0; s->slots && i < s->parallel; i++)
        if (s->slots[i]) atomic_store(&s->slots[i]->cancelled, 1);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->running) pthread_join(s->thread, NULL);
    s->running = 0;
}

void serve_sched_destroy(serve_sched *s) {
    while (s->engine && s->n_prefix) prefix_drop(s, 0);
    nvlm_batch_free(&s->batch);
    nvlm_engine_free(s->engine);
    free(s->slots);
    free(s->logits);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    memset(s, 0, sizeof *s);
}
