#include "kernels/pool.h"
#include "core/err.h"
#include "kernels/cpu.h"
#include "kernels/qblock.h"
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Synchronisation (why it is built this way: a mutex and condition variables per job cost
 * 6-9 us per loop at 2 threads, measured, and generation runs ~150 loops per token).
 *
 * Jobs are published, not handed over: the caller writes job g into slot g % SLOTS and then
 * stores generation = g; workers spinning on generation take the newest job. A worker counts
 * itself `inside` the slot before reading it and re-reads generation afterwards, so the
 * caller, which waits for a slot's `inside` to drop to 0 before rewriting it, never changes a
 * job under a reader (a worker that finds the slot may be in reuse backs off and takes the
 * newest job). The caller waits only for the chunks to be done, not for every worker to
 * show up: a worker descheduled by a busy neighbour costs its share, not a barrier.
 *
 * Waiting spins for SPIN_NS (jobs come back to back while generating), then sleeps: workers
 * on `wake` (counted in `sleepers`, which the caller checks after publishing), the caller on
 * `done` (flagged by caller_waiting, which the worker finishing the last chunk checks). All
 * of these are sequentially consistent atomics, which makes the check-then-sleep races safe. */
enum { SLOTS = 4, SPIN_NS = 100000 };

typedef struct job_slot {
    alignas(64) nvlm_pool_fn fn;
    void *ctx;
    size_t n, chunk;
    int n_chunks;
    alignas(64) atomic_int next_chunk;
    atomic_int chunks_left;
    atomic_int inside;          /* workers that took this slot and have not left it */
} job_slot;

struct nvlm_pool {
    int n_threads;              /* including the calling thread */
    int level;                  /* kernel instruction-set level (kernels/cpu.h) */
    int int8_act;               /* Q8_0/Q4 matrix-vector with int8 activations: 1, 0, -1 unset */
    size_t scratch_limit;       /* bytes one kernel call may take (nvlm_pool_scratch) */
    int compute;                /* NVLM_COMPUTE_F32 / NVLM_COMPUTE_BF16 */
    pthread_t *workers;
    job_slot slot[SLOTS];
    alignas(64) atomic_uint generation; /* jobs published; job g lives in slot[g % SLOTS] */
    atomic_int stopping;
    alignas(64) atomic_int sleepers;    /* workers blocked (or about to block) on wake */
    atomic_int caller_waiting;          /* the caller blocked (or about to) on done */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    /* Held by the thread running a parallel loop: callers on other threads (two chats on one
     * model) wait their turn, loop by loop. Uncontended, it costs ~20 ns of the ~1-10 us a
     * loop takes; the publication protocol above keeps its single publisher. */
    pthread_mutex_t caller;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spins until cond(p, arg) holds or SPIN_NS pass; returns whether it holds. */
static int spin_until(int (*cond)(nvlm_pool *, const void *), nvlm_pool *p, const void *arg) {
    int64_t t0 = 0;
    for (int i = 0;; i++) {
        if (cond(p, arg)) return 1;
        cpu_relax();
        if ((i & 63) == 63) { /* the clock every 64 turns: a vDSO call, not a syscall */
            int64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > SPIN_NS) return cond(p, arg);
        }
    }
}

static int has_new_job(nvlm_pool *p, const void *seen) {
    return atomic_load(&p->generation) != *(const unsigned *)seen || atomic_load(&p->stopping);
}

static int chunks_done(nvlm_pool *p, const void *slot) {
    (void)p;
    return atomic_load(&((const job_slot *)slot)->chunks_left) == 0;
}

static int slot_free(nvlm_pool *p, const void *slot) {
    (void)p;
    return atomic_load(&((const job_slot *)slot)->inside) == 0;
}

