/* tok_decode.c - ids to text: concatenate every id's bytes (byte-level inverse applied at
 * load), then repair UTF-8 lossily over the whole run, as Hugging Face's ByteLevel decoder
 * does (so a character split over tokens survives, and one split by a kept added token
 * becomes U+FFFD). The streaming decoder holds back an unfinished character. */
#include "tokenizer/tok.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>

/* Bytes of one id, or NULL when it decodes to nothing (past the vocabulary, a hole, or a
 * special token being skipped). */
static const uint8_t *id_bytes(const nvlm_tokenizer *t, int32_t id, int skip_special, size_t *n) {
    if (id < 0 || (size_t)id >= t->n_ids || !t->kind[id]) return NULL;
    if (skip_special && t->kind[id] == 3) return NULL;
    *n = t->dec_off[id + 1] - t->dec_off[id];
    return t->dec_pool + t->dec_off[id];
}

int nvlm_tokenizer_decode(const nvlm_tokenizer *t, const int32_t *ids, size_t n_ids, int skip_special,
                          char **text, size_t *len, nvlm_err *err) {
    if (!t || (!ids && n_ids) || !text)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_tokenizer_decode: NULL argument");
    *text = NULL;
    tok_bytes raw = {0}, out = {0};
    int rc = tok_bytes_put(&raw, "", 0);
    for (size_t i = 0; !rc && i < n_ids; i++) {
        size_t n;
        const uint8_t *b = id_bytes(t, ids[i], skip_special, &n);
        if (b) rc = tok_bytes_put(&raw, b, n);
    }
    if (!rc) rc = tok_utf8_lossy(raw.p, raw.n, 0, NULL, &out);
    if (!rc) rc = tok_bytes_put(&out, "", 0);
    free(raw.p);
    if (rc) {
        free(out.p);
        return nvlm_fail(err, NVLM_E_NOMEM, "tokenizer: out of memory decoding %zu ids", n_ids);
    }
    *text = (char *)out.p;
    if (len) *len = out.n;
    return 0;
}

struct nvlm_detok {
    const nvlm_tokenizer *t;
    int skip_special;
    uint8_t pending[4]; /* start of a character not yet complete (at most 3 bytes) */
    size_t n_pending;
};

int nvlm_detok_new(const nvlm_tokenizer *t, int skip_special, nvlm_detok **out, nvlm_err *err) {
    if (!t || !out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_detok_new: NULL argument");
    *out = calloc(1, sizeof **out);
    if (!*out) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    (*out)->t = t;
    (*out)->skip_special = skip_special;
    return 0;
}

void nvlm_detok_free(nvlm_detok *d) { free(d); }

/* Converts pending + b[0..n) to text; keeps an unfinished final character unless flushing. */
static int emit(nvlm_detok *d, const uint8_t *b, size_t n, int flush, char **out, size_t *len, nvlm_err *err) {
    tok_bytes raw = {0}, txt = {0};
    size_t tail = 0;
    int rc = tok_bytes_put(&raw, d->pending, d->n_pending);
    if (!rc) rc = tok_bytes_put(&raw, b, n);
    if (!rc) rc = tok_utf8_lossy(raw.p, raw.n, !flush, &tail, &txt);
    if (!rc) rc = tok_bytes_put(&txt, "", 0);
    if (!rc) {
        memcpy(d->pending, raw.p + raw.n - tail, tail);
        d->n_pending = tail;
    }
    free(raw.p);
    if (rc) {
        free(txt.p);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    *out = (char *)txt.p;
    if (len) *len = txt.n;
    return 0;
}

int nvlm_detok_push(nvlm_detok *d, int32_t id, char **out, size_t *len, nvlm_err *err) {
    if (!d || !out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_detok_push: NULL argument");
    *out = NULL;
    size_t n = 0;
    const uint8_t *b = id_bytes(d->t, id, d->skip_special, &n);
    return emit(d, b ? b : (const uint8_t *)"", b ? n : 0, 0, out, len, err);
}

int nvlm_detok_flush(nvlm_detok *d, char **out, size_t *len, nvlm_err *err) {
    if (!d || !out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_detok_flush: NULL argument");
    *out = NULL;
    return emit(d, (const uint8_t *)"", 0, 1, out, len, err);
}

const uint8_t *nvlm_tokenizer_token_bytes(const nvlm_tokenizer *t, int32_t id, size_t *len) {
    const uint8_t *p = t ? id_bytes(t, id, 0, len) : NULL;
    if (!p) *len = 0;
    return p;
}
