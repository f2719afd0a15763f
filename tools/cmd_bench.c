/* nvlm bench - the machine's limits (read bandwidth, FMA peak), the kernels against them
 * (GEMM GFLOP/s, GEMV GB/s per weight format and dispatch level), and with --model the
 * engine end to end: ViT ms per tile, prompt tokens/s, generation tokens/s, peak RSS, at 1
 * and N threads. docs/performance.md explains the figures. */
#include "cli_model.h"
#include "dist/dist.h"
#include "kernels/cpu.h"
#include "kernels/ops.h"
#include "kernels/peak.h"
#include "kernels/qblock.h"
#include "kernels/wpack.h"
#include "model/llm.h"
#include "model/model.h"
#include "model/quant.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>


static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

typedef struct bench_opts {
    int threads, tiles, prompt, gen, quick, kernels, weights;
    int weights_io; /* NVLM_IO_*: --mmap / --no-mmap */
    int compute;    /* NVLM_COMPUTE_*: --compute f32|bf16 */
    int cpu_clock; /* --cpu-time: rates from process CPU time / threads (shared machines) */
    const char *model;
} bench_opts;

typedef struct limits {
    double bw, fma; /* GB/s, GFLOP/s at this thread count */
} limits;

static void help(FILE *f) {
    fprintf(f, "usage: nvlm bench [--model DIR] [options]\n\n"
               "  -m, --model DIR       also time the model: ViT ms/tile, prompt tok/s, generation tok/s\n"
               "  -t, --threads N       the N of '1 and N threads' (default: all cores)\n"
               "      --weights q8_0|q4|q4_0 quantize the model's matrices at load\n"
               "      --compute f32|bf16 matrix arithmetic of the ViT, projector and prefill (default f32)\n"
               "      --mmap, --no-mmap map the weight files / read them into memory (default as\n"
               "                        `nvlm run`: read when they fit, map when quantizing at load)\n"
               "      --tiles N         tiles per ViT run (default 1)\n"
               "      --prompt N        prompt tokens (default 512)\n"
               "      --gen N           generated tokens (default 32)\n"
               "      --no-kernels      skip the machine/kernel section\n"
               "      --quick           smaller kernel sizes\n"
               "      --cpu-time        rates from process CPU time / threads instead of wall time:\n"
               "                        estimates the uncontended figures on a busy shared machine\n"
               "NVLM_CPU=scalar|avx2|avx512|avx512vnni|avx512bf16 forces a lower kernel level.\n");
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1 << 23)) - 1.0);
}

/* A [rows, cols] matrix of random weights in format dt (malloc'ed). */
static void *rand_matrix(nvlm_dtype dt, int rows, int cols) {
    size_t rb = nvlm_row_bytes(dt, cols);
    uint8_t *m = malloc(rb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)cols);
    if (!m || !row) {
        free(m), free(row);
        return NULL;
    }
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand() * 0.05f;
        nvlm_row_from_f32(m + (size_t)r * rb, row, dt, cols);
    }
    free(row);
    return m;
}

static double time_matmul(const bench_opts *o, nvlm_pool *p, const nvlm_wmat *w, const float *x, int M, float *y,
                          int reps) {
    int nt = nvlm_pool_threads(p);
    nvlm_err err = {0};
    if (nvlm_matmul(p, y, x, M, w, NULL, &err)) { /* warm up */
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1e30;
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = nvlm_bench_clock(o->cpu_clock, nt);
        nvlm_matmul(p, y, x, M, w, NULL, NULL); /* the same call succeeded above */
        double t = nvlm_bench_clock(o->cpu_clock, nt) - t0;
        if (t < best) best = t;
    }
    return best;
}

/* Prints the FMA peak of each vector width the CPU has (levels with the same float32 width,
 * avx512/avx512vnni/avx512bf16, share one probe); returns the best, the machine's real peak
 * (not the pool level's: NVLM_CPU=avx2 on an AVX-512 machine is measured against the 512-bit
 * peak it leaves unused). */
