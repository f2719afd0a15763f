/* The prompt a request becomes, known before any compute, so that prompt + max_tokens can be
 * checked against the context before a slot is taken. It mirrors src/generate/chat.c's
 * build_prompt_ids for a conversation whose history is given (the server always marks it and
 * places every image's <image> itself): exact for NVLM-D; for NVLM-X/H the decoder spans of
 * generate/layout_xh.h (tags only / the thumbnail's span) tokenised as one string, which may
 * differ by a token or two from the engine's count. usage always reports the engine's count. */
#include "core/err.h"
#include "image/grid.h"
#include "model/model.h"
#include "serve/serve_int.h"
#include <stdlib.h>

static void tile_bounds(const nvlm_config *cfg, int max_tiles, int *min_num, int *max_num) {
    *max_num = max_tiles > 0 ? max_tiles : cfg->max_dynamic_patch;
    *min_num = cfg->min_dynamic_patch < *max_num ? cfg->min_dynamic_patch : *max_num;
    if (!cfg->dynamic_image_size) *min_num = *max_num = 1;
}

int serve_image_tiles(nvlm_model *m, const nvlm_image *img, int max_tiles) {
    int min_num, max_num, cols = 1, rows = 1;
    tile_bounds(&m->cfg, max_tiles, &min_num, &max_num);
    if (grid_choose(img->width, img->height, m->cfg.image_size, min_num, max_num, &cols, &rows, NULL)) return 1;
    return cols * rows + (m->cfg.use_thumbnail && cols * rows != 1);
}

/* The template with every image's placeholder replaced by what the decoder sees of it. */
static int expand(nvlm_model *m, const char *tmpl, const int *tiles, int n_images, nvlm_buf *out, nvlm_err *err) {
    const char *pad = "<|vision_pad|>";
    int tpt = nvlm_cfg_tokens_per_tile(&m->cfg);
    if (m->cfg.arch == NVLM_ARCH_D) return nvlm_expand_images(tmpl, tiles, n_images, pad, tpt, out, err);
    int *dec = malloc(sizeof(int) * (size_t)(n_images + 1));
    if (!dec) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (int i = 0; i < n_images; i++) dec[i] = m->cfg.arch == NVLM_ARCH_H ? 1 : tiles[i];
    int rc = nvlm_expand_images(tmpl, dec, n_images, pad, m->cfg.arch == NVLM_ARCH_H ? tpt : 0, out, err);
    free(dec);
    return rc;
}

int serve_prompt_ids(nvlm_model *m, const serve_request *r, int max_tiles, int32_t **ids, size_t *n, nvlm_err *err) {
    *ids = NULL;
    *n = 0;
    int *tiles = malloc(sizeof(int) * (size_t)(r->n_images + 1));
    nvlm_buf tmpl = {0}, full = {0};
    int rc = tiles ? nvlm_prompt_template(r->system, r->history, r->n_history, r->question, &tmpl) : NVLM_E_NOMEM;
    if (rc) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the prompt");
    for (int i = 0; !rc && i < r->n_images; i++) tiles[i] = serve_image_tiles(m, &r->images[i], max_tiles);
    if (!rc) rc = expand(m, tmpl.data, tiles, r->n_images, &full, err);
    if (!rc) rc = nvlm_tokenizer_encode(m->tok, full.data, full.len, ids, n, err);
    nvlm_buf_free(&tmpl);
    nvlm_buf_free(&full);
    free(tiles);
    return rc;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull, x ^= x >> 33;
    return x;
}

uint64_t serve_image_hash(const nvlm_image *im) {
    uint64_t h = 0xcbf29ce484222325ull ^ ((uint64_t)im->width << 32 | (uint32_t)im->height);
    size_t n = (size_t)im->width * im->height * 3;
    for (size_t i = 0; i < n; i++) h = (h ^ im->rgb[i]) * 0x100000001b3ull;
    return mix64(h);
}

/* Decodes image i (its RGB lives only here) and queues its tiles in the chat. */
static int add_one_image(nvlm_chat *c, serve_request *r, int i, uint64_t max_pixels, serve_error *e) {
    const serve_image_src *src = &r->image_src[i];
    nvlm_image_limits il = {src->exact && src->width * src->height < max_pixels ? src->width * src->height : max_pixels};
    nvlm_err err = {0};
    nvlm_image img;
    int rc = nvlm_image_decode(src->data, src->len, &il, &img, &err);
    if (rc == NVLM_E_NOMEM) return serve_fail(e, 500, NULL, src->param, "out of memory decoding the image");
    if (rc == NVLM_E_LIMIT) return serve_fail(e, 400, "image_too_large", src->param, "%s", err.msg);
    if (rc) return serve_fail(e, 400, "invalid_image", src->param, "the image cannot be decoded: %s", err.msg);
    r->images[i].width = img.width, r->images[i].height = img.height;
    r->image_hash[i] = serve_image_hash(&img);
    rc = nvlm_chat_add_image(c, &img, &err);
    nvlm_image_free(&img);
    if (rc) return serve_fail(e, rc == NVLM_E_NOMEM ? 500 : 400, NULL, src->param, "%s", err.msg);
    return 0;
}

int serve_make_chat(nvlm_model *m, serve_request *r, int max_tiles, const serve_image_ctl *ic, nvlm_chat **out,
                    serve_error *e) {
    nvlm_chat *c = NULL;
    nvlm_err err = {0};
    int rc = nvlm_chat_new(m, &c, &err);
    if (!rc && r->system) rc = nvlm_chat_set_system(c, r->system, &err);
    if (!rc) nvlm_chat_set_max_tiles(c, max_tiles);
    for (int i = 0; !rc && i < r->n_history; i++)
        rc = nvlm_chat_add_history(c, r->history[i].question, r->history[i].answer, &err);
    if (rc) serve_fail(e, rc == NVLM_E_NOMEM ? 500 : 400, NULL, NULL, "%s", err.msg);
    free(r->image_hash);
    r->image_hash = rc ? NULL : calloc((size_t)r->n_images + 1, sizeof *r->image_hash);
    if (!rc && !r->image_hash) rc = serve_fail(e, 500, NULL, NULL, "out of memory");
    for (int i = 0; !rc && i < r->n_images; i++) {
        if (ic->gone && ic->gone(ic->user)) rc = serve_fail(e, 499, "client_gone", NULL, "the client left");
        else rc = add_one_image(c, r, i, ic->max_pixels, e);
        /* the encoded bytes are not needed any more */
        free(r->image_src[i].data);
        r->image_src[i].data = NULL;
    }
    if (!rc) nvlm_chat_mark_history(c);
    if (rc) {
        nvlm_chat_free(c);
        c = NULL;
    }
    *out = c;
    return rc ? -1 : 0;
}
