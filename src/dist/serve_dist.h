/* serve_dist.h - `mpirun -np N nvlm serve` (docs/distributed.md): rank 0 runs the HTTP server,
 * parses and checks every request and decodes its images, as one process does; only a request
 * it queued reaches the other ranks. Each rank runs the same scheduler over the same jobs: at
 * the start of every engine step rank 0 broadcasts which slots got a new job (with what the
 * other ranks need to make the same job: the request body, the image bytes rank 0 read, and
 * the values rank 0 settled), and which jobs are cancelled as of now. Every scheduler decision
 * after that depends only on those and on the logits, which are bit-identical on every rank, so
 * the ranks make the same engine calls (and so the same collectives) in the same order. A stop
 * of rank 0's server (a signal) ends the followers' loops with a last broadcast. Internal. */
#ifndef NVLM_DIST_SERVE_DIST_H
#define NVLM_DIST_SERVE_DIST_H
#include "serve/serve_int.h"

/* The job the model was loaded for; NULL for one process. */
nvlm_dist *serve_dist_of(const nvlm_model *m);
/* 1 on ranks other than 0 of a job of several. */
int serve_dist_follower(const serve_sched *s);

/* Rank 0, on a preparation thread, right after a request parsed: keeps the body and the bytes
 * of its images (*out; NULL for one process). 0, or -1 when out of memory. */
int serve_dist_capture(const nvlm_model *m, const char *body, size_t len, int completions, const serve_request *r,
                       uint64_t max_pixels, void **out);
void serve_dist_req_free(void *p);

/* Rank 0's engine thread, after admitting and before each step: the step's new jobs and
 * cancels to the other ranks. No-op for one process. */
void serve_dist_lead(serve_sched *s);
/* Rank 0's engine thread, once the scheduler stops: ends the followers' loops. */
void serve_dist_lead_stop(serve_sched *s);
/* A follower's engine thread: waits for rank 0's next step and sets up the same jobs and
 * cancels; 0 when rank 0's server stopped. */
int serve_dist_follow(serve_sched *s);

/* A follower rank's `nvlm serve`: the engine with no HTTP, following rank 0 until it stops.
 * o: the same options as rank 0's (the same command line). */
int serve_dist_follow_main(nvlm_model *m, const nvlm_serve_options *o, nvlm_err *err);
#endif
