/* backend.h - who computes the engine's operations, and where its buffers live (docs/engine.md).
 *
 * A vtable in the spirit of ggml-backend, thin for now: the engine's forward pass calls only
 * these entries, never a CPU kernel, so a CUDA backend or a remote layer range (MPI, issue 18)
 * is a new table, not a change to the model code. The CPU backend (backend_cpu.c) wraps the
 * thread pool, its ISA level and its numerics policy (int8 activations): those stay its
 * business. Buffers are host memory for the CPU backend; scratch comes from an arena sized once
 * per engine (nvlm_backend_arena), never malloc per forward call. Internal. */
#ifndef NVLM_ENGINE_BACKEND_H
#define NVLM_ENGINE_BACKEND_H
#include "kernels/ops.h"
#include "kernels/pool.h"
#include "nvlm.h"
#include <stddef.h>

typedef struct nvlm_backend nvlm_backend;

/* A range of independent units [begin, end) (rows, attention heads); thread: a scratch slot. */
typedef void (*nvlm_unit_fn)(void *ctx, size_t begin, size_t end, int thread);

typedef struct nvlm_backend_i {
    const char *name;
    /* a buffer of `bytes` in the backend's memory (host for the CPU), freed by release */
    void *(*alloc)(nvlm_backend *b, size_t bytes);
    void (*release)(nvlm_backend *b, void *p);
    /* y[i] = x W[i]^T + bias[i], i < n_w: rows [0, n_gen) of x are tokens being generated, rows
     * [n_gen, n_tok) prompt tokens; each row's values must not depend on the others (batch
     * invariance, docs/engine.md) */
    int (*matmul)(nvlm_backend *b, int n_w, float *const *y, const float *x, int n_gen, int n_tok,
                  const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
    /* a = silu(a) * b over n values */
    int (*silu_mul)(nvlm_backend *b, float *a, const float *bb, size_t n, nvlm_err *err);
    /* row ops and attention: fn over n units (grain: the smallest share), each unit computed by
     * one worker the same way whatever the split */
    int (*units)(nvlm_backend *b, size_t n, size_t grain, nvlm_unit_fn fn, void *ctx, nvlm_err *err);
    /* scratch slots (one per worker) and the kernel level the unit functions use */
    int (*slots)(const nvlm_backend *b);
    int (*level)(const nvlm_backend *b);
    /* waits until queued work is done (the CPU backend is synchronous) */
    int (*sync)(nvlm_backend *b, nvlm_err *err);
    void (*free)(nvlm_backend *b);
} nvlm_backend_i;

struct nvlm_backend {
    const nvlm_backend_i *i;
    void *ctx;
};

/* The CPU backend over a model's pool (not owned). */
int nvlm_backend_cpu_new(nvlm_pool *pool, nvlm_backend **out, nvlm_err *err);
void nvlm_backend_free(nvlm_backend *b);
#endif
