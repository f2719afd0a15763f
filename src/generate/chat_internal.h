/* chat_internal.h - what tests and tools inside the project may see of a conversation
 * beyond the public API. Internal. */
#ifndef NVLM_GENERATE_CHAT_INTERNAL_H
#define NVLM_GENERATE_CHAT_INTERNAL_H
#include "engine/engine.h"
#include "nvlm.h"
#include <stddef.h>

/* Projector output [n_tiles * tokens_per_tile, h] of image i once it has been encoded
 * (after the nvlm_chat_ask that first used it), else NULL. */
const float *nvlm_chat_image_features(const nvlm_chat *c, int i, int *n_tiles);

/* A turn step by step, over an engine shared with other chats (the server's scheduler):
 *   nvlm_chat_use_engine                once, before the first question (else the chat makes
 *                                       its own engine at its first question)
 *   nvlm_chat_begin                     the question, sampling and token callback (or
 *                                       nvlm_chat_begin_raw / nvlm_chat_begin_again)
 *   nvlm_chat_encode_step               ViT tiles, a few at a time, until *done; then the prompt
 *   (nvlm_chat_prompt / nvlm_chat_adopt_prefix: a fork of another sequence's pages)
 *   loop: nvlm_chat_add_to_batch, nvlm_decode, nvlm_chat_step_done until *finished
 *   nvlm_chat_finish                    the answer (or nvlm_chat_cancel_ask)
 * nvlm_chat_ask (and nvlm_chat_complete, nvlm_chat_regenerate) is exactly this loop with a
 * batch of its own. */
int nvlm_chat_use_engine(nvlm_chat *c, nvlm_engine *e, nvlm_err *err);
int nvlm_chat_seq(const nvlm_chat *c);
/* ViT tiles not encoded yet. */
int nvlm_chat_tiles_pending(const nvlm_chat *c);
/* The ids of the positions in the chat's KV sequence (*n of them). */
const int32_t *nvlm_chat_cached(const nvlm_chat *c, size_t *n);
int nvlm_chat_begin(nvlm_chat *c, const char *question, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                    nvlm_err *err);
/* nvlm_chat_begin for a raw completion (nvlm_chat_complete: the prompt as given, no template,
 * no images, no history turn). */
int nvlm_chat_begin_raw(nvlm_chat *c, const char *prompt, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                        nvlm_err *err);
/* nvlm_chat_begin asking the last question again (nvlm_chat_regenerate): the last turn leaves
 * the history, and comes back unless the new answer finishes and takes its place. */
int nvlm_chat_begin_again(nvlm_chat *c, const nvlm_sampling *s, nvlm_token_fn on_token, void *user, nvlm_err *err);
/* max_tiles < 0: every tile left; 0: none (finishes only when no tile is pending). */
int nvlm_chat_encode_step(nvlm_chat *c, int max_tiles, int *done, nvlm_err *err);
/* The prompt once encoding is done (NULL before). */
const int32_t *nvlm_chat_prompt(const nvlm_chat *c, size_t *n);
/* Takes seq (holding the prompt's first n positions, a fork) as the chat's cache instead of
 * its own; 1 when taken (before any prefill, n below the prompt's length), else 0. */
int nvlm_chat_adopt_prefix(nvlm_chat *c, int seq, size_t n);
/* Prompt positions still to run (prefill), 1 while generating, 0 otherwise. */
size_t nvlm_chat_prompt_left(const nvlm_chat *c);
int nvlm_chat_generating(const nvlm_chat *c);
/* Appends this chat's tokens of the next step: its generated token, or up to budget (< 0: any)
 * prompt tokens. Returns how many (0: none fit), or a negative error. */
int nvlm_chat_add_to_batch(nvlm_chat *c, nvlm_batch *b, int budget, nvlm_err *err);
/* After nvlm_decode: logits of this chat's marked token (NULL when it had none); *finished
 * once the answer is complete (then nvlm_chat_finish). */
int nvlm_chat_step_done(nvlm_chat *c, const float *logits, int *finished, nvlm_err *err);
int nvlm_chat_finish(nvlm_chat *c, nvlm_answer *out, nvlm_err *err);
void nvlm_chat_cancel_ask(nvlm_chat *c);
/* Frees the chat's KV pages now (a cancelled request); the next question starts afresh. */
void nvlm_chat_release_cache(nvlm_chat *c);
#endif
