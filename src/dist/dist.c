/* The MPI job and the tensor-parallel exchanges (dist.h). Only standard MPI-3 calls, so Open MPI
 * and MPICH both work. A build without MPI keeps the same functions for a job of one process
 * and refuses to start a larger one. */
#include "dist/dist.h"
#include "core/err.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef NVLM_HAVE_MPI
#include <mpi.h>
#endif

struct nvlm_dist {
    int rank, size;
#ifdef NVLM_HAVE_MPI
    MPI_Comm comm;        /* a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
#endif
    float *loc, *all;     /* scratch: this rank's products, every rank's products */
    size_t loc_cap, all_cap;
    int *counts, *displs; /* [size] */
    nvlm_dist_stats stats;
};

int nvlm_dist_built(void) {
#ifdef NVLM_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

static int env_int(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    return *end || v < 0 || v > INT_MAX ? -1 : (int)v;
}

int nvlm_dist_launch_size(void) {
    int n = 1, v;
    if ((v = env_int("OMPI_COMM_WORLD_SIZE")) > n) n = v;
    if ((v = env_int("PMI_SIZE")) > n) n = v;
    if ((v = env_int("PMIX_SIZE")) > n) n = v;
    if (n == 1 && env_int("PMIX_RANK") > 0) n = 2; /* a launcher that gave only the rank */
    return n;
}

int nvlm_dist_rank(const nvlm_dist *d) { return d ? d->rank : 0; }
int nvlm_dist_size(const nvlm_dist *d) { return d ? d->size : 1; }

void nvlm_dist_get_stats(const nvlm_dist *d, nvlm_dist_stats *out) {
    if (d) *out = d->stats;
    else memset(out, 0, sizeof *out);
}

void nvlm_dist_reset_stats(nvlm_dist *d) {
    if (d) memset(&d->stats, 0, sizeof d->stats);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void nvlm_dist_abort(nvlm_dist *d, int status, const char *msg) {
    (void)status; /* without MPI: no job to end with it */
    fprintf(stderr, "nvlm: rank %d of %d: %s; ending the job\n", nvlm_dist_rank(d), nvlm_dist_size(d), msg);
    fflush(stderr);
#ifdef NVLM_HAVE_MPI
    MPI_Abort(d ? d->comm : MPI_COMM_WORLD, status ? status : 1);
#endif
    abort(); /* not reached with MPI; without it no job of several ranks exists */
}

#ifdef NVLM_HAVE_MPI
/* An MPI call that failed: the peers wait in the same collective, so the job ends here. */
static void check_mpi(nvlm_dist *d, int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char s[MPI_MAX_ERROR_STRING + 128], e[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, e, &len);
    snprintf(s, sizeof s, "%s failed: %.*s (a rank died or the network failed)", what, len, e);
    nvlm_dist_abort(d, 1, s);
}
#endif

#ifdef NVLM_HAVE_MPI
/* Waits for req: polls for a few microseconds (an idle machine answers within them), then
 * sleeps between polls so that a waiting rank gives its core to the ranks it waits for (MPI's
 * own wait spins, which on a busy or oversubscribed machine starves them: measured 10x slower
 * generation at 2 ranks on 2 loaded cores). */
static int wait_politely(MPI_Request *req) {
    int done = 0;
    for (int i = 0;; i++) {
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || done) return rc;
        if (i >= 200) { /* after ~1 s of waiting (an idle server's followers) 1 ms naps */
            struct timespec ts = {0, i < 2000 ? 20000 : i < 12000 ? 100000 : 1000000};
            nanosleep(&ts, NULL);
        }
    }
}
#endif

int nvlm_dist_init(int *argc, char ***argv, nvlm_dist **out, nvlm_err *err) {
    *out = NULL;
#ifdef NVLM_HAVE_MPI
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    /* serialized: serve's engine thread makes the calls once the main thread has loaded */
    if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return nvlm_fail(err, NVLM_E_IO, "MPI_Init failed: start nvlm with mpirun -np N");
    if (!inited && provided < MPI_THREAD_SERIALIZED)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "this MPI library does not let a second thread make MPI calls "
                         "(MPI_THREAD_SERIALIZED), which nvlm serve needs: use Open MPI or MPICH built with threads");
    nvlm_dist *d = calloc(1, sizeof *d);
    if (!d) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    MPI_Comm_dup(MPI_COMM_WORLD, &d->comm);
    MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->size);
    d->counts = calloc((size_t)d->size, sizeof *d->counts);
    d->displs = calloc((size_t)d->size, sizeof *d->displs);
    if (!d->counts || !d->displs) {
        nvlm_dist_finish(d);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    *out = d;
    return NVLM_OK;
#else
    (void)argc, (void)argv;
    return nvlm_fail(err, NVLM_E_UNSUPPORTED, "this nvlm was built without MPI, so it cannot run as %d ranks: install "
                     "libopenmpi-dev (scripts/install-deps.sh) and rebuild with make", nvlm_dist_launch_size());
#endif
}