static double fma_peaks(const bench_opts *o, nvlm_pool *pool) {
    int n, last_lanes = 0;
    const int *levels = nvlm_cpu_levels(&n);
    double best = 0;
    for (int l = 0; l < n; l++) {
        int lanes = nvlm_peak_fma_lanes(levels[l]);
        /* the scalar loop is no limit where SIMD exists */
        if (!nvlm_cpu_level_usable(levels[l]) || lanes == last_lanes || (lanes == 1 && nvlm_cpu_hw_level() != NVLM_CPU_SCALAR))
            continue;
        double gf = nvlm_peak_fma_gflops_at(pool, levels[l], o->cpu_clock);
        printf("%s %s (%d-bit) %.1f GFLOP/s", last_lanes ? "," : "", nvlm_cpu_level_name(levels[l]), lanes * 32, gf);
        last_lanes = lanes;
        best = gf > best ? gf : best;
    }
    return best;
}

static void bench_kernels(const bench_opts *o, nvlm_pool **pools, const int *nts, int n_pools, limits *lim) {
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    char feat[256];
    nvlm_cpu_features(feat, sizeof feat);
    printf("cpu: %s; kernel level %s (hardware %s)\n", feat, nvlm_cpu_level_name(nvlm_pool_level(pools[0])),
           nvlm_cpu_level_name(nvlm_cpu_hw_level()));
    size_t bw_bytes = o->quick ? (size_t)64 << 20 : (size_t)256 << 20;
    for (int i = 0; i < n_pools; i++) {
        lim[i].bw = nvlm_peak_read_gbs(pools[i], bw_bytes, 5, o->cpu_clock);
        printf("machine limits, %d thread(s): read bandwidth %.1f GB/s, FMA peak", nts[i], lim[i].bw);
        lim[i].fma = fma_peaks(o, pools[i]);
        printf("; %% of peak below against %.1f\n", lim[i].fma);
    }
    int M = o->quick ? 128 : 512, N = 1024, K = 1024;
    float *x = malloc(sizeof(float) * (size_t)M * K), *y = malloc(sizeof(float) * (size_t)M * 16384);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand();
    printf("\nGEMM y[%d x %d] = x[%d x %d] W^T (prefill/ViT shape); GFLOP/s (%% of FMA peak)\n", M, N, M, K);
    printf("%-6s", "format");
    for (int i = 0; i < n_pools; i++) printf("   %2d thread(s)      ", nts[i]);
    printf("\n");
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        void *wd = rand_matrix(dts[d], N, K);
        nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd};
        printf("%-6s", nvlm_dtype_name(dts[d]));
        for (int i = 0; i < n_pools; i++) {
            double t = time_matmul(o, pools[i], &w, x, M, y, 3), gf = 2.0 * M * N * K / t / 1e9;
            printf("   %7.1f (%5.1f%%)   ", gf, 100 * gf / lim[i].fma);
        }
        printf("\n");
        free(wd);
    }
    int GN = o->quick ? 4096 : 16384, GK = 4096;
    printf("\nGEMV y = W x, W [%d x %d] (generation); weight GB/s (%% of read bandwidth)\n", GN, GK);
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        void *wd = rand_matrix(dts[d], GN, GK);
        if (!wd) continue;
        nvlm_wmat w = {.dtype = dts[d], .rows = GN, .cols = GK, .data = wd};
        double bytes = (double)nvlm_row_bytes(dts[d], GK) * GN;
        void *wp = NULL; /* packed as an engine for one sequence packs it (kernels/wpack.h) */
        if (nvlm_wpack_for(pools[0], &w) && (wp = malloc((size_t)bytes))) {
            int layout = nvlm_wpack(pools[0], wp, &w);
            if (layout < 0) free(wp), wp = NULL; /* then timed row-major */
            else w.layout = layout, w.data = wp;
        }
        printf("%-6s", nvlm_dtype_name(dts[d]));
        for (int i = 0; i < n_pools; i++) {
            double t = time_matmul(o, pools[i], &w, x, 1, y, 5), gbs = bytes / t / 1e9;
            printf("   %7.1f (%5.1f%%)   ", gbs, 100 * gbs / lim[i].bw);
        }
        printf("%s\n", !wp ? "" : w.layout == NVLM_WL_Q16 ? "  rows packed 16 a panel (vpdpbusd)" : "  rows packed 8 x 16");
        free(wd), free(wp);
    }
    free(x), free(y);
}

