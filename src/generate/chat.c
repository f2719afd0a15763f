/* A conversation: chat()'s prompt, image encoding, prefill with KV-cache reuse, generation. */
#include "core/err.h"
#include "generate/layout_xh.h"
#include "generate/chat_internal.h"
#include "generate/prompt.h"
#include "generate/sampler.h"
#include "engine/engine.h"
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
    float *partial;   /* features of the first done_tiles tiles while encoding */
    int done_tiles;
    float *features;  /* [n_tiles * tokens_per_tile, h] once encoded */
} chat_image;

enum { ASK_NONE, ASK_ENCODE, ASK_PREFILL, ASK_GEN };

/* One question being answered (nvlm_chat_begin .. nvlm_chat_finish). */
typedef struct chat_ask_state {
    int state;
    char *question;          /* as chat() sees it; raw: the whole prompt */
    int raw;                 /* a raw completion: no template, no images, no history turn */
    nvlm_turn again;         /* nvlm_chat_regenerate: the turn asked again, back in the history
                              * unless the new answer takes its place */
    nvlm_sampling s;
    nvlm_token_fn on_token;
    void *user;
    int32_t *prompt_ids;
    size_t n_prompt, n_reused, next; /* next: the first prompt position not in the cache */
    int in_batch;            /* tokens of the step under way */
    float *logits, *last_logits;
    nvlm_sampler sp;         /* penalties, logit_bias, logprobs, grammar, the draw */
    int32_t *out, pending;
    size_t n_out;
    int finish_length;
    nvlm_buf text;           /* decoded so far (special tokens skipped), for stop strings */
    nvlm_detok *detok;
    double t0, t1, t2;
} chat_ask_state;

struct nvlm_chat {
    nvlm_model *m;
    char *system;            /* NULL: the template default */
    int max_tiles;           /* 0: config max_dynamic_patch */
    nvlm_turn *history;
    int n_history, cap_history;
    int history_given;
    chat_image *images;
    int n_images, cap_images;
    nvlm_engine *e, *own;    /* the engine it runs on; own: made by the chat itself */
    int seq;                 /* its KV sequence in e's store, -1 before the first question */
    int32_t *cached;         /* the ids whose keys/values are in the sequence */
    size_t cap_cached;
    nvlm_abort_fn abort_fn;  /* may be NULL */
    void *abort_user;
    nvlm_xattn *xa;          /* NVLM-X/H: cross-attention memory and its visibility; NULL for D */
    nvlm_llm_hooks hooks;
    chat_ask_state ask;
};

static void ask_reset(nvlm_chat *c);

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
    c->seq = -1;
    int rc = NVLM_OK;
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
    ask_reset(c); /* first: it may put a turn asked again back into the history */
    for (int i = 0; i < c->n_history; i++) free(c->history[i].question), free(c->history[i].answer);
    free(c->history);
    for (int i = 0; i < c->n_images; i++) free(c->images[i].rgb), free(c->images[i].partial), free(c->images[i].features);
    free(c->images);
    nvlm_chat_release_cache(c);
    nvlm_engine_free(c->own);
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

/* Queues the (one-image) batch's tiles, as 8-bit RGB, for the next placeholder. */
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
    c->images[c->n_images++] = (chat_image){.n_tiles = b->total_tiles, .rgb = rgb};
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

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

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

/* decode(skip special) -> before first "<|im_end|>" -> before a stop string -> str.strip()
 * (raw completions: not stripped). */
static int make_response(nvlm_chat *c, const nvlm_sampling *s, int raw, char **out, nvlm_err *err) {
    size_t len;
    int rc = nvlm_tokenizer_decode(c->m->tok, c->ask.out, c->ask.n_out, 1, out, &len, err);
    if (rc) return rc;
    char *cut = s->grammar ? NULL : strstr(*out, "<|im_end|>"); /* a grammar's text stays whole (valid JSON) */
    if (cut) *cut = 0;
    long st = find_stop(*out, s->stop);
    if (st >= 0) (*out)[st] = 0;
    if (!raw) nvlm_py_strip(*out);
    return NVLM_OK;
}

