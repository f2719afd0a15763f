/* dist.h - tensor parallel across MPI ranks at the matrix-product level (docs/distributed.md).
 *
 * Each rank holds an output-row slice of every large matrix (nvlm_wmat.dist). A product
 * y = x W^T runs on the local rows (each output element is the same dot product as in one
 * process) and MPI_Allgatherv assembles the full y on every rank; everything else (norms,
 * RoPE, attention, residuals, sampling) runs redundantly on every rank. The results are
 * therefore bit-identical to one process. The exchanges run on the calling thread; a failed
 * exchange (a peer died, out of memory) cannot be answered by one rank alone, so it ends the
 * whole job with a message naming the rank. Internal; the public half is in nvlm.h. */
#ifndef NVLM_DIST_DIST_H
#define NVLM_DIST_DIST_H
#include "kernels/ops.h"
#include "nvlm.h"
#include <stdint.h>

/* Rows [*row0, *row0 + *n) of a rows-row matrix for `rank` of `size`: balanced in units of
 * `unit` rows (a head, or 32 rows), the first ranks taking one unit more when they do not
 * divide evenly; *n may be 0 when there are more ranks than units. */
void nvlm_dist_split(int rows, int unit, int rank, int size, int *row0, int *n);

/* y = x W^T (+ bias) for a row-split w: local rows, then the all-gather into y [n_tok, rows].
 * NVLM_OK; a rank whose local product fails fills err and ends the whole job (nvlm_dist_abort,
 * naming the rank, its rows, the matrix and the error): the other ranks are already waiting in
 * the exchange, and returning an error would need one more collective per product to agree on it. gen: the local
 * product takes the table's generation kernels (else prefill), as one process would for the
 * same tokens (kernels/ops.h nvlm_matmul_roles: batch invariance holds across ranks too). */
int nvlm_dist_matmul(nvlm_pool *pool, int gen, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                     const float *bias, nvlm_err *err);
/* The same for n_w row-split matrices sharing x, with one all-gather for all of them. */
int nvlm_dist_matmul_multi(nvlm_pool *pool, int gen, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);

/* The attention heads of `rank` of `size` (0 of 1: all): query heads [*h0, *h1), balanced as the
 * q_proj rows are, and the kv heads [*g0, *g1) they read, whose keys and values the rank keeps
 * (GQA: a kv head whose group straddles two ranks is kept by both). A rank without query heads
 * keeps one kv head, never read. */
void nvlm_dist_heads(int rank, int size, int n_heads, int n_kv_heads, int *h0, int *h1, int *g0, int *g1);
/* The attention outputs y [n_tok, n_heads * head_dim], of which this rank filled the columns of
 * its heads (nvlm_dist_heads), become whole on every rank (MPI_Allgatherv). */
void nvlm_dist_gather_heads(nvlm_dist *d, float *y, int n_tok, int n_heads, int head_dim);

/* Combines n floats that exactly one rank filled at each position and the others left zero
 * (bitwise OR of the bit patterns: exact for every value, -0 and NaN included). Used for the
 * vocabulary-split embedding rows. */
void nvlm_dist_combine_owned(nvlm_dist *d, float *v, size_t n);

/* Every rank's load status, agreed: returns NVLM_OK when every rank loaded; otherwise a
 * failure on every rank, whose message is the first failing rank's own ("rank 1: cannot read
 * ... model-00002-of-00004.safetensors ..."). All ranks must call it, success or not. */
int nvlm_dist_agree(nvlm_dist *d, int rc, nvlm_err *err);
/* Refuses (on every rank) a job whose ranks loaded different checkpoints: `hash` summarises
 * the config and tensor table (and the small tensors' bytes) that this rank loaded. */
int nvlm_dist_same_checkpoint(nvlm_dist *d, uint64_t hash, const char *dir, nvlm_err *err);

/* Data-parallel training: v (n values) becomes the sum over the ranks, the same bits on every
 * rank (reduced to rank 0 in MPI's fixed order for this job size, then broadcast), so the ranks'
 * weights never drift apart. */
void nvlm_dist_sum_f32(nvlm_dist *d, float *v, size_t n);
void nvlm_dist_sum_f64(nvlm_dist *d, double *v, int n);

/* Rank 0's n bytes at buf to every rank (n known to all), waiting politely: a follower idle
 * between a server's requests naps instead of spinning. A failed exchange ends the job. */
void nvlm_dist_bcast(nvlm_dist *d, void *buf, size_t n);

/* FNV-1a, 64 bits: the checkpoint summary's hash. */
uint64_t nvlm_dist_hash(uint64_t h, const void *p, size_t n);
#define NVLM_DIST_HASH_INIT 0xcbf29ce484222325ull
#endif