void nvlm_dist_finish(nvlm_dist *d) {
    if (!d) return;
#ifdef NVLM_HAVE_MPI
    MPI_Comm_free(&d->comm);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
#endif
    free(d->loc);
    free(d->all);
    free(d->counts);
    free(d->displs);
    free(d);
}

void nvlm_dist_split(int rows, int unit, int rank, int size, int *row0, int *n) {
    if (unit < 1) unit = 1;
    int units = (rows + unit - 1) / unit, base = units / size, extra = units % size;
    int u0 = rank * base + (rank < extra ? rank : extra), nu = base + (rank < extra);
    int r0 = u0 * unit, r1 = (u0 + nu) * unit;
    if (r0 > rows) r0 = rows;
    if (r1 > rows) r1 = rows;
    *row0 = r0;
    *n = r1 - r0;
}

uint64_t nvlm_dist_hash(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static float *grow(nvlm_dist *d, float **buf, size_t *cap, size_t n) {
    if (n <= *cap) return *buf;
    float *p = realloc(*buf, sizeof(float) * n);
    if (!p) {
        char s[96];
        snprintf(s, sizeof s, "out of memory for %zu MB of tensor-parallel exchange buffers", n * sizeof(float) >> 20);
        nvlm_dist_abort(d, 1, s);
    }
    *buf = p;
    *cap = n;
    return p;
}

enum { MAX_MULTI = 8 };

/* The all-gather of n_w products: every rank sends its n_tok x local_rows block of each
 * matrix (one message for all), then the blocks are placed as columns of the [n_tok, rows]
 * outputs. For one matrix and one token the blocks already are y's layout: gathered in place. */
static void gather(nvlm_dist *d, int n_w, float *const *y, int n_tok, const nvlm_wmat *const *w, const float *mine) {
    int P = d->size;
    long long total = 0;
    for (int r = 0; r < P; r++) {
        long long c = 0;
        for (int i = 0; i < n_w; i++) {
            int r0, n;
            nvlm_dist_split(w[i]->rows, w[i]->split_unit, r, P, &r0, &n);
            c += (long long)n * n_tok;
        }
        if (total + c > INT_MAX) nvlm_dist_abort(d, 1, "a tensor-parallel exchange of more than 2^31 values (split the prompt)");
        d->counts[r] = (int)c;
        d->displs[r] = (int)total;
        total += c;
    }
    int in_place = n_w == 1 && n_tok == 1;
    float *all = in_place ? y[0] : grow(d, &d->all, &d->all_cap, (size_t)total);
    double t0 = now_ms();
#ifdef NVLM_HAVE_MPI
    MPI_Request req;
    int rc = in_place ? MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all, d->counts, d->displs, MPI_FLOAT, d->comm, &req)
                      : MPI_Iallgatherv(mine, d->counts[d->rank], MPI_FLOAT, all, d->counts, d->displs, MPI_FLOAT, d->comm, &req);
    check_mpi(d, rc, "MPI_Iallgatherv of a matrix product");
    check_mpi(d, wait_politely(&req), "MPI_Allgatherv of a matrix product");
#else
    if (!in_place) memcpy(all, mine, sizeof(float) * (size_t)total);
#endif
    d->stats.ms += now_ms() - t0;
    d->stats.n_exchanges++;
    d->stats.bytes_sent += sizeof(float) * (uint64_t)d->counts[d->rank];
    d->stats.bytes_received += sizeof(float) * (uint64_t)(total - d->counts[d->rank]);
    if (in_place) return;
    for (int r = 0; r < P; r++) {
        const float *blk = all + d->displs[r];
        for (int i = 0; i < n_w; i++) {
            int r0, n, N = w[i]->rows;
            nvlm_dist_split(N, w[i]->split_unit, r, P, &r0, &n);
            for (int t = 0; t < n_tok; t++) memcpy(y[i] + (size_t)t * N + r0, blk + (size_t)t * n, sizeof(float) * (size_t)n);
            blk += (size_t)n * n_tok;
        }
    }
}

