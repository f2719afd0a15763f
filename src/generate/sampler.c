/* Token selection. The order of filters follows Hugging Face's generate(): repetition penalty,
 * temperature, top-k, top-p, min-p, then a draw from the renormalised distribution. */
#include "generate/sampler.h"
#include "kernels/cpu.h"
#include "kernels/ops.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2")
#include <immintrin.h>
/* Greedy: nvlm_argmax's answer (the first index of the largest value) in two passes of 8 lanes,
 * the largest value then its first index, instead of one compare chain over 152k logits (a
 * step of 8 sequences spent ~3% of its time there). max(x, m) keeps m when x is NaN, as the
 * scalar chain skips a NaN; a NaN at 0, or no index holding the maximum, is left to the scalar. */
static int argmax_avx2(const float *x, int n) {
    if (n < 16 || x[0] != x[0]) return nvlm_argmax(x, n);
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    }
    float t[8], mx = -INFINITY;
    _mm256_storeu_ps(t, _mm256_max_ps(m0, m1));
    for (int k = 0; k < 8; k++) mx = t[k] > mx ? t[k] : mx;
    for (int k = i; k < n; k++) mx = x[k] > mx ? x[k] : mx;
    const __m256 v = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), v, _CMP_EQ_OQ));
        if (bits) return i + __builtin_ctz((unsigned)bits);
    }
    for (; i < n; i++)
        if (x[i] == mx) return i;
    return nvlm_argmax(x, n);
}
#pragma GCC pop_options
#endif

/* The greedy pick, nvlm_argmax's answer. */
static int32_t greedy(const float *logits, int n_vocab) {
#if defined(__x86_64__)
    if (nvlm_cpu_at_least(nvlm_cpu_level(), NVLM_CPU_AVX2)) return argmax_avx2(logits, n_vocab);
#endif
    return nvlm_argmax(logits, n_vocab);
}

int32_t nvlm_sample_greedy(const float *logits, int n_vocab) { return greedy(logits, n_vocab); }

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

/* c[0..n), given in increasing id, into the order of qsort(by_prob_desc) (p descending, ties by
 * id ascending) by a stable LSD radix sort on the bits of p: for p >= 0 (and not NaN, which
 * the non-finite checks keep out) the bits order as the values do, so ~bits sorts descending,
 * and stability keeps the ids of equal p ascending. 3 passes of 11 bits instead of a comparison
 * sort of the whole vocabulary (~20 ms per token on 152k ids). Falls back to qsort, the same
 * order, when the buffer cannot be had. */
static void sort_by_prob_desc(scored *c, int n) {
    enum { BITS = 11, BUCKETS = 1 << BITS };
    scored *tmp = malloc(sizeof *tmp * (size_t)(n > 0 ? n : 1));
    int ok = tmp != NULL;
    for (int i = 0; ok && i < n; i++) ok = c[i].p >= 0; /* (false for NaN too) */
    if (!ok) {
        free(tmp);
        qsort(c, (size_t)n, sizeof *c, by_prob_desc);
        return;
    }
    scored *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += BITS) {
        size_t count[BUCKETS] = {0};
        for (int i = 0; i < n; i++) {
            uint32_t b;
            memcpy(&b, &src[i].p, sizeof b);
            count[(~b >> shift) & (BUCKETS - 1)]++;
        }
        size_t at = 0;
        for (int k = 0; k < BUCKETS; k++) {
            size_t m = count[k];
            count[k] = at, at += m;
        }
        for (int i = 0; i < n; i++) {
            uint32_t b;
            memcpy(&b, &src[i].p, sizeof b);
            dst[count[(~b >> shift) & (BUCKETS - 1)]++] = src[i];
        }
        scored *t = src;
        src = dst, dst = t;
    }
    if (src != c) memcpy(c, src, sizeof *c * (size_t)n);
    free(tmp);
}

/* Top-k, top-p and min-p over probabilities c[0..n) sorted descending (in any order when none of
 * them is set), then the draw from what is kept, in that order. */
static int32_t truncate_and_draw(const scored *c, int n, const nvlm_sampling *s, nvlm_rng *rng) {
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
        float floor_p = s->min_p * c[0].p;
        int k = 1;
        while (k < keep && c[k].p >= floor_p) k++;
        keep = k;
    }
    double total = 0, acc = 0;
    for (int i = 0; i < keep; i++) total += c[i].p;
    double u = nvlm_rng_uniform(rng) * total;
    for (int i = 0; i < keep; i++)
        if (u < (acc += c[i].p)) return c[i].id;
    return c[keep - 1].id;
}