/* ------------------------------------------------- the turn, step by step */

/* Frees what one ask holds (the KV sequence stays: it is the conversation's cache). */
static void ask_reset(nvlm_chat *c) {
    chat_ask_state *a = &c->ask;
    if (a->again.question) c->history[c->n_history++] = a->again; /* the conversation as it was */
    free(a->question), free(a->out);
    free(a->prompt_ids), free(a->last_logits), free(a->logits);
    nvlm_sampler_free(&a->sp);
    nvlm_buf_free(&a->text);
    nvlm_detok_free(a->detok);
    memset(a, 0, sizeof *a);
}

/* The engine and KV sequence of a chat that drives itself (made at its first question). */
static int own_engine(nvlm_chat *c, nvlm_err *err) {
    if (!c->e) {
        nvlm_engine_opts o = {.max_batch = PREFILL_CHUNK};
        int rc = nvlm_engine_new(c->m, &o, &c->own, err);
        if (rc) return rc;
        c->e = c->own;
    }
    return c->seq >= 0 ? NVLM_OK : nvlm_kv_seq_new(nvlm_engine_kv(c->e), &c->seq, err);
}

int nvlm_chat_use_engine(nvlm_chat *c, nvlm_engine *e, nvlm_err *err) {
    if (c->e) return nvlm_fail(err, NVLM_E_INVALID_ARG, "the chat already has an engine");
    c->e = e;
    return nvlm_kv_seq_new(nvlm_engine_kv(e), &c->seq, err);
}

int nvlm_chat_seq(const nvlm_chat *c) { return c->seq; }

int nvlm_chat_tiles_pending(const nvlm_chat *c) {
    int n = 0;
    for (int i = 0; i < c->n_images; i++)
        if (!c->images[i].features) n += c->images[i].n_tiles - c->images[i].done_tiles;
    return n;
}

const int32_t *nvlm_chat_cached(const nvlm_chat *c, size_t *n) {
    int len = c->e && c->seq >= 0 ? nvlm_kv_seq_len(nvlm_engine_kv(c->e), c->seq) : 0;
    *n = len > 0 ? (size_t)len : 0;
    return c->cached;
}

/* raw: the text is the whole prompt (no template, no images, nothing joins the history). */
static int begin(nvlm_chat *c, const char *question, int raw, const nvlm_sampling *s_in, nvlm_token_fn on_token,
                 void *user, nvlm_err *err) {
    if (!c || !question) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no chat or no question");
    if (raw && c->n_images) return nvlm_fail(err, NVLM_E_INVALID_ARG, "a raw completion takes no images");
    int rc = own_engine(c, err);
    if (rc) return rc;
    ask_reset(c);
    chat_ask_state *a = &c->ask;
    if (s_in) a->s = *s_in;
    else nvlm_sampling_default(&a->s);
    a->on_token = on_token, a->user = user;
    a->raw = raw;
    a->question = raw ? strdup(question) : effective_question(c, question);
    if (!a->question) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    a->state = ASK_ENCODE;
    a->t0 = now_ms();
    return NVLM_OK;
}

int nvlm_chat_begin(nvlm_chat *c, const char *question, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                    nvlm_err *err) {
    return begin(c, question, 0, s, on_token, user, err);
}

int nvlm_chat_begin_raw(nvlm_chat *c, const char *prompt, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                        nvlm_err *err) {
    return begin(c, prompt, 1, s, on_token, user, err);
}

/* Encodes up to max_tiles tiles of the images not encoded yet (< 0: all); once none is left,
 * builds the prompt and picks the cached prefix to keep (*done = 1). */
