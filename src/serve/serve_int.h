/* serve_int.h - the pieces of the server, each in its own file: base64, request parsing and
 * validation, prompt length, JSON replies, the streamed-text filter, metrics, the scheduler.
 * Internal (the tests use it directly). */
#ifndef NVLM_SERVE_SERVE_INT_H
#define NVLM_SERVE_SERVE_INT_H
#include "engine/engine.h"
#include "generate/prompt.h"
#include "serve/serve.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ------------------------------------------------------------ base64.c */

/* Strict standard base64 (RFC 4648 alphabet; ASCII whitespace ignored; '=' padding optional
 * but exact when present). *out is malloc'ed. Returns 0, or -1 on bad input/-2 out of memory. */
int serve_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len);

/* ------------------------------------------------------------- error.c */

/* An error as OpenAI reports it: HTTP status, type, code, param, message. */
typedef struct serve_error {
    int status;
    const char *type;   /* "invalid_request_error", "authentication_error", "server_error", ... */
    const char *code;   /* NULL or a short code ("invalid_api_key", "context_length_exceeded") */
    char param[96];     /* "" or the offending field ("messages[1].content[0].image_url") */
    char message[1200];
} serve_error;

/* Fills e and returns -1, so parse paths read `return serve_fail(e, 400, ...)`. */
int serve_fail(serve_error *e, int status, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ------------------------------------------------------------- fetch.c */

typedef struct serve_fetch_opts {
    size_t max_bytes;
    int timeout_ms;              /* the whole transfer, redirects included */
    int max_redirects;
    int allow_private;           /* 1: private and loopback addresses allowed */
} serve_fetch_opts;

/* Fetches an http(s) URL into *data (malloc'ed). 0; -1 with the reason in why (refused, too
 * big, too slow, too many redirects, not 200, ...); -2 out of memory or no HTTP client. */
int serve_fetch_url(const char *url, const serve_fetch_opts *o, uint8_t **data, size_t *len, char *why, size_t why_len);
/* 1 for loopback, private, link-local, shared, multicast, reserved or unspecified addresses. */
struct sockaddr;
int serve_private_address(const struct sockaddr *sa);
/* libcurl's process-wide setup (reference counted), before any thread fetches. */
int serve_fetch_global_init(void);
void serve_fetch_global_cleanup(void);

/* ----------------------------------------------------------- request.c */

typedef struct serve_limits {
    size_t max_image_bytes;
    uint64_t max_image_pixels;
    int max_images;
    const char *local_image_dir;
    int allow_remote;            /* http(s) image URLs fetched (with fetch below) */
    serve_fetch_opts fetch;
    /* a follower rank of `mpirun nvlm serve` (src/dist/serve_dist.c): the bytes of the images
     * rank 0 read, in order (max_images of them), taken instead of what the URLs name */
    uint8_t *const *given;
    const size_t *given_len;
} serve_limits;

/* One image of a request as sent (encoded), with what its header says. */
typedef struct serve_image_src {
    uint8_t *data;
    size_t len;
    uint64_t width, height;      /* from the header (GIF: a hint) */
    int exact;                   /* 1: the decoder allocates exactly width x height */
    int format;                  /* img_format */
    char param[96];              /* the request field it came from, for errors */
} serve_image_src;

/* A chat completion request reduced to what nvlm_chat needs. */
typedef struct serve_request {
    char *model;                 /* NULL when absent */
    char *system;                /* NULL: the default system message */
    nvlm_turn *history;          /* earlier (user, assistant) pairs */
    int n_history;
    char *question;              /* the last user message */
    nvlm_image *images;          /* every image of the conversation, in order: sizes only
                                  * (rgb NULL) until serve_make_chat decodes them */
    serve_image_src *image_src;  /* [n_images]: the encoded images */
    uint64_t *image_hash;        /* [n_images]: a hash of each decoded image's pixels (prefix
                                  * reuse across requests), set by serve_make_chat */
    int n_images;
    nvlm_sampling sampling;      /* stop points into stop[], grammar to grammar, logit_bias to bias */
    char **stop;                 /* NULL-terminated */
    int max_tokens;              /* 0: not given */
    int stream, include_usage;
    nvlm_grammar *grammar;       /* response_format json_object / json_schema, else NULL */
    nvlm_logit_bias *bias;
    int n;                       /* choices, 1 to SERVE_MAX_N */
    int max_tiles;               /* max_dynamic_patch (body or mm_processor_kwargs); 0: not given */
    int raw;                     /* /v1/completions: question is the whole prompt, no template */
} serve_request;

enum { SERVE_MAX_N = 8, SERVE_MAX_TILES = 40 };

/* Parses and validates a request body; defaults come from *defaults (stop is ignored). */
int serve_parse_request(const char *body, size_t len, const serve_limits *lim, const nvlm_sampling *defaults,
                        serve_request *out, serve_error *e);
void serve_request_free(serve_request *r);
/* A /v1/completions body: "prompt" (a string) is the raw prompt; images are refused. */
int serve_parse_completion(const char *body, size_t len, const nvlm_sampling *defaults, serve_request *out,
                           serve_error *e);

/* ------------------------------------------------------------ prompt.c */

/* Tiles of one image under the model's config and the tile bound (0: the config's). */
int serve_image_tiles(nvlm_model *m, const nvlm_image *img, int max_tiles);
/* A hash of an image's size and RGB bytes. */
uint64_t serve_image_hash(const nvlm_image *img);
/* The prompt ids chat() builds for the request's conversation (images expanded). */
int serve_prompt_ids(nvlm_model *m, const serve_request *r, int max_tiles, int32_t **ids, size_t *n,
                     nvlm_err *err);
/* How serve_make_chat decodes: the pixel limit, and a check made before each image. */
typedef struct serve_image_ctl {
    uint64_t max_pixels;
    int (*gone)(void *user);     /* NULL, or non-zero when the client has left: stop decoding */
    void *user;
} serve_image_ctl;
/* A new chat holding the request's system message, history and images (history marked).
 * The images are decoded one at a time, each straight into the chat's 8-bit tiles, its RGB
 * freed before the next: never more than one full-size image at once. Their sizes in r are
 * updated to the decoded ones. Returns 0, or -1 with e filled (status 499 when ic->gone). */
int serve_make_chat(nvlm_model *m, serve_request *r, int max_tiles, const serve_image_ctl *ic, nvlm_chat **out,
                    serve_error *e);

/* ------------------------------------------------------------ limits.c */

/* The default --max-image-memory: 1/8 of the machine's memory, at most this many MiB. */
enum { SERVE_IMAGE_MEMORY_MAX_MIB = 448 };

typedef struct serve_budget {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t cap, used, peak;
} serve_budget;

uint64_t serve_image_memory_default(void);
int serve_budget_init(serve_budget *b, uint64_t cap);
void serve_budget_destroy(serve_budget *b);
/* Takes n bytes, waiting up to wait_s seconds (in 50 ms slices, stop(user) non-zero ends the
 * wait) for others to give theirs back. 0: taken; 1: n is over the whole budget; 2: no room
 * in time (or stopped). */
int serve_budget_take(serve_budget *b, uint64_t n, double wait_s, int (*stop)(void *), void *user);
void serve_budget_give(serve_budget *b, uint64_t n);
uint64_t serve_budget_used(serve_budget *b);
/* Peak bytes decoding one image takes (its RGB, the decoder's scratch). */
uint64_t serve_image_decode_bytes(const serve_image_src *src, uint64_t max_pixels);
/* Bytes a request's images may need at most: every image's tiles at the tile bound, plus
 * the largest one decode. */
uint64_t serve_images_need(const nvlm_model *m, const serve_request *r, int max_tiles, uint64_t max_pixels);
/* Bytes its images' tiles hold once decoded (8-bit RGB, until the engine encodes them). */
uint64_t serve_images_held(nvlm_model *m, const serve_request *r, int max_tiles);

typedef struct serve_conn serve_conn;
typedef struct serve_conns {
    pthread_mutex_t mu;
    serve_conn *head;
    int max_total, max_per_ip;   /* 0: no limit */
    double deadline_s;           /* header + body of one request; 0: none */
    uint64_t n_dropped;
} serve_conns;

int serve_conns_init(serve_conns *t, int max_total, int max_per_ip, double deadline_s);
void serve_conns_destroy(serve_conns *t);
/* A new connection. Over a limit, the oldest connection still sending its request (of the
 * same IP for the per-IP limit) is shut down, or else this one. NULL when out of memory. */
serve_conn *serve_conns_open(serve_conns *t, int fd, const struct sockaddr *addr, socklen_t len);
void serve_conns_close(serve_conns *t, serve_conn *c);
/* busy: its request is whole (no deadline while it is answered); 0 again when it is done. */
void serve_conns_busy(serve_conns *t, serve_conn *c, int busy);
/* Shuts down the connections whose request has taken longer than the deadline to arrive. */
void serve_conns_sweep(serve_conns *t);
int serve_conns_count(serve_conns *t);

/* ------------------------------------------------------------- reply.c */

/* Each returns a malloc'ed NUL-terminated JSON text, or NULL when out of memory. */
char *serve_error_json(const serve_error *e);
char *serve_models_json(const char *model_id, long created);
char *serve_completion_json(const char *id, const char *model, long created, const char *content,
                            const char *finish, size_t prompt_tokens, size_t completion_tokens);
/* A chat.completion.chunk: role (first chunk), content, finish reason, or usage (no choices). */
char *serve_chunk_json(const char *id, const char *model, long created, const char *role, const char *content,
                       size_t content_len, const char *finish);
char *serve_usage_chunk_json(const char *id, const char *model, long created, size_t prompt_tokens,
                             size_t completion_tokens);

/* The reply to a request of n answers (chat.completion, or text_completion for a raw one), with
 * logprobs when asked (chat: content[{token, logprob, bytes, top_logprobs}]; completions: the
 * legacy tokens/token_logprobs/top_logprobs/text_offset), a closing stop_id left out. cut: the
 * server's stop ended the answers early, so their finish_reason is "cancelled", never stop/length. */
char *serve_answers_json(const char *id, const char *model, long created, const serve_request *r,
                         const nvlm_tokenizer *tok, int32_t stop_id, const nvlm_answer *answers, int n, int cut);
/* A chat.completion.chunk whose logprobs are those of n tokens (streaming with logprobs). */
char *serve_chunk_logprobs_json(const char *id, const char *model, long created, const char *content, size_t content_len,
                                const char *finish, const nvlm_tokenizer *tok, const nvlm_logprobs *lp, size_t n);
/* chat logprobs {"content": [...]} of n tokens, or NULL (out of memory). */
struct cJSON *serve_chat_logprobs(const nvlm_tokenizer *tok, const nvlm_logprobs *lp, size_t n);
/* A streamed text_completion chunk. */
char *serve_text_chunk_json(const char *id, const char *model, long created, const char *text, size_t len,
                            const char *finish);
/* /v1/models with the context length (max_model_len, context_length) and the tile bound. */
char *serve_model_list_json(const char *model_id, long created, int ctx, int max_tiles);

/* /props: the server's settings (limits, defaults) for clients and operators. */
char *serve_props_json(const nvlm_serve_options *o, const char *model_id, const char *arch, int ctx, int max_tiles);

/* -------------------------------------------------------- textstream.c */

/* Holds back streamed text so that the concatenated deltas equal the final response exactly:
 * leading whitespace dropped, trailing whitespace and possible stop-string starts held until
 * more text shows what they are. */
typedef struct serve_textstream {
    nvlm_buf all;       /* every piece so far */
    nvlm_buf sent;      /* the answer text already handed out */
    const char *const *stop;
    int raw;            /* /v1/completions: the answer is not stripped, so neither are the deltas */
} serve_textstream;

/* Adds a piece; *delta (malloc'ed, may be "") is what may be sent now. */
int serve_textstream_push(serve_textstream *t, const char *piece, size_t len, char **delta, size_t *dlen);
/* The rest of final (the engine's response) after what was emitted; "" if it diverged. */
int serve_textstream_finish(serve_textstream *t, const char *final, char **delta, size_t *dlen);
void serve_textstream_free(serve_textstream *t);

/* ----------------------------------------------------------- metrics.c */

enum { SERVE_NBUCKETS = 14 };

typedef struct serve_histogram {
    uint64_t counts[SERVE_NBUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t n;
} serve_histogram;

typedef struct serve_metrics {
    pthread_mutex_t mu;
    uint64_t by_status[600];
    uint64_t chat_finished[4];          /* stop, length, cancelled, error */
    uint64_t prompt_tokens, completion_tokens, image_tiles;
    serve_histogram latency, ttft, queue_wait;
    int queue_depth, active, slots;
    long kv_pages_used, kv_pages_free, kv_bytes, batch_last;
    uint64_t steps, batch_tokens;
    double gen_tok_per_s;
} serve_metrics;

enum { SERVE_FIN_STOP, SERVE_FIN_LENGTH, SERVE_FIN_CANCELLED, SERVE_FIN_ERROR };

int serve_metrics_init(serve_metrics *m, int slots);
void serve_metrics_destroy(serve_metrics *m);
void serve_metrics_status(serve_metrics *m, int status);
/* One chat request ended: its finish kind, tokens and seconds (negative: not measured). */
void serve_metrics_chat(serve_metrics *m, int fin, size_t prompt, size_t completion, size_t tiles,
                        double latency, double ttft, double queue_wait);
void serve_metrics_gauges(serve_metrics *m, int queue_depth, int active);
/* The engine after a step: KV pages, the step's batch, steps and batch tokens so far, generated
 * tokens per second. */
void serve_metrics_engine(serve_metrics *m, long pages_used, long pages_free, long kv_bytes, int batch,
                          uint64_t steps, uint64_t tokens, double tok_per_s);
/* Prometheus text exposition, malloc'ed. */
char *serve_metrics_text(serve_metrics *m);

/* ------------------------------------------------------------- sched.c */

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED };
enum { PHASE_NEW, PHASE_ENCODE, PHASE_RUN }; /* a job in a slot: not begun, ViT, prompt/answer */

typedef struct serve_job serve_job;
struct serve_job {
    /* set before queueing, read-only afterwards */
    nvlm_chat *chat;
    serve_request req;
    char id[48], model[256];
    long created;
    size_t n_tiles;
    double t_queued;
    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    int refs;
    nvlm_buf events;             /* SSE bytes produced (stream) */
    size_t events_read;
    nvlm_answer answer;
    nvlm_answer *extra;          /* n > 1: the answers of choices 1 .. n_extra */
    int n_extra;
    int n_begun;                 /* n > 1: the choice being generated (0: the first) */
    nvlm_err err;
    double t_start, t_first, t_end;
    atomic_int cancelled;
    int cut;                     /* the answer was ended by a cancel, not complete (set before
                                  * the job is finished, read after) */
    /* engine thread only */
    serve_textstream ts;
    nvlm_logprobs *lp_pending;   /* streaming with logprobs: tokens not yet sent in a chunk */
    size_t n_pending, cap_pending;
    const nvlm_tokenizer *tok;
    size_t n_generated;
    int phase, in_step, prefill_started;
    uint64_t *keys;              /* prompt reuse keys (ids; images by the hash of their bytes) */
    size_t n_keys, n_reused;
    serve_job *next;
    /* mpirun (src/dist/serve_dist.c): what the other ranks need to make the same job (rank 0),
     * and the cancel flag as every rank saw it at the step's start (the steps read it, not
     * `cancelled`, so that all ranks end the job at the same step) */
    void *dist_req;
    int dist, cancel_seen;
};

/* A finished request's KV sequence kept for reuse, with the keys of its positions. */
typedef struct serve_prefix {
    int seq;
    uint64_t *keys;
    size_t n;
    uint64_t used;
} serve_prefix;

enum { SERVE_PREFIXES = 16 };

typedef struct serve_sched {
    nvlm_model *model;
    serve_metrics *metrics;
    nvlm_engine *engine;         /* the engine thread's only */
    nvlm_batch batch;
    float *logits;               /* [parallel, V] */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    serve_job *head, *tail;
    int depth, max_queue, active, stopping, parallel, max_tiles;
    serve_job **slots;           /* [parallel]: set under mu, otherwise the engine thread's */
    pthread_t thread;
    int running;
    serve_prefix prefix[SERVE_PREFIXES];
    int n_prefix;
    uint64_t clock;
    double rate, rate_t0;
    uint64_t rate_tok0;
    nvlm_dist *dist;             /* mpirun: rank 0 leads the steps, the others follow (src/dist/serve_dist.c) */
    nvlm_sampling dist_defaults; /* the options' sampling defaults: a follower parses requests with them */
} serve_sched;

/* A job owning req and chat (moved in); one reference for the caller. */
int serve_job_new(serve_request *req, nvlm_chat *chat, serve_job **out);
void serve_job_release(serve_job *j);
double serve_now(void);

/* Makes the engine (options: parallel, max_queue, ctx, max_tiles, kv_mib / kv_tokens) and
 * starts its thread. */
int serve_sched_start(serve_sched *s, nvlm_model *m, serve_metrics *metrics, const nvlm_serve_options *o,
                      nvlm_err *err);
/* Queues j (takes a reference); -1 when the queue is full, -2 when stopping. */
int serve_sched_submit(serve_sched *s, serve_job *j);
/* Cancels j: a queued job leaves the queue at once (finished as cancelled), a running one
 * ends at the engine's next step, its pages freed. Any thread, any state. */
void serve_sched_cancel(serve_sched *s, serve_job *j);
/* Refuses new jobs, cancels every job and joins the workers. */
void serve_sched_stop(serve_sched *s);
/* Frees what serve_sched_stop left (after no thread can submit any more). */
void serve_sched_destroy(serve_sched *s);
#endif
