/* Conversation JSONL data for training: parsing, prompt and labels, frozen image features. */
#include "train/tdata.h"
#include "core/err.h"
#include "core/file.h"
#include "generate/layout_xh.h"
#include "generate/prompt.h"
#include "model/xattn.h"
#include <cJSON.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

static void sample_free(nvlm_tsample *s) {
    for (int i = 0; i < s->n_images; i++) free(s->images[i]);
    free(s->images);
    for (int i = 0; i < s->n_turns; i++) free(s->turns[i].text);
    free(s->turns);
    free(s->system);
    free(s->ids), free(s->labels), free(s->img), free(s->px), free(s->num_patches);
    free(s->ctx_rows), free(s->mem_src), free(s->mem_lo), free(s->mem_hi);
}

void nvlm_tdata_free(nvlm_tdata *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) sample_free(&d->s[i]);
    free(d->s);
    free(d->path);
    free(d);
}

static char *resolve(const char *dir, const char *p) {
    if (p[0] == '/') return strdup(p);
    return nvlm_path_join(dir, p);
}

/* One JSON line into s; errors name path:line. */
static int parse_line(const char *path, const char *dir, int line, const char *text, size_t len, nvlm_tsample *s,
                      nvlm_err *err) {
    memset(s, 0, sizeof *s);
    s->line = line;
    cJSON *j = cJSON_ParseWithLength(text, len);
    int rc = NVLM_OK;
#define BAD(...) (rc = nvlm_fail(err, NVLM_E_FORMAT, __VA_ARGS__))
    if (!j || !cJSON_IsObject(j)) {
        BAD("%s:%d: not a JSON object", path, line);
        goto done;
    }
    cJSON *img = cJSON_GetObjectItemCaseSensitive(j, "image");
    if (img && !cJSON_IsNull(img)) {
        int n = cJSON_IsString(img) ? 1 : cJSON_IsArray(img) ? cJSON_GetArraySize(img) : -1;
        if (n < 0) {
            BAD("%s:%d: \"image\" must be a string or an array of strings", path, line);
            goto done;
        }
        s->images = calloc((size_t)(n ? n : 1), sizeof *s->images);
        if (!s->images) goto nomem;
        for (int i = 0; i < n; i++) {
            cJSON *e = cJSON_IsString(img) ? img : cJSON_GetArrayItem(img, i);
            if (!cJSON_IsString(e) || !*e->valuestring) {
                BAD("%s:%d: image %d is not a non-empty string", path, line, i);
                goto done;
            }
            if (!(s->images[i] = resolve(dir, e->valuestring))) goto nomem;
            s->n_images++;
            if (!nvlm_file_exists(s->images[i])) {
                rc = nvlm_fail(err, NVLM_E_IO, "%s:%d: image %s does not exist", path, line, s->images[i]);
                goto done;
            }
        }
    }
    cJSON *sys = cJSON_GetObjectItemCaseSensitive(j, "system");
    if (sys && !cJSON_IsNull(sys)) {
        if (!cJSON_IsString(sys)) {
            BAD("%s:%d: \"system\" must be a string", path, line);
            goto done;
        }
        if (!(s->system = strdup(sys->valuestring))) goto nomem;
    }
    cJSON *conv = cJSON_GetObjectItemCaseSensitive(j, "conversations");
    int nt = cJSON_IsArray(conv) ? cJSON_GetArraySize(conv) : 0;
    if (nt < 2) {
        BAD("%s:%d: \"conversations\" must be an array of at least one human and one gpt turn", path, line);
        goto done;
    }
    if (!(s->turns = calloc((size_t)nt, sizeof *s->turns))) goto nomem;
    for (int i = 0; i < nt; i++) {
        cJSON *t = cJSON_GetArrayItem(conv, i);
        cJSON *from = cJSON_GetObjectItemCaseSensitive(t, "from"), *val = cJSON_GetObjectItemCaseSensitive(t, "value");
        if (!cJSON_IsString(from) || !cJSON_IsString(val)) {
            BAD("%s:%d: turn %d needs string fields \"from\" and \"value\"", path, line, i);
            goto done;
        }
        int gpt = !strcmp(from->valuestring, "gpt") || !strcmp(from->valuestring, "assistant");
        int human = !strcmp(from->valuestring, "human") || !strcmp(from->valuestring, "user");
        if ((!gpt && !human) || gpt != (i % 2)) {
            BAD("%s:%d: turn %d is from \"%s\": turns must alternate human, gpt, human, gpt, ...", path, line, i,
                from->valuestring);
            goto done;
        }
        s->turns[i].gpt = gpt;
        if (!(s->turns[i].text = strdup(val->valuestring))) goto nomem;
        s->n_turns++;
    }
    if (nt % 2) {
        BAD("%s:%d: the conversation ends with a human turn (nothing to learn from it)", path, line);
        goto done;
    }
    int ph = 0;
    for (int i = 0; i < nt; i++) ph += nvlm_count_images(s->turns[i].text);
    if (ph && ph != s->n_images)
        BAD("%s:%d: %d <image> placeholder(s) for %d image(s)", path, line, ph, s->n_images);
    goto done;
nomem:
    rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory reading %s", path);
done:
#undef BAD
    cJSON_Delete(j);
    if (rc) sample_free(s);
    return rc;
}

