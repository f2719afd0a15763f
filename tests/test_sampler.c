/* The sampler's OpenAI options on the reference models: logprobs and top_logprobs of the first
 * generated token against log_softmax of the reference's last-position logits (within 1e-4),
 * logit_bias, presence and frequency penalties, seeds; and nvlm_logprobs_of on hand-made logits. */
#include "check.h"
#include "ref_cases.h"
#include "generate/sampler.h"
#include "kernels/ops.h"
#include <math.h>

/* log_softmax in double of the reference logits. */
static double *log_softmax(const float *x, int n) {
    double *o = malloc(sizeof *o * n), mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) s += exp(x[i] - mx);
    for (int i = 0; o && i < n; i++) o[i] = x[i] - mx - log(s);
    return o;
}

static void check_case(nvlm_model *m, const cJSON *cs, const char *models_dir) {
    const char *id = ref_str(cs, "id");
    int V = nvlm_model_vocab_size(m);
    char path[512];
    snprintf(path, sizeof path, "reference/%s", ref_str(cJSON_GetObjectItem(cs, "logits"), "path"));
    float *ref = ref_read_f32(path, (size_t)V);
    double *ls = ref ? log_softmax(ref, V) : NULL;
    nvlm_chat *c = ref_case_chat(m, cs, id);
    if (!c || !ls) {
        CHECK(0, "%s/%s: no chat or no reference logits", models_dir, id);
        nvlm_chat_free(c), free(ref), free(ls);
        return;
    }
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 2, s.logprobs = 1, s.top_logprobs = NVLM_MAX_TOP_LOGPROBS;
    nvlm_answer a;
    nvlm_err err = {0};
    int rc = nvlm_chat_ask(c, ref_str(cs, "question"), &s, NULL, NULL, &a, &err);
    CHECK(rc == 0, "%s: %s", id, err.msg);
    if (rc == 0) {
        CHECK(a.logprobs != NULL && a.n_output >= 1, "%s: no logprobs", id);
        const nvlm_logprobs *lp = a.logprobs;
        const cJSON *want_ids = cJSON_GetObjectItem(cs, "output_ids");
        CHECK(lp && lp->chosen.id == cJSON_GetArrayItem(want_ids, 0)->valueint, "%s: first id", id);
        double d = lp ? fabs(lp->chosen.logprob - ls[lp->chosen.id]) : 1;
        CHECK(d <= 1e-4, "%s: first token logprob %.6f vs reference %.6f", id, lp ? lp->chosen.logprob : 0.0,
              lp ? ls[lp->chosen.id] : 0.0);
        CHECK(lp && lp->n_top == NVLM_MAX_TOP_LOGPROBS, "%s: %d top logprobs", id, lp ? lp->n_top : -1);
        double worst = 0;
        int ordered = 1;
        for (int k = 0; lp && k < lp->n_top; k++) {
            double e = fabs(lp->top[k].logprob - ls[lp->top[k].id]);
            worst = e > worst ? e : worst;
            if (k && lp->top[k].logprob > lp->top[k - 1].logprob) ordered = 0;
            /* nothing left out may beat the last one kept by more than the tolerance */
        }
        if (lp && lp->n_top) {
            int beaten = 0;
            for (int i = 0; i < V; i++) {
                int in = 0;
                for (int k = 0; k < lp->n_top; k++) in |= lp->top[k].id == i;
                if (!in && ls[i] > lp->top[lp->n_top - 1].logprob + 1e-4) beaten++;
            }
            CHECK(!beaten, "%s: %d tokens outside the top %d are likelier than its last", id, beaten, lp->n_top);
        }
        CHECK(worst <= 1e-4 && ordered, "%s: top logprobs max diff %.3g, ordered %d", id, worst, ordered);
        nvlm_answer_free(&a);
    }
    nvlm_chat_free(c);
    free(ref);
    free(ls);
}

static int ask(nvlm_model *m, const char *q, const nvlm_sampling *s, nvlm_answer *a) {
    nvlm_chat *c = NULL;
    nvlm_err err = {0};
    nvlm_chat_new(m, &c, &err);
    int rc = c ? nvlm_chat_ask(c, q, s, NULL, NULL, a, &err) : -1;
    CHECK(rc == 0, "ask '%s': %s", q, err.msg);
    nvlm_chat_free(c);
    return rc;
}

