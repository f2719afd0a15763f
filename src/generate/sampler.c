/* Token selection. The order of filters follows Hugging Face's generate(): repetition penalty,
 * temperature, top-k, top-p, min-p, then a draw from the renormalised distribution. */
#include "generate/sampler.h"
#include "kernels/ops.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void nvlm_rng_seed(nvlm_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

double nvlm_rng_uniform(nvlm_rng *r) { /* xoshiro256** */
    uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
    return (double)(result >> 11) * 0x1.0p-53;
}

void nvlm_repetition_penalty(float *logits, int n_vocab, const int32_t *seen, size_t n_seen, float penalty) {
    if (penalty == 1.0f || penalty <= 0) return;
    unsigned char *done = calloc((size_t)n_vocab, 1);
    if (!done) return;
    for (size_t i = 0; i < n_seen; i++) {
        int32_t id = seen[i];
        if (id < 0 || id >= n_vocab || done[id]) continue;
        done[id] = 1;
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
    }
    free(done);
}


typedef struct scored {
    float p;
    int id;
} scored;

static int by_prob_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

int32_t nvlm_sample(float *logits, int n_vocab, const nvlm_sampling *s, nvlm_rng *rng, int *scratch) {
    (void)scratch;
    if (s->temperature <= 0) return nvlm_argmax(logits, n_vocab);
    scored *c = malloc(sizeof *c * (size_t)n_vocab);
    if (!c) return nvlm_argmax(logits, n_vocab);
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) {
        c[i].id = i;
        c[i].p = expf((logits[i] - mx) / s->temperature);
        sum += c[i].p;
    }
    for (int i = 0; i < n_vocab; i++) c[i].p = (float)(c[i].p / sum);
    qsort(c, (size_t)n_vocab, sizeof *c, by_prob_desc);
    int keep = n_vocab;
    if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
    if (s->top_p > 0 && s->top_p < 1) {
        double cum = 0;
        for (int i = 0; i < keep; i++) {
            cum += c[i].p;
            if (cum >= s->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (s->min_p > 0) {
        float floor_p = s->min_p * c[0].p;
        int k = 1;
        while (k < keep && c[k].p >= floor_p) k++;
        keep = k;
    }
    double total = 0;
    for (int i = 0; i < keep; i++) total += c[i].p;
    double u = nvlm_rng_uniform(rng) * total, acc = 0;
    int32_t pick = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        acc += c[i].p;
        if (u < acc) {
            pick = c[i].id;
            break;
        }
    }
    free(c);
    return pick;
}