/* Reads one byte per page of every mapped tensor, so the first timed run does not pay for
 * faulting the checkpoint in (seconds for a large model, which made the first ViT figure of a
 * run twice the second). Quantized copies are in memory already; their mapped originals were
 * released and are not touched again. */
static double page_in_weights(const nvlm_model *m) {
    double t0 = nvlm_bench_clock(0, 1);
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < nvlm_st_count(m->st); i++) {
        const nvlm_tensor *t = nvlm_st_at(m->st, i);
        for (uint64_t b = 0; b < t->nbytes; b += 4096) sink ^= ((const uint8_t *)t->data)[b];
    }
    (void)sink;
    return nvlm_bench_clock(0, 1) - t0;
}

/* The weights one generated token reads: every LLM matrix once (the embedding row aside).
 * NULL when out of memory. */
static nvlm_span *token_weights(const nvlm_model *m, int *n) {
    const int L = m->cfg.llm.num_layers;
    nvlm_span *s = malloc(sizeof *s * (size_t)(7 * L + 1));
    *n = 0;
    if (!s) return NULL;
    for (int l = 0; l < L; l++) {
        const llm_layer *y = &m->llm[l];
        const nvlm_wmat *ws[] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->gate, &y->up, &y->down};
        for (int k = 0; k < 7; k++) s[(*n)++] = (nvlm_span){ws[k]->data, nvlm_row_bytes(ws[k]->dtype, ws[k]->cols) * (size_t)nvlm_wmat_held_rows(ws[k])};
    }
    s[(*n)++] = (nvlm_span){m->lm_head.data, nvlm_row_bytes(m->lm_head.dtype, m->lm_head.cols) * (size_t)nvlm_wmat_held_rows(&m->lm_head)};
    return s;
}

/* The tensor-parallel exchanges of a phase, per unit of work (nothing for one process). */
static void print_comm(const nvlm_dist *d, const char *phase, double units, const char *unit) {
    if (nvlm_dist_size(d) < 2 || units <= 0) return;
    nvlm_dist_stats s;
    nvlm_dist_get_stats(d, &s);
    printf("    %s exchanges: %.1f per %s, %.1f KB sent + %.1f KB received per %s, %.3f ms per %s in MPI\n", phase,
           s.n_exchanges / units, unit, s.bytes_sent / 1e3 / units, s.bytes_received / 1e3 / units, unit, s.ms / units, unit);
}