static void check_options(nvlm_model *m) {
    nvlm_sampling s;
    nvlm_answer base, a;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 24;
    if (ask(m, "Tell me a story.", &s, &base)) return;
    /* logit_bias: +100 forces a token, -100 bans the greedy one */
    nvlm_logit_bias force = {1234, 100}, ban = {base.output_ids[0], -100};
    s.logit_bias = &force, s.n_logit_bias = 1;
    if (!ask(m, "Tell me a story.", &s, &a)) {
        CHECK(a.output_ids[0] == 1234, "logit_bias +100: first id %d", a.output_ids[0]);
        nvlm_answer_free(&a);
    }
    s.logit_bias = &ban;
    if (!ask(m, "Tell me a story.", &s, &a)) {
        CHECK(a.output_ids[0] != base.output_ids[0], "logit_bias -100: the banned id came");
        nvlm_answer_free(&a);
    }
    s.logit_bias = NULL, s.n_logit_bias = 0;
    /* a large presence penalty: no id twice in a greedy answer */
    s.presence_penalty = 50;
    if (!ask(m, "Tell me a story.", &s, &a)) {
        int dup = 0;
        for (size_t i = 0; i < a.n_output; i++)
            for (size_t j = 0; j < i; j++) dup += a.output_ids[i] == a.output_ids[j];
        CHECK(!dup, "presence_penalty 50: %d repeats", dup);
        nvlm_answer_free(&a);
    }
    s.presence_penalty = 0, s.frequency_penalty = 50;
    if (!ask(m, "Tell me a story.", &s, &a)) {
        int dup = 0;
        for (size_t i = 0; i < a.n_output; i++)
            for (size_t j = 0; j < i; j++) dup += a.output_ids[i] == a.output_ids[j];
        CHECK(!dup, "frequency_penalty 50: %d repeats", dup);
        nvlm_answer_free(&a);
    }
    /* a penalty of 0 changes nothing: the greedy answer stays */
    s.frequency_penalty = 0;
    if (!ask(m, "Tell me a story.", &s, &a)) {
        CHECK(a.n_output == base.n_output && !memcmp(a.output_ids, base.output_ids, sizeof(int32_t) * a.n_output),
              "neutral options changed the greedy answer");
        nvlm_answer_free(&a);
    }
    /* seeds: the same seed the same answer, another seed another one */
    s.temperature = 1.5f, s.seed = 7;
    nvlm_answer s1, s2, s3;
    if (!ask(m, "Tell me a story.", &s, &s1)) {
        if (!ask(m, "Tell me a story.", &s, &s2)) {
            CHECK(s1.n_output == s2.n_output && !memcmp(s1.output_ids, s2.output_ids, sizeof(int32_t) * s1.n_output),
                  "seed 7 twice: different answers");
            nvlm_answer_free(&s2);
        }
        s.seed = 8;
        if (!ask(m, "Tell me a story.", &s, &s3)) {
            CHECK(s1.n_output != s3.n_output || memcmp(s1.output_ids, s3.output_ids, sizeof(int32_t) * s1.n_output),
                  "seeds 7 and 8: the same answer");
            nvlm_answer_free(&s3);
        }
        nvlm_answer_free(&s1);
    }
    /* regenerate: the same question again, its prompt's cache reused; the same seed, the same answer */
    {
        nvlm_chat *rc_chat = NULL;
        nvlm_err e2 = {0};
        nvlm_answer r1, r2;
        nvlm_chat_new(m, &rc_chat, &e2);
        s.temperature = 1.5f, s.seed = 3;
        int ok = rc_chat && !nvlm_chat_ask(rc_chat, "Tell me a story.", &s, NULL, NULL, &r1, &e2);
        CHECK(ok, "ask before regenerate: %s", e2.msg);
        if (ok) {
            CHECK(!nvlm_chat_regenerate(rc_chat, &s, NULL, NULL, &r2, &e2), "regenerate: %s", e2.msg);
            CHECK(r2.n_prompt == r1.n_prompt && r2.n_prompt_reused + 1 == r2.n_prompt && r1.n_output == r2.n_output &&
                      !memcmp(r1.output_ids, r2.output_ids, sizeof(int32_t) * r1.n_output),
                  "regenerate: prompt %zu/%zu reused %zu, same answer", r2.n_prompt, r1.n_prompt, r2.n_prompt_reused);
            nvlm_answer_free(&r1), nvlm_answer_free(&r2);
        }
        nvlm_chat_free(rc_chat);
        nvlm_chat_new(m, &rc_chat, &e2);
        CHECK(rc_chat && nvlm_chat_regenerate(rc_chat, &s, NULL, NULL, &r2, &e2) == NVLM_E_INVALID_ARG, "regenerate with nothing asked");
        nvlm_chat_free(rc_chat);
    }
    /* bad options are refused */
    nvlm_err err = {0};
    nvlm_chat *c = NULL;
    nvlm_chat_new(m, &c, &err);
    s.top_logprobs = 21;
    CHECK(c && nvlm_chat_ask(c, "x", &s, NULL, NULL, &a, &err) == NVLM_E_INVALID_ARG && strstr(err.msg, "top_logprobs"),
          "top_logprobs 21: %s", err.msg);
    s.top_logprobs = 0;
    nvlm_logit_bias bad = {nvlm_model_vocab_size(m), 1};
    s.logit_bias = &bad, s.n_logit_bias = 1;
    CHECK(c && nvlm_chat_ask(c, "x", &s, NULL, NULL, &a, &err) == NVLM_E_INVALID_ARG && strstr(err.msg, "logit_bias"),
          "logit_bias out of range: %s", err.msg);
    nvlm_chat_free(c);
    nvlm_answer_free(&base);
}

