/* NVLM-X / NVLM-H prompt layout and cross-attention memory (docs/spec.md §12). */
#include "generate/layout_xh.h"
#include "core/err.h"
#include "generate/prompt.h"
#include "model/llm.h"
#include <stdlib.h>
#include <string.h>

int nvlm_layout_decoder_rows(const nvlm_model *m, int n_tiles, int *first_row) {
    const int tpt = nvlm_cfg_tokens_per_tile(&m->cfg);
    *first_row = 0;
    switch (m->cfg.arch) {
    case NVLM_ARCH_X: return 0;
    case NVLM_ARCH_H: *first_row = (n_tiles - 1) * tpt; return tpt;
    default: return n_tiles * tpt;
    }
}

/* Growable id list. */
typedef struct id_list {
    int32_t *ids;
    size_t n, cap;
} id_list;

/* Tokenises text[0, len) on its own and appends the ids. */
static int append_tokens(const nvlm_model *m, id_list *l, const char *text, size_t len, nvlm_err *err) {
    if (len == 0) return NVLM_OK;
    int32_t *ids;
    size_t n;
    int rc = nvlm_tokenizer_encode(m->tok, text, len, &ids, &n, err);
    if (rc) return rc;
    if (l->n + n > l->cap) {
        size_t cap = l->cap ? l->cap : 256;
        while (cap < l->n + n) cap *= 2;
        int32_t *p = realloc(l->ids, sizeof *p * cap);
        if (!p) {
            free(ids);
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory tokenising the prompt");
        }
        l->ids = p;
        l->cap = cap;
    }
    memcpy(l->ids + l->n, ids, sizeof *ids * n);
    l->n += n;
    free(ids);
    return NVLM_OK;
}

/* One image span of NVLM-X: "<Image>", the tags (each its own token range, seeing only its
 * tile), "</Image>" (the image becomes visible after its last token). */
static int layout_x_span(nvlm_xattn *xa, int img, int n_tiles, id_list *l, nvlm_err *err) {
    const nvlm_model *m = xa->m;
    const int tpt = nvlm_cfg_tokens_per_tile(&m->cfg);
    if (img >= xa->n_images || xa->rows_end[img] - nvlm_xattn_image_row0(xa, img) != n_tiles * tpt)
        return nvlm_fail(err, NVLM_E_INTERNAL, "image %d has no cross-attention memory of %d tiles", img, n_tiles);
    int rc = append_tokens(m, l, "<Image>", 7, err);
    for (int j = 0; j < n_tiles && !rc; j++) {
        char tag[32];
        nvlm_tile_tag(j, n_tiles, tag);
        size_t start = l->n;
        rc = append_tokens(m, l, tag, strlen(tag), err);
        int row0 = nvlm_xattn_image_row0(xa, img) + j * tpt;
        if (!rc) rc = nvlm_xattn_add_span(xa, (int)start, (int)l->n, row0, row0 + tpt, err);
    }
    if (!rc) rc = append_tokens(m, l, "</Image>", 8, err);
    if (!rc) rc = nvlm_xattn_set_visible_after(xa, (int)l->n - 1, err);
    return rc;
}

/* NVLM-X: the template cut at its first n_images placeholders, every piece and span segment
 * tokenised on its own (BPE must not merge across tag boundaries). */
static int layout_x(nvlm_xattn *xa, const char *tmpl, const int *num_patches, int n_images, id_list *l,
                    nvlm_err *err) {
    const char *p = tmpl;
    for (int i = 0; i < n_images; i++) {
        const char *hit = strstr(p, "<image>");
        if (!hit)
            return nvlm_fail(err, NVLM_E_INVALID_ARG,
                             "%d image(s) given but the conversation has only %d <image> placeholder(s)", n_images, i);
        int rc = append_tokens(xa->m, l, p, (size_t)(hit - p), err);
        if (!rc) rc = layout_x_span(xa, i, num_patches[i], l, err);
        if (rc) return rc;
        p = hit + 7;
    }
    return append_tokens(xa->m, l, p, strlen(p), err);
}

/* NVLM-H: NVLM-D's prompt with every image reduced to its thumbnail, tokenised as one
 * string; image i becomes visible after its last <|vision_pad|>. */