int nvlm_dist_matmul_multi(nvlm_pool *pool, int gen, int n_w, float *const *y, const float *x, int n_tok,
                           const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    nvlm_dist *d = w[0]->dist;
    if (n_w > MAX_MULTI) nvlm_dist_abort(d, 1, "internal error: too many matrices in one tensor-parallel product");
    nvlm_wmat lw[MAX_MULTI];
    const nvlm_wmat *lp[MAX_MULTI];
    float *ly[MAX_MULTI];
    const float *lb[MAX_MULTI];
    int k = 0;
    size_t mine = 0;
    for (int i = 0; i < n_w; i++) mine += (size_t)n_tok * (size_t)w[i]->local_rows;
    int in_place = n_w == 1 && n_tok == 1;
    float *loc = in_place ? NULL : grow(d, &d->loc, &d->loc_cap, mine ? mine : 1);
    size_t at = 0;
    for (int i = 0; i < n_w; i++) {
        if (w[i]->dist != d) nvlm_dist_abort(d, 1, "internal error: matrices of one product split over different jobs");
        int n = w[i]->local_rows;
        if (n == 0) continue; /* more ranks than units: nothing here */
        lw[k] = (nvlm_wmat){.dtype = w[i]->dtype, .rows = n, .cols = w[i]->cols, .data = w[i]->data, .layout = w[i]->layout};
        lp[k] = &lw[k];
        ly[k] = in_place ? y[0] + w[i]->row0 : loc + at;
        lb[k] = bias && bias[i] ? bias[i] + w[i]->row0 : NULL;
        at += (size_t)n_tok * (size_t)n;
        k++;
    }
    int rc = k > 0 ? nvlm_matmul_roles(pool, k, ly, x, gen ? n_tok : 0, n_tok, lp, lb, err) : NVLM_OK;
    if (rc) { /* the other ranks already wait in the all-gather: only ending the job frees them */
        char s[sizeof err->msg + 200];
        snprintf(s, sizeof s, "its share (rows %d..%d of %d) of a %d-token product with a %d x %d matrix failed: %s",
                 w[0]->row0, w[0]->row0 + w[0]->local_rows, w[0]->rows, n_tok, w[0]->rows, w[0]->cols,
                 err && err->msg[0] ? err->msg : "no message");
        nvlm_dist_abort(d, 1, s);
    }
    gather(d, n_w, y, n_tok, w, loc);
    return NVLM_OK;
}

int nvlm_dist_matmul(nvlm_pool *pool, int gen, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                     const float *bias, nvlm_err *err) {
    float *ys[1] = {y};
    const nvlm_wmat *ws[1] = {w};
    const float *bs[1] = {bias};
    return nvlm_dist_matmul_multi(pool, gen, 1, ys, x, n_tok, ws, bs, err);
}

