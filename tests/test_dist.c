/* Tensor parallel across MPI ranks (docs/distributed.md): every reference case (NVLM-D, -X, -H,
 * sharded) under `mpirun -np 2` and `-np 3 --oversubscribe`, over shared memory and over TCP
 * (--mca btl self,tcp), gives one process's prompt ids, greedy ids, response and last-prompt
 * logits bit for bit (and the reference's, within its bounds); a rank killed mid-generation
 * ends the job within seconds naming the rank; a rank that cannot read its checkpoint, and
 * ranks that loaded different checkpoints, are refused at load on every rank.
 * The program is its own MPI worker: started by mpirun it runs the cases (or a fault) as one
 * rank. Skipped with a message when nvlm was built without MPI or mpirun is missing. */
#include "check.h"
#include "ref_cases.h"
#include "core/file.h"
#include "dist/dist.h"
#include "engine/engine.h"
#include "kernels/cpu.h"
#include "kernels/qblock.h"
#include <cjson/cJSON.h>
#include <limits.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *const case_files[] = {"reference/model_cases.jsonl", "reference/model_cases_xh.jsonl"};

/* One case's answer, appended to out (when not NULL) as: id, prompt ids, output ids, response,
 * last logits; and checked against the reference (against_ref: the weights as stored). */
static void run_case(nvlm_model *m, const cJSON *cs, FILE *out, int against_ref) {
    const char *id = ref_str(cs, "id");
    nvlm_err err = {0};
    nvlm_chat *c = ref_case_chat(m, cs, id);
    if (!c) return;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = ref_int(cs, "max_new_tokens");
    nvlm_answer a;
    int rc = nvlm_chat_ask(c, ref_str(cs, "question"), &s, NULL, NULL, &a, &err);
    CHECK(rc == 0, "%s: ask: %s", id, err.msg);
    int V = nvlm_model_vocab_size(m);
    if (rc == 0 && against_ref) {
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "prompt_ids"), a.prompt_ids, a.n_prompt), "%s: prompt ids differ", id);
        CHECK(ref_ids_equal(cJSON_GetObjectItem(cs, "output_ids"), a.output_ids, a.n_output), "%s: output ids differ", id);
        CHECK(!strcmp(a.response, ref_str(cs, "response")), "%s: response differs", id);
        char path[512];
        snprintf(path, sizeof path, "reference/%s", ref_str(cJSON_GetObjectItem(cs, "logits"), "path"));
        float *ref = ref_read_f32(path, (size_t)V);
        if (ref) CHECK(ref_max_abs_diff(a.last_logits, ref, (size_t)V) <= 6e-4, "%s: logits far from the reference", id);
        free(ref);
    }
    if (rc == 0) {
        if (out) {
            fprintf(out, "%s %zu %zu\n", id, a.n_prompt, a.n_output);
            fwrite(a.prompt_ids, sizeof(int32_t), a.n_prompt, out);
            fwrite(a.output_ids, sizeof(int32_t), a.n_output, out);
            fprintf(out, "%s\n", a.response);
            fwrite(a.last_logits, sizeof(float), (size_t)V, out);
        }
        nvlm_answer_free(&a);
    }
    nvlm_chat_free(c);
}

/* Every case of both files (first_only: the first case of each model), with the model of each
 * loaded for dist (NULL: one process). */
static void run_all(nvlm_dist *dist, FILE *out, int first_only, int weights) {
    nvlm_load_options lo = {.n_threads = 1, .dist = dist};
    for (size_t f = 0; f < sizeof case_files / sizeof case_files[0]; f++) {
        char *text;
        size_t len;
        nvlm_err err = {0};
        if (nvlm_read_file(shared_path(case_files[f]), 0, &text, &len, &err)) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        nvlm_model *m = NULL;
        char loaded[512] = "";
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            cJSON *cs = cJSON_Parse(line);
            const char *id = ref_str(cs, "id"), *model = ref_str(cs, "model");
            int fresh = strcmp(model, loaded) != 0;
            if (ref_selected(id) && fresh) {
                nvlm_model_free(m);
                m = NULL;
                char rel[512];
                snprintf(rel, sizeof rel, "reference/%s", model);
                CHECK(nvlm_model_load(shared_path(rel), &lo, &m, &err) == 0 && nvlm_model_quantize(m, weights, &err) == 0,
                      "load %s: %s", rel, err.msg);
                snprintf(loaded, sizeof loaded, "%s", model);
            }
            if (m && ref_selected(id) && (fresh || !first_only)) run_case(m, cs, out, weights == NVLM_WEIGHTS_STORED);
            cJSON_Delete(cs);
        }
        nvlm_model_free(m);
        free(text);
    }
}