int nvlm_chat_encode_step(nvlm_chat *c, int max_tiles, int *done, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    nvlm_model *m = c->m;
    *done = a->state != ASK_ENCODE;
    if (*done) return NVLM_OK;
    size_t per_tile = (size_t)nvlm_cfg_tokens_per_tile(&m->cfg) * m->cfg.llm.hidden_size;
    size_t px_per_tile = (size_t)3 * m->cfg.image_size * m->cfg.image_size;
    int budget = max_tiles;
    float *px = NULL; /* one tile normalised at a time */
    for (int i = 0; i < c->n_images; i++) {
        chat_image *im = &c->images[i];
        if (im->features) continue;
        if (!budget) break;
        if (!im->partial && !(im->partial = malloc(sizeof(float) * per_tile * (size_t)im->n_tiles))) {
            free(px);
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for image features");
        }
        if (!px && !(px = malloc(sizeof(float) * px_per_tile))) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a tile");
        for (; im->done_tiles < im->n_tiles && budget; im->done_tiles++, budget--) {
            nvlm_tile_normalize(im->rgb + im->done_tiles * px_per_tile, m->cfg.image_size, px);
            int rc = nvlm_encode_tiles(m, px, 1, im->partial + im->done_tiles * per_tile, err);
            if (rc) {
                free(px);
                return rc;
            }
        }
        if (im->done_tiles < im->n_tiles) break;
        im->features = im->partial, im->partial = NULL;
        free(im->rgb);
        im->rgb = NULL;
    }
    free(px);
    for (int i = 0; i < c->n_images; i++)
        if (!c->images[i].features) return NVLM_OK;
    /* NVLM-X/H: cross-attention keys/values, once per image, kept for the conversation */
    while (c->xa && c->xa->n_images < c->n_images) {
        const chat_image *im = &c->images[c->xa->n_images];
        int rc = nvlm_layout_add_image(c->xa, im->features, im->n_tiles, err);
        if (rc) return rc;
    }
    a->t1 = now_ms();
    int rc = a->raw ? nvlm_tokenizer_encode(m->tok, a->question, strlen(a->question), &a->prompt_ids, &a->n_prompt, err)
                    : build_prompt_ids(c, a->question, &a->prompt_ids, &a->n_prompt, err);
    if (!rc) rc = check_image_tokens(c, a->prompt_ids, a->n_prompt, err);
    if (!rc && a->n_prompt == 0) rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "empty prompt");
    if (rc) return rc;
    nvlm_kvstore *kv = nvlm_engine_kv(c->e);
    size_t keep = common_prefix(c->cached, (size_t)nvlm_kv_seq_len(kv, c->seq), a->prompt_ids, a->n_prompt);
    if (keep == a->n_prompt) keep--; /* recompute the last position for its logits */
    nvlm_kv_seq_truncate(kv, c->seq, (int)keep);
    a->n_reused = a->next = keep;
    a->state = ASK_PREFILL;
    *done = 1;
    return NVLM_OK;
}

const int32_t *nvlm_chat_prompt(const nvlm_chat *c, size_t *n) {
    *n = c->ask.state >= ASK_PREFILL ? c->ask.n_prompt : 0;
    return c->ask.state >= ASK_PREFILL ? c->ask.prompt_ids : NULL;
}

int nvlm_chat_adopt_prefix(nvlm_chat *c, int seq, size_t n) {
    chat_ask_state *a = &c->ask;
    if (a->state != ASK_PREFILL || a->next != a->n_reused || n <= a->next || n >= a->n_prompt) return 0;
    nvlm_err e = {0};
    if (remember_ids(c, a->prompt_ids, 0, n, &e)) return 0;
    nvlm_kv_seq_free(nvlm_engine_kv(c->e), c->seq);
    c->seq = seq;
    a->n_reused = a->next = n;
    return 1;
}

size_t nvlm_chat_prompt_left(const nvlm_chat *c) {
    return c->ask.state == ASK_PREFILL ? c->ask.n_prompt - c->ask.next : c->ask.state == ASK_GEN;
}