/* Takes chunks of slot s until none are left. Chunk c covers [c*chunk, min(n,(c+1)*chunk)). */
static void run_chunks(nvlm_pool *p, job_slot *s, int thread) {
    for (;;) {
        int c = atomic_fetch_add(&s->next_chunk, 1);
        if (c >= s->n_chunks) return;
        size_t b = (size_t)c * s->chunk, e = b + s->chunk;
        if (e > s->n) e = s->n;
        s->fn(s->ctx, b, e, thread);
        if (atomic_fetch_sub(&s->chunks_left, 1) == 1 && atomic_load(&p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* The newest job after `seen` (spinning, then sleeping on wake). */
static unsigned wait_for_job(nvlm_pool *p, unsigned seen) {
    if (!spin_until(has_new_job, p, &seen)) {
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->sleepers, 1);
        while (atomic_load(&p->generation) == seen && !atomic_load(&p->stopping)) pthread_cond_wait(&p->wake, &p->mu);
        atomic_fetch_sub(&p->sleepers, 1);
        pthread_mutex_unlock(&p->mu);
    }
    return atomic_load(&p->generation);
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
        unsigned g = wait_for_job(p, seen);
        if (atomic_load(&p->stopping)) return NULL;
        job_slot *s = &p->slot[g % SLOTS];
        atomic_fetch_add(&s->inside, 1);
        if (atomic_load(&p->generation) - g < SLOTS - 1) /* the caller cannot be rewriting slot s */
            run_chunks(p, s, wa.index);
        atomic_fetch_sub(&s->inside, 1);
        seen = g;
    }
}

int nvlm_pool_new(int n_threads, nvlm_pool **out, nvlm_err *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    /* 64-byte members (one cache line per contended counter): an aligned allocation */
    size_t size = (sizeof(nvlm_pool) + 63) / 64 * 64;
    nvlm_pool *p = aligned_alloc(64, size);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory creating the thread pool");
    memset(p, 0, size);
    p->n_threads = n_threads;
    p->level = nvlm_cpu_level();
    p->scratch_limit = SIZE_MAX;
    const char *qa = getenv("NVLM_QACT");
    p->int8_act = !qa || !*qa ? -1 : !strcmp(qa, "int8");
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->caller, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->stopping, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_waiting, 0);
    for (int i = 0; i < SLOTS; i++) {
        atomic_init(&p->slot[i].next_chunk, 0);
        atomic_init(&p->slot[i].chunks_left, 0);
        atomic_init(&p->slot[i].inside, 0);
    }
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
    atomic_store(&p->stopping, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        if (p->workers) pthread_join(p->workers[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->caller);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int nvlm_pool_threads(const nvlm_pool *p) { return p ? p->n_threads : 1; }

int nvlm_pool_level(const nvlm_pool *p) { return p ? p->level : nvlm_cpu_level(); }

int nvlm_pool_set_level(nvlm_pool *p, int level) {
    p->level = nvlm_cpu_clamp(level);
    return p->level;
}

int nvlm_pool_int8_act(const nvlm_pool *p) { return p ? p->int8_act > 0 : 0; }

int nvlm_pool_int8_act_for(const nvlm_pool *p, nvlm_dtype t) {
    int a = p ? p->int8_act : -1;
    return a < 0 ? nvlm_dtype_is_block(t) : a;
}

void nvlm_pool_set_int8_act(nvlm_pool *p, int on) { p->int8_act = on != 0; }

void *nvlm_pool_scratch(const nvlm_pool *p, size_t bytes) {
    if (p && bytes > p->scratch_limit) return NULL;
    if (bytes > SIZE_MAX - 64) return NULL;
    return aligned_alloc(64, bytes ? (bytes + 63) / 64 * 64 : 64); /* a multiple of the alignment */
}

int nvlm_pool_scratch_fail(nvlm_err *err, const char *what, size_t bytes) {
    return nvlm_fail(err, NVLM_E_NOMEM, "out of memory: %s needs %.1f MiB of scratch; free memory or run fewer tokens at once",
                     what, (double)bytes / (1024.0 * 1024.0));
}

void nvlm_pool_set_scratch_limit(nvlm_pool *p, size_t bytes) { p->scratch_limit = bytes; }
int nvlm_pool_compute(const nvlm_pool *p) { return p ? p->compute : NVLM_COMPUTE_F32; }

void nvlm_pool_set_compute(nvlm_pool *p, int compute) { p->compute = compute; }

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
    pthread_mutex_lock(&p->caller);
    unsigned g = atomic_load(&p->generation) + 1; /* only the caller holding p->caller publishes */
    job_slot *s = &p->slot[g % SLOTS];
    while (!spin_until(slot_free, p, s)) sched_yield(); /* a worker still leaving an old job */
    s->fn = fn;
    s->ctx = ctx;
    s->n = n;
    s->chunk = chunk;
    s->n_chunks = (int)((n + chunk - 1) / chunk);
    atomic_store(&s->next_chunk, 0);
    atomic_store(&s->chunks_left, s->n_chunks);
    atomic_store(&p->generation, g);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    run_chunks(p, s, 0);
    if (!spin_until(chunks_done, p, s)) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_waiting, 1);
        while (atomic_load(&s->chunks_left) > 0) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_waiting, 0);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->caller);
}
