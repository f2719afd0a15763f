/* Batch invariance of the engine (docs/engine.md): a sequence's logits are bit-identical
 * whether it is decoded alone or in a batch with others, at any thread count and any prompt
 * chunking. Each model (NVLM-D text and image, NVLM-X, NVLM-H, each sequence with its own
 * images and cross-attention memory) runs every conversation alone (whole prompt in one step,
 * 1 thread), then in batches of 2 to 8 on one engine (prompts in chunks of a few tokens, so
 * prompt and generated tokens of different sequences share steps) at 1 and 3 threads; every
 * logits row of every step is compared with memcmp. */
#include "check.h"
#include "engine/engine.h"
#include "generate/chat_internal.h"
#include "kernels/cpu.h"
#include "kernels/qblock.h"
#include "model/model.h"

enum { NEW_TOKENS = 5, MAX_CONV = 8 };

typedef struct conv {
    const char *question;
    const char *image; /* under the shared reference folder, or NULL */
} conv;

typedef struct rec {
    float *lg;
    int n, cap; /* logits rows */
} rec;

static void rec_push(rec *r, const float *lg, int V) {
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 8;
        r->lg = realloc(r->lg, sizeof(float) * (size_t)V * r->cap);
    }
    memcpy(r->lg + (size_t)r->n++ * V, lg, sizeof(float) * V);
}

/* Runs conversations cv[idx[0..n)] together on one engine; rows of logits into out[k]. budget:
 * prompt tokens a conversation adds per step (< 0: all). Returns 0 when all completed. */
static int run(nvlm_model *m, const conv *cv, const int *idx, int n, int budget, rec *out) {
    nvlm_err err = {0};
    nvlm_engine *e = NULL;
    nvlm_engine_opts eo = {.max_batch = 1024, .page_tokens = 8};
    if (nvlm_engine_new(m, &eo, &e, &err)) return -1;
    const int V = m->cfg.llm.vocab_size;
    nvlm_chat *c[MAX_CONV] = {0};
    int done[MAX_CONV] = {0}, rc = 0;
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = NEW_TOKENS;
    for (int k = 0; k < n && !rc; k++) {
        const conv *q = &cv[idx[k]];
        rc = nvlm_chat_new(m, &c[k], &err);
        if (!rc && q->image) rc = nvlm_chat_add_image_file(c[k], shared_path(q->image), &err);
        if (!rc) rc = nvlm_chat_use_engine(c[k], e, &err);
        if (!rc) rc = nvlm_chat_begin(c[k], q->question, &s, NULL, NULL, &err);
        for (int d = 0; !rc && !d;) rc = nvlm_chat_encode_step(c[k], -1, &d, &err);
    }
    nvlm_batch b;
    float *lg = malloc(sizeof(float) * (size_t)V * MAX_CONV);
    if (!rc) rc = nvlm_batch_init(&b, 1024, m->cfg.llm.hidden_size, &err);
    for (int left = n; !rc && left;) {
        nvlm_batch_clear(&b);
        int added[MAX_CONV] = {0};
        for (int k = 0; k < n && !rc; k++) /* in a rotating order: positions in the batch vary */
            if (!done[(k + left) % n]) {
                int kk = (k + left) % n, a = nvlm_chat_add_to_batch(c[kk], &b, budget, &err);
                rc = a < 0 ? a : 0;
                added[kk] = a > 0;
            }
        if (!rc) rc = nvlm_decode(e, &b, 0, m->cfg.llm.num_layers, NULL, lg, &err);
        int mark = 0;
        for (int i = 0; !rc && i < b.n_tok; i++) {
            if (i && b.seq[i] == b.seq[i - 1]) continue;
            int kk = -1, marked = 0;
            for (int k = 0; k < n; k++)
                if (added[k] && nvlm_chat_seq(c[k]) == b.seq[i]) kk = k;
            for (int t = i; t < b.n_tok && b.seq[t] == b.seq[i]; t++) marked |= b.logits[t];
            if (marked) rec_push(&out[kk], lg + (size_t)mark * V, V);
            int fin = 0;
            rc = nvlm_chat_step_done(c[kk], marked ? lg + (size_t)mark++ * V : NULL, &fin, &err);
            if (fin) done[kk] = 1, left--;
        }
    }
    if (rc) fprintf(stderr, "run: %s\n", err.msg);
    for (int k = 0; k < n; k++) {
        nvlm_answer a;
        if (!rc && !nvlm_chat_finish(c[k], &a, &err)) nvlm_answer_free(&a);
        nvlm_chat_free(c[k]);
    }
    if (b.cap) nvlm_batch_free(&b);
    free(lg);
    nvlm_engine_free(e);
    return rc;
}