/* ---- the worker: one rank of a job started by the test ---- */

static int kill_token(void *user, int32_t id, const char *text, size_t len) {
    (void)id, (void)text, (void)len;
    int *n = user;
    if (++*n == 3) raise(SIGKILL); /* rank 1 dies in the middle of the generation */
    return 0;
}

/* The engine's KV store keeps the keys and values of this rank's kv heads only. */
static void check_kv_split(nvlm_dist *d) {
    nvlm_load_options lo = {.n_threads = 1, .dist = d};
    nvlm_model *m = NULL;
    nvlm_engine *e = NULL;
    nvlm_err err = {0};
    if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err) || nvlm_engine_new(m, NULL, &e, &err)) {
        CHECK(0, "kv split: %s", err.msg);
    } else {
        const nvlm_llm_config *c = &m->cfg.llm;
        int h0, h1, g0, g1, hd = c->hidden_size / c->num_heads;
        nvlm_dist_heads(nvlm_dist_rank(d), nvlm_dist_size(d), c->num_heads, c->num_kv_heads, &h0, &h1, &g0, &g1);
        int kd = nvlm_kv_dim(nvlm_engine_kv(e));
        CHECK(kd == (g1 - g0) * hd && kd < c->num_kv_heads * hd, "rank %d: the KV store keeps %d values per position, "
              "not those of kv heads [%d, %d) of %d", nvlm_dist_rank(d), kd, g0, g1, c->num_kv_heads);
    }
    nvlm_engine_free(e);
    nvlm_model_free(m);
}

static int worker(int argc, char **argv) {
    nvlm_dist *d = NULL;
    nvlm_err err = {0};
    if (nvlm_dist_init(&argc, &argv, &d, &err)) {
        fprintf(stderr, "worker: %s\n", err.msg);
        return 1;
    }
    int rank = nvlm_dist_rank(d), status = 0;
    if (!strcmp(argv[1], "--cases")) {
        FILE *out = rank == 0 ? fopen(argv[2], "wb") : NULL;
        run_all(d, out, strcmp(argv[3], "all") != 0, !strcmp(argv[3], "first-q8") ? NVLM_WEIGHTS_Q8_0 : NVLM_WEIGHTS_STORED);
        if (out) fclose(out);
        check_kv_split(d);
        char name[64];
        snprintf(name, sizeof name, "test_dist worker rank %d", rank);
        status = check_done(name);
    } else if (!strcmp(argv[1], "--kill")) {
        nvlm_load_options lo = {.n_threads = 1, .dist = d};
        nvlm_model *m = NULL;
        nvlm_chat *c = NULL;
        nvlm_answer a;
        nvlm_sampling s;
        nvlm_sampling_default(&s);
        s.max_new_tokens = 2000;
        int n = 0;
        if (nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err) || nvlm_chat_new(m, &c, &err) ||
            nvlm_chat_ask(c, "Count to a thousand.", &s, rank == 1 ? kill_token : NULL, &n, &a, &err))
            printf("rank %d: %s\n", rank, err.msg);
        status = 1; /* not reached by a healthy job: the kill ends it first */
    } else { /* --load DIR0 DIR1: rank r loads DIRr; the load must fail on every rank */
        nvlm_load_options lo = {.n_threads = 1, .dist = d};
        nvlm_model *m = NULL;
        int rc = nvlm_model_load(argv[2 + (rank > 0)], &lo, &m, &err);
        printf("rank %d: load %s: %s\n", rank, rc ? "refused" : "accepted", err.msg);
        fflush(stdout);
        nvlm_model_free(m);
        status = rc ? 0 : 1;
    }
    nvlm_dist_finish(d);
    return status;
}