int32_t nvlm_sample(float *logits, int n_vocab, const nvlm_sampling *s, nvlm_rng *rng, int *scratch) {
    (void)scratch;
    if (s->temperature <= 0) return greedy(logits, n_vocab);
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
    sort_by_prob_desc(c, n_vocab);
    int32_t pick = truncate_and_draw(c, n_vocab, s, rng);
    free(c);
    return pick;
}

/* ---------------------------------------------------------------- logprobs */

void nvlm_logprobs_of(const float *logits, int n_vocab, int32_t chosen, int n_top, nvlm_logprobs *out) {
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    memset(out, 0, sizeof *out);
    out->chosen = (nvlm_token_logprob){chosen, (float)(logits[chosen] - lse)};
    if (n_top > NVLM_MAX_TOP_LOGPROBS) n_top = NVLM_MAX_TOP_LOGPROBS;
    /* insertion into a short sorted list: most logits fall below its last entry at once */
    int n = 0;
    for (int i = 0; i < n_vocab && n_top > 0; i++) {
        float v = logits[i];
        if (n == n_top && !(v > out->top[n - 1].logprob)) continue;
        int k = n < n_top ? n++ : n - 1;
        while (k > 0 && v > out->top[k - 1].logprob) out->top[k] = out->top[k - 1], k--;
        out->top[k] = (nvlm_token_logprob){i, v};
    }
    for (int k = 0; k < n; k++) out->top[k].logprob = (float)(out->top[k].logprob - lse);
    out->n_top = n;
}

/* ---------------------------------------------------------------- sampler */

#include "core/err.h"
#include "grammar/grammar.h"

enum { GREEDY_CANDIDATES = 32, SAMPLE_CANDIDATES = 256 };

static double clock_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* gc_allowed, timed into the sampler's grammar_us (the benchmark's "constraint" figure) */
static int allowed_timed(nvlm_sampler *sp, int32_t id) {
    double t0 = clock_us();
    int ok = gc_allowed(sp->gc, id);
    sp->grammar_us += clock_us() - t0;
    return ok;
}

int nvlm_sampler_init(nvlm_sampler *sp, const nvlm_sampling *s, const nvlm_tokenizer *tok, int n_vocab, int32_t eos,
                      const int32_t *prompt, size_t n_prompt, nvlm_err *err) {
    memset(sp, 0, sizeof *sp);
    sp->s = *s, sp->n_vocab = n_vocab, sp->eos = eos;
    nvlm_rng_seed(&sp->rng, s->seed);
    if (s->top_logprobs < 0 || s->top_logprobs > NVLM_MAX_TOP_LOGPROBS)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "top_logprobs must be 0 to %d, not %d", NVLM_MAX_TOP_LOGPROBS,
                         s->top_logprobs);
    for (size_t i = 0; i < s->n_logit_bias; i++)
        if (s->logit_bias[i].id < 0 || s->logit_bias[i].id >= n_vocab || !isfinite(s->logit_bias[i].bias))
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "logit_bias entry %zu: token %d is not in the vocabulary of %d "
                             "or its bias is not finite", i, (int)s->logit_bias[i].id, n_vocab);
    sp->cap_seen = n_prompt + (size_t)(s->max_new_tokens > 0 ? s->max_new_tokens : 0) + 1;
    sp->seen = malloc(sizeof *sp->seen * sp->cap_seen);
    if (!sp->seen) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (n_prompt) memcpy(sp->seen, prompt, sizeof *prompt * n_prompt);
    sp->n_seen = n_prompt;
    if ((s->presence_penalty != 0 || s->frequency_penalty != 0) &&
        !(sp->counts = calloc((size_t)n_vocab, sizeof *sp->counts))) {
        nvlm_sampler_free(sp);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    if (s->grammar) {
        sp->gc = malloc(sizeof *sp->gc);
        sp->scratch = malloc(sizeof(scored) * (size_t)n_vocab);
        int rc = sp->gc && sp->scratch ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        if (!rc) rc = gc_init(sp->gc, s->grammar, tok, n_vocab, eos, err);
        if (rc) {
            free(sp->gc);
            sp->gc = NULL;
            nvlm_sampler_free(sp);
            return rc;
        }
    }
    return NVLM_OK;
}

void nvlm_sampler_free(nvlm_sampler *sp) {
    if (sp->gc) gc_free(sp->gc);
    free(sp->gc);
    free(sp->seen);
    free(sp->counts);
    free(sp->scratch);
    free(sp->lp);
    memset(sp, 0, sizeof *sp);
}