static int same(const rec *a, const rec *b, int V) {
    return a->n == b->n && a->n > 0 && !memcmp(a->lg, b->lg, sizeof(float) * (size_t)V * a->n);
}

static void test_model(const char *dir, const conv *cv, int n_conv) {
    nvlm_err err = {0};
    nvlm_model *m1 = NULL, *m3 = NULL;
    nvlm_load_options lo = {.n_threads = 1};
    CHECK(nvlm_model_load(shared_path(dir), &lo, &m1, &err) == 0, "load %s: %s", dir, err.msg);
    lo.n_threads = 3;
    CHECK(nvlm_model_load(shared_path(dir), &lo, &m3, &err) == 0, "load %s: %s", dir, err.msg);
    if (!m1 || !m3) return;
    const int V = m1->cfg.llm.vocab_size;
    rec alone[MAX_CONV] = {{0}};
    for (int k = 0; k < n_conv; k++) {
        int idx = k;
        CHECK(run(m1, cv, &idx, 1, -1, &alone[k]) == 0, "%s: conversation %d alone", dir, k);
        CHECK(alone[k].n == NEW_TOKENS, "%s: %d logits rows", dir, alone[k].n);
    }
    int checked = 0;
    for (int threads = 1; threads <= 3; threads += 2)
        for (int n = 2; n <= n_conv; n++) {
            int idx[MAX_CONV];
            for (int k = 0; k < n; k++) idx[k] = (k * 3 + n) % n_conv; /* different mixes per size */
            for (int k = 1; k < n; k++) /* distinct */
                for (int q = 0; q < k; q++)
                    if (idx[q] == idx[k]) idx[k] = (idx[k] + 1) % n_conv, q = -1;
            rec got[MAX_CONV] = {{0}};
            int budget = 3 + n % 5; /* chunks of 3..7 prompt tokens */
            CHECK(run(threads == 1 ? m1 : m3, cv, idx, n, budget, got) == 0, "%s: batch of %d", dir, n);
            for (int k = 0; k < n; k++) {
                CHECK(same(&got[k], &alone[idx[k]], V), "%s: conversation %d in a batch of %d at %d threads: %d rows, "
                      "logits differ from alone", dir, idx[k], n, threads, got[k].n);
                free(got[k].lg);
                checked++;
            }
        }
    printf("%s: %d conversations in batches of 2..%d at 1 and 3 threads, %d compared bit for bit\n", dir, n_conv, n_conv,
           checked);
    for (int k = 0; k < n_conv; k++) free(alone[k].lg);
    nvlm_model_free(m1);
    nvlm_model_free(m3);
}

/* The kernels alone: nvlm_matmul_roles with n generated rows gives each row exactly what it
 * gives alone, for every format and odd shapes, at every level the machine has; prompt rows
 * (the packed product) likewise whatever their number; in float32 and in bf16 compute (where
 * prompt rows take the bf16 product, generated rows still the float matrix-vector kernels). */