/* ---- the test: one process, then jobs of it ---- */

static char self[4096];

/* Runs `timeout 120 mpirun <args> self <wargs>`, output into out; returns the exit status and the seconds. */
static int job(const char *args, const char *wargs, char *out, size_t cap, double *secs) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "timeout 300 mpirun --oversubscribe %s %s %s 2>&1", args, self, wargs);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (p) {
        size_t k;
        while (n + 1 < cap && (k = fread(out + n, 1, cap - 1 - n, p)) > 0) n += k;
        char sink[4096];
        while (fread(sink, 1, sizeof sink, p) > 0) {}
    }
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    nvlm_err err = {0};
    int ok = !nvlm_read_file(a, 0, &x, &nx, &err) && !nvlm_read_file(b, 0, &y, &ny, &err) && nx == ny && nx > 0 &&
             !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}

/* A copy of tiny-nvlm-d in dir with config.json changed (config: a different checkpoint) or
 * model.safetensors cut short (a rank that cannot read its shard). */
static int damaged_copy(const char *dir, int cut_weights) {
    char cmd[2048];
    const char *src = shared_path("reference/models/tiny-nvlm-d");
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s && %s", dir, src, dir,
             cut_weights ? "truncate -s 100000 %s/model.safetensors" : "sed -i 's/\"rope_theta\": *[0-9.e+]*/\"rope_theta\": 12345.0/' %s/config.json");
    char full[4096];
    snprintf(full, sizeof full, cmd, dir);
    return system(full);
}

/* ---- in one process: the row split, and products on a slice equal the full product's columns ---- */

static void check_split(void) {
    static const int rows[] = {0, 1, 31, 32, 77, 12288, 151936}, units[] = {1, 7, 32, 128};
    int bad = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        for (size_t u = 0; u < sizeof units / sizeof units[0]; u++)
            for (int size = 1; size <= 9; size++) {
                int next = 0, lo = 1 << 30, hi = 0;
                for (int r = 0; r < size; r++) {
                    int r0, n;
                    nvlm_dist_split(rows[i], units[u], r, size, &r0, &n);
                    bad += r0 != next || n < 0 || (r0 % units[u] && n);
                    next = r0 + n;
                    if (r0 + n < rows[i]) lo = n < lo ? n : lo, hi = n > hi ? n : hi; /* the last rank may be clipped */
                }
                bad += next != rows[i] || (hi > lo && hi - lo > units[u]);
            }
    CHECK(bad == 0, "nvlm_dist_split: %d slices not contiguous, not covering or unbalanced", bad);
    /* the KV split by heads: the query heads cover [0, n_heads) once, and each rank keeps the kv
     * head of every one of its query heads and no other (a straddled group: kept by both) */
    static const int heads[][2] = {{4, 2}, {14, 2}, {64, 8}, {25, 25}, {28, 4}, {40, 8}, {12, 1}};
    bad = 0;
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
        for (int size = 1; size <= 9; size++) {
            int next = 0, group = heads[i][0] / heads[i][1];
            for (int r = 0; r < size; r++) {
                int h0, h1, g0, g1;
                nvlm_dist_heads(r, size, heads[i][0], heads[i][1], &h0, &h1, &g0, &g1);
                bad += h0 != next || h1 < h0 || g0 < 0 || g1 > heads[i][1] || g1 <= g0;
                if (h1 > h0) bad += g0 != h0 / group || g1 != (h1 - 1) / group + 1;
                next = h1;
            }
            bad += next != heads[i][0];
        }
    CHECK(bad == 0, "nvlm_dist_heads: %d head ranges not covering, or kv heads not those of the query heads", bad);
}

/* At every kernel level: y computed on row slices (cut as ranks cut them) has the bits of the
 * full product's columns, for every weight format, for generation (1 token) and prompt shapes. */
