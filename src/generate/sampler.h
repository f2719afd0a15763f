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
#endif