nvlm_logprobs *nvlm_sampler_take_logprobs(nvlm_sampler *sp, size_t *n) {
    nvlm_logprobs *lp = sp->lp;
    *n = sp->n_lp;
    sp->lp = NULL, sp->n_lp = sp->cap_lp = 0;
    return lp;
}

/* The n likeliest tokens, likeliest first (ties: lower id), by insertion into a short list. */
static int top_candidates(const float *logits, int n_vocab, scored *c, int n) {
    int have = 0;
    for (int i = 0; i < n_vocab; i++) {
        float v = logits[i];
        if (have == n && !(v > c[n - 1].p)) continue;
        int k = have < n ? have++ : n - 1;
        while (k > 0 && v > c[k - 1].p) c[k] = c[k - 1], k--;
        c[k] = (scored){v, i};
    }
    return have;
}

/* Draws from candidates c[0..n) holding logits (any order), as nvlm_sample does over the whole
 * vocabulary: softmax at the temperature, sorted, top-k, top-p, min-p, then the draw. */
static int32_t sample_among(scored *c, int n, const nvlm_sampling *s, nvlm_rng *rng) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (c[i].p > mx) mx = c[i].p;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += c[i].p = expf((c[i].p - mx) / s->temperature);
    for (int i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
    int truncating = (s->top_k > 0 && s->top_k < n) || (s->top_p > 0 && s->top_p < 1) || s->min_p > 0;
    if (truncating) qsort(c, (size_t)n, sizeof *c, by_prob_desc); /* the draw itself needs no order */
    return truncate_and_draw(c, n, s, rng);
}

/* Every allowed token with its logit into c; how many (-1: out of memory). */
static long allowed_list(nvlm_sampler *sp, const float *logits, scored *c) {
    const uint8_t *mask;
    double t0 = clock_us();
    long n = gc_mask(sp->gc, &mask);
    sp->grammar_us += clock_us() - t0;
    if (n <= 0) return n;
    long k = 0;
    for (int i = 0; i < sp->n_vocab; i++)
        if (mask[i]) c[k++] = (scored){logits[i], i};
    return k;
}

/* Plain temperature sampling under a grammar, by rejection: a draw from the whole distribution
 * is kept when the grammar allows it. Stopping at the first allowed draw gives exactly the
 * distribution restricted to the allowed tokens, and so does the fallback after REJECTIONS
 * refused draws (a draw from the masked distribution), so the mixture is exact too. Inside a
 * string nearly every draw is allowed at once, so the vocabulary is rarely walked. */
enum { REJECTIONS = 8 };
static int pick_by_rejection(nvlm_sampler *sp, const float *logits, int32_t *id, nvlm_err *err) {
    scored *c = sp->scratch;
    const int V = sp->n_vocab;
    const float t = sp->s.temperature;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double z = 0;
    for (int i = 0; i < V; i++) z += c[i].p = expf((logits[i] - mx) / t);
    for (int tries = 0; tries < REJECTIONS; tries++) {
        double u = nvlm_rng_uniform(&sp->rng) * z, acc = 0;
        int pick = V - 1;
        for (int i = 0; i < V; i++)
            if (u < (acc += c[i].p)) {
                pick = i;
                break;
            }
        if (allowed_timed(sp, pick)) return *id = pick, NVLM_OK;
    }
    const uint8_t *mask;
    double t0 = clock_us();
    long n = gc_mask(sp->gc, &mask);
    sp->grammar_us += clock_us() - t0;
    if (n < 0) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory following the grammar");
    if (n == 0)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "no token of the vocabulary can continue the grammar here "
                         "(after %zu generated tokens)", sp->n_lp);
    double allowed = 0;
    for (int i = 0; i < V; i++) allowed += mask[i] ? c[i].p : 0;
    double u = nvlm_rng_uniform(&sp->rng) * allowed, acc = 0;
    int last = -1;
    for (int i = 0; i < V; i++) {
        if (!mask[i]) continue;
        last = i;
        if (u < (acc += c[i].p)) return *id = i, NVLM_OK;
    }
    *id = last;
    return NVLM_OK;
}

/* The grammar's choice. Greedy: the likeliest candidates are checked in order and the first
 * allowed one wins; only when none of them is allowed is the whole vocabulary walked. Plain
 * temperature: by rejection (above). With top-k/top-p/min-p (applied after the mask): the
 * SAMPLE_CANDIDATES likeliest are checked; they settle the draw when top_k allowed ones are
 * among them, or when the mass of the rest is under 1e-6 of the allowed mass found; else the
 * walk gives every allowed token. */