static void check_slices(void) {
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    enum { N = 77, K = 96, T = 40 };
    nvlm_pool *pool = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_pool_new(2, &pool, &err) == 0, "pool: %s", err.msg);
    float *x = malloc(sizeof(float) * T * K), *wf = malloc(sizeof(float) * N * K), *bias = malloc(sizeof(float) * N);
    float *full = malloc(sizeof(float) * T * N), *part = malloc(sizeof(float) * T * N);
    uint8_t *wd = malloc(nvlm_row_bytes(NVLM_DT_F32, K) * N);
    if (!pool || !x || !wf || !bias || !full || !part || !wd) {
        CHECK(0, "out of memory");
        goto done;
    }
    uint32_t st = 12345;
    for (int i = 0; i < T * K; i++) x[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    for (int i = 0; i < N * K; i++) wf[i] = (float)((st = st * 1664525u + 1013904223u) >> 8) / (1 << 23) - 1.0f;
    for (int i = 0; i < N; i++) bias[i] = 0.01f * (float)i;
    int n_levels, bad = 0, tried = 0;
    const int *levels = nvlm_cpu_levels(&n_levels);
    for (int li = 0; li < n_levels; li++) {
        if (!nvlm_cpu_level_usable(levels[li])) continue;
        nvlm_pool_set_level(pool, levels[li]);
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
            size_t rb = nvlm_row_bytes(dts[d], K);
            for (int r = 0; r < N; r++) nvlm_row_from_f32(wd + rb * r, wf + (size_t)r * K, dts[d], K);
            nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd};
            static const int toks[] = {1, 5, T};
            for (int ti = 0; ti < 3; ti++) {
                int n_tok = toks[ti];
                nvlm_matmul(pool, full, x, n_tok, &w, bias, NULL);
                for (int size = 2; size <= 3; size++)
                    for (int unit = 7; unit <= 32; unit += 25)
                        for (int rank = 0; rank < size; rank++) {
                            int r0, n;
                            nvlm_dist_split(N, unit, rank, size, &r0, &n);
                            nvlm_wmat s = {.dtype = dts[d], .rows = n, .cols = K, .data = wd + rb * r0};
                            nvlm_matmul(pool, part, x, n_tok, &s, bias + r0, NULL);
                            for (int t = 0; t < n_tok; t++)
                                bad += memcmp(part + (size_t)t * n, full + (size_t)t * N + r0, sizeof(float) * n) != 0;
                            tried++;
                        }
            }
        }
    }
    CHECK(bad == 0, "%d of %d slice products differ from the full product's columns", bad, tried);
done:
    free(x), free(wf), free(bias), free(full), free(part), free(wd);
    nvlm_pool_free(pool);
}

/* ---- nvlm chat: rank 0 reads the input and hands each line (and image file) to the others ---- */

static int nvlm_binary(char *out, size_t cap) {
    snprintf(out, cap, "%s", self);
    char *slash = strrchr(out, '/');
    snprintf(slash ? slash + 1 : out, cap - (size_t)(slash ? slash + 1 - out : 0), "../nvlm");
    return access(out, X_OK) == 0;
}

/* nvlm info says whether MPI is in and gives each rank's share for N = 1, 2, 4, 8, shrinking with N. */
static void check_info(void) {
    char nvlm[4200], cmd[8400];
    if (!nvlm_binary(nvlm, sizeof nvlm)) return;
    snprintf(cmd, sizeof cmd, "%.4000s info --model %.4000s --json", nvlm, shared_path("reference/models/tiny-nvlm-d"));
    FILE *p = popen(cmd, "r");
    static char out[1 << 16];
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    cJSON *j = cJSON_Parse(out), *per = cJSON_GetObjectItem(j, "weights_per_rank_bytes");
    double prev = 1e300;
    int ok = cJSON_IsBool(cJSON_GetObjectItem(j, "mpi")) && cJSON_IsTrue(cJSON_GetObjectItem(j, "mpi")) == nvlm_dist_built();
    for (int r = 1; r <= 8; r *= 2) {
        char key[16];
        snprintf(key, sizeof key, "%d", r);
        const cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(per, key), "bf16");
        ok = ok && cJSON_IsNumber(e) && e->valuedouble < prev;
        prev = cJSON_IsNumber(e) ? e->valuedouble : 0;
    }
    CHECK(ok, "nvlm info --json: no mpi flag or per-rank weights for N = 1, 2, 4, 8:\n%s", out);
    printf("  nvlm info: MPI %s, each rank's share of the weights for N = 1, 2, 4, 8\n", nvlm_dist_built() ? "in" : "out");
    cJSON_Delete(j);
}