void nvlm_dist_heads(int rank, int size, int n_heads, int n_kv_heads, int *h0, int *h1, int *g0, int *g1) {
    int group = n_kv_heads > 0 ? n_heads / n_kv_heads : 1;
    if (group < 1) group = 1;
    nvlm_dist_split(n_heads, 1, rank, size, h0, h1);
    *h1 += *h0;
    *g0 = *h1 > *h0 ? *h0 / group : 0;
    *g1 = *h1 > *h0 ? (*h1 - 1) / group + 1 : 1;
}

void nvlm_dist_gather_heads(nvlm_dist *d, float *y, int n_tok, int n_heads, int head_dim) {
    if (!d || d->size == 1 || n_tok <= 0) return;
    /* the heads as a matrix of n_heads * head_dim rows split in units of a head: the same split
     * as nvlm_dist_heads, and gather() places each rank's columns */
    nvlm_wmat w = {.rows = n_heads * head_dim, .split_unit = head_dim};
    int r0, n;
    nvlm_dist_split(w.rows, head_dim, d->rank, d->size, &r0, &n);
    float *mine = NULL;
    if (n_tok > 1) {
        mine = grow(d, &d->loc, &d->loc_cap, (size_t)n_tok * (size_t)(n ? n : 1));
        for (int t = 0; t < n_tok; t++) memcpy(mine + (size_t)t * n, y + (size_t)t * w.rows + r0, sizeof(float) * (size_t)n);
    }
    const nvlm_wmat *wp = &w;
    gather(d, 1, &y, n_tok, &wp, mine);
}

_Static_assert(sizeof(float) == sizeof(uint32_t), "floats are exchanged as 32-bit patterns");

void nvlm_dist_combine_owned(nvlm_dist *d, float *v, size_t n) {
    (void)v;
    if (!d || d->size == 1) return;
    if (n > INT_MAX) nvlm_dist_abort(d, 1, "an embedding exchange of more than 2^31 values");
    double t0 = now_ms();
#ifdef NVLM_HAVE_MPI
    /* the OR of one bit pattern and zeros is that pattern */
    check_mpi(d, MPI_Allreduce(MPI_IN_PLACE, v, (int)n, MPI_UINT32_T, MPI_BOR, d->comm), "MPI_Allreduce of embedding rows");
#endif
    d->stats.ms += now_ms() - t0;
    d->stats.n_exchanges++;
    d->stats.bytes_sent += sizeof(float) * n;
    d->stats.bytes_received += sizeof(float) * n;
}

typedef struct load_status {
    int rc;
    char msg[sizeof(((nvlm_err *)0)->msg)];
} load_status;

int nvlm_dist_agree(nvlm_dist *d, int rc, nvlm_err *err) {
    (void)err;
    if (!d || d->size == 1) return rc;
#ifdef NVLM_HAVE_MPI
    load_status mine = {.rc = rc}, *all = calloc((size_t)d->size, sizeof *all);
    if (rc) snprintf(mine.msg, sizeof mine.msg, "%s", err && err->msg[0] ? err->msg : "failed");
    if (!all) nvlm_dist_abort(d, 1, "out of memory agreeing on the load");
    check_mpi(d, MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, d->comm),
              "MPI_Allgather of the load status");
    int out = NVLM_OK;
    for (int r = 0; r < d->size && !out; r++)
        if (all[r].rc) out = nvlm_fail(err, all[r].rc, "rank %d of %d: %s", r, d->size, all[r].msg);
    free(all);
    return out;
#else
    return rc;
#endif
}

