/* tok_json.c - reading one string member of a one-line JSON object, for `nvlm tokenize
 * --jsonl` and the tests. cJSON cannot be used for the text itself: it ends strings at an
 * escaped NUL and rejects lone surrogate escapes, which must become U+FFFD here. */
#include "tokenizer/tok_json.h"
#include <string.h>

#define MAX_DEPTH 64

const char *tok_json_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int hex4(const char *p, const char *e, unsigned *v) {
    if (e - p < 4) return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d > 15) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static int put_cp(tok_bytes *out, unsigned cp) {
    uint8_t b[4];
    size_t n;
    if (cp < 0x80) b[0] = (uint8_t)cp, n = 1;
    else if (cp < 0x800) b[0] = (uint8_t)(0xC0 | cp >> 6), b[1] = (uint8_t)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        b[0] = (uint8_t)(0xE0 | cp >> 12), b[1] = (uint8_t)(0x80 | ((cp >> 6) & 63)), b[2] = (uint8_t)(0x80 | (cp & 63)), n = 3;
    else
        b[0] = (uint8_t)(0xF0 | cp >> 18), b[1] = (uint8_t)(0x80 | ((cp >> 12) & 63)),
        b[2] = (uint8_t)(0x80 | ((cp >> 6) & 63)), b[3] = (uint8_t)(0x80 | (cp & 63)), n = 4;
    return tok_bytes_put(out, b, n);
}

/* Bytes that end a run of plain string content: quote, backslash, controls. */
static const uint8_t special_byte[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ['"'] = 1, ['\\'] = 1};

/* Parses the string literal at p (on its opening quote); appends its bytes to out when out
 * is not NULL. Returns the position after the closing quote, or NULL. */