static void check_chat(const char *tmp) {
    char nvlm[4200], in[4200], cmd[16384], outs[3][4200];
    if (!nvlm_binary(nvlm, sizeof nvlm)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm);
        return;
    }
    char image[PATH_MAX];
    if (!realpath(shared_path("reference/images/skimage_astronaut.png"), image)) snprintf(image, sizeof image, "missing");
    snprintf(in, sizeof in, "%.4000s/chat.in", tmp);
    FILE *f = fopen(in, "w");
    CHECK(f != NULL, "cannot write %s", in);
    if (!f) return;
    fprintf(f, "/image %s\nDescribe the image.\n/image %s/absent.png\nAnd once more?\n\n/quit\n", image, tmp);
    fclose(f);
    static const char *const launch[3] = {"", "mpirun --oversubscribe -np 2", "mpirun --oversubscribe -np 3 --mca btl self,tcp"};
    for (int k = 0; k < 3; k++) {
        snprintf(outs[k], sizeof outs[k], "%.4000s/chat%d.out", tmp, k);
        snprintf(cmd, sizeof cmd, "timeout 120 %s %.1000s chat --model %.1000s -n 10 -t 1 -q <%.1000s >%.1000s 2>/dev/null", launch[k], nvlm,
                 shared_path("reference/models/tiny-nvlm-d"), in, outs[k]);
        CHECK(system(cmd) == 0, "chat %d failed: %s", k, cmd);
    }
    CHECK(same_file(outs[0], outs[1]) && same_file(outs[0], outs[2]), "nvlm chat at 2 and 3 ranks answers unlike one process");
    printf("  nvlm chat (an image, a missing image, two questions) at 2 and 3 ranks answers as one process\n");
}

/* ---- data-parallel training ---- */

/* The losses of a train_log.jsonl (at most max), and whether every line says "ranks": want
 * (want 0: any). Returns the number of losses, -1 when the file cannot be read. */
static int read_losses(const char *path, double *loss, int max, int want, int *ranks_ok) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(path, 0, &text, &len, &err)) return -1;
    int n = 0;
    *ranks_ok = 1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *l = cJSON_GetObjectItem(j, "loss"), *r = cJSON_GetObjectItem(j, "ranks");
        if (!cJSON_IsNumber(r) || (want && r->valueint != want)) *ranks_ok = 0;
        if (cJSON_IsNumber(l) && n < max) loss[n++] = l->valuedouble;
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

static int close_losses(const double *a, const double *b, int n) {
    for (int i = 0; i < n; i++)
        if (!(fabs(a[i] - b[i]) <= 1e-5 * fabs(a[i]))) return 0;
    return 1;
}

/* nvlm train at 1 rank, at 2, and 3 steps at 2 ranks resumed at 3 ranks: the same losses
 * within 1e-5 relative, and "ranks": N on every log line. */