int nvlm_tdata_load(const char *path, nvlm_tdata **out, nvlm_err *err) {
    *out = NULL;
    char *text;
    size_t len;
    int rc = nvlm_read_file(path, 0, &text, &len, err);
    if (rc) return rc;
    nvlm_tdata *d = calloc(1, sizeof *d);
    char *dcopy = strdup(path);
    if (!d || !dcopy || !(d->path = strdup(path))) {
        free(text), free(dcopy), free(d);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    const char *dir = dirname(dcopy);
    int cap = 0, line = 0;
    for (char *p = text; p < text + len && !rc;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        size_t n = e ? (size_t)(e - p) : (size_t)(text + len - p);
        line++;
        size_t k = 0;
        while (k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r')) k++;
        if (k < n) {
            if (d->n == cap) {
                cap = cap ? 2 * cap : 64;
                nvlm_tsample *ns = realloc(d->s, sizeof *ns * (size_t)cap);
                if (!ns) {
                    rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
                    break;
                }
                d->s = ns;
            }
            rc = parse_line(path, dir, line, p, n, &d->s[d->n], err);
            if (!rc) d->n++;
        }
        p += n + 1;
    }
    if (!rc && d->n == 0) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: no samples", path);
    free(text);
    free(dcopy);
    if (rc) {
        nvlm_tdata_free(d);
        return rc;
    }
    *out = d;
    return NVLM_OK;
}

int nvlm_train_image_features(nvlm_model *m, char *const *paths, int n, int max_num, int pixels, float **feat,
                              int *n_rows, int *n_tiles, int *num_patches, nvlm_err *err) {
    const nvlm_config *cfg = &m->cfg;
    const int S = cfg->image_size, C = cfg->vision.hidden_size, G = S / cfg->vision.patch_size;
    const int P = G * G, tpt = nvlm_cfg_tokens_per_tile(cfg);
    const size_t per = (size_t)3 * S * S, row_w = pixels ? per : (size_t)tpt * 4 * C; /* floats per tile kept */
    if (max_num <= 0) max_num = cfg->max_dynamic_patch;
    int min_num = cfg->min_dynamic_patch < max_num ? cfg->min_dynamic_patch : max_num;
    if (!cfg->dynamic_image_size) min_num = max_num = 1;
    *feat = NULL;
    *n_rows = *n_tiles = 0;
    float *all = NULL;
    size_t tiles_done = 0;
    int rc = NVLM_OK;
    for (int i = 0; i < n && !rc; i++) {
        nvlm_image img;
        nvlm_tiles tiles;
        if ((rc = nvlm_image_load(paths[i], NULL, &img, err))) break;
        rc = nvlm_image_tile(&img, S, min_num, max_num, cfg->use_thumbnail, &tiles, err);
        nvlm_image_free(&img);
        if (rc) break;
        size_t nt = (size_t)tiles.num_tiles;
        float *grow = realloc(all, sizeof(float) * (tiles_done + nt) * row_w);
        if (grow) all = grow;
        float *px = !grow ? NULL : pixels ? all + tiles_done * per : malloc(sizeof(float) * per * nt);
        float *vit = pixels ? NULL : malloc(sizeof(float) * nt * P * C);
        if (!px || (!pixels && !vit)) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the tiles of %s", paths[i]);
        for (size_t k = 0; k < nt && !rc; k++) nvlm_tile_normalize(tiles.rgb + k * S * S * 3, S, px + k * per);
        if (!rc && !pixels) rc = nvlm_vit_forward(m, px, (int)nt, vit, err);
        for (size_t k = 0; k < nt && !rc && !pixels; k++)
            nvlm_pixel_shuffle(vit + k * P * C, G, C, all + (tiles_done + k) * row_w);
        num_patches[i] = (int)nt;
        tiles_done += nt;
        if (!pixels) free(px);
        free(vit);
        nvlm_tiles_free(&tiles);
    }
    if (rc) {
        free(all);
        return rc;
    }
    *feat = all;
    *n_rows = (int)(tiles_done * tpt);
    *n_tiles = (int)tiles_done;
    return NVLM_OK;
}

/* Tokenises text[0:len] and checks that the ids are a prefix of full. */
static int prefix_len(const nvlm_tokenizer *tok, const char *text, size_t len, const int32_t *full, size_t n_full,
                      size_t *out, nvlm_err *err) {
    int32_t *ids;
    size_t n;
    int rc = nvlm_tokenizer_encode(tok, text, len, &ids, &n, err);
    if (rc) return rc;
    int ok = n <= n_full && !memcmp(ids, full, sizeof *ids * n);
    free(ids);
    if (!ok) return nvlm_fail(err, NVLM_E_UNSUPPORTED, "the tokens of an answer boundary merge with the text before it");
    *out = n;
    return NVLM_OK;
}

/* The template text with images expanded (tpt > 0; tpt == 0 leaves the "<image>"
 * placeholders for the NVLM-X/H layout), and the [start, end) byte spans of each supervised
 * answer (answer + <|im_end|>) in it. */
static int build_text(const nvlm_tsample *s, const int *num_patches, int tpt, nvlm_buf *out, size_t *spans,
                      int *n_spans, nvlm_err *err) {
    int rc = NVLM_OK, img = 0, auto_image = s->n_images > 0;
    for (int i = 0; i < s->n_turns; i++) auto_image = auto_image && !nvlm_count_images(s->turns[i].text);
    *n_spans = 0;
    rc = nvlm_buf_puts(out, "<|im_start|>system\n");
    if (!rc) rc = nvlm_buf_puts(out, s->system ? s->system : NVLM_DEFAULT_SYSTEM);
    if (!rc) rc = nvlm_buf_puts(out, "<|im_end|>");
    for (int i = 0; i < s->n_turns && !rc; i++) {
        const char *t = s->turns[i].text;
        if (!s->turns[i].gpt) {
            rc = nvlm_buf_puts(out, "<|im_start|>user\n");
            nvlm_buf q = {0};
            if (!rc && auto_image && i == 0) rc = nvlm_buf_puts(&q, "<image>\n"); /* chat() with history None */
            if (!rc) rc = nvlm_buf_puts(&q, t);
            int k = nvlm_count_images(q.data ? q.data : "");
            if (!rc && q.len && !tpt) {
                rc = nvlm_buf_append(out, q.data, q.len);
                if (!rc) rc = nvlm_buf_puts(out, "<|im_end|>");
            } else if (!rc && q.len) {
                nvlm_buf ex = {0};
                rc = nvlm_expand_images(q.data, num_patches + img, k, "<|vision_pad|>", tpt, &ex, err);
                if (!rc) rc = nvlm_buf_append(out, ex.data, ex.len);
                if (!rc) rc = nvlm_buf_puts(out, "<|im_end|>");
                nvlm_buf_free(&ex);
            }
            img += k;
            nvlm_buf_free(&q);
        } else {
            rc = nvlm_buf_puts(out, "<|im_start|>assistant\n");
            if (!rc && *t) {
                spans[2 * *n_spans] = out->len;
                rc = nvlm_buf_puts(out, t);
                if (!rc) rc = nvlm_buf_puts(out, "<|im_end|>");
                spans[2 * (*n_spans)++ + 1] = out->len;
            }
        }
    }
    if (rc && err && !err->code) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory building a prompt");
    return rc;
}

/* ------------------------------------------------------------ NVLM-X / NVLM-H */

/* Appends n ints to a growable array. */
static int push_ints(int **a, int *n, int *cap, const int *v, int count) {
    if (*n + count > *cap) {
        int c = *cap ? *cap : 256;
        while (c < *n + count) c *= 2;
        int *p = realloc(*a, sizeof(int) * (size_t)c);
        if (!p) return -1;
        *a = p;
        *cap = c;
    }
    memcpy(*a + *n, v, sizeof(int) * (size_t)count);
    *n += count;
    return 0;
}

/* Memory rows (mem_src) and decoder image rows (ctx_rows) of image i whose feature rows start
 * at f0, in the order nvlm_layout_add_image lays them out: X: every tile; H: the tag ids
 * (tokenised on their own, as layout_xh.c's h_memory) then the rows of each regular tile, and
 * the thumbnail in the decoder. Returns the number of memory rows added, or < 0. */
static int image_rows(nvlm_tsample *s, const nvlm_model *m, int n_tiles, int f0, int *cap_mem, int *cap_ctx,
                      nvlm_err *err) {
    const int tpt = nvlm_cfg_tokens_per_tile(&m->cfg), before = s->n_mem;
    int *run = malloc(sizeof(int) * (size_t)tpt * (size_t)n_tiles);
    if (!run) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int rc = NVLM_OK;
    if (m->cfg.arch == NVLM_ARCH_X) {
        for (int r = 0; r < n_tiles * tpt; r++) run[r] = f0 + r;
        if (push_ints(&s->mem_src, &s->n_mem, cap_mem, run, n_tiles * tpt)) rc = NVLM_E_NOMEM;
    } else {
        for (int j = 0; j + 1 < n_tiles && !rc; j++) {
            char tag[32];
            int32_t *ids;
            size_t n;
            nvlm_tile_tag(j, n_tiles, tag);
            if ((rc = nvlm_tokenizer_encode(m->tok, tag, strlen(tag), &ids, &n, err))) break;
            for (size_t k = 0; k < n; k++) run[k] = -ids[k] - 1;
            if (push_ints(&s->mem_src, &s->n_mem, cap_mem, run, (int)n)) rc = NVLM_E_NOMEM;
            free(ids);
            for (int r = 0; r < tpt; r++) run[r] = f0 + j * tpt + r;
            if (!rc && push_ints(&s->mem_src, &s->n_mem, cap_mem, run, tpt)) rc = NVLM_E_NOMEM;
        }
        for (int r = 0; r < tpt; r++) run[r] = f0 + (n_tiles - 1) * tpt + r;
        if (!rc && push_ints(&s->ctx_rows, &s->n_ctx, cap_ctx, run, tpt)) rc = NVLM_E_NOMEM;
    }
    free(run);
    if (rc == NVLM_E_NOMEM) return nvlm_fail(err, rc, "out of memory");
    return rc ? rc : s->n_mem - before;
}

/* Number of tokens of the layout of tmpl[0, len) (with the placeholders it holds), checked
 * to be a prefix of the full layout's ids. */
static int layout_prefix(nvlm_xattn *xa, const char *tmpl, size_t len, const int *num_patches, const int32_t *full,
                         size_t n_full, size_t *out, nvlm_err *err) {
    char *p = strndup(tmpl, len);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = nvlm_layout_prompt(xa, p, num_patches, nvlm_count_images(p), &ids, &n, err);
    if (!rc && (n > n_full || memcmp(ids, full, sizeof *ids * n)))
        rc = nvlm_fail(err, NVLM_E_UNSUPPORTED, "the tokens of an answer boundary merge with the text before it");
    free(p), free(ids);
    *out = n;
    return rc;
}

/* NVLM-X/H: the decoder ids and labels, the memory rows and what each position reads, laid
 * out by src/generate/layout_xh.c exactly as chat() lays out the same conversation. The
 * nvlm_xattn used here holds no block (n_blocks = 0), so it records memory rows and the
 * visibility without computing keys/values: the trainer computes those from its own weights. */
static int prepare_xh(nvlm_tsample *s, nvlm_model *m, nvlm_err *err) {
    nvlm_xattn xa;
    int rc = nvlm_xattn_init(&xa, m, err);
    if (rc) return rc;
    xa.n_blocks = 0;
    int cap_mem = 0, cap_ctx = 0, f0 = 0;
    const int tpt = nvlm_cfg_tokens_per_tile(&m->cfg);
    for (int i = 0; i < s->n_images && !rc; i++) {
        int rows = image_rows(s, m, s->num_patches[i], f0, &cap_mem, &cap_ctx, err);
        rc = rows < 0 ? rows : nvlm_xattn_add_image(&xa, NULL, rows, err);
        f0 += s->num_patches[i] * tpt;
    }
    nvlm_buf text = {0};
    size_t *spans = malloc(sizeof(size_t) * 2 * (size_t)s->n_turns);
    int n_spans = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!rc && !spans) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = build_text(s, s->num_patches, 0, &text, spans, &n_spans, err);
    if (!rc) rc = nvlm_layout_prompt(&xa, text.data, s->num_patches, s->n_images, &ids, &n, err);
    if (!rc && n > (size_t)1 << 30) rc = nvlm_fail(err, NVLM_E_LIMIT, "sequence too long");
    if (!rc && s->n_mem) {
        s->mem_lo = malloc(sizeof(int) * n), s->mem_hi = malloc(sizeof(int) * n);
        if (!s->mem_lo || !s->mem_hi) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        for (size_t t = 0; !rc && t < n; t++) nvlm_xattn_rows_of(&xa, (int)t, &s->mem_lo[t], &s->mem_hi[t]);
    }
    int32_t *labels = rc ? NULL : malloc(sizeof(int32_t) * (n ? n : 1));
    if (!rc && !labels) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (size_t t = 0; !rc && t < n; t++) labels[t] = -100;
    for (int k = 0; k < n_spans && !rc; k++) {
        size_t a, b;
        rc = layout_prefix(&xa, text.data, spans[2 * k], s->num_patches, ids, n, &a, err);
        if (!rc) rc = layout_prefix(&xa, text.data, spans[2 * k + 1], s->num_patches, ids, n, &b, err);
        for (size_t t = a; !rc && t < b; t++) labels[t] = ids[t];
    }
    nvlm_buf_free(&text);
    free(spans);
    nvlm_xattn_free(&xa);
    if (rc) {
        free(ids), free(labels);
        return rc;
    }
    s->ids = ids;
    s->labels = labels;
    s->n = (int)n;
    return NVLM_OK;
}

int nvlm_tdata_prepare(nvlm_tdata *d, nvlm_model *m, int i, int max_num, nvlm_err *err) {
    nvlm_tsample *s = &d->s[i];
    if (s->ids) return NVLM_OK;
    int rc = NVLM_OK;
    if (s->n_images) {
        if (!(s->num_patches = calloc((size_t)s->n_images, sizeof *s->num_patches)))
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        rc = nvlm_train_image_features(m, s->images, s->n_images, max_num, d->pixels, d->pixels ? &s->px : &s->img,
                                       &s->n_img, &s->n_tiles, s->num_patches, err);
        if (rc) {
            nvlm_fail_prefix(err, "%s:%d: ", d->path, s->line);
            return rc;
        }
    }
    if (m->cfg.arch != NVLM_ARCH_D) {
        rc = prepare_xh(s, m, err);
        if (rc) nvlm_fail_prefix(err, "%s:%d: ", d->path, s->line);
        return rc;
    }
    nvlm_buf text = {0};
    size_t *spans = malloc(sizeof(size_t) * 2 * (size_t)s->n_turns);
    int n_spans = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!spans) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = build_text(s, s->num_patches, nvlm_cfg_tokens_per_tile(&m->cfg), &text, spans, &n_spans, err);
    if (!rc) rc = nvlm_tokenizer_encode(m->tok, text.data, text.len, &ids, &n, err);
    int32_t *labels = rc ? NULL : malloc(sizeof(int32_t) * (n ? n : 1));
    if (!rc && !labels) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (size_t t = 0; !rc && t < n; t++) labels[t] = -100;
    for (int k = 0; k < n_spans && !rc; k++) {
        size_t a, b;
        rc = prefix_len(m->tok, text.data, spans[2 * k], ids, n, &a, err);
        if (!rc) rc = prefix_len(m->tok, text.data, spans[2 * k + 1], ids, n, &b, err);
        for (size_t t = a; !rc && t < b; t++) labels[t] = ids[t];
    }
    if (!rc && n > (size_t)1 << 30) rc = nvlm_fail(err, NVLM_E_LIMIT, "sequence too long");
    nvlm_buf_free(&text);
    free(spans);
    if (rc) {
        free(ids), free(labels);
        nvlm_fail_prefix(err, "%s:%d: ", d->path, s->line);
        return rc;
    }
    s->ids = ids;
    s->labels = labels;
    s->n = (int)n;
    return NVLM_OK;
}

void nvlm_tdata_seq(const nvlm_tdata *d, int i, nvlm_tseq *out) {
    const nvlm_tsample *s = &d->s[i];
    *out = (nvlm_tseq){s->ids,    s->labels, s->n,      s->img,    s->n_img, s->ctx_rows,
                       s->n_ctx,  s->mem_src, s->n_mem, s->mem_lo, s->mem_hi, NULL};
}