static void check_logprobs_of(void) {
    float l[5] = {1, 3, 3, -2, 0.5f};
    nvlm_logprobs lp;
    nvlm_logprobs_of(l, 5, 4, 3, &lp);
    double z = log(exp(1) + 2 * exp(3) + exp(-2) + exp(0.5));
    CHECK(fabs(lp.chosen.logprob - (0.5 - z)) < 1e-6 && lp.chosen.id == 4, "chosen logprob");
    CHECK(lp.n_top == 3 && lp.top[0].id == 1 && lp.top[1].id == 2 && lp.top[2].id == 0, "top order (ties by id)");
    CHECK(fabs(lp.top[2].logprob - (1 - z)) < 1e-6, "top value");
    nvlm_logprobs_of(l, 5, 0, 0, &lp);
    CHECK(lp.n_top == 0, "no top");
}

static void run_file(const char *cases_file, int only_first) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(shared_path(cases_file), 0, &text, &len, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    nvlm_model *m = NULL;
    char loaded[512] = "";
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *cs = cJSON_Parse(line);
        const cJSON *model = cJSON_GetObjectItem(cs, "model");
        if (!cJSON_IsString(model) || !cJSON_GetObjectItem(cs, "logits") || !cJSON_IsObject(cJSON_GetObjectItem(cs, "logits"))) {
            cJSON_Delete(cs);
            continue;
        }
        if (strcmp(loaded, model->valuestring)) {
            nvlm_model_free(m);
            m = NULL;
            char rel[512];
            snprintf(rel, sizeof rel, "reference/%s", model->valuestring);
            nvlm_load_options lo = {.n_threads = 2};
            if (nvlm_model_load(shared_path(rel), &lo, &m, &err)) CHECK(0, "%s: %s", rel, err.msg);
            snprintf(loaded, sizeof loaded, "%s", model->valuestring);
            if (m && n == 0) check_options(m);
        }
        if (m && ref_selected(ref_str(cs, "id")) && (!only_first || n < 3)) check_case(m, cs, loaded), n++;
        cJSON_Delete(cs);
    }
    fprintf(stderr, "%s: %d cases\n", cases_file, n);
    nvlm_model_free(m);
    free(text);
}

/* nvlm_sample as it was written first (a qsort of the whole vocabulary by probability, ties by
 * id): the radix sort that replaced the qsort must give the same token for every draw. */
typedef struct ref_scored {
    float p;
    int id;
} ref_scored;

