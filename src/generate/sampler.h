/* sampler.h - choosing the next token from logits: greedy, or temperature sampling with
 * top-k, top-p, min-p and a repetition penalty, from a seeded generator. Internal. */
#ifndef NVLM_GENERATE_SAMPLER_H
#define NVLM_GENERATE_SAMPLER_H
#include "nvlm.h"

typedef struct nvlm_rng {
    uint64_t s[4];
} nvlm_rng;

void nvlm_rng_seed(nvlm_rng *r, uint64_t seed);
/* Uniform in [0, 1). */
double nvlm_rng_uniform(nvlm_rng *r);

/* Applies the repetition penalty in place (HF rule: a positive logit of a seen id is divided
 * by the penalty, a negative one multiplied), once per distinct id of seen[]. */
void nvlm_repetition_penalty(float *logits, int n_vocab, const int32_t *seen, size_t n_seen, float penalty);

/* Picks a token. logits is modified (scaled, filtered). scratch: n_vocab ints. */
int32_t nvlm_sample(float *logits, int n_vocab, const nvlm_sampling *s, nvlm_rng *rng, int *scratch);
/* The greedy pick (temperature 0): nvlm_argmax's answer, vectorised where the CPU allows. */
int32_t nvlm_sample_greedy(const float *logits, int n_vocab);

/* log-softmax of logits: the chosen token's value and the n_top likeliest (ties: lower id). */
void nvlm_logprobs_of(const float *logits, int n_vocab, int32_t chosen, int n_top, nvlm_logprobs *out);

/* One generation's token choice: penalties, logit_bias, logprobs, grammar, then the draw. */
typedef struct nvlm_sampler {
    nvlm_sampling s;             /* its stop and grammar point into the caller's */
    nvlm_rng rng;
    int n_vocab;
    int32_t eos;                 /* the stop token: the only one a finished grammar allows */
    int32_t *seen;               /* prompt + generated ids (the repetition penalty) */
    size_t n_seen, cap_seen;
    uint32_t *counts;            /* generated count per id, when presence/frequency penalties are on */
    struct gconstraint *gc;      /* NULL without a grammar */
    void *scratch;               /* the grammar's candidates */
    nvlm_logprobs *lp;           /* one per generated token, when s.logprobs */
    size_t n_lp, cap_lp;
    double grammar_us;           /* time spent in the grammar's checks, masks and moves */
} nvlm_sampler;

int nvlm_sampler_init(nvlm_sampler *sp, const nvlm_sampling *s, const nvlm_tokenizer *tok, int n_vocab, int32_t eos,
                      const int32_t *prompt, size_t n_prompt, nvlm_err *err);
/* Chooses the next token from logits (modified), records it (penalties, logprobs, grammar). */
int nvlm_sampler_next(nvlm_sampler *sp, float *logits, int32_t *id, nvlm_err *err);
/* Hands the recorded logprobs over (malloc'ed, *n of them; NULL when not asked for). */
nvlm_logprobs *nvlm_sampler_take_logprobs(nvlm_sampler *sp, size_t *n);
void nvlm_sampler_free(nvlm_sampler *sp);
#endif