static void test_kernels(void) {
    const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    /* rows, cols (block formats: cols % 32); 2056: the batch kernel's 3 rows a pass, a tail of 8 */
    const int shapes[][2] = {{37, 64}, {130, 96}, {67, 200}, {16, 1000}, {41, 2056}};
    int nl = 0, bad = 0, runs = 0;
    const int *levels = nvlm_cpu_levels(&nl);
    nvlm_pool *pool = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_pool_new(3, &pool, &err) == 0, "%s", err.msg);
    for (int li = 0; li < 2 * nl && pool; li++) { /* every level in float32, then in bf16 compute */
        if (!nvlm_cpu_level_usable(levels[li % nl])) continue;
        nvlm_pool_set_level(pool, levels[li % nl]);
        nvlm_pool_set_compute(pool, li < nl ? NVLM_COMPUTE_F32 : NVLM_COMPUTE_BF16);
        for (size_t di = 0; di < sizeof dts / sizeof dts[0]; di++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                int N = shapes[si][0], K = shapes[si][1];
                if (nvlm_dtype_is_block(dts[di]) && K % 32) continue;
                size_t rb = nvlm_row_bytes(dts[di], K);
                float *wf = malloc(sizeof(float) * (size_t)N * K), *x = malloc(sizeof(float) * 19 * (size_t)K);
                uint8_t *wq = malloc(rb * (size_t)N);
                float *bias = malloc(sizeof(float) * N), *y1 = malloc(sizeof(float) * 19 * (size_t)N);
                float *yb = malloc(sizeof(float) * 19 * (size_t)N);
                for (size_t i = 0; i < (size_t)N * K; i++) wf[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
                for (size_t i = 0; i < 19 * (size_t)K; i++) x[i] = (float)((i * 40503u) % 997) / 500.0f - 1.0f;
                for (int i = 0; i < N; i++) bias[i] = (float)i / N;
                for (int r = 0; r < N; r++) nvlm_row_from_f32(wq + (size_t)r * rb, wf + (size_t)r * K, dts[di], K);
                nvlm_wmat w = {.dtype = dts[di], .rows = N, .cols = K, .data = wq};
                const nvlm_wmat *wp = &w;
                const float *bp = bias;
                for (int gen = 0; gen <= 1; gen++)
                    for (int n = 1; n <= 19; n += (n < 4 ? 1 : 5)) {
                        for (int t = 0; t < n; t++) { /* each row alone */
                            float *yt = y1 + (size_t)t * N;
                            bad += nvlm_matmul_roles(pool, 1, &yt, x + (size_t)t * K, gen, 1, &wp, &bp, &err) != 0;
                        }
                        bad += nvlm_matmul_roles(pool, 1, &yb, x, gen ? n : 0, n, &wp, &bp, &err) != 0;
                        bad += memcmp(y1, yb, sizeof(float) * (size_t)n * N) != 0;
                        runs++;
                    }
                free(wf), free(x), free(wq), free(bias), free(y1), free(yb);
            }
    }
    CHECK(bad == 0 && runs > 0, "%d of %d kernel runs differ from their rows alone", bad, runs);
    nvlm_pool_free(pool);
}

int main(void) {
    test_kernels();
    const conv d[] = {
        {"What is in the picture?", "reference/images/grid_448x448.png"},
        {"Tell me a story about a fox.", NULL},
        {"Hi", NULL}, /* a short prompt */
        {"Describe the colours.", "reference/images/grid_896x448.png"},
        {"Count from one to ten, please, slowly and clearly.", NULL},
        {"What is 2+2?", NULL},
        {"Name three rivers.", NULL},
        {"Is this image wide or tall?", "reference/images/grid_896x448.png"},
    };
    const conv xh[] = {
        {"What is in the picture?", "reference/images/grid_448x448.png"},
        {"Describe the colours.", "reference/images/grid_896x448.png"},
        {"Tell me a story about a fox.", NULL},
        {"Is this image wide or tall?", "reference/images/grid_448x448.png"},
    };
    test_model("reference/models/tiny-nvlm-d", d, 8);
    test_model("reference/models/tiny-nvlm-x", xh, 4);
    test_model("reference/models/tiny-nvlm-h", xh, 4);
    return check_done("test_batch");
}
