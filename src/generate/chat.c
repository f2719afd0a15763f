/* A conversation: chat()'s prompt, image encoding, prefill with KV-cache reuse, generation. */
#include "core/err.h"
#include "generate/layout_xh.h"
#include "generate/chat_internal.h"
#include "generate/prompt.h"
#include "generate/sampler.h"
#include "model/llm.h"
#include "model/model.h"
#include "model/xattn.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PREFILL_CHUNK = 512 };

typedef struct chat_image {
    int n_tiles;
    uint8_t *rgb;     /* [n_tiles, S, S, 3] until encoded: 8-bit, normalised one tile at a time
                       * when encoded (4x less memory held per queued image than floats) */
    float *features;  /* [n_tiles * tokens_per_tile, h] once encoded */
} chat_image;

struct nvlm_chat {
    nvlm_model *m;
    char *system;            /* NULL: the template default */
    int max_tiles;           /* 0: config max_dynamic_patch */
    nvlm_turn *history;
    int n_history, cap_history;
    int history_given;
    chat_image *images;
    int n_images, cap_images;
    nvlm_kv kv;
    int32_t *cached;         /* the ids whose keys/values are in kv, kv.len of them */
    size_t cap_cached;
    nvlm_abort_fn abort_fn;  /* may be NULL */
    void *abort_user;
    nvlm_xattn *xa;          /* NVLM-X/H: cross-attention memory and its visibility; NULL for D */
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void nvlm_sampling_default(nvlm_sampling *s) {
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
    s->repetition_penalty = 1.0f;
    s->max_new_tokens = 1024;
}

int nvlm_chat_new(nvlm_model *m, nvlm_chat **out, nvlm_err *err) {
    *out = NULL;
    if (!m) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no model");
    nvlm_chat *c = calloc(1, sizeof *c);
    if (!c) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    c->m = m;
    int rc = nvlm_kv_init(&c->kv, m, err);
    if (rc) {
        free(c);
        return rc;
    }
    if (m->cfg.arch != NVLM_ARCH_D) {
        c->xa = malloc(sizeof *c->xa);
        rc = c->xa ? nvlm_xattn_init(c->xa, m, err) : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        if (rc) {
            free(c->xa);
            c->xa = NULL;
            nvlm_chat_free(c);
            return rc;
        }
    }
    *out = c;
    return NVLM_OK;
}

void nvlm_chat_free(nvlm_chat *c) {
    if (!c) return;
    for (int i = 0; i < c->n_history; i++) free(c->history[i].question), free(c->history[i].answer);
    free(c->history);
    for (int i = 0; i < c->n_images; i++) free(c->images[i].rgb), free(c->images[i].features);
    free(c->images);
    nvlm_kv_free(&c->kv);
    if (c->xa) nvlm_xattn_free(c->xa);
    free(c->xa);
    free(c->cached);
    free(c->system);
    free(c);
}

int nvlm_chat_set_system(nvlm_chat *c, const char *system_message, nvlm_err *err) {
    char *s = NULL;
    if (system_message && !(s = strdup(system_message))) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    free(c->system);
    c->system = s;
    return NVLM_OK;
}

void nvlm_chat_set_max_tiles(nvlm_chat *c, int max_num) { c->max_tiles = max_num > 0 ? max_num : 0; }
void nvlm_chat_mark_history(nvlm_chat *c) { c->history_given = 1; }

static int push_turn(nvlm_chat *c, const char *q, const char *a, nvlm_err *err) {
    if (c->n_history == c->cap_history) {
        int cap = c->cap_history ? 2 * c->cap_history : 8;
        nvlm_turn *h = realloc(c->history, sizeof *h * (size_t)cap);
        if (!h) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        c->history = h;
        c->cap_history = cap;
    }
    nvlm_turn t = {strdup(q ? q : ""), strdup(a ? a : "")};
    if (!t.question || !t.answer) {
        free(t.question), free(t.answer);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    c->history[c->n_history++] = t;
    c->history_given = 1;
    return NVLM_OK;
}

int nvlm_chat_add_history(nvlm_chat *c, const char *question, const char *answer, nvlm_err *err) {
    return push_turn(c, question, answer, err);
}

/* Tiling as chat() does it for this model: the chat's max_num or the config's bound, the
 * config's thumbnail rule, the model's threads (results do not depend on them). */
static nvlm_tile_opts tile_opts(const nvlm_chat *c) {
    const nvlm_config *cfg = &c->m->cfg;
    nvlm_tile_opts o = {0};
    o.tile_size = cfg->image_size;
    o.max_num = c->max_tiles ? c->max_tiles : cfg->max_dynamic_patch;
    o.min_num = cfg->min_dynamic_patch < o.max_num ? cfg->min_dynamic_patch : o.max_num;
    if (!cfg->dynamic_image_size) o.min_num = o.max_num = 1;
    o.no_thumbnail = !cfg->use_thumbnail;
    o.threads = nvlm_pool_threads(c->m->pool);
    return o;
}

/* Queues the (one-image) batch's tiles, normalised, for the next placeholder. */
static int queue_tiles(nvlm_chat *c, const nvlm_tile_batch *b, nvlm_err *err) {
    if (c->n_images == c->cap_images) {
        int cap = c->cap_images ? 2 * c->cap_images : 4;
        chat_image *n = realloc(c->images, sizeof *n * (size_t)cap);
        if (!n) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        c->images = n;
        c->cap_images = cap;
    }
    size_t bytes = (size_t)3 * b->size * b->size * (size_t)b->total_tiles;
    uint8_t *rgb = malloc(bytes ? bytes : 1);
    if (!rgb) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for %d tiles", b->total_tiles);
    memcpy(rgb, b->rgb, bytes);
    c->images[c->n_images++] = (chat_image){b->total_tiles, rgb, NULL};
    return NVLM_OK;
}

int nvlm_chat_add_image(nvlm_chat *c, const nvlm_image *img, nvlm_err *err) {
    nvlm_tile_opts o = tile_opts(c);
    nvlm_tile_batch b;
    int rc = nvlm_images_tile(img, 1, &o, &b, err);
    if (rc) return rc;
    rc = queue_tiles(c, &b, err);
    nvlm_tile_batch_free(&b);
    return rc;
}

/* Decoding and resizing overlap on two threads or more. */
int nvlm_chat_add_image_file(nvlm_chat *c, const char *path, nvlm_err *err) {
    nvlm_tile_opts o = tile_opts(c);
    nvlm_tile_batch b;
    int rc = nvlm_images_load_tile(&path, 1, &o, &b, err);
    if (rc) return rc;
    rc = queue_tiles(c, &b, err);
    nvlm_tile_batch_free(&b);
    return rc;
}

void nvlm_chat_set_abort(nvlm_chat *c, nvlm_abort_fn fn, void *user) {
    c->abort_fn = fn;
    c->abort_user = user;
}

/* Checked between units of work: a tile, a prefill chunk, a generated token. */
static int check_abort(const nvlm_chat *c, nvlm_err *err) {
    if (c->abort_fn && c->abort_fn(c->abort_user)) return nvlm_fail(err, NVLM_E_CANCELLED, "cancelled");
    return NVLM_OK;
}

/* Runs the vision path on every image not encoded yet, one tile at a time (each tile is
 * independent, so this is the same computation as all at once, and can be cancelled). */
static int encode_pending_images(nvlm_chat *c, nvlm_err *err) {
    nvlm_model *m = c->m;
    size_t per_tile = (size_t)nvlm_cfg_tokens_per_tile(&m->cfg) * m->cfg.llm.hidden_size;
    size_t px_per_tile = (size_t)3 * m->cfg.image_size * m->cfg.image_size;
    for (int i = 0; i < c->n_images; i++) {
        chat_image *im = &c->images[i];
        if (im->features) continue;
        im->features = malloc(sizeof(float) * per_tile * (size_t)im->n_tiles);
        float *px = malloc(sizeof(float) * px_per_tile);
        int rc = im->features && px ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory for image features");
        for (int t = 0; t < im->n_tiles && !rc; t++) {
            rc = check_abort(c, err);
            if (rc) break;
            nvlm_tile_normalize(im->rgb + t * px_per_tile, m->cfg.image_size, px);
            rc = nvlm_encode_tiles(m, px, 1, im->features + t * per_tile, err);
        }
        free(px);
        if (rc) {
            free(im->features);
            im->features = NULL;
            return rc;
        }
        free(im->rgb);
        im->rgb = NULL;
    }
    /* NVLM-X/H: cross-attention keys/values, once per image, kept for the conversation */
    while (c->xa && c->xa->n_images < c->n_images) {
        const chat_image *im = &c->images[c->xa->n_images];
        int rc = nvlm_layout_add_image(c->xa, im->features, im->n_tiles, err);
        if (rc) return rc;
    }
    return NVLM_OK;
}

/* The question as chat() sees it: "<image>\n" in front when history is None, images were
 * given and the question has no placeholder. */
static char *effective_question(const nvlm_chat *c, const char *question) {
    if (c->history_given || c->n_images == 0 || strstr(question, "<image>")) return strdup(question);
    size_t n = strlen(question);
    char *q = malloc(n + 9);
    if (q) memcpy(q, "<image>\n", 8), memcpy(q + 8, question, n + 1);
    return q;
}

/* The full prompt's ids for the conversation so far plus question. */
static int build_prompt_ids(nvlm_chat *c, const char *question, int32_t **ids, size_t *n, nvlm_err *err) {
    nvlm_model *m = c->m;
    nvlm_buf tmpl = {0}, full = {0};
    int *patches = malloc(sizeof(int) * (size_t)(c->n_images + 1));
    int rc = patches ? nvlm_prompt_template(c->system, c->history, c->n_history, question, &tmpl) : NVLM_E_NOMEM;
    if (rc) {
        free(patches);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the prompt");
    }
    for (int i = 0; i < c->n_images; i++) patches[i] = c->images[i].n_tiles;
    if (c->xa) rc = nvlm_layout_prompt(c->xa, tmpl.data, patches, c->n_images, ids, n, err);
    else rc = nvlm_expand_images(tmpl.data, patches, c->n_images, "<|vision_pad|>", nvlm_cfg_tokens_per_tile(&m->cfg), &full, err);
    if (!rc && !c->xa) rc = nvlm_tokenizer_encode(m->tok, full.data, full.len, ids, n, err);
    nvlm_buf_free(&tmpl);
    nvlm_buf_free(&full);
    free(patches);
    return rc;
}

/* Embeddings of ids[from, to): token rows, image feature rows at IMG_CONTEXT positions (all
 * tiles for NVLM-D, the thumbnail for NVLM-H, none for NVLM-X: nvlm_layout_decoder_rows). */
static int embed_range(nvlm_chat *c, const int32_t *ids, size_t from, size_t to, float *out, nvlm_err *err) {
    nvlm_model *m = c->m;
    const int h = m->cfg.llm.hidden_size;
    size_t row = 0; /* index of the image-context token among all of the prompt */
    for (size_t i = 0; i < from; i++) row += ids[i] == m->id_img_context;
    for (size_t i = from; i < to; i++) {
        float *o = out + (i - from) * h;
        if (ids[i] != m->id_img_context) {
            int rc = nvlm_embed_tokens(m, &ids[i], 1, o, err);
            if (rc) return rc;
            continue;
        }
        size_t r = row++, rows;
        int img = 0, first = 0;
        while (img < c->n_images && r >= (rows = (size_t)nvlm_layout_decoder_rows(m, c->images[img].n_tiles, &first)))
            r -= rows, img++;
        if (img == c->n_images)
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "the prompt has more %s tokens than the images provide",
                             "<|vision_pad|>");
        memcpy(o, c->images[img].features + (first + r) * h, sizeof(float) * h);
    }
    return NVLM_OK;
}

static int check_image_tokens(const nvlm_chat *c, const int32_t *ids, size_t n, nvlm_err *err) {
    size_t have = 0, want = 0;
    for (size_t i = 0; i < n; i++) have += ids[i] == c->m->id_img_context;
    int first;
    for (int i = 0; i < c->n_images; i++) want += (size_t)nvlm_layout_decoder_rows(c->m, c->images[i].n_tiles, &first);
    if (have != want)
        return nvlm_fail(err, NVLM_E_INVALID_ARG,
                         "the prompt has %zu <|vision_pad|> tokens but the images give %zu features "
                         "(is <|vision_pad|> written in the text?)", have, want);
    return NVLM_OK;
}

/* Records that positions [from, to) of the cache hold src[0 .. to-from). */
static int remember_ids(nvlm_chat *c, const int32_t *src, size_t from, size_t to, nvlm_err *err) {
    if (to > c->cap_cached) {
        size_t cap = c->cap_cached ? c->cap_cached : 256;
        while (cap < to) cap *= 2;
        int32_t *n = realloc(c->cached, sizeof *n * cap);
        if (!n) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        c->cached = n;
        c->cap_cached = cap;
    }
    memcpy(c->cached + from, src, sizeof *src * (to - from));
    return NVLM_OK;
}

/* The cross-attention blocks run as a hook before their LLM layers (NULL for NVLM-D). */
static const nvlm_llm_hooks *xattn_hooks(nvlm_chat *c, nvlm_llm_hooks *h) {
    if (!c->xa) return NULL;
    h->before_layer = nvlm_xattn_before_layer;
    h->user = c->xa;
    return h;
}

/* Runs ids[from, n) through the decoder (in chunks), leaving the last position's logits. */
static int prefill(nvlm_chat *c, const int32_t *ids, size_t from, size_t n, float *logits, nvlm_err *err) {
    const int h = c->m->cfg.llm.hidden_size;
    float *emb = malloc(sizeof(float) * (size_t)h * PREFILL_CHUNK);
    if (!emb) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    nvlm_llm_hooks hk;
    const nvlm_llm_hooks *hooks = xattn_hooks(c, &hk);
    int rc = NVLM_OK;
    for (size_t b = from; b < n && !rc; b += PREFILL_CHUNK) {
        size_t e = b + PREFILL_CHUNK < n ? b + PREFILL_CHUNK : n;
        rc = check_abort(c, err);
        if (!rc) rc = embed_range(c, ids, b, e, emb, err);
        if (!rc) rc = nvlm_llm_forward(c->m, &c->kv, emb, (int)(e - b), hooks, e == n ? logits : NULL, 0, err);
        if (!rc) rc = remember_ids(c, ids + b, b, e, err);
    }
    free(emb);
    return rc;
}

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

typedef struct gen_state {
    int32_t *out;
    size_t n_out;
    nvlm_buf text;       /* decoded so far (special tokens skipped), for stop strings */
    nvlm_detok *detok;
    nvlm_logprobs *logprobs; /* per generated token when asked for */
    size_t n_logprobs;
} gen_state;

/* Position of the earliest stop string in text, or -1. */
static long find_stop(const char *text, const char *const *stop) {
    long best = -1;
    for (int i = 0; stop && stop[i]; i++) {
        if (!*stop[i]) continue;
        const char *hit = strstr(text, stop[i]);
        if (hit && (best < 0 || hit - text < best)) best = hit - text;
    }
    return best;
}

static int generate(nvlm_chat *c, const int32_t *prompt, size_t n_prompt, float *logits, const nvlm_sampling *s,
                    nvlm_token_fn on_token, void *user, gen_state *g, int *finish_length, nvlm_err *err) {
    nvlm_model *m = c->m;
    const int V = m->cfg.llm.vocab_size, h = m->cfg.llm.hidden_size;
    nvlm_sampler sp;
    nvlm_llm_hooks hk;
    const nvlm_llm_hooks *hooks = xattn_hooks(c, &hk);
    float *emb = malloc(sizeof(float) * h);
    g->out = malloc(sizeof(int32_t) * (size_t)(s->max_new_tokens > 0 ? s->max_new_tokens : 1));
    int rc = emb && g->out ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = nvlm_sampler_init(&sp, s, m->tok, V, m->id_im_end, prompt, n_prompt, err);
    if (rc) memset(&sp, 0, sizeof sp);
    if (!rc) rc = nvlm_detok_new(m->tok, 1, &g->detok, err);
    *finish_length = 1;
    for (int step = 0; !rc && step < s->max_new_tokens; step++) {
        if ((rc = check_abort(c, err))) break;
        int32_t id;
        if ((rc = nvlm_sampler_next(&sp, logits, &id, err))) break;
        g->out[g->n_out++] = id;
        char *piece = NULL;
        size_t plen = 0;
        if ((rc = nvlm_detok_push(g->detok, id, &piece, &plen, err))) break;
        if (nvlm_buf_append(&g->text, piece, plen)) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        int stop_user = !rc && on_token && on_token(user, id, piece, plen);
        free(piece);
        if (rc) break;
        if (id == m->id_im_end || (g->text.data && find_stop(g->text.data, s->stop) >= 0) || stop_user) {
            *finish_length = 0;
            break;
        }
        if (step + 1 == s->max_new_tokens) break;
        if ((rc = nvlm_embed_tokens(m, &id, 1, emb, err))) break;
        if ((rc = nvlm_llm_forward(m, &c->kv, emb, 1, hooks, logits, 0, err))) break;
        rc = remember_ids(c, &id, (size_t)c->kv.len - 1, (size_t)c->kv.len, err);
    }
    g->logprobs = nvlm_sampler_take_logprobs(&sp, &g->n_logprobs);
    nvlm_sampler_free(&sp);
    free(emb);
    return rc;
}

/* decode(skip special) -> before first "<|im_end|>" -> before a stop string -> str.strip()
 * (raw completions: not stripped). */
static int make_response(nvlm_chat *c, const gen_state *g, const nvlm_sampling *s, int raw, char **out, nvlm_err *err) {
    size_t len;
    int rc = nvlm_tokenizer_decode(c->m->tok, g->out, g->n_out, 1, out, &len, err);
    if (rc) return rc;
    char *cut = s->grammar ? NULL : strstr(*out, "<|im_end|>"); /* a grammar's text stays whole (valid JSON) */
    if (cut) *cut = 0;
    long st = find_stop(*out, s->stop);
    if (st >= 0) (*out)[st] = 0;
    if (!raw) nvlm_py_strip(*out);
    return NVLM_OK;
}

/* raw: the text is the whole prompt (no template, no images, nothing joins the history). */
static int ask(nvlm_chat *c, const char *question, int raw, const nvlm_sampling *s_in, nvlm_token_fn on_token,
               void *user, nvlm_answer *out, nvlm_err *err) {
    memset(out, 0, sizeof *out);
    if (!c || !question) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no chat or no question");
    if (raw && c->n_images) return nvlm_fail(err, NVLM_E_INVALID_ARG, "a raw completion takes no images");
    nvlm_sampling s;
    if (s_in) s = *s_in;
    else nvlm_sampling_default(&s);
    nvlm_model *m = c->m;
    const int V = m->cfg.llm.vocab_size;
    char *q = raw ? strdup(question) : effective_question(c, question);
    if (!q) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    gen_state g = {0};
    float *logits = malloc(sizeof(float) * V);
    int rc = logits ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    double t0 = now_ms();
    if (!rc) rc = encode_pending_images(c, err);
    double t1 = now_ms();
    if (!rc && raw) rc = nvlm_tokenizer_encode(m->tok, q, strlen(q), &out->prompt_ids, &out->n_prompt, err);
    else if (!rc) rc = build_prompt_ids(c, q, &out->prompt_ids, &out->n_prompt, err);
    if (!rc) rc = check_image_tokens(c, out->prompt_ids, out->n_prompt, err);
    if (!rc && out->n_prompt == 0) rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "empty prompt");
    if (!rc) {
        size_t keep = common_prefix(c->cached, (size_t)c->kv.len, out->prompt_ids, out->n_prompt);
        if (keep == out->n_prompt) keep--; /* recompute the last position for its logits */
        nvlm_kv_truncate(&c->kv, (int)keep);
        out->n_prompt_reused = keep;
        rc = prefill(c, out->prompt_ids, keep, out->n_prompt, logits, err);
    }
    double t2 = now_ms();
    if (!rc) {
        out->last_logits = malloc(sizeof(float) * V);
        if (!out->last_logits) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        else memcpy(out->last_logits, logits, sizeof(float) * V);
    }
    if (!rc) rc = generate(c, out->prompt_ids, out->n_prompt, logits, &s, on_token, user, &g, &out->finish_length, err);
    double t3 = now_ms();
    if (!rc) rc = make_response(c, &g, &s, raw, &out->response, err);
    if (!rc && !raw) rc = push_turn(c, q, out->response, err);
    if (!rc) {
        out->output_ids = g.out;
        out->n_output = g.n_out;
        g.out = NULL;
        out->logprobs = g.logprobs; /* one per output id */
        g.logprobs = NULL;
        out->n_images = (size_t)c->n_images;
        out->num_patches = malloc(sizeof(int) * (size_t)(c->n_images + 1));
        for (int i = 0; out->num_patches && i < c->n_images; i++) out->num_patches[i] = c->images[i].n_tiles;
        out->vit_ms = t1 - t0, out->prompt_ms = t2 - t1, out->gen_ms = t3 - t2;
    }
    free(g.out);
    free(g.logprobs);
    nvlm_buf_free(&g.text);
    nvlm_detok_free(g.detok);
    free(logits);
    free(q);
    if (rc) nvlm_answer_free(out);
    return rc;
}