int nvlm_chat_generating(const nvlm_chat *c) { return c->ask.state == ASK_GEN; }

/* The cross-attention blocks run as a hook before their LLM layers (NULL for NVLM-D). */
static const nvlm_llm_hooks *xattn_hooks(nvlm_chat *c) {
    if (!c->xa) return NULL;
    c->hooks.before_layer = nvlm_xattn_before_layer;
    c->hooks.before_layer_role = nvlm_xattn_before_layer_role;
    c->hooks.user = c->xa;
    return &c->hooks;
}

int nvlm_chat_add_to_batch(nvlm_chat *c, nvlm_batch *b, int budget, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    const int h = c->m->cfg.llm.hidden_size;
    int pos = nvlm_kv_seq_len(nvlm_engine_kv(c->e), c->seq);
    a->in_batch = 0;
    if (a->state == ASK_GEN) {
        if (b->n_tok >= b->cap) return 0;
        int i = nvlm_batch_add(b, c->seq, pos, NULL, 1, 1, xattn_hooks(c));
        int rc = nvlm_embed_tokens(c->m, &a->pending, 1, b->embd + (size_t)i * h, err);
        if (rc) {
            b->n_tok--;
            return rc;
        }
        a->in_batch = 1;
        return 1;
    }
    if (a->state != ASK_PREFILL) return 0;
    size_t k = a->n_prompt - a->next, room = (size_t)(b->cap - b->n_tok);
    if (budget >= 0 && k > (size_t)budget) k = (size_t)budget;
    if (k > room) k = room;
    if (!k) return 0;
    int first = b->n_tok;
    for (size_t t = 0; t < k; t++)
        nvlm_batch_add(b, c->seq, pos + (int)t, NULL, a->next + t + 1 == a->n_prompt, 0, xattn_hooks(c));
    int rc = embed_range(c, a->prompt_ids, a->next, a->next + k, b->embd + (size_t)first * h, err);
    if (rc) {
        b->n_tok = first;
        return rc;
    }
    a->in_batch = (int)k;
    return (int)k;
}

/* Samples from logits, hands the piece to on_token, and decides whether the answer ends. */
static int take_token(nvlm_chat *c, float *logits, int *finished, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    nvlm_model *m = c->m;
    int32_t id;
    int rc = nvlm_sampler_next(&a->sp, logits, &id, err);
    if (rc) return rc;
    a->out[a->n_out++] = id;
    char *piece = NULL;
    size_t plen = 0;
    rc = nvlm_detok_push(a->detok, id, &piece, &plen, err);
    if (rc) return rc;
    if (nvlm_buf_append(&a->text, piece, plen)) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int stop_user = !rc && a->on_token && a->on_token(a->user, id, piece, plen);
    free(piece);
    if (rc) return rc;
    if (id == m->id_im_end || (a->text.data && find_stop(a->text.data, a->s.stop) >= 0) || stop_user) {
        a->finish_length = 0;
        *finished = 1;
    } else if (a->n_out == (size_t)a->s.max_new_tokens) {
        *finished = 1;
    }
    a->pending = id;
    return NVLM_OK;
}

/* The prompt is in the cache: the first logits, then generation. */
static int start_gen(nvlm_chat *c, const float *logits, int *finished, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    const int V = c->m->cfg.llm.vocab_size;
    a->t2 = now_ms();
    a->state = ASK_GEN;
    a->finish_length = 1;
    size_t max_new = a->s.max_new_tokens > 0 ? (size_t)a->s.max_new_tokens : 1;
    a->last_logits = malloc(sizeof(float) * V);
    a->logits = malloc(sizeof(float) * V);
    a->out = malloc(sizeof(int32_t) * max_new);
    if (!a->last_logits || !a->logits || !a->out) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    memcpy(a->last_logits, logits, sizeof(float) * V);
    int rc = nvlm_sampler_init(&a->sp, &a->s, c->m->tok, V, c->m->id_im_end, a->prompt_ids, a->n_prompt, err);
    if (!rc) rc = nvlm_detok_new(c->m->tok, 1, &a->detok, err);
    if (rc) return rc;
    if (a->s.max_new_tokens <= 0) {
        *finished = 1;
        return NVLM_OK;
    }
    memcpy(a->logits, logits, sizeof(float) * V);
    return take_token(c, a->logits, finished, err);
}