static void check_training(const char *tmp) {
    char nvlm[4200], data[4200], cmd[16384], out[4][4300], log[4400];
    if (!nvlm_binary(nvlm, sizeof nvlm)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm);
        return;
    }
    snprintf(data, sizeof data, "%s/train.jsonl", tmp);
    FILE *f = fopen(data, "w");
    CHECK(f != NULL, "cannot write %s", data);
    if (!f) return;
    static const char *const qa[][2] = {{"What is two plus two?", "Four."}, {"Name a colour.", "Blue."}, {"Say hello.", "Hello!"},
                                        {"What is the capital of France?", "Paris."}, {"Count to three.", "One, two, three."},
                                        {"Name an animal.", "A cat."}, {"What day is it?", "Monday."}, {"Give a number.", "Seven."}};
    char image[PATH_MAX];
    if (!realpath(shared_path("reference/images/skimage_astronaut.png"), image)) snprintf(image, sizeof image, "missing");
    for (int i = 0; i < 12; i++) {
        if (i % 4 == 0) fprintf(f, "{\"image\": \"%s\", ", image); /* absolute: the data's folder is tmp */
        else fprintf(f, "{");
        fprintf(f, "\"conversations\": [{\"from\": \"human\", \"value\": \"%s%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n",
                i % 4 == 0 ? "<image>\\n" : "", qa[i % 8][0], qa[i % 8][1]);
    }
    fclose(f);
    const char *args = "--stage 2 --batch 4 --lr 1e-3 --threads 1 --max-tiles 1 --schedule constant";
    static const char *const launch[4] = {"", "mpirun --oversubscribe -np 2", "mpirun --oversubscribe -np 2", "mpirun --oversubscribe -np 3"};
    for (int k = 0; k < 4; k++) {
        snprintf(out[k], sizeof out[k], "%.4000s/train%d", tmp, k < 3 ? k : 2);
        if (k < 3) snprintf(cmd, sizeof cmd, "timeout 120 %s %.1000s train --model %.1000s --data %.1000s --out %.1000s --steps %d %s >/dev/null 2>&1", launch[k], nvlm,
                            shared_path("reference/models/tiny-nvlm-d"), data, out[k], k == 2 ? 3 : 6, args);
        else snprintf(cmd, sizeof cmd, "timeout 120 %s %.1000s train --resume %.1000s --data %.1000s --out %.1000s --steps 6 %s >/dev/null 2>&1", launch[k], nvlm,
                      out[k], data, out[k], args);
        CHECK(system(cmd) == 0, "training run %d failed: %s", k, cmd);
    }
    double l[3][8];
    int n[3], ok[3];
    for (int k = 0; k < 3; k++) {
        snprintf(log, sizeof log, "%.4000s/train_log.jsonl", out[k]);
        n[k] = read_losses(log, l[k], 8, k == 0 ? 1 : k == 1 ? 2 : 0, &ok[k]);
    }
    CHECK(n[0] == 6 && ok[0], "one process: %d losses, ranks %s", n[0], ok[0] ? "1" : "missing");
    CHECK(n[1] == 6 && ok[1] && close_losses(l[0], l[1], 6), "2 ranks: %d losses (ranks: 2 on every line: %d), not one process's", n[1], ok[1]);
    CHECK(n[2] == 6 && ok[2] && close_losses(l[0], l[2], 6), "2 ranks resumed at 3: %d losses, not one process's", n[2]);
    CHECK(n[0] == 6 && l[0][5] < l[0][0], "training does not learn: %g -> %g", l[0][0], l[0][5]);
    printf("  training: 2 ranks, and 2 resumed at 3, follow one process's losses within 1e-5 (%.4f -> %.4f)\n", l[0][0], l[0][5]);
}

