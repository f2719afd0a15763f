/* serve.h - the OpenAI-compatible HTTP server behind `nvlm serve` (docs/server.md).
 *
 * Connections are served by a few libmicrohttpd poll threads (epoll), never one thread each:
 * a request's body is parsed and its images decoded on preparation threads, and a request that
 * waits for its answer is suspended, not blocking a poll thread, so /health and /metrics answer
 * whatever the other connections do. Decoded images count against one memory budget.
 * One loaded model is shared read-only by all requests; each request gets its own nvlm_chat
 * whose KV sequence lives in the engine's paged store. One engine thread batches the requests
 * (continuous batching, src/serve/sched.c): every step decodes one token of each generating
 * request plus a budget of prompt tokens, so up to `parallel` requests advance together;
 * further requests wait in a FIFO queue. A token's values do not depend on its batch, so a
 * greedy answer is the same alone or concurrent. A request whose client leaves stops at the
 * next step and its pages are freed.
 * Internal to libnvlm; used by tools/cmd_serve.c and the tests. */
#ifndef NVLM_SERVE_SERVE_H
#define NVLM_SERVE_SERVE_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

typedef struct nvlm_serve_options {
    const char *host;          /* address to bind; NULL: 127.0.0.1 */
    int port;                  /* 0: an ephemeral port (see nvlm_server_port) */
    const char *api_key;       /* NULL or "": no authentication */
    const char *model_id;      /* NULL: the caller must set it (the model folder's name) */
    int strict_model;          /* 1: a request naming another model id is a 404 */
    int parallel;              /* requests generating at once (batched); 0: 8 */
    size_t kv_mib;             /* KV cache bound in MiB (0: kv_tokens) */
    size_t kv_tokens;          /* ... or in positions (0 and kv_mib 0: ctx x parallel) */
    int max_queue;             /* requests waiting for a slot before 503; 0: 256 */
    int ctx;                   /* context length; 0: the config's max_position_embeddings */
    int max_tiles;             /* tiles per image; 0: the config's max_dynamic_patch */
    size_t max_body;           /* request body bytes; 0: 64 MiB */
    size_t max_image_bytes;    /* one encoded image; 0: 20 MiB */
    uint64_t max_image_pixels; /* one decoded image; 0: 32 Mi pixels */
    int max_images;            /* images per request; 0: 16 */
    const char *local_image_dir; /* non-NULL: file:// URLs and paths under this folder allowed */
    int allow_remote_images;   /* 1: http(s) image URLs are fetched (libcurl) */
    int allow_private_image_hosts; /* 1: also from private/loopback addresses */
    int remote_timeout_ms;     /* one fetch, redirects included; 0: 10 s */
    int remote_max_redirects;  /* 0: 3 (-1: none followed) */
    uint64_t max_image_memory; /* decoded images and tiles of all requests at once, in bytes;
                                * 0: 1/8 of the machine's memory, at most 448 MiB */
    int timeout;               /* seconds for a request's header and body to arrive (and an idle
                                * keep-alive connection); 0: 60 */
    int shutdown_timeout;      /* seconds nvlm_server_stop lets answers in flight finish before it
                                * cuts them; 0: cut at once */
    int max_connections;       /* open connections; 0: 2048 (and below the descriptor limit) */
    int max_connections_per_ip; /* 0: 1024 */
    int http_threads;          /* poll threads; 0: 4 */
    const char *default_system; /* system message of requests without one; NULL: the template's */
    nvlm_sampling defaults;    /* sampling when a request says nothing (stop is ignored) */
} nvlm_serve_options;

typedef struct nvlm_server nvlm_server;

/* Fills the defaults above (parallel 8, greedy sampling, 1024 new tokens at most). */
void nvlm_serve_options_default(nvlm_serve_options *o);
/* Starts listening and serving in background threads. The model must outlive the server. */
int nvlm_server_start(nvlm_model *m, const nvlm_serve_options *o, nvlm_server **out, nvlm_err *err);
/* The port actually bound (useful with port 0). */
int nvlm_server_port(const nvlm_server *s);
/* Graceful stop: stops listening and refuses new requests (503), lets the answers in flight
 * finish for up to shutdown_timeout seconds, then ends the rest honestly: a cut answer has
 * finish_reason "cancelled" (a stream also gets an error event), a request not yet started
 * gets a 503. Joins every thread, frees everything. NULL is accepted. */
void nvlm_server_stop(nvlm_server *s);
#endif
