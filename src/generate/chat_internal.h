/* chat_internal.h - what tests and tools inside the project may see of a conversation
 * beyond the public API. Internal. */
#ifndef NVLM_GENERATE_CHAT_INTERNAL_H
#define NVLM_GENERATE_CHAT_INTERNAL_H
#include "nvlm.h"

/* Projector output [n_tiles * tokens_per_tile, h] of image i once it has been encoded
 * (after the nvlm_chat_ask that first used it), else NULL. */
const float *nvlm_chat_image_features(const nvlm_chat *c, int i, int *n_tiles);
#endif