int nvlm_dist_same_checkpoint(nvlm_dist *d, uint64_t hash, const char *dir, nvlm_err *err) {
    if (!d || d->size == 1) return NVLM_OK;
#ifdef NVLM_HAVE_MPI
    uint64_t *all = calloc((size_t)d->size, sizeof *all);
    if (!all) nvlm_dist_abort(d, 1, "out of memory comparing the checkpoints");
    check_mpi(d, MPI_Allgather(&hash, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, d->comm), "MPI_Allgather of the checkpoint summary");
    int bad = -1;
    for (int r = 1; r < d->size && bad < 0; r++)
        if (all[r] != all[0]) bad = r;
    free(all);
    if (bad >= 0)
        return nvlm_fail(err, NVLM_E_FORMAT, "rank %d loaded a different checkpoint from rank 0 (config, tensor sizes or "
                         "weights of %s differ): give every rank the same model folder", bad, dir);
#else
    (void)hash, (void)dir, (void)err;
#endif
    return NVLM_OK;
}

void nvlm_dist_sum_f32(nvlm_dist *d, float *v, size_t n) {
    (void)v;
    if (!d || d->size == 1) return;
    double t0 = now_ms();
    for (size_t at = 0; at < n;) {
        int k = n - at > (1u << 30) ? 1 << 30 : (int)(n - at);
#ifdef NVLM_HAVE_MPI
        check_mpi(d, MPI_Reduce(d->rank == 0 ? MPI_IN_PLACE : v + at, v + at, k, MPI_FLOAT, MPI_SUM, 0, d->comm),
                  "MPI_Reduce of gradients");
        check_mpi(d, MPI_Bcast(v + at, k, MPI_FLOAT, 0, d->comm), "MPI_Bcast of gradients");
#endif
        at += (size_t)k;
    }
    d->stats.ms += now_ms() - t0;
    d->stats.n_exchanges += 2;
    d->stats.bytes_sent += sizeof(float) * n;
    d->stats.bytes_received += sizeof(float) * n;
}

void nvlm_dist_sum_f64(nvlm_dist *d, double *v, int n) {
    if (!d || d->size == 1) return;
#ifdef NVLM_HAVE_MPI
    check_mpi(d, MPI_Reduce(d->rank == 0 ? MPI_IN_PLACE : v, v, n, MPI_DOUBLE, MPI_SUM, 0, d->comm), "MPI_Reduce of sums");
    check_mpi(d, MPI_Bcast(v, n, MPI_DOUBLE, 0, d->comm), "MPI_Bcast of sums");
#else
    (void)v, (void)n;
#endif
}

int nvlm_dist_any(nvlm_dist *d, int flag) {
    if (!d || d->size == 1) return flag;
    int any = flag != 0;
#ifdef NVLM_HAVE_MPI
    check_mpi(d, MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, d->comm), "MPI_Allreduce of the stop flag");
#endif
    return any;
}

void nvlm_dist_bcast_bytes(nvlm_dist *d, char **data, int64_t *len) {
    if (!d || d->size == 1) return;
#ifdef NVLM_HAVE_MPI
    check_mpi(d, MPI_Bcast(len, 1, MPI_INT64_T, 0, d->comm), "MPI_Bcast of a length");
    if (*len < 0) {
        if (d->rank) *data = NULL;
        return;
    }
    if (d->rank && !(*data = malloc((size_t)*len + 1))) nvlm_dist_abort(d, 1, "out of memory receiving rank 0's input");
    nvlm_dist_bcast(d, *data, (size_t)*len);
    if (d->rank) (*data)[*len] = 0;
#else
    (void)data, (void)len;
#endif
}

void nvlm_dist_bcast(nvlm_dist *d, void *buf, size_t n) {
    if (!d || d->size == 1) return;
#ifdef NVLM_HAVE_MPI
    for (size_t at = 0; at < n;) {
        int k = n - at > (1u << 30) ? 1 << 30 : (int)(n - at);
        MPI_Request req;
        check_mpi(d, MPI_Ibcast((char *)buf + at, k, MPI_BYTE, 0, d->comm, &req), "MPI_Ibcast of rank 0's input");
        check_mpi(d, wait_politely(&req), "MPI_Bcast of rank 0's input");
        at += (size_t)k;
    }
#else
    (void)buf, (void)n;
#endif
}
