/* Cost of structured output. Part 1 (always): the constraint alone on a tokenizer's vocabulary
 * (the full Qwen2 one: 151k+ tokens): the sampler's time per token with and without a grammar,
 * fed the same random peaked logits (a trained model's shape), greedy and sampled, per schema;
 * plus the one-time vocabulary index. Part 2 (--model DIR): generation tok/s of one checkpoint
 * with and without a schema, greedy, same prompt.
 * Usage: bench_grammar --tokenizer DIR [--steps N] [--model DIR --tokens N --threads N] */
#include "generate/sampler.h"
#include "grammar/grammar.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static const struct { const char *name, *schema; } cases[] = {
    {"receipt", "{\"type\":\"object\",\"properties\":{\"store\":{\"type\":\"string\",\"maxLength\":40},\"total\":{\"type\":"
                "\"number\"},\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":"
                "\"string\"},\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":99}},\"required\":[\"name\",\"qty\"],"
                "\"additionalProperties\":false},\"maxItems\":8}},\"required\":[\"store\",\"total\",\"items\"],"
                "\"additionalProperties\":false}"},
    {"enum+anyOf", "{\"type\":\"object\",\"properties\":{\"color\":{\"enum\":[\"red\",\"green\",\"blue\"]},\"v\":{\"anyOf\":"
                   "[{\"type\":\"integer\"},{\"type\":\"null\"},{\"type\":\"string\",\"maxLength\":10}]}},\"required\":"
                   "[\"color\",\"v\"],\"additionalProperties\":false}"},
    {"json_object", NULL},
};

/* One run of `steps` tokens (or until the stop token); returns the sampler's microseconds. */
static double run(const nvlm_tokenizer *tok, int V, int32_t eos, const nvlm_grammar *g, float temp, int steps,
                  uint64_t seed, int *made, double *first_us, double *grammar_us) {
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.grammar = g, s.temperature = temp, s.seed = seed, s.max_new_tokens = steps;
    nvlm_sampler sp;
    nvlm_err err = {0};
    float *logits = malloc(sizeof(float) * V);
    if (!logits || nvlm_sampler_init(&sp, &s, tok, V, eos, NULL, 0, &err)) {
        fprintf(stderr, "sampler: %s\n", err.msg);
        exit(1);
    }
    nvlm_rng noise;
    nvlm_rng_seed(&noise, seed + 99);
    double total = 0;
    *made = 0;
    for (int i = 0; i < steps; i++) {
        for (int k = 0; k < V; k++) logits[k] = (float)(4 * nvlm_rng_uniform(&noise));
        for (int k = 0; k < 30; k++) logits[(int)(nvlm_rng_uniform(&noise) * V)] += 12;
        int32_t id;
        double t0 = now_us();
        if (nvlm_sampler_next(&sp, logits, &id, &err)) {
            fprintf(stderr, "step %d: %s\n", i, err.msg);
            exit(1);
        }
        double dt = now_us() - t0;
        if (i == 0 && first_us) *first_us = dt;
        total += dt;
        ++*made;
        if (g && id == eos) break;
    }
    if (grammar_us) *grammar_us += sp.grammar_us;
    nvlm_sampler_free(&sp);
    free(logits);
    return total;
}

static void part_constraint(const char *tok_dir, int steps) {
    nvlm_tokenizer *tok;
    nvlm_err err = {0};
    if (nvlm_tokenizer_load(tok_dir, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    int V = (int)nvlm_tokenizer_size(tok);
    int32_t eos = nvlm_tokenizer_token_id(tok, "<|im_end|>");
    double t0 = now_us();
    gv_get(tok, &err);
    printf("vocabulary %d ids: token-byte trie built once in %.1f ms\n", V, (now_us() - t0) / 1e3);
    int n;
    double plain_g = 1e30, plain_s = 1e30; /* best of 3: the machine may be shared */
    for (int rep = 0; rep < 3; rep++) {
        double g = run(tok, V, eos, NULL, 0, steps, 1, &n, NULL, NULL) / n;
        double s = run(tok, V, eos, NULL, 1, steps / 4 + 1, 1, &n, NULL, NULL) / n;
        if (g < plain_g) plain_g = g;
        if (s < plain_s) plain_s = s;
    }
    printf("plain sampler: greedy %.1f us/token, temperature 1 %.1f us/token\n", plain_g, plain_s);
    printf("| schema | mode | tokens | sampler us/token with grammar | of which the grammar | first token us |\n|---|---|---|---|---|---|\n");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nvlm_grammar *g;
        int rc = cases[c].schema ? nvlm_grammar_from_json_schema(cases[c].schema, strlen(cases[c].schema), &g, &err)
                                 : nvlm_grammar_json_object(&g, &err);
        if (rc) {
            fprintf(stderr, "%s: %s\n", cases[c].name, err.msg);
            exit(1);
        }
        for (int mode = 0; mode < 2; mode++) {
            double first = 0, sum = 0, gus = 0;
            int tokens = 0;
            for (uint64_t seed = 1; seed <= 5; seed++) { /* several answers: most end before steps */
                int made;
                sum += run(tok, V, eos, g, mode ? 1.0f : 0, steps, seed, &made, seed == 1 ? &first : NULL, &gus);
                tokens += made;
            }
            printf("| %s | %s | %d | %.1f | %.1f | %.0f |\n", cases[c].name, mode ? "temperature 1" : "greedy", tokens,
                   sum / tokens, gus / tokens, first);
        }
        nvlm_grammar_free(g);
    }
    nvlm_tokenizer_free(tok);
}

static void part_model(const char *dir, int tokens, int threads) {
    nvlm_model *m;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = threads};
    if (nvlm_model_load(dir, &lo, &m, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    nvlm_grammar *g;
    /* long strings so that neither run stops early: the same number of tokens both ways */
    const char *schema = "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"],"
                         "\"additionalProperties\":false}";
    if (nvlm_grammar_from_json_schema(schema, strlen(schema), &g, &err)) exit(1);
    for (int rep = 0; rep < 2; rep++) { /* interleaved: the load of a shared machine drifts */
        for (int with = 0; with < 2; with++) {
            nvlm_chat *c;
            nvlm_answer a;
            nvlm_sampling s;
            nvlm_sampling_default(&s);
            s.max_new_tokens = tokens;
            s.grammar = with ? g : NULL;
            /* the stop token banned without the grammar (its string never ends): same length both ways */
            nvlm_logit_bias no_stop = {nvlm_tokenizer_token_id(nvlm_model_tokenizer(m), "<|im_end|>"), -100};
            if (!with) s.logit_bias = &no_stop, s.n_logit_bias = 1;
            nvlm_chat_new(m, &c, &err);
            if (nvlm_chat_ask(c, "Write a JSON object with a long text.", &s, NULL, NULL, &a, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                exit(1);
            }
            printf("%s, rep %d: %zu tokens in %.0f ms: %.2f tok/s\n", with ? "with the schema" : "no grammar", rep,
                   a.n_output, a.gen_ms, a.n_output / (a.gen_ms / 1e3));
            nvlm_answer_free(&a);
            nvlm_chat_free(c);
        }
    }
    nvlm_grammar_free(g);
    nvlm_model_free(m);
}

int main(int argc, char **argv) {
    const char *tok = NULL, *model = NULL;
    int steps = 200, tokens = 64, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokenizer")) tok = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokens")) tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    }
    if (tok) part_constraint(tok, steps);
    if (model) part_model(model, tokens, threads);
    if (!tok && !model) fprintf(stderr, "usage: bench_grammar --tokenizer DIR [--steps N] [--model DIR --tokens N --threads N]\n");
    return 0;
}