int nvlm_chat_ask(nvlm_chat *c, const char *question, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                  nvlm_answer *out, nvlm_err *err) {
    return ask(c, question, 0, s, on_token, user, out, err);
}

int nvlm_chat_complete(nvlm_chat *c, const char *prompt, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                       nvlm_answer *out, nvlm_err *err) {
    return ask(c, prompt, 1, s, on_token, user, out, err);
}

int nvlm_chat_regenerate(nvlm_chat *c, const nvlm_sampling *s, nvlm_token_fn on_token, void *user, nvlm_answer *out,
                         nvlm_err *err) {
    memset(out, 0, sizeof *out);
    if (!c || !c->n_history) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no answered question to ask again");
    nvlm_turn last = c->history[--c->n_history];
    int rc = ask(c, last.question, 0, s, on_token, user, out, err);
    if (rc) c->history[c->n_history++] = last; /* the conversation as it was */
    else free(last.question), free(last.answer);
    return rc;
}

void nvlm_answer_free(nvlm_answer *a) {
    if (!a) return;
    free(a->response);
    free(a->prompt_ids);
    free(a->output_ids);
    free(a->num_patches);
    free(a->last_logits);
    free(a->logprobs);
    memset(a, 0, sizeof *a);
}

void nvlm_chat_cache_bytes(const nvlm_chat *c, size_t *self_kv, size_t *cross_kv) {
    *self_kv = nvlm_kv_bytes(&c->kv);
    *cross_kv = c->xa ? nvlm_xattn_bytes(c->xa) : 0;
}

const float *nvlm_chat_image_features(const nvlm_chat *c, int i, int *n_tiles) {
    if (!c || i < 0 || i >= c->n_images) return NULL;
    if (n_tiles) *n_tiles = c->images[i].n_tiles;
    return c->images[i].features;
}
