/* layout_xh.h - how NVLM-X and NVLM-H lay a conversation out (docs/spec.md §12): the decoder
 * prompt ids, the cross-attention memory of each image, and which memory rows every decoder
 * position may read (recorded in the nvlm_xattn of the conversation). Internal.
 *
 *  NVLM-X: each <image> becomes the segments "<Image>", tag_1 .. tag_N, "</Image>" (no image
 *          rows in the decoder); text pieces and segments are tokenised one by one so every
 *          tag has its own token range. A tag sees only its tile; any other position sees all
 *          tiles of the images whose "</Image>" ended before it. Memory = all tiles.
 *  NVLM-H: each <image> becomes NVLM-D's one-tile span (thumbnail in the decoder), the prompt
 *          is tokenised as one string; memory = E(<tile_j>) + tile j for the regular tiles,
 *          visible after the last thumbnail row of the image. */
#ifndef NVLM_GENERATE_LAYOUT_XH_H
#define NVLM_GENERATE_LAYOUT_XH_H
#include "model/xattn.h"
#include "nvlm.h"

/* The prompt ids of the template text `tmpl` (placeholders still "<image>") whose first
 * n_images placeholders take images of num_patches[i] tiles. Sets the visibility of xa,
 * whose cache must already hold the memory of those images. *ids is malloc'ed. */
int nvlm_layout_prompt(nvlm_xattn *xa, const char *tmpl, const int *num_patches, int n_images, int32_t **ids,
                       size_t *n_ids, nvlm_err *err);

/* Appends the cross-attention memory of the next image to xa: its n_tiles * tokens_per_tile
 * feature rows (X), or its tag embeddings and regular tiles (H; nothing for one tile). */
int nvlm_layout_add_image(nvlm_xattn *xa, const float *features, int n_tiles, nvlm_err *err);

/* Decoder rows an image of n_tiles tiles puts into the decoder, and the first feature row
 * they come from: NVLM-D all tiles from 0; NVLM-H the thumbnail; NVLM-X none. */
int nvlm_layout_decoder_rows(const nvlm_model *m, int n_tiles, int *first_row);

/* Memory held by a conversation's caches (for benchmarks): self-attention keys/values of the
 * positions in use, cross-attention keys/values of the images (0 for NVLM-D). */
void nvlm_chat_cache_bytes(const nvlm_chat *c, size_t *self_kv, size_t *cross_kv);
#endif