int main(int argc, char **argv) {
    if (nvlm_dist_launch_size() > 1 && argc > 3) return worker(argc, argv);
    if (!realpath(argv[0], self)) snprintf(self, sizeof self, "%s", argv[0]);
    check_split();
    check_slices();
    check_info();
    if (!nvlm_dist_built()) {
        printf("test_dist: skipped: nvlm was built without MPI (install libopenmpi-dev, scripts/install-deps.sh, and rebuild)\n");
        return check_done("test_dist");
    }
    if (system("command -v mpirun >/dev/null 2>&1")) {
        printf("test_dist: skipped: no mpirun on PATH (install openmpi-bin)\n");
        return check_done("test_dist");
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1); /* the MPI library's own allocations at exit */
    char tmp[] = "/tmp/nvlm-test-dist-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    char one[3][4200], many[4200], wargs[4400];
    for (int k = 0; k < 3; k++) { /* one process's answers: every case, the first of each model, the same at Q8_0 */
        snprintf(one[k], sizeof one[k], "%s/one%d.bin", tmp, k);
        FILE *f = fopen(one[k], "wb");
        CHECK(f != NULL, "cannot write %s", one[k]);
        if (!f) return check_done("test_dist");
        run_all(NULL, f, k > 0, k == 2 ? NVLM_WEIGHTS_Q8_0 : NVLM_WEIGHTS_STORED);
        fclose(f);
    }

    static char out[1 << 16];
    double secs;
    /* every case at 2 ranks; the first case of each model (D, X, H, sharded) in the other jobs:
     * on 2 busy cores each exchange waits for a scheduling slice, so the whole set takes minutes */
    static const struct {
        const char *args, *what;
        int set; /* 0 every case, 1 the first case of each model, 2 those at --weights q8_0 */
    } jobs[] = {
        {"-np 2", "2 ranks, shared memory", 0},
        {"-np 3", "3 ranks (oversubscribed), shared memory", 1},
        {"-np 2 --mca btl self,tcp", "2 ranks over TCP", 1},
        {"-np 3 --mca btl self,tcp", "3 ranks over TCP", 1},
        {"-np 3", "3 ranks, weights quantized to Q8_0 at load", 2},
    };
    static const char *const set_arg[3] = {"all", "first", "first-q8"};
    static const char *const set_what[3] = {"every case", "the first case of each model", "the first case of each model"};
    for (size_t j = 0; j < sizeof jobs / sizeof jobs[0]; j++) {
        snprintf(many, sizeof many, "%s/job%zu.bin", tmp, j);
        int set = UNDER_ASAN && jobs[j].set == 0 ? 1 : jobs[j].set; /* ASan: every case takes minutes */
        snprintf(wargs, sizeof wargs, "--cases %s %s", many, set_arg[set]);
        int rc = job(jobs[j].args, wargs, out, sizeof out, &secs);
        CHECK(rc == 0, "%s: exit %d:\n%s", jobs[j].what, rc, out);
        CHECK(same_file(one[set], many), "%s: answers or logits differ from one process's", jobs[j].what);
        printf("  %s: %s as one process (%.1f s)\n", jobs[j].what, set_what[set], secs);
    }

    /* a rank killed mid-generation ends the job within seconds, naming the rank */
    int rc = job("-np 2", "--kill x x", out, sizeof out, &secs);
    CHECK(rc != 0 && secs < 20 && strstr(out, "rank 1"), "killed rank: exit %d after %.1f s:\n%s", rc, secs, out);
    printf("  a rank killed mid-generation: the job ended in %.1f s\n", secs);

    /* a rank that cannot read its checkpoint, and ranks with different checkpoints: refused on every rank */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/cut", tmp);
    CHECK(damaged_copy(bad, 1) == 0, "cannot make the damaged copy");
    snprintf(wargs, sizeof wargs, "--load %s %s", shared_path("reference/models/tiny-nvlm-d"), bad);
    rc = job("-np 2", wargs, out, sizeof out, &secs);
    CHECK(rc == 0 && strstr(out, "rank 0: load refused: rank 1 of 2:") && strstr(out, "rank 1: load refused: rank 1 of 2:") &&
              strstr(out, "model.safetensors"),
          "unreadable shard on rank 1: exit %d:\n%s", rc, out);
    snprintf(bad, sizeof bad, "%s/other", tmp);
    CHECK(damaged_copy(bad, 0) == 0, "cannot make the changed copy");
    snprintf(wargs, sizeof wargs, "--load %s %s", shared_path("reference/models/tiny-nvlm-d"), bad);
    rc = job("-np 2", wargs, out, sizeof out, &secs);
    CHECK(rc == 0 && strstr(out, "rank 0: load refused: rank 1 loaded a different checkpoint") &&
              strstr(out, "rank 1: load refused: rank 1 loaded a different checkpoint"),
          "different checkpoints: exit %d:\n%s", rc, out);
    printf("  a rank that cannot read its checkpoint, and ranks with different checkpoints: refused on every rank\n");
    check_chat(tmp);
    check_training(tmp);
    char rm[4300];
    snprintf(rm, sizeof rm, "rm -rf %s", tmp);
    if (system(rm)) fprintf(stderr, "cannot remove %s\n", tmp);
    return check_done("test_dist");
}