/* Returns the exit status: 1 after printing the first error. */
static int bench_model(const bench_opts *o, const int *nts, int n_pools, const limits *lim) {
    int status = 0;
    for (int i = 0; i < n_pools && !status; i++) {
        nvlm_dist *dist = cli_dist(); /* under mpirun: this rank's share, and the exchanges counted */
        int ranks = nvlm_dist_size(dist);
        nvlm_load_options lo = {.n_threads = nts[i], .weights_io = cli_weights_io(o->weights_io, o->weights),
                                .compute = o->compute, .dist = dist};
        nvlm_model *m = NULL;
        nvlm_err err = {0};
        double t_load = nvlm_bench_clock(0, 1);
        /* packed as an engine packs it (this times the model's own forward, nvlm_llm_forward) */
        if (nvlm_model_load(o->model, &lo, &m, &err) || nvlm_model_quantize(m, o->weights, &err) || nvlm_model_pack(m, 1, &err)) {
            nvlm_model_free(m);
            return cli_report("bench", &err);
        }
        /* bytes read per generated token: every LLM matrix (embedding row aside) once */
        int n_span = 0;
        nvlm_span *spans = token_weights(m, &n_span);
        double wbytes = 0;
        for (int k = 0; k < n_span; k++) wbytes += (double)spans[k].n;
        const int S = m->cfg.image_size, h = m->cfg.llm.hidden_size, V = m->cfg.llm.vocab_size;
        const int per_tile = nvlm_cfg_tokens_per_tile(&m->cfg);
        printf("\nmodel %s, %d rank(s) x %d thread(s), weights %s, compute %s:\n", o->model, ranks, nts[i],
               nvlm_quant_weights_name(o->weights),
               o->compute == NVLM_COMPUTE_BF16 ? "bf16" : "f32");
        t_load = nvlm_bench_clock(0, 1) - t_load;
        if (o->weights != NVLM_WEIGHTS_STORED) printf("  loaded and quantized in %.2f s (untimed)\n", t_load);
        else if (ranks > 1) printf("  this rank's rows read into memory in %.2f s (untimed)\n", t_load);
        else if (m->weights_read) printf("  weights read into memory (--no-mmap) in %.2f s (untimed)\n", t_load);
        else printf("  weights mapped (--mmap), loaded and paged in in %.2f s (untimed)\n", t_load + page_in_weights(m));
        /* ViT */
        size_t npx = (size_t)o->tiles * 3 * S * S;
        float *px = malloc(sizeof(float) * npx), *emb = malloc(sizeof(float) * (size_t)o->tiles * per_tile * h);
        for (size_t k = 0; px && k < npx; k++) px[k] = frand();
        /* best of up to 3 runs (the first also pays for its fresh buffers), stopping after 10 s */
        double vit = 1e30, spent = 0, t0;
        int rc = px && emb ? 0 : -1, runs = 0;
        nvlm_dist_reset_stats(dist);
        for (; !rc && runs < 3 && !nvlm_dist_any(dist, spent >= 10); runs++) { /* ranks agree on the count */
            t0 = nvlm_bench_clock(o->cpu_clock, nts[i]);
            rc = nvlm_encode_tiles(m, px, o->tiles, emb, &err);
            double t = nvlm_bench_clock(o->cpu_clock, nts[i]) - t0;
            vit = t < vit ? t : vit, spent += t;
        }
        if (!rc) printf("  ViT + projector: %.0f ms per tile (%d tile(s), best of %d)\n", vit * 1e3 / o->tiles, o->tiles, runs);
        if (!rc) print_comm(dist, "ViT + projector", (double)o->tiles * runs, "tile");
        free(px), free(emb);
        /* prompt + generation */
        nvlm_kv kv;
        float *x = malloc(sizeof(float) * (size_t)o->prompt * h), *logits = malloc(sizeof(float) * V);
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)o->prompt);
        if (!x || !logits || !ids || nvlm_kv_init(&kv, m, &err)) {
            if (!err.msg[0]) snprintf(err.msg, sizeof err.msg, "out of memory");
            free(x), free(logits), free(ids), free(spans);
            nvlm_model_free(m);
            return cli_report("bench", &err);
        }
        for (int k = 0; k < o->prompt; k++) ids[k] = (int32_t)(k * 7919 % (V - 300));
        nvlm_embed_tokens(m, ids, o->prompt, x, &err);
        nvlm_dist_reset_stats(dist);
        t0 = nvlm_bench_clock(o->cpu_clock, nts[i]);
        for (int p0 = 0; p0 < o->prompt && !rc; p0 += 512) { /* chunks of 512 as chat.c */
            int n = o->prompt - p0 < 512 ? o->prompt - p0 : 512;
            rc = nvlm_llm_forward(m, &kv, x + (size_t)p0 * h, n, NULL, p0 + n == o->prompt ? logits : NULL, 0, &err);
        }
        double tp = nvlm_bench_clock(o->cpu_clock, nts[i]) - t0;
        if (!rc) printf("  prompt: %d tokens in %.2f s = %.1f tok/s\n", o->prompt, tp, o->prompt / tp);
        if (!rc) print_comm(dist, "prompt", o->prompt, "token");
        nvlm_dist_reset_stats(dist);
        /* generation in rounds, each after one pass that only reads the same weights: the two
         * share the minute (this machine's bandwidth drifts) and the memory (same pages) */
        const int rounds = o->gen >= 4 ? 4 : 1;
        double tg = 0, tr = 0;
        for (int r = 0, g = 0; r < rounds && !rc; r++) {
            tr += spans ? nvlm_read_spans_seconds(m->pool, spans, n_span, o->cpu_clock) : 0;
            t0 = nvlm_bench_clock(o->cpu_clock, nts[i]);
            for (int end = o->gen * (r + 1) / rounds; g < end && !rc; g++) {
                int32_t id = nvlm_argmax(logits, V);
                rc = nvlm_embed_tokens(m, &id, 1, x, &err);
                if (!rc) rc = nvlm_llm_forward(m, &kv, x, 1, NULL, logits, 0, &err);
            }
            tg += nvlm_bench_clock(o->cpu_clock, nts[i]) - t0;
        }
        if (!rc) {
            double tps = o->gen / tg;
            printf("  generation: %d tokens in %.2f s = %.1f tok/s", o->gen, tg, tps);
            if (tr > 0) /* the roofline: one token per pass over the weights */
                printf(" (weights %.0f MB/token, read alone at %.1f GB/s between the rounds: roofline %.1f tok/s, %.0f%%)",
                       wbytes / 1e6, wbytes * rounds / tr / 1e9, rounds / tr, 100 * tps * tr / rounds);
            if (lim) printf("\n    (beside the machine-limits probe's %.1f GB/s: %.0f%%)", lim[i].bw, 100 * tps * wbytes / (lim[i].bw * 1e9));
            printf("\n");
            print_comm(dist, "generation", o->gen, "token");
        } else {
            status = cli_report("bench", &err);
        }
        free(spans);
        printf("  peak RSS so far: %.0f MB\n", peak_rss_mb());
        if (ranks > 1) fprintf(stderr, "nvlm bench: rank %d of %d: peak RSS %.0f MB\n", nvlm_dist_rank(dist), ranks, peak_rss_mb());
        nvlm_kv_free(&kv);
        free(x), free(logits), free(ids);
        nvlm_model_free(m);
    }
    return status;
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {.tiles = 1, .prompt = 512, .gen = 32, .kernels = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        long n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            help(stdout);
            return 0;
        } else if (!strcmp(a, "--quick")) {
            o.quick = 1;
        } else if (!strcmp(a, "--cpu-time")) {
            o.cpu_clock = 1;
        } else if (cli_weights_io_flag(a, &o.weights_io)) { /* taken */
        } else if (!strcmp(a, "--no-kernels")) {
            o.kernels = 0;
        } else if (i + 1 >= argc) {
            return cli_usage_error("bench", "unknown option or missing value: '%s' (see --help)", a);
        } else if (!strcmp(a, "--model") || !strcmp(a, "-m")) {
            o.model = argv[++i];
        } else if (!strcmp(a, "--weights")) {
            const char *v = argv[++i];
            if ((o.weights = nvlm_quant_weights(v)) < 0) return cli_usage_error("bench", "--weights must be " NVLM_QUANT_NAMES);
        } else if (!strcmp(a, "--compute")) {
            if (cli_compute_value(argv[++i], &o.compute)) return cli_usage_error("bench", "--compute must be f32 or bf16");
        } else {
            int *dst = !strcmp(a, "--threads") || !strcmp(a, "-t") ? &o.threads
                       : !strcmp(a, "--tiles")                     ? &o.tiles
                       : !strcmp(a, "--prompt")                    ? &o.prompt
                       : !strcmp(a, "--gen")                       ? &o.gen
                                                                   : NULL;
            if (!dst) return cli_usage_error("bench", "unknown option '%s' (see --help)", a);
            if (cli_parse_int(argv[++i], 1, 1 << 20, &n)) return cli_usage_error("bench", "bad value for %s", a);
            *dst = (int)n;
        }
    }
    if (!o.threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = n > 0 ? (int)n : 1;
    }
    int nts[2] = {1, o.threads}, n_pools = o.threads > 1 ? 2 : 1;
    nvlm_pool *pools[2] = {NULL, NULL};
    limits lim[2] = {{0, 0}, {0, 0}};
    nvlm_err err = {0};
    for (int i = 0; i < n_pools; i++)
        if (nvlm_pool_new(nts[i], &pools[i], &err)) return cli_report("bench", &err);
    if (o.kernels) bench_kernels(&o, pools, nts, n_pools, lim);
    for (int i = 0; i < n_pools; i++) nvlm_pool_free(pools[i]);
    return o.model ? bench_model(&o, nts, n_pools, o.kernels ? lim : NULL) : 0;
}
