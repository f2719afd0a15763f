/* chat() prompt construction of the released NVLM-D (conversation.py, chatml, MPT style). */
#include "generate/prompt.h"
#include "core/err.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nvlm_buf_append(nvlm_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return NVLM_E_NOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return NVLM_OK;
}

int nvlm_buf_puts(nvlm_buf *b, const char *s) { return nvlm_buf_append(b, s, strlen(s)); }

void nvlm_buf_free(nvlm_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

int nvlm_count_images(const char *s) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, "<image>")); p += 7) n++;
    return n;
}

/* MPT rule: a turn with empty text contributes only its role string. */
static int put_turn(nvlm_buf *b, const char *role, const char *text) {
    int rc = nvlm_buf_puts(b, role);
    if (!rc && text && *text) {
        rc = nvlm_buf_puts(b, text);
        if (!rc) rc = nvlm_buf_puts(b, "<|im_end|>");
    }
    return rc;
}

int nvlm_prompt_template(const char *system, const nvlm_turn *history, int n_history, const char *question,
                         nvlm_buf *out) {
    int rc = nvlm_buf_puts(out, "<|im_start|>system\n");
    if (!rc) rc = nvlm_buf_puts(out, system ? system : NVLM_DEFAULT_SYSTEM);
    if (!rc) rc = nvlm_buf_puts(out, "<|im_end|>");
    for (int i = 0; i < n_history && !rc; i++) {
        rc = put_turn(out, "<|im_start|>user\n", history[i].question);
        if (!rc) rc = put_turn(out, "<|im_start|>assistant\n", history[i].answer);
    }
    if (!rc) rc = put_turn(out, "<|im_start|>user\n", question);
    if (!rc) rc = nvlm_buf_puts(out, "<|im_start|>assistant\n");
    return rc;
}

void nvlm_tile_tag(int k, int n_tiles, char out[32]) {
    if (k == n_tiles - 1) snprintf(out, 32, "<tile_global_thumbnail>");
    else snprintf(out, 32, "<tile_%d>", k + 1);
}

int nvlm_image_span(int n_tiles, const char *ctx_token, int tokens_per_tile, nvlm_buf *out) {
    int rc = nvlm_buf_puts(out, "<Image>");
    for (int k = 0; k < n_tiles && !rc; k++) {
        char tag[32];
        nvlm_tile_tag(k, n_tiles, tag);
        rc = nvlm_buf_puts(out, tag);
        for (int i = 0; i < tokens_per_tile && !rc; i++) rc = nvlm_buf_puts(out, ctx_token);
    }
    if (!rc) rc = nvlm_buf_puts(out, "</Image>");
    return rc;
}

int nvlm_expand_images(const char *text, const int *num_patches, int n_images, const char *ctx_token,
                       int tokens_per_tile, nvlm_buf *out, nvlm_err *err) {
    const char *p = text;
    for (int i = 0; i < n_images; i++) {
        const char *hit = strstr(p, "<image>");
        if (!hit)
            return nvlm_fail(err, NVLM_E_INVALID_ARG,
                             "%d image(s) given but the conversation has only %d <image> placeholder(s)",
                             n_images, i);
        if (nvlm_buf_append(out, p, (size_t)(hit - p)) ||
            nvlm_image_span(num_patches[i], ctx_token, tokens_per_tile, out))
            return nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the prompt");
        p = hit + 7;
    }
    if (nvlm_buf_puts(out, p)) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the prompt");
    return NVLM_OK;
}

/* Length of the whitespace character starting at s (per str.isspace), or 0. */
static size_t py_space_len(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        unsigned cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        if ((s[0] & 0xf0) != 0xe0 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
        if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
            cp == 0x202f || cp == 0x205f || cp == 0x3000)
            return 3;
    }
    return 0;
}

/* Start of the UTF-8 character ending at s[end-1]. */
static size_t char_start(const unsigned char *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xc0) == 0x80 && end - i < 4) i--;
    return i;
}

size_t nvlm_py_strip(char *str) {
    unsigned char *s = (unsigned char *)str;
    size_t n = strlen(str), b = 0, k;
    while (b < n && (k = py_space_len(s + b, n - b))) b += k;
    size_t e = n;
    while (e > b) {
        size_t st = char_start(s, e);
        if (st < b || py_space_len(s + st, e - st) != e - st) break;
        e = st;
    }
    memmove(s, s + b, e - b);
    s[e - b] = 0;
    return e - b;
}