int nvlm_chat_step_done(nvlm_chat *c, const float *logits, int *finished, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    const int V = c->m->cfg.llm.vocab_size;
    int k = a->in_batch;
    *finished = 0;
    a->in_batch = 0;
    if (!k) return NVLM_OK;
    if (a->state == ASK_PREFILL) {
        int rc = remember_ids(c, a->prompt_ids + a->next, a->next, a->next + (size_t)k, err);
        if (rc) return rc;
        a->next += (size_t)k;
        if (a->next < a->n_prompt) return NVLM_OK;
        if (!logits) return nvlm_fail(err, NVLM_E_INTERNAL, "the prompt's last position gave no logits");
        return start_gen(c, logits, finished, err);
    }
    if (a->state != ASK_GEN || !logits) return nvlm_fail(err, NVLM_E_INTERNAL, "a generation step without logits");
    size_t pos = (size_t)nvlm_kv_seq_len(nvlm_engine_kv(c->e), c->seq);
    int rc = remember_ids(c, &a->pending, pos - 1, pos, err);
    if (rc) return rc;
    memcpy(a->logits, logits, sizeof(float) * V);
    return take_token(c, a->logits, finished, err);
}

int nvlm_chat_finish(nvlm_chat *c, nvlm_answer *out, nvlm_err *err) {
    chat_ask_state *a = &c->ask;
    memset(out, 0, sizeof *out);
    if (a->state != ASK_GEN) {
        ask_reset(c);
        return nvlm_fail(err, NVLM_E_INTERNAL, "the answer is not complete");
    }
    double t3 = now_ms();
    int rc = make_response(c, &a->s, a->raw, &out->response, err);
    if (!rc && !a->raw) rc = push_turn(c, a->question, out->response, err);
    if (!rc && a->again.question) { /* the new answer took the asked-again turn's place */
        free(a->again.question), free(a->again.answer);
        a->again = (nvlm_turn){0};
    }
    if (!rc) {
        out->logprobs = nvlm_sampler_take_logprobs(&a->sp, &(size_t){0}); /* one per output id */
        out->prompt_ids = a->prompt_ids, a->prompt_ids = NULL;
        out->n_prompt = a->n_prompt;
        out->n_prompt_reused = a->n_reused;
        out->last_logits = a->last_logits, a->last_logits = NULL;
        out->output_ids = a->out, a->out = NULL;
        out->n_output = a->n_out;
        out->finish_length = a->finish_length;
        out->n_images = (size_t)c->n_images;
        out->num_patches = malloc(sizeof(int) * (size_t)(c->n_images + 1));
        for (int i = 0; out->num_patches && i < c->n_images; i++) out->num_patches[i] = c->images[i].n_tiles;
        out->vit_ms = a->t1 - a->t0, out->prompt_ms = a->t2 - a->t1, out->gen_ms = t3 - a->t2;
    }
    ask_reset(c);
    if (rc) nvlm_answer_free(out);
    return rc;
}

void nvlm_chat_cancel_ask(nvlm_chat *c) {
    if (!c) return;
    ask_reset(c);
}

void nvlm_chat_release_cache(nvlm_chat *c) {
    if (!c || !c->e || c->seq < 0) return;
    nvlm_kv_seq_free(nvlm_engine_kv(c->e), c->seq);
    c->seq = -1;
}

