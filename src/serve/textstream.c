/* Streamed text that adds up to the final answer. The engine's response is
 * strip(decoded text cut at the first stop string); a piece is only handed out once no later
 * token can change it: text that might be the start of a stop string and trailing whitespace
 * wait for the next piece. The last delta comes from the engine's response itself. */
#include "serve/serve_int.h"
#include <stdlib.h>
#include <string.h>

/* End of the text that is final for sure: before a stop string or a possible start of one. */
static size_t safe_end(const serve_textstream *t) {
    const char *s = t->all.data;
    size_t n = t->all.len, end = n;
    for (int k = 0; t->stop && t->stop[k]; k++) {
        const char *st = t->stop[k];
        size_t sl = strlen(st);
        if (!sl) continue;
        const char *hit = strstr(s, st);
        if (hit && (size_t)(hit - s) < end) end = (size_t)(hit - s);
        size_t from = n >= sl ? n - sl + 1 : 0;
        for (size_t i = from; i < n && i < end; i++)
            if (!memcmp(s + i, st, n - i)) {
                end = i;
                break;
            }
    }
    return end;
}

static char *dup_range(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

/* Hands out what target adds to what was sent (nothing if it does not extend it). */
static int emit(serve_textstream *t, const char *target, size_t tlen, char **delta, size_t *dlen) {
    size_t have = t->sent.len;
    int extends = tlen >= have && (!have || !memcmp(target, t->sent.data, have));
    size_t n = extends ? tlen - have : 0;
    *delta = dup_range(target + (extends ? have : 0), n);
    *dlen = n;
    if (!*delta || (n && nvlm_buf_append(&t->sent, target + have, n))) return NVLM_E_NOMEM;
    return NVLM_OK;
}

int serve_textstream_push(serve_textstream *t, const char *piece, size_t len, char **delta, size_t *dlen) {
    *delta = NULL;
    *dlen = 0;
    if (nvlm_buf_append(&t->all, piece, len) || nvlm_buf_append(&t->all, "", 0)) return NVLM_E_NOMEM;
    char *cand = dup_range(t->all.data, safe_end(t));
    if (!cand) return NVLM_E_NOMEM;
    size_t cl = t->raw ? strlen(cand) : nvlm_py_strip(cand); /* a raw completion is not stripped */
    int rc = emit(t, cand, cl, delta, dlen);
    free(cand);
    return rc;
}

int serve_textstream_finish(serve_textstream *t, const char *final, char **delta, size_t *dlen) {
    return emit(t, final, strlen(final), delta, dlen);
}

void serve_textstream_free(serve_textstream *t) {
    nvlm_buf_free(&t->all);
    nvlm_buf_free(&t->sent);
}