static int layout_h(nvlm_xattn *xa, const char *tmpl, int n_images, id_list *l, nvlm_err *err) {
    const nvlm_model *m = xa->m;
    const int tpt = nvlm_cfg_tokens_per_tile(&m->cfg);
    int *ones = malloc(sizeof(int) * (size_t)(n_images + 1));
    nvlm_buf full = {0};
    if (!ones) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the prompt");
    for (int i = 0; i < n_images; i++) ones[i] = 1;
    int rc = nvlm_expand_images(tmpl, ones, n_images, "<|vision_pad|>", tpt, &full, err);
    if (!rc) rc = append_tokens(m, l, full.data, full.len, err);
    free(ones);
    nvlm_buf_free(&full);
    size_t seen = 0;
    for (size_t i = 0; !rc && i < l->n; i++) {
        if (l->ids[i] != m->id_img_context) continue;
        seen++;
        if (seen % (size_t)tpt == 0 && seen / (size_t)tpt <= (size_t)n_images)
            rc = nvlm_xattn_set_visible_after(xa, (int)i, err);
    }
    if (!rc && seen != (size_t)n_images * tpt)
        rc = nvlm_fail(err, NVLM_E_INVALID_ARG,
                       "the prompt has %zu <|vision_pad|> tokens but the %d image thumbnail(s) give %zu "
                       "(is <|vision_pad|> written in the text?)", seen, n_images, (size_t)n_images * tpt);
    return rc;
}

int nvlm_layout_prompt(nvlm_xattn *xa, const char *tmpl, const int *num_patches, int n_images, int32_t **ids,
                       size_t *n_ids, nvlm_err *err) {
    *ids = NULL;
    *n_ids = 0;
    nvlm_xattn_clear_layout(xa);
    if (n_images > xa->n_images)
        return nvlm_fail(err, NVLM_E_INTERNAL, "%d images in the prompt, %d with cross-attention memory", n_images, xa->n_images);
    id_list l = {0};
    int rc = xa->m->cfg.arch == NVLM_ARCH_X ? layout_x(xa, tmpl, num_patches, n_images, &l, err)
                                            : layout_h(xa, tmpl, n_images, &l, err);
    if (rc) {
        free(l.ids);
        nvlm_xattn_clear_layout(xa);
        return rc;
    }
    *ids = l.ids;
    *n_ids = l.n;
    return NVLM_OK;
}

/* NVLM-H memory of one image: [E(<tile_1>); F[0]; ...; E(<tile_{N-1}>); F[N-2]]. */
static int h_memory(const nvlm_model *m, const float *features, int n_tiles, float **mem, int *rows, nvlm_err *err) {
    const size_t h = (size_t)m->cfg.llm.hidden_size, tpt = (size_t)nvlm_cfg_tokens_per_tile(&m->cfg);
    float *M = NULL;
    size_t r = 0;
    int rc = NVLM_OK;
    for (int j = 0; j < n_tiles - 1 && !rc; j++) {
        char tag[32];
        nvlm_tile_tag(j, n_tiles, tag);
        id_list t = {0};
        rc = append_tokens(m, &t, tag, strlen(tag), err);
        float *grown = rc ? NULL : realloc(M, sizeof(float) * (r + t.n + tpt) * h);
        if (!rc && !grown) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the cross-attention memory");
        if (!rc) {
            M = grown;
            rc = nvlm_embed_tokens(m, t.ids, (int)t.n, M + r * h, err);
            r += t.n;
            memcpy(M + r * h, features + (size_t)j * tpt * h, sizeof(float) * tpt * h);
            r += tpt;
        }
        free(t.ids);
    }
    if (rc) {
        free(M);
        return rc;
    }
    *mem = M;
    *rows = (int)r;
    return NVLM_OK;
}

int nvlm_layout_add_image(nvlm_xattn *xa, const float *features, int n_tiles, nvlm_err *err) {
    const nvlm_model *m = xa->m;
    if (m->cfg.arch == NVLM_ARCH_X)
        return nvlm_xattn_add_image(xa, features, n_tiles * nvlm_cfg_tokens_per_tile(&m->cfg), err);
    float *mem = NULL;
    int rows = 0;
    int rc = h_memory(m, features, n_tiles, &mem, &rows, err);
    if (!rc) rc = nvlm_xattn_add_image(xa, mem, rows, err);
    free(mem);
    return rc;
}
