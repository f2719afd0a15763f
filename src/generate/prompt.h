/* prompt.h - the chat() prompt of the released NVLM-D (docs/spec.md §8): chatml template,
 * system message, history, and the expansion of <image> placeholders into tile tags and
 * image-context tokens. Internal. */
#ifndef NVLM_GENERATE_PROMPT_H
#define NVLM_GENERATE_PROMPT_H
#include "nvlm.h"
#include <stddef.h>

#define NVLM_DEFAULT_SYSTEM "Answer the questions."

typedef struct nvlm_turn {
    char *question, *answer;
} nvlm_turn;

/* Growable string. */
typedef struct nvlm_buf {
    char *data;
    size_t len, cap;
} nvlm_buf;
int nvlm_buf_append(nvlm_buf *b, const char *s, size_t n);
int nvlm_buf_puts(nvlm_buf *b, const char *s);
void nvlm_buf_free(nvlm_buf *b);

/* Number of non-overlapping "<image>" in s. */
int nvlm_count_images(const char *s);

/* The template text: system block, each history turn, the question, the assistant role.
 * system NULL means the default. Placeholders are left as "<image>". */
int nvlm_prompt_template(const char *system, const nvlm_turn *history, int n_history,
                         const char *question, nvlm_buf *out);

/* The NVLM-D replacement of the placeholder of an image with n_tiles tiles:
 * "<Image>" + for each tag (tag + ctx_token * tokens_per_tile) + "</Image>". */
int nvlm_image_span(int n_tiles, const char *ctx_token, int tokens_per_tile, nvlm_buf *out);
/* Tag k of an image of n_tiles (0-based): "<tile_{k+1}>", or "<tile_global_thumbnail>" last. */
void nvlm_tile_tag(int k, int n_tiles, char out[32]);

/* Replaces the first n_images "<image>" of text, in order, by the spans of images with
 * num_patches[i] tiles (chat() step 4). Fails if text has fewer placeholders. */
int nvlm_expand_images(const char *text, const int *num_patches, int n_images, const char *ctx_token,
                       int tokens_per_tile, nvlm_buf *out, nvlm_err *err);

/* Python's str.strip(): removes leading/trailing characters for which str.isspace() holds.
 * Works in place on a NUL-terminated UTF-8 string; returns its new length. */
size_t nvlm_py_strip(char *s);
#endif
