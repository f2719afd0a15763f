/* engine.h - one model, many sequences (docs/engine.md): a backend, a paged KV store that
 * holds every sequence, a scratch arena sized once, and the one forward entry point
 * nvlm_decode over a batch of tokens of several sequences. Chats and the server drive it step
 * by step. Not thread-safe: one caller at a time (each chat made alone owns an engine; the
 * server's scheduler thread owns one for all its requests). Internal. */
#ifndef NVLM_ENGINE_ENGINE_H
#define NVLM_ENGINE_ENGINE_H
#include "engine/backend.h"
#include "engine/kv.h"
#include "model/llm.h"
#include "model/model.h"

typedef struct nvlm_engine nvlm_engine;

typedef struct nvlm_engine_opts {
    int max_batch;       /* tokens of one nvlm_decode call; 0: 512 */
    size_t kv_bytes;     /* bound of the KV store; 0: none (kv_tokens may still bound it) */
    size_t kv_tokens;    /* bound in positions; 0: none */
    int page_tokens;     /* positions per KV page; 0: 16 */
    int gen_streams;     /* sequences generating at once, at most; 0: 1. With 1 the LLM's F32/F16/BF16
                          * matrices are packed for one-token generation (nvlm_model_pack; docs/
                          * performance.md "Packed rows"); with more they stay row-major, which the
                          * batch kernels read faster. Q8_0/Q4 are packed either way at the VNNI
                          * levels. The values do not depend on it. */
} nvlm_engine_opts;

int nvlm_engine_new(nvlm_model *m, const nvlm_engine_opts *o, nvlm_engine **out, nvlm_err *err);
void nvlm_engine_free(nvlm_engine *e);
nvlm_kvstore *nvlm_engine_kv(nvlm_engine *e);
nvlm_model *nvlm_engine_model(nvlm_engine *e);
int nvlm_engine_max_batch(const nvlm_engine *e);

/* Tokens of several sequences. A sequence's tokens are consecutive in the batch and continue
 * its KV sequence (the first at position nvlm_kv_seq_len). gen marks a token being generated
 * (one per sequence and step; it takes the matrix-vector kernels), otherwise a prompt token
 * (the packed product, however few): the role, not the count, picks the kernel, so a token's
 * values never depend on the rest of the batch. */
typedef struct nvlm_batch {
    int n_tok, cap, h;
    int32_t *seq, *pos;
    uint8_t *logits, *gen;
    float *embd;                       /* [cap, h] input embeddings */
    const nvlm_llm_hooks **hooks;      /* per token: its sequence's hooks (NVLM-X/H), or NULL */
} nvlm_batch;

int nvlm_batch_init(nvlm_batch *b, int cap, int h, nvlm_err *err);
void nvlm_batch_free(nvlm_batch *b);
static inline void nvlm_batch_clear(nvlm_batch *b) { b->n_tok = 0; }
/* Appends a token (its embedding row copied from embd, or left for the caller to fill when
 * NULL); returns its index, or -1 when the batch is full. */
int nvlm_batch_add(nvlm_batch *b, int seq, int pos, const float *embd, int logits, int gen,
                   const nvlm_llm_hooks *hooks);
/* Number of tokens with a logits mark. */
int nvlm_batch_n_logits(const nvlm_batch *b);

/* Runs the batch through LLM layers [l0, l1). l0 == 0 takes b->embd, else hidden [n_tok, h]
 * (batch order); l1 == n_layers writes logits [marked tokens in batch order, V] (may be NULL)
 * and advances every sequence's KV length, else writes hidden. The KV pages of the tokens are
 * reserved first: NVLM_E_BUSY when the store is full (nothing computed). */
int nvlm_decode(nvlm_engine *e, const nvlm_batch *b, int l0, int l1, float *hidden, float *logits, nvlm_err *err);

typedef struct nvlm_engine_stats {
    uint64_t steps, tokens, gen_tokens, prompt_tokens;
    int last_batch;
} nvlm_engine_stats;
void nvlm_engine_stats_get(const nvlm_engine *e, nvlm_engine_stats *st);
#endif