static int pick_constrained(nvlm_sampler *sp, const float *logits, int32_t *id, nvlm_err *err) {
    gconstraint *gc = sp->gc;
    scored *c = sp->scratch;
    const nvlm_sampling *s = &sp->s;
    if (gc->m.cur.n == 0) { /* the grammar is complete: only the stop token */
        *id = sp->eos;
        return NVLM_OK;
    }
    int greedy = s->temperature <= 0;
    int truncating = s->top_k > 0 || (s->top_p > 0 && s->top_p < 1) || s->min_p > 0;
    if (!greedy && !truncating) return pick_by_rejection(sp, logits, id, err);
    int n = top_candidates(logits, sp->n_vocab, c, greedy ? GREEDY_CANDIDATES : SAMPLE_CANDIDATES);
    if (greedy) {
        for (int i = 0; i < n; i++)
            if (allowed_timed(sp, c[i].id)) return *id = c[i].id, NVLM_OK;
    } else {
        float mx = c[0].p;
        double z = 0, in_top = 0, allowed = 0;
        for (int i = 0; i < sp->n_vocab; i++) z += expf((logits[i] - mx) / s->temperature);
        int k = 0, found = 0;
        for (int i = 0; i < n; i++) {
            double p = expf((c[i].p - mx) / s->temperature);
            in_top += p;
            if (allowed_timed(sp, c[i].id)) c[k++] = c[i], allowed += p, found++;
        }
        if (found && ((s->top_k > 0 && found >= s->top_k) || z - in_top <= 1e-6 * allowed))
            return *id = sample_among(c, k, s, &sp->rng), NVLM_OK;
    }
    long k = allowed_list(sp, logits, c);
    if (k < 0) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory following the grammar");
    if (k == 0)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "no token of the vocabulary can continue the grammar here "
                         "(after %zu generated tokens)", sp->n_lp);
    if (greedy) {
        long best = 0;
        for (long i = 1; i < k; i++)
            if (c[i].p > c[best].p) best = i;
        *id = c[best].id;
    } else {
        *id = sample_among(c, (int)k, s, &sp->rng);
    }
    return NVLM_OK;
}

static int record_logprobs(nvlm_sampler *sp, const float *logits, int32_t id, nvlm_err *err) {
    if (sp->n_lp == sp->cap_lp) {
        size_t cap = sp->cap_lp ? 2 * sp->cap_lp : 64;
        nvlm_logprobs *n = realloc(sp->lp, sizeof *n * cap);
        if (!n) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        sp->lp = n, sp->cap_lp = cap;
    }
    nvlm_logprobs_of(logits, sp->n_vocab, id, sp->s.top_logprobs, &sp->lp[sp->n_lp++]);
    if (sp->s.on_logprobs) sp->s.on_logprobs(sp->s.logprobs_user, &sp->lp[sp->n_lp - 1]);
    return NVLM_OK;
}

int nvlm_sampler_next(nvlm_sampler *sp, float *logits, int32_t *id, nvlm_err *err) {
    const nvlm_sampling *s = &sp->s;
    const int V = sp->n_vocab;
    if (s->repetition_penalty != 1.0f) nvlm_repetition_penalty(logits, V, sp->seen, sp->n_seen, s->repetition_penalty);
    if (sp->counts) /* OpenAI: mu[j] -= c[j] * alpha_frequency + (c[j] > 0) * alpha_presence */
        for (int i = 0; i < V; i++)
            if (sp->counts[i]) logits[i] -= (float)sp->counts[i] * s->frequency_penalty + s->presence_penalty;
    for (size_t i = 0; i < s->n_logit_bias; i++) logits[s->logit_bias[i].id] += s->logit_bias[i].bias;
    /* neither path writes logits: the logprobs below see them before temperature and mask */
    int rc = sp->gc ? pick_constrained(sp, logits, id, err) : (*id = nvlm_sample(logits, V, s, &sp->rng, NULL), NVLM_OK);
    if (!rc && s->logprobs) rc = record_logprobs(sp, logits, *id, err);
    if (!rc && sp->gc) {
        double t0 = clock_us();
        rc = gc_accept(sp->gc, *id, err);
        sp->grammar_us += clock_us() - t0;
    }
    if (rc) return rc;
    if (sp->n_seen < sp->cap_seen) sp->seen[sp->n_seen++] = *id;
    if (sp->counts && *id >= 0 && *id < V) sp->counts[*id]++;
    return NVLM_OK;
}
