/* The CPU backend: the thread pool, its ISA level and numerics policy behind the vtable. */
#include "engine/backend.h"
#include "core/err.h"
#include <stdlib.h>

static void *cpu_alloc(nvlm_backend *b, size_t bytes) {
    (void)b;
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void cpu_release(nvlm_backend *b, void *p) {
    (void)b;
    free(p);
}

static int cpu_matmul(nvlm_backend *b, int n_w, float *const *y, const float *x, int n_gen, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    return nvlm_matmul_roles(b->ctx, n_w, y, x, n_gen, n_tok, w, bias, err);
}

static int cpu_silu_mul(nvlm_backend *b, float *a, const float *bb, size_t n, nvlm_err *err) {
    (void)err;
    nvlm_silu_mul_pool(b->ctx, a, bb, n);
    return NVLM_OK;
}

static int cpu_units(nvlm_backend *b, size_t n, size_t grain, nvlm_unit_fn fn, void *ctx, nvlm_err *err) {
    (void)err;
    nvlm_pool_run(b->ctx, n, grain, fn, ctx);
    return NVLM_OK;
}

static int cpu_slots(const nvlm_backend *b) { return b->ctx ? nvlm_pool_threads(b->ctx) : 1; }
static int cpu_level(const nvlm_backend *b) { return nvlm_pool_level(b->ctx); }

static int cpu_sync(nvlm_backend *b, nvlm_err *err) {
    (void)b, (void)err;
    return NVLM_OK;
}

static void cpu_free(nvlm_backend *b) { free(b); }

static const nvlm_backend_i cpu_i = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .release = cpu_release,
    .matmul = cpu_matmul,
    .silu_mul = cpu_silu_mul,
    .units = cpu_units,
    .slots = cpu_slots,
    .level = cpu_level,
    .sync = cpu_sync,
    .free = cpu_free,
};

int nvlm_backend_cpu_new(nvlm_pool *pool, nvlm_backend **out, nvlm_err *err) {
    nvlm_backend *b = malloc(sizeof *b);
    *out = b;
    if (!b) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the CPU backend");
    b->i = &cpu_i;
    b->ctx = pool;
    return NVLM_OK;
}

void nvlm_backend_free(nvlm_backend *b) {
    if (b) b->i->free(b);
}