/* The turn begun (begin or regenerate's), run to its end alone: the same steps as the
 * server's, in a batch of its own. */
static int run_alone(nvlm_chat *c, int rc, nvlm_answer *out, nvlm_err *err) {
    for (int done = 0; !rc && !done;) {
        rc = check_abort(c, err);
        if (!rc) rc = nvlm_chat_encode_step(c, 1, &done, err);
    }
    nvlm_batch b = {0};
    float *logits = NULL;
    if (!rc) rc = nvlm_batch_init(&b, nvlm_engine_max_batch(c->e), c->m->cfg.llm.hidden_size, err);
    if (!rc && !(logits = malloc(sizeof(float) * (size_t)c->m->cfg.llm.vocab_size)))
        rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (int finished = 0; !rc && !finished;) {
        rc = check_abort(c, err);
        nvlm_batch_clear(&b);
        int k = rc ? 0 : nvlm_chat_add_to_batch(c, &b, -1, err);
        if (!rc && k <= 0) rc = k < 0 ? k : nvlm_fail(err, NVLM_E_INTERNAL, "nothing to run");
        if (!rc) rc = nvlm_decode(c->e, &b, 0, c->m->cfg.llm.num_layers, NULL, logits, err);
        if (!rc) rc = nvlm_chat_step_done(c, nvlm_batch_n_logits(&b) ? logits : NULL, &finished, err);
    }
    free(logits);
    nvlm_batch_free(&b);
    if (!rc) return nvlm_chat_finish(c, out, err);
    ask_reset(c);
    return rc;
}

int nvlm_chat_ask(nvlm_chat *c, const char *question, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                  nvlm_answer *out, nvlm_err *err) {
    memset(out, 0, sizeof *out);
    return run_alone(c, begin(c, question, 0, s, on_token, user, err), out, err);
}

int nvlm_chat_complete(nvlm_chat *c, const char *prompt, const nvlm_sampling *s, nvlm_token_fn on_token, void *user,
                       nvlm_answer *out, nvlm_err *err) {
    memset(out, 0, sizeof *out);
    return run_alone(c, begin(c, prompt, 1, s, on_token, user, err), out, err);
}

int nvlm_chat_begin_again(nvlm_chat *c, const nvlm_sampling *s, nvlm_token_fn on_token, void *user, nvlm_err *err) {
    if (!c || !c->n_history) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no answered question to ask again");
    ask_reset(c);
    nvlm_turn last = c->history[--c->n_history];
    int rc = begin(c, last.question, 0, s, on_token, user, err);
    if (rc) {
        ask_reset(c);
        c->history[c->n_history++] = last; /* the conversation as it was */
        return rc;
    }
    c->ask.again = last; /* back in the history if this ask does not finish */
    return NVLM_OK;
}

int nvlm_chat_regenerate(nvlm_chat *c, const nvlm_sampling *s, nvlm_token_fn on_token, void *user, nvlm_answer *out,
                         nvlm_err *err) {
    memset(out, 0, sizeof *out);
    return run_alone(c, nvlm_chat_begin_again(c, s, on_token, user, err), out, err);
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
    *self_kv = 0;
    if (c->e && c->seq >= 0) {
        const nvlm_config *cfg = &c->m->cfg;
        size_t per = 2 * (c->m->kv_f16 ? 2 : 4) * (size_t)cfg->llm.num_layers * cfg->llm.num_kv_heads * nvlm_cfg_head_dim(cfg);
        *self_kv = per * (size_t)nvlm_kv_seq_len(nvlm_engine_kv(c->e), c->seq);
    }
    *cross_kv = c->xa ? nvlm_xattn_bytes(c->xa) : 0;
}

const float *nvlm_chat_image_features(const nvlm_chat *c, int i, int *n_tiles) {
    if (!c || i < 0 || i >= c->n_images) return NULL;
    if (n_tiles) *n_tiles = c->images[i].n_tiles;
    return c->images[i].features;
}