static const char *string(const char *p, const char *e, tok_bytes *out, int *nomem) {
    if (out && tok_bytes_reserve(out, 1)) return *nomem = 1, NULL;
    if (p >= e || *p != '"') return NULL;
    for (p++; p < e;) {
        const char *q = p;
        while (q < e && !special_byte[(unsigned char)*q]) q++;
        if (out && q > p && tok_bytes_put(out, p, (size_t)(q - p))) return *nomem = 1, NULL;
        p = q;
        if (p >= e || (unsigned char)*p < 0x20) return NULL;
        if (*p == '"') return p + 1;
        if (++p >= e) return NULL;
        char c = *p++, lit = 0;
        unsigned cp;
        switch (c) {
        case '"': case '\\': case '/': lit = c; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u':
            if (hex4(p, e, &cp)) return NULL;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) { /* a pair, or a lone high surrogate */
                unsigned lo;
                if (e - p >= 6 && p[0] == '\\' && p[1] == 'u' && !hex4(p + 2, e, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else
                    cp = 0xFFFD;
            } else if (cp >= 0xDC00 && cp < 0xE000)
                cp = 0xFFFD;
            if (out && put_cp(out, cp)) return *nomem = 1, NULL;
            continue;
        default: return NULL;
        }
        if (out && tok_bytes_put(out, &lit, 1)) return *nomem = 1, NULL;
    }
    return NULL;
}

static const char *number(const char *p, const char *e) {
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < e && *p >= '0' && *p <= '9') p++;
    else return NULL;
    if (p < e && *p == '.') {
        const char *d = ++p;
        while (p < e && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        const char *d = p;
        while (p < e && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    return p;
}

/* Skips (and validates) one value. When `key` is given and the value is an object, the
 * string value of that member (its last occurrence, as Python's json) goes to out. */
static const char *value(const char *p, const char *e, int depth, const char *key, tok_bytes *out,
                         int *found, int *nomem) {
    p = tok_json_ws(p, e);
    if (p >= e || depth > MAX_DEPTH) return NULL;
    if (*p == '"') return string(p, e, NULL, nomem);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = tok_json_ws(p + 1, e);
        if (p < e && *p == close) return p + 1;
        for (;;) {
            int want = 0;
            if (close == '}') {
                tok_bytes name = {0};
                p = string(p, e, key ? &name : NULL, nomem);
                if (p && key) want = name.n == strlen(key) && !memcmp(name.p, key, name.n);
                free(name.p);
                if (!p) return NULL;
                p = tok_json_ws(p, e);
                if (p >= e || *p != ':') return NULL;
                p = tok_json_ws(p + 1, e);
            }
            if (want && p < e && *p == '"') {
                out->n = 0;
                p = string(p, e, out, nomem);
                *found = 1;
            } else {
                if (want) *found = 0; /* a later non-string value replaces an earlier string */
                p = value(p, e, depth + 1, NULL, NULL, NULL, nomem);
            }
            if (!p) return NULL;
            p = tok_json_ws(p, e);
            if (p < e && *p == ',') {
                p = tok_json_ws(p + 1, e);
                continue;
            }
            if (p < e && *p == close) return p + 1;
            return NULL;
        }
    }
    static const char *lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(lits[i]);
        if ((size_t)(e - p) >= l && !memcmp(p, lits[i], l)) return p + l;
    }
    return number(p, e);
}

int tok_json_get_string(const char *s, size_t n, const char *key, tok_bytes *out) {
    const char *e = s + n, *p = tok_json_ws(s, e);
    int found = 0, nomem = 0;
    if (p >= e || *p != '{') return -1;
    out->n = 0;
    p = value(p, e, 0, key, out, &found, &nomem);
    if (nomem) return -3;
    if (!p || tok_json_ws(p, e) != e) return -1;
    if (!found) return -2;
    return tok_bytes_put(out, "", 0) ? -3 : 0;
}

const char *tok_json_str(const char *p, const char *e, tok_bytes *out, int *nomem) {
    *nomem = 0;
    return string(p, e, out, nomem);
}

const char *tok_json_skip(const char *p, const char *e) {
    int nomem = 0;
    return value(p, e, 0, NULL, NULL, NULL, &nomem);
}

/* Skips one value without validating it (strings by their closing quote, containers by
 * bracket depth): the values found are validated by whoever reads them. NULL at the end
 * of the input. */
static const char *skip_fast(const char *p, const char *e) {
    int depth = 0;
    while (p < e) {
        char c = *p++;
        if (c == '"') {
            for (;;) {
                const char *q = memchr(p, '"', (size_t)(e - p));
                if (!q) return NULL;
                size_t bs = 0;
                while (q - bs > p && q[-1 - (ptrdiff_t)bs] == '\\') bs++;
                p = q + 1;
                if (!(bs & 1)) break;
            }
            if (!depth) return p;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth <= 0) return depth ? NULL : p;
        } else if (!depth && (c == ',' || c == '}' || c == ']')) {
            return p - 1;
        } else if (!depth && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            /* a number or literal: up to the next delimiter */
            while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') p++;
            return p;
        }
    }
    return NULL;
}

int tok_json_find_keys(const char *s, size_t n, const char *const *keys, int n_keys, size_t *vb, size_t *ve) {
    const char *e = s + n, *p = tok_json_ws(s, e);
    for (int k = 0; k < n_keys; k++) vb[k] = ve[k] = SIZE_MAX;
    if (p >= e || *p != '{') return -1;
    p = tok_json_ws(p + 1, e);
    if (p < e && *p == '}') return 0;
    tok_bytes name = {0};
    int nomem;
    while (p) {
        name.n = 0;
        p = tok_json_str(p, e, &name, &nomem);
        if (!p) break;
        int want = -1;
        for (int k = 0; k < n_keys; k++)
            if (name.n == strlen(keys[k]) && !memcmp(name.p, keys[k], name.n)) want = k;
        p = tok_json_ws(p, e);
        if (p >= e || *p != ':') {
            p = NULL;
            break;
        }
        const char *v = tok_json_ws(p + 1, e);
        p = skip_fast(v, e);
        if (!p) break;
        if (want >= 0) vb[want] = (size_t)(v - s), ve[want] = (size_t)(p - s);
        p = tok_json_ws(p, e);
        if (p < e && *p == ',') {
            p = tok_json_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}') break;
        p = NULL;
    }
    free(name.p);
    return p ? 0 : -1;
}
