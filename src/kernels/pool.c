#include "kernels/pool.h"
#include "core/err.h"
#include "kernels/cpu.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct nvlm_pool {
    int n_threads;              /* including the calling thread */
    int level;                  /* kernel instruction-set level (kernels/cpu.h) */
    int int8_act;               /* Q8_0/Q4 matrix-vector with int8 activations: 1, 0, -1 unset */
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* current job (written under mu before generation is bumped) */
    nvlm_pool_fn fn;
    void *ctx;
    size_t n, chunk;
    int n_chunks;
    atomic_int next_chunk;
    atomic_int chunks_left;
    atomic_uint generation;
    int active;                 /* workers inside run_chunks (under mu) */
    int stopping;
};

/* Takes chunks until none are left. Chunk c covers [c*chunk, min(n,(c+1)*chunk)). */
static void run_chunks(nvlm_pool *p, int thread) {
    for (;;) {
        int c = atomic_fetch_add(&p->next_chunk, 1);
        if (c >= p->n_chunks) return;
        size_t b = (size_t)c * p->chunk, e = b + p->chunk;
        if (e > p->n) e = p->n;
        p->fn(p->ctx, b, e, thread);
        if (atomic_fetch_sub(&p->chunks_left, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

typedef struct worker_arg {
    nvlm_pool *pool;
    int index;
} worker_arg;

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    nvlm_pool *p = wa.pool;
    unsigned seen = 0;
    for (;;) {
        /* spin a little for the next job: cheap when jobs come back to back */
        for (int spin = 0; spin < 2000 && atomic_load(&p->generation) == seen; spin++)
            __asm__ __volatile__("" ::: "memory");
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->generation) == seen && !p->stopping) pthread_cond_wait(&p->wake, &p->mu);
        int stop = p->stopping;
        seen = atomic_load(&p->generation);
        if (!stop) p->active++;
        pthread_mutex_unlock(&p->mu);
        if (stop) return NULL;
        run_chunks(p, wa.index);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_broadcast(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

int nvlm_pool_new(int n_threads, nvlm_pool **out, nvlm_err *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    nvlm_pool *p = calloc(1, sizeof *p);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory creating the thread pool");
    p->n_threads = n_threads;
    p->level = nvlm_cpu_level();
    const char *qa = getenv("NVLM_QACT");
    p->int8_act = !qa || !*qa ? -1 : !strcmp(qa, "int8");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            nvlm_pool_free(p);
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory creating the thread pool");
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (wa) {
                wa->pool = p;
                wa->index = i;
            }
            if (!wa || pthread_create(&p->workers[i - 1], NULL, worker_main, wa) != 0) {
                free(wa);
                p->n_threads = i; /* only i-1 workers exist */
                nvlm_pool_free(p);
                return nvlm_fail(err, NVLM_E_INTERNAL, "cannot start worker thread %d", i);
            }
        }
    }
    *out = p;
    return NVLM_OK;
}

void nvlm_pool_free(nvlm_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        if (p->workers) pthread_join(p->workers[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int nvlm_pool_threads(const nvlm_pool *p) { return p ? p->n_threads : 1; }

int nvlm_pool_level(const nvlm_pool *p) { return p ? p->level : nvlm_cpu_level(); }

int nvlm_pool_set_level(nvlm_pool *p, int level) {
    int hw = nvlm_cpu_hw_level();
    p->level = level < 0 ? 0 : level > hw ? hw : level;
    return p->level;
}

int nvlm_pool_int8_act(const nvlm_pool *p) { return p ? p->int8_act > 0 : 0; }

int nvlm_pool_int8_act_for(const nvlm_pool *p, nvlm_dtype t) {
    int a = p ? p->int8_act : -1;
    return a < 0 ? t == NVLM_DT_Q4 : a;
}

void nvlm_pool_set_int8_act(nvlm_pool *p, int on) { p->int8_act = on != 0; }

void nvlm_pool_run(nvlm_pool *p, size_t n, size_t grain, nvlm_pool_fn fn, void *ctx) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    if (!p || p->n_threads == 1 || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    /* about 4 chunks per thread balances uneven rows without much overhead */
    size_t chunk = (n + (size_t)p->n_threads * 4 - 1) / ((size_t)p->n_threads * 4);
    if (chunk < grain) chunk = grain;
    pthread_mutex_lock(&p->mu);
    /* a worker that woke late for the previous job may still be leaving run_chunks */
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    p->n_chunks = (int)((n + chunk - 1) / chunk);
    atomic_store(&p->next_chunk, 0);
    atomic_store(&p->chunks_left, p->n_chunks);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->chunks_left) > 0 || p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