static int ref_desc(const void *a, const void *b) {
    const ref_scored *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

static int32_t ref_sample(const float *logits, int n, const nvlm_sampling *s, nvlm_rng *rng) {
    ref_scored *c = malloc(sizeof *c * (size_t)n);
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += c[i].p = expf((logits[i] - mx) / s->temperature), c[i].id = i;
    for (int i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
    qsort(c, (size_t)n, sizeof *c, ref_desc);
    int keep = n;
    if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
    if (s->top_p > 0 && s->top_p < 1) {
        double cum = 0;
        for (int i = 0; i < keep; i++)
            if ((cum += c[i].p) >= s->top_p) {
                keep = i + 1;
                break;
            }
    }
    if (s->min_p > 0) {
        int k = 1;
        while (k < keep && c[k].p >= s->min_p * c[0].p) k++;
        keep = k;
    }
    double total = 0, acc = 0;
    for (int i = 0; i < keep; i++) total += c[i].p;
    double u = nvlm_rng_uniform(rng) * total;
    int32_t pick = c[keep - 1].id;
    for (int i = 0; i < keep; i++)
        if (u < (acc += c[i].p)) {
            pick = c[i].id;
            break;
        }
    free(c);
    return pick;
}

static void check_sample_order(void) {
    enum { V = 20011 };
    float *l = malloc(sizeof(float) * V), *w = malloc(sizeof(float) * V);
    nvlm_rng r;
    nvlm_rng_seed(&r, 7);
    int same = 0, n = 0;
    for (int round = 0; round < 40; round++) {
        for (int i = 0; i < V; i++) l[i] = (float)(nvlm_rng_uniform(&r) * (round % 2 ? 40 : 8) - 4);
        for (int i = 0; i < V; i += 7) l[i] = l[i / 3];           /* ties */
        for (int i = 5; i < V; i += 101) l[i] = -INFINITY;        /* exact zeros after the softmax */
        nvlm_sampling s = {.temperature = round % 4 == 3 ? 0.05f : 0.9f};
        if (round % 3 == 1) s.top_p = 0.8f;
        if (round % 3 == 2) s.top_k = 50, s.min_p = 0.02f;
        nvlm_rng a, b;
        nvlm_rng_seed(&a, (uint64_t)round), nvlm_rng_seed(&b, (uint64_t)round);
        for (int d = 0; d < 5; d++, n++) {
            memcpy(w, l, sizeof(float) * V);
            same += nvlm_sample(w, V, &s, &a, NULL) == ref_sample(l, V, &s, &b);
        }
    }
    CHECK(same == n, "nvlm_sample differs from the qsort reference in %d of %d draws", n - same, n);
    free(l), free(w);
}

/* The greedy pick against nvlm_argmax (the first index of the largest): ties, a tail of n % 16,
 * -0/+0, infinities, NaN anywhere (at 0 too), lengths around the vector widths. */
static void check_greedy(void) {
    enum { N = 1000 };
    float x[N];
    int bad = 0, runs = 0;
    uint64_t r = 12345;
    for (int n = 1; n <= N; n += n < 40 ? 1 : 97)
        for (int kind = 0; kind < 6; kind++, runs++) {
            for (int i = 0; i < n; i++) {
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                x[i] = (float)((r >> 33) % 7) - 3.0f; /* many ties */
            }
            if (kind == 1) x[n - 1] = 9.0f, x[n / 2] = 9.0f;
            if (kind == 2) x[n / 3] = -0.0f, x[n / 2] = 0.0f;
            if (kind == 3) x[n / 2] = NAN, x[n - 1] = INFINITY;
            if (kind == 4) x[0] = NAN;
            if (kind == 5)
                for (int i = 0; i < n; i++) x[i] = -INFINITY;
            bad += nvlm_sample_greedy(x, n) != nvlm_argmax(x, n);
        }
    CHECK(!bad, "greedy: %d of %d picks differ from nvlm_argmax", bad, runs);
}

int main(void) {
    check_greedy();
    check_sample_order();
    check_logprobs_of();
    run_file("reference/model_cases.jsonl", UNDER_ASAN);
    run_file("reference/model_cases_xh.jsonl", 1);
    return check_done("test_sampler");
}
