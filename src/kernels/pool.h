/* pool.h - a fixed set of worker threads that run one parallel loop at a time.
 * Work is split into contiguous index ranges decided only by (n, n_threads), and each
 * index is computed by exactly one thread in the same order, so results never depend on
 * timing. Jobs are published through atomics (pool.c says how); workers and the caller spin
 * up to 100 us for the next job or for the last chunk, then sleep on a condition variable, and
 * the caller never waits for a worker that has not started, so a busy neighbour process does
 * not collapse throughput. Callers on several threads (two chats on one model) are safe: they
 * take turns, one parallel loop at a time (a mutex), each loop run whole by the pool. Internal. */
#ifndef NVLM_KERNELS_POOL_H
#define NVLM_KERNELS_POOL_H
#include "model/safetensors.h"
#include "nvlm.h"
#include <stddef.h>

typedef struct nvlm_pool nvlm_pool;

/* fn(ctx, begin, end, thread_index) handles indices [begin, end). */
typedef void (*nvlm_pool_fn)(void *ctx, size_t begin, size_t end, int thread);

/* n_threads <= 0: one per online CPU. */
int nvlm_pool_new(int n_threads, nvlm_pool **out, nvlm_err *err);
void nvlm_pool_free(nvlm_pool *p);
int nvlm_pool_threads(const nvlm_pool *p);
/* Instruction-set level the kernels use with this pool (kernels/cpu.h): nvlm_cpu_level() at
 * creation; a NULL pool means nvlm_cpu_level(). */
int nvlm_pool_level(const nvlm_pool *p);
/* Forces a level (clamped to what the machine supports); returns the level set. */
int nvlm_pool_set_level(nvlm_pool *p, int level);

/* 1 when the matrix-vector kernels of Q8_0/Q4 weights were told to quantize the activations to
 * int8 per block of 32 (llama.cpp's way: less exact, see docs/quantization.md), 0 when told to
 * keep them float32 or not told. Set at creation from NVLM_QACT=int8|f32; a NULL pool means 0.
 * When told (1), prefill on AVX512-VNNI CPUs takes int8 activations too (kernels/gemv_vnni.h). */
int nvlm_pool_int8_act(const nvlm_pool *p);
void nvlm_pool_set_int8_act(nvlm_pool *p, int on);
/* Whether the AVX2 matrix-vector kernel of format t uses int8 activations: as set (the setter
 * or NVLM_QACT=int8|f32), else by default for Q8_0 and Q4 (their float paths convert the
 * weights at ~1.4x the cost, which bounds 2-thread generation; the activation rounding is small
 * beside the weight error, docs/quantization.md). */
int nvlm_pool_int8_act_for(const nvlm_pool *p, nvlm_dtype t);

/* Scratch memory of one kernel call, 64-byte aligned, free()d by the caller. Kernels take all
 * of it before their parallel region (one slice per thread: nvlm_pool_threads), so workers
 * never allocate and a failure is the call's error, never skipped work. NULL when out of
 * memory or when bytes exceeds the pool's scratch limit; nvlm_pool_scratch_fail words the error. */
void *nvlm_pool_scratch(const nvlm_pool *p, size_t bytes);
int nvlm_pool_scratch_fail(nvlm_err *err, const char *what, size_t bytes);
/* Caps one kernel call's scratch at bytes (default SIZE_MAX, no cap): a call that needs more
 * fails with NVLM_E_NOMEM. Bounds memory, and lets tests take the out-of-memory path. */
void nvlm_pool_set_scratch_limit(nvlm_pool *p, size_t bytes);
/* Compute mode of the matrix products (NVLM_COMPUTE_F32 or NVLM_COMPUTE_BF16, nvlm.h): with
 * bf16, products of NVLM_BF16_MIN_TOKENS or more tokens against F32/F16/BF16 weights run in
 * kernels/gemm_bf16.h. NVLM_COMPUTE_F32 at creation; a NULL pool means f32. */
int nvlm_pool_compute(const nvlm_pool *p);
void nvlm_pool_set_compute(nvlm_pool *p, int compute);

/* Runs fn over [0, n) split into chunks of at least `grain` indices; returns when all are
 * done. pool may be NULL (runs inline). Any thread may call it (calls from several threads
 * take turns); not reentrant: do not call from inside fn. */
void nvlm_pool_run(nvlm_pool *p, size_t n, size_t grain, nvlm_pool_fn fn, void *ctx);
#endif
