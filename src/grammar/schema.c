/* JSON Schema (the subset of docs/grammar.md) and json_object -> a grammar over bytes.
 *
 * The language generated is a subset of what the schema accepts, never more: properties come in
 * the schema's order, no property beyond the listed ones is written (additionalProperties true or
 * a schema only allows, never requires, more), whitespace is none or minimal (a space, or a
 * newline and up to 20 spaces/tabs of indent, where JSON allows it), strings are valid UTF-8 with
 * no escaped surrogates (each \u escape is one BMP character). Anything the subset does not
 * cover is an error naming the keyword and where it is. */
#include "core/err.h"
#include "grammar/grammar.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_INDENT = 20, MAX_UNROLL = 4096, MAX_DEPTH = 64 };

typedef struct sref { const cJSON *node; int rule; } sref;

typedef struct sc {
    gbuild b;
    const cJSON *doc;
    sref *refs;
    int n_refs, cap_refs;
    int ws, chr, str, num, intg, value;  /* shared rules, made on first use (0: not yet) */
    nvlm_err *err;
    int failed;
} sc;

static int fail(sc *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(sc *c, int code, const char *fmt, ...) {
    if (c->failed) return -1;
    c->failed = 1;
    if (c->err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err->msg, sizeof c->err->msg, fmt, ap);
        va_end(ap);
        c->err->code = code;
    }
    return -1;
}

/* ----------------------------------------------------------- shared JSON rules */

/* ws: nothing, one space, or a newline and an indent of up to MAX_INDENT spaces/tabs */
static int ws(sc *c) {
    if (c->ws) return c->ws;
    gbuild *b = &c->b;
    int ind = gb_rule(b);
    gb_range(b, ind, ' ', ' '), gb_alt(b, ind), gb_range(b, ind, '\t', '\t');
    int indent = gb_repeat(b, ind, 0, MAX_INDENT);
    int r = gb_rule(b);
    gb_alt(b, r);
    gb_str(b, r, " "), gb_alt(b, r);
    gb_str(b, r, "\n"), gb_ref(b, r, indent);
    return c->ws = r;
}

/* One character of a string body: printable ASCII but '"' and '\', an escape, or one valid
 * UTF-8 multi-byte character. */
static int chr(sc *c) {
    if (c->chr) return c->chr;
    gbuild *b = &c->b;
    int hex = gb_rule(b);
    gset256 h = gset_range('0', '9');
    for (int ch = 'a'; ch <= 'f'; ch++) h.w[ch >> 6] |= 1ull << (ch & 63), h.w[(ch - 32) >> 6] |= 1ull << ((ch - 32) & 63);
    gb_set(b, hex, &h);
    int u = gb_rule(b); /* \uXXXX outside D800-DFFF */
    gset256 lead = h;
    lead.w['d' >> 6] &= ~(1ull << ('d' & 63)), lead.w['D' >> 6] &= ~(1ull << ('D' & 63));
    gb_set(b, u, &lead), gb_ref(b, u, hex), gb_ref(b, u, hex), gb_ref(b, u, hex), gb_alt(b, u);
    gb_str(b, u, "d"), gb_range(b, u, '0', '7'), gb_ref(b, u, hex), gb_ref(b, u, hex), gb_alt(b, u);
    gb_str(b, u, "D"), gb_range(b, u, '0', '7'), gb_ref(b, u, hex), gb_ref(b, u, hex);
    int r = gb_rule(b);
    gset256 plain = gset_range(0x20, 0x7f);
    plain.w[0] &= ~(1ull << '"');
    plain.w[1] &= ~(1ull << ('\\' - 64));
    gb_set(b, r, &plain), gb_alt(b, r);
    gset256 esc = {{0}};
    for (const char *p = "\"\\/bfnrt"; *p; p++) esc.w[(uint8_t)*p >> 6] |= 1ull << (*p & 63);
    gb_str(b, r, "\\"), gb_set(b, r, &esc), gb_alt(b, r);
    gb_str(b, r, "\\u"), gb_ref(b, r, u), gb_alt(b, r);
    /* UTF-8 (RFC 3629): no overlongs, no surrogates, nothing past U+10FFFF */
    static const unsigned seq[][8] = {
        {2, 0xc2, 0xdf, 0x80, 0xbf},
        {3, 0xe0, 0xe0, 0xa0, 0xbf, 0x80, 0xbf},
        {3, 0xe1, 0xec, 0x80, 0xbf, 0x80, 0xbf},
        {3, 0xed, 0xed, 0x80, 0x9f, 0x80, 0xbf},
        {3, 0xee, 0xef, 0x80, 0xbf, 0x80, 0xbf},
        {4, 0xf0, 0xf0, 0x90, 0xbf, 0x80, 0xbf},
        {4, 0xf1, 0xf3, 0x80, 0xbf, 0x80, 0xbf},
        {4, 0xf4, 0xf4, 0x80, 0x8f, 0x80, 0xbf},
    };
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        if (i) gb_alt(b, r);
        for (unsigned k = 0; k < seq[i][0]; k++) {
            unsigned lo = k < 3 ? seq[i][1 + 2 * k] : 0x80, hi = k < 3 ? seq[i][2 + 2 * k] : 0xbf;
            gb_range(b, r, lo, hi);
        }
    }
    return c->chr = r;
}

static int string_rule(sc *c, long min_len, long max_len) {
    if (min_len == 0 && max_len < 0 && c->str) return c->str;
    int r = gb_rule(&c->b);
    gb_str(&c->b, r, "\"");
    gb_ref(&c->b, r, gb_repeat(&c->b, chr(c), min_len, max_len));
    gb_str(&c->b, r, "\"");
    if (min_len == 0 && max_len < 0) c->str = r;
    return r;
}

static int digits(sc *c) { /* [0-9]* */
    int d = gb_rule(&c->b);
    gb_range(&c->b, d, '0', '9');
    return gb_star(&c->b, d);
}

static int integer_rule(sc *c) { /* -?(0|[1-9][0-9]*) */
    if (c->intg) return c->intg;
    gbuild *b = &c->b;
    int mag = gb_rule(b);
    gb_str(b, mag, "0"), gb_alt(b, mag);
    gb_range(b, mag, '1', '9'), gb_ref(b, mag, digits(c));
    int r = gb_rule(b);
    gb_str(b, r, "-"), gb_ref(b, r, mag), gb_alt(b, r);
    gb_ref(b, r, mag);
    return c->intg = r;
}

static int number_rule(sc *c) { /* integer (.[0-9]+)? ([eE][+-]?[0-9]+)? */
    if (c->num) return c->num;
    gbuild *b = &c->b;
    int frac = gb_rule(b);
    gb_str(b, frac, "."), gb_range(b, frac, '0', '9'), gb_ref(b, frac, digits(c));
    int exp = gb_rule(b), sign = gb_rule(b);
    gb_str(b, sign, "+"), gb_alt(b, sign), gb_str(b, sign, "-"), gb_alt(b, sign);
    gset256 e = gset_range('e', 'e');
    e.w[1] |= 1ull << ('E' - 64);
    gb_set(b, exp, &e), gb_ref(b, exp, sign), gb_range(b, exp, '0', '9'), gb_ref(b, exp, digits(c));
    int r = gb_rule(b);
    gb_ref(b, r, integer_rule(c)), gb_ref(b, r, gb_opt(b, frac)), gb_ref(b, r, gb_opt(b, exp));
    return c->num = r;
}

/* Any JSON value (json_object's values, a schema of true or {}). Objects and arrays recurse
 * through this rule; every level opens with a byte, so nothing is left-recursive. */
static int value_rule(sc *c) {
    if (c->value) return c->value;
    gbuild *b = &c->b;
    int v = c->value = gb_rule(b);
    int member = gb_rule(b), more = gb_rule(b);
    gb_ref(b, member, string_rule(c, 0, -1)), gb_ref(b, member, ws(c)), gb_str(b, member, ":"),
        gb_ref(b, member, ws(c)), gb_ref(b, member, v), gb_ref(b, member, ws(c));
    gb_str(b, more, ","), gb_ref(b, more, ws(c)), gb_ref(b, more, member);
    int members = gb_rule(b);
    gb_ref(b, members, member), gb_ref(b, members, gb_star(b, more));
    int obj = gb_rule(b);
    gb_str(b, obj, "{"), gb_ref(b, obj, ws(c)), gb_ref(b, obj, gb_opt(b, members)), gb_str(b, obj, "}");
    int item = gb_rule(b), imore = gb_rule(b);
    gb_ref(b, item, v), gb_ref(b, item, ws(c));
    gb_str(b, imore, ","), gb_ref(b, imore, ws(c)), gb_ref(b, imore, item);
    int items = gb_rule(b);
    gb_ref(b, items, item), gb_ref(b, items, gb_star(b, imore));
    int arr = gb_rule(b);
    gb_str(b, arr, "["), gb_ref(b, arr, ws(c)), gb_ref(b, arr, gb_opt(b, items)), gb_str(b, arr, "]");
    gb_ref(b, v, obj), gb_alt(b, v);
    gb_ref(b, v, arr), gb_alt(b, v);
    gb_ref(b, v, string_rule(c, 0, -1)), gb_alt(b, v);
    gb_ref(b, v, number_rule(c)), gb_alt(b, v);
    gb_str(b, v, "true"), gb_alt(b, v);
    gb_str(b, v, "false"), gb_alt(b, v);
    gb_str(b, v, "null");
    return v;
}

/* The JSON text of a value, as one literal sequence. */
static int literal_rule(sc *c, const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    if (!s) return fail(c, NVLM_E_NOMEM, "out of memory");
    int r = gb_rule(&c->b);
    gb_str(&c->b, r, s);
    free(s);
    return r;
}

/* ------------------------------------------------------------- integer ranges */

/* Decimal strings of the integers in [lo, hi], both of n digits (leading zeros allowed, as
 * these are suffixes): the classic split at the first differing digit. */
static int same_len(sc *c, const char *lo, const char *hi, int n) {
    gbuild *b = &c->b;
    int r = gb_rule(b), i = 0;
    while (i < n && lo[i] == hi[i]) i++;
    gb_lit(b, r, lo, (size_t)i);
    if (i == n) return r;
    int rest = n - i - 1, all0 = 1, all9 = 1;
    for (int k = i + 1; k < n; k++) all0 &= lo[k] == '0', all9 &= hi[k] == '9';
    char nines[24], zeros[24];
    memset(nines, '9', sizeof nines), memset(zeros, '0', sizeof zeros);
    int d = gb_rule(b);
    gb_range(b, d, '0', '9');
    if (all0 && all9) {
        gb_range(b, r, (uint8_t)lo[i], (uint8_t)hi[i]);
        for (int k = 0; k < rest; k++) gb_ref(b, r, d);
        return r;
    }
    int alts = gb_rule(b);
    gb_str(b, alts, (char[]){lo[i], 0}), gb_ref(b, alts, same_len(c, lo + i + 1, nines, rest));
    if (hi[i] - lo[i] >= 2) {
        gb_alt(b, alts);
        gb_range(b, alts, (uint8_t)lo[i] + 1, (uint8_t)hi[i] - 1);
        for (int k = 0; k < rest; k++) gb_ref(b, alts, d);
    }
    gb_alt(b, alts);
    gb_str(b, alts, (char[]){hi[i], 0}), gb_ref(b, alts, same_len(c, zeros, hi + i + 1, rest));
    gb_ref(b, r, alts);
    return r;
}

static int ndigits(unsigned long long v) {
    int n = 1;
    while (v >= 10) v /= 10, n++;
    return n;
}

/* Non-negative integers in [lo, hi] without leading zeros (has_hi 0: no upper bound),
 * added as alternatives of r (first: whether r has none yet). */
static void mag_range(sc *c, int r, unsigned long long lo, unsigned long long hi, int has_hi, int *first) {
    gbuild *b = &c->b;
    int dl = ndigits(lo), dh = has_hi ? ndigits(hi) : dl;
    unsigned long long p10 = 1;
    for (int k = 1; k < dl; k++) p10 *= 10;
    for (int d = dl; d <= dh; d++, p10 *= 10) {
        unsigned long long a = d == 1 ? 0 : p10, z = p10 * 10 - 1;
        if (a < lo) a = lo;
        if (has_hi && z > hi) z = hi;
        if (a > z) continue;
        char sa[24], sz[24];
        snprintf(sa, sizeof sa, "%0*llu", d, a), snprintf(sz, sizeof sz, "%0*llu", d, z);
        if (!*first) gb_alt(b, r);
        *first = 0;
        gb_ref(b, r, same_len(c, sa, sz, d));
    }
    if (!has_hi) { /* longer than lo: [1-9][0-9]{dl}[0-9]* */
        if (!*first) gb_alt(b, r);
        *first = 0;
        int d = gb_rule(b);
        gb_range(b, d, '0', '9');
        gb_range(b, r, '1', '9');
        for (int k = 0; k < dl; k++) gb_ref(b, r, d);
        gb_ref(b, r, digits(c));
    }
}

enum { INT_LIMIT = 1000000000000000000LL };

/* Reads minimum/maximum/exclusive* of an integer schema as an inclusive range. */
static int int_bounds(sc *c, const cJSON *s, const char *path, long long *lo, int *has_lo, long long *hi, int *has_hi) {
    static const struct { const char *key; int upper, exclusive; } kw[] = {
        {"minimum", 0, 0}, {"exclusiveMinimum", 0, 1}, {"maximum", 1, 0}, {"exclusiveMaximum", 1, 1}};
    *has_lo = *has_hi = 0;
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(s, kw[i].key);
        if (!it) continue;
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || fabs(it->valuedouble) > (double)INT_LIMIT)
            return fail(c, NVLM_E_UNSUPPORTED, "JSON Schema keyword '%s' at %s must be a number within +-1e18",
                        kw[i].key, path);
        double v = it->valuedouble;
        long long x = kw[i].upper ? (long long)floor(v) : (long long)ceil(v);
        if (kw[i].exclusive && v == floor(v)) x += kw[i].upper ? -1 : 1;
        if (kw[i].upper) *hi = *has_hi && *hi < x ? *hi : x, *has_hi = 1;
        else *lo = *has_lo && *lo > x ? *lo : x, *has_lo = 1;
    }
    if (*has_lo && *has_hi && *lo > *hi)
        return fail(c, NVLM_E_UNSUPPORTED, "the integer range at %s is empty (minimum %lld > maximum %lld)", path, *lo,
                    *hi);
    return 0;
}

static int int_range_rule(sc *c, const cJSON *s, const char *path) {
    long long lo = 0, hi = 0;
    int has_lo, has_hi;
    if (int_bounds(c, s, path, &lo, &has_lo, &hi, &has_hi)) return -1;
    if (!has_lo && !has_hi) return integer_rule(c);
    gbuild *b = &c->b;
    int r = gb_rule(b), first = 1;
    if (!has_lo || lo < 0) { /* negatives: "-" then magnitudes in [max(1, -hi), -lo] */
        unsigned long long mlo = has_hi && hi < 0 ? (unsigned long long)-hi : 1;
        int neg = gb_rule(b), nf = 1;
        mag_range(c, neg, mlo, has_lo ? (unsigned long long)-lo : 0, has_lo, &nf);
        first = 0;
        gb_str(b, r, "-"), gb_ref(b, r, neg);
    }
    if (!has_hi || hi >= 0) mag_range(c, r, has_lo && lo > 0 ? (unsigned long long)lo : 0, has_hi ? (unsigned long long)hi : 0, has_hi, &first);
    return r;
}

/* ------------------------------------------------------------------- schemas */

static int compile(sc *c, const cJSON *s, const char *path, int depth);

/* Keywords that describe and do not constrain. */
static int annotation(const char *k) {
    static const char *const names[] = {"title", "description", "$schema", "$id", "$comment", "default",
                                        "examples", "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
                                        "strict", "name", NULL};
    for (int i = 0; names[i]; i++)
        if (!strcmp(k, names[i])) return 1;
    return 0;
}

static int known_keyword(const char *k) {
    static const char *const names[] = {"type", "properties", "required", "additionalProperties", "items",
                                        "minItems", "maxItems", "enum", "const", "anyOf", "$ref", "minimum",
                                        "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                                        "maxLength", NULL};
    for (int i = 0; names[i]; i++)
        if (!strcmp(k, names[i])) return 1;
    return annotation(k);
}

static int get_count(sc *c, const cJSON *s, const char *key, const char *path, long dflt, long *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(s, key);
    *out = dflt;
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble != floor(it->valuedouble) ||
        it->valuedouble > MAX_UNROLL)
        return fail(c, NVLM_E_UNSUPPORTED, "JSON Schema keyword '%s' at %s must be an integer from 0 to %d", key, path,
                    MAX_UNROLL);
    *out = (long)it->valuedouble;
    return 0;
}

static int object_rule(sc *c, const cJSON *s, const char *path, int depth) {
    gbuild *b = &c->b;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return fail(c, NVLM_E_UNSUPPORTED, "'properties' at %s must be an object", path);
    if (req && !cJSON_IsArray(req)) return fail(c, NVLM_E_UNSUPPORTED, "'required' at %s must be an array", path);
    if (ap && !cJSON_IsBool(ap) && !cJSON_IsObject(ap))
        return fail(c, NVLM_E_UNSUPPORTED, "'additionalProperties' at %s must be a boolean or a schema", path);
    /* the members: the listed properties in order, then required names not listed */
    enum { MAX_PROPS = 1024 };
    const char *name[MAX_PROPS];
    const cJSON *sub[MAX_PROPS];
    int required[MAX_PROPS], n = 0;
    const cJSON *p, *q;
    cJSON_ArrayForEach(p, props) {
        if (n == MAX_PROPS) return fail(c, NVLM_E_UNSUPPORTED, "more than %d properties at %s", MAX_PROPS, path);
        name[n] = p->string, sub[n] = p, required[n] = 0;
        cJSON_ArrayForEach(q, req) if (cJSON_IsString(q) && !strcmp(q->valuestring, p->string)) required[n] = 1;
        n++;
    }
    cJSON_ArrayForEach(q, req) {
        if (!cJSON_IsString(q)) return fail(c, NVLM_E_UNSUPPORTED, "'required' at %s must list strings", path);
        if (props && cJSON_GetObjectItemCaseSensitive(props, q->valuestring)) continue;
        if (cJSON_IsFalse(ap))
            return fail(c, NVLM_E_UNSUPPORTED, "'required' at %s names '%.100s', which additionalProperties: false forbids",
                        path, q->valuestring);
        if (n == MAX_PROPS) return fail(c, NVLM_E_UNSUPPORTED, "more than %d properties at %s", MAX_PROPS, path);
        name[n] = q->valuestring, sub[n] = NULL, required[n] = 1, n++;
    }
    /* kv[i] = "name" ws ":" ws value ws */
    int kv[MAX_PROPS];
    for (int i = 0; i < n; i++) {
        char sub_path[512];
        snprintf(sub_path, sizeof sub_path, "%.400s/properties/%.80s", path, name[i]);
        int v = sub[i] ? compile(c, sub[i], sub_path, depth + 1) : value_rule(c);
        if (v < 0) return -1;
        cJSON *key = cJSON_CreateString(name[i]);
        int k = key ? literal_rule(c, key) : fail(c, NVLM_E_NOMEM, "out of memory");
        cJSON_Delete(key);
        if (k < 0) return -1;
        kv[i] = gb_rule(b);
        gb_ref(b, kv[i], k), gb_ref(b, kv[i], ws(c)), gb_str(b, kv[i], ":"), gb_ref(b, kv[i], ws(c)),
            gb_ref(b, kv[i], v), gb_ref(b, kv[i], ws(c));
    }
    /* first[i]: members from i on, none written yet; after[i]: from i on, some written */
    int first = gb_rule(b), after = gb_rule(b); /* index n: epsilon */
    for (int i = n - 1; i >= 0; i--) {
        int f = gb_rule(b), a = gb_rule(b);
        gb_ref(b, f, kv[i]), gb_ref(b, f, after);
        gb_str(b, a, ","), gb_ref(b, a, ws(c)), gb_ref(b, a, kv[i]), gb_ref(b, a, after);
        if (!required[i]) gb_alt(b, f), gb_ref(b, f, first), gb_alt(b, a), gb_ref(b, a, after);
        first = f, after = a;
    }
    int r = gb_rule(b);
    gb_str(b, r, "{"), gb_ref(b, r, ws(c)), gb_ref(b, r, first), gb_str(b, r, "}");
    return r;
}

static int array_rule(sc *c, const cJSON *s, const char *path, int depth) {
    gbuild *b = &c->b;
    long lo, hi;
    if (get_count(c, s, "minItems", path, 0, &lo) || get_count(c, s, "maxItems", path, -1, &hi)) return -1;
    if (hi >= 0 && lo > hi) return fail(c, NVLM_E_UNSUPPORTED, "minItems > maxItems at %s", path);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    char sub_path[512];
    snprintf(sub_path, sizeof sub_path, "%.480s/items", path);
    int v = items ? compile(c, items, sub_path, depth + 1) : value_rule(c);
    if (v < 0) return -1;
    int r = gb_rule(b);
    gb_str(b, r, "["), gb_ref(b, r, ws(c));
    if (hi != 0) { /* item ws ("," ws item ws){lo-1, hi-1}, optional when lo == 0 */
        int item = gb_rule(b), more = gb_rule(b);
        gb_ref(b, item, v), gb_ref(b, item, ws(c));
        gb_str(b, more, ","), gb_ref(b, more, ws(c)), gb_ref(b, more, item);
        int list = gb_rule(b);
        gb_ref(b, list, item), gb_ref(b, list, gb_repeat(b, more, lo > 1 ? lo - 1 : 0, hi < 0 ? -1 : hi - 1));
        gb_ref(b, r, lo == 0 ? gb_opt(b, list) : list);
    }
    gb_str(b, r, "]");
    return r;
}

static int typed_rule(sc *c, const cJSON *s, const char *type, const char *path, int depth) {
    if (!strcmp(type, "object")) return object_rule(c, s, path, depth);
    if (!strcmp(type, "array")) return array_rule(c, s, path, depth);
    if (!strcmp(type, "integer")) return int_range_rule(c, s, path);
    if (!strcmp(type, "boolean")) {
        int r = gb_rule(&c->b);
        gb_str(&c->b, r, "true"), gb_alt(&c->b, r), gb_str(&c->b, r, "false");
        return r;
    }
    if (!strcmp(type, "null")) {
        int r = gb_rule(&c->b);
        gb_str(&c->b, r, "null");
        return r;
    }
    if (!strcmp(type, "string")) {
        long lo, hi;
        if (get_count(c, s, "minLength", path, 0, &lo) || get_count(c, s, "maxLength", path, -1, &hi)) return -1;
        if (hi >= 0 && lo > hi) return fail(c, NVLM_E_UNSUPPORTED, "minLength > maxLength at %s", path);
        return string_rule(c, lo, hi);
    }
    if (!strcmp(type, "number")) {
        static const char *const bounds[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
        for (int i = 0; i < 4; i++)
            if (cJSON_GetObjectItemCaseSensitive(s, bounds[i]))
                return fail(c, NVLM_E_UNSUPPORTED,
                            "JSON Schema keyword '%s' at %s is supported for type integer only, not number", bounds[i],
                            path);
        return number_rule(c);
    }
    return fail(c, NVLM_E_UNSUPPORTED, "JSON Schema type '%.40s' at %s is not one of object, array, string, number, "
                "integer, boolean, null", type, path);
}

/* "#/$defs/name" or "#/definitions/name" (or "#": the whole document), one rule per target so
 * that recursive schemas become recursive rules. */
static int ref_rule(sc *c, const char *ref, const char *path, int depth) {
    const cJSON *target = NULL;
    if (!strcmp(ref, "#")) target = c->doc;
    else if (!strncmp(ref, "#/$defs/", 8)) target = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c->doc, "$defs"), ref + 8);
    else if (!strncmp(ref, "#/definitions/", 14))
        target = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c->doc, "definitions"), ref + 14);
    else return fail(c, NVLM_E_UNSUPPORTED, "'$ref' at %s: only #/$defs/NAME (or #/definitions/NAME, #) is supported, not '%.100s'", path, ref);
    if (!target) return fail(c, NVLM_E_UNSUPPORTED, "'$ref' at %s: '%.100s' is not defined", path, ref);
    for (int i = 0; i < c->n_refs; i++)
        if (c->refs[i].node == target) return c->refs[i].rule;
    if (c->n_refs == c->cap_refs) {
        int cap = c->cap_refs ? 2 * c->cap_refs : 16;
        sref *n = realloc(c->refs, sizeof *n * (size_t)cap);
        if (!n) return fail(c, NVLM_E_NOMEM, "out of memory");
        c->refs = n, c->cap_refs = cap;
    }
    int r = gb_rule(&c->b); /* made before the body, so that the body may refer to it */
    c->refs[c->n_refs++] = (sref){target, r};
    int body = compile(c, target, ref, depth + 1);
    if (body < 0) return -1;
    gb_ref(&c->b, r, body);
    return r;
}

static int compile(sc *c, const cJSON *s, const char *path, int depth) {
    if (c->failed) return -1;
    if (depth > MAX_DEPTH) return fail(c, NVLM_E_UNSUPPORTED, "the schema nests deeper than %d at %s", MAX_DEPTH, path);
    if (cJSON_IsTrue(s)) return value_rule(c);
    if (!cJSON_IsObject(s)) return fail(c, NVLM_E_UNSUPPORTED, "the schema at %s must be an object or true", path);
    const cJSON *k;
    cJSON_ArrayForEach(k, s) if (!known_keyword(k->string))
        return fail(c, NVLM_E_UNSUPPORTED, "unsupported JSON Schema keyword '%.80s' at %s", k->string, path);
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref"), *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(s, "const"), *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    int alone = !!ref + !!any + !!cst + !!en;
    if (alone > 1 || (alone && type && !cst && !en))
        return fail(c, NVLM_E_UNSUPPORTED, "at %s, '$ref', 'anyOf', 'const' and 'enum' must each stand without 'type' "
                    "or one another", path);
    if (ref) {
        if (!cJSON_IsString(ref)) return fail(c, NVLM_E_UNSUPPORTED, "'$ref' at %s must be a string", path);
        return ref_rule(c, ref->valuestring, path, depth);
    }
    if (cst) return literal_rule(c, cst); /* any 'type' beside it must agree: the validator's business */
    gbuild *b = &c->b;
    if (en || any) {
        const cJSON *list = en ? en : any;
        if (!cJSON_IsArray(list) || !cJSON_GetArraySize(list))
            return fail(c, NVLM_E_UNSUPPORTED, "'%s' at %s must be a non-empty array", en ? "enum" : "anyOf", path);
        int r = gb_rule(b), i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, list) {
            char sub_path[512];
            snprintf(sub_path, sizeof sub_path, "%.480s/anyOf/%d", path, i);
            int v = en ? literal_rule(c, e) : compile(c, e, sub_path, depth + 1);
            if (v < 0) return -1;
            if (i++) gb_alt(b, r);
            gb_ref(b, r, v);
        }
        return r;
    }
    if (!type) {
        if (cJSON_GetObjectItemCaseSensitive(s, "properties")) return object_rule(c, s, path, depth);
        if (cJSON_GetObjectItemCaseSensitive(s, "items")) return array_rule(c, s, path, depth);
        return value_rule(c);
    }
    if (cJSON_IsString(type)) return typed_rule(c, s, type->valuestring, path, depth);
    if (!cJSON_IsArray(type) || !cJSON_GetArraySize(type))
        return fail(c, NVLM_E_UNSUPPORTED, "'type' at %s must be a string or a non-empty array of strings", path);
    int r = gb_rule(b), i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, type) {
        if (!cJSON_IsString(t)) return fail(c, NVLM_E_UNSUPPORTED, "'type' at %s must list strings", path);
        int v = typed_rule(c, s, t->valuestring, path, depth);
        if (v < 0) return -1;
        if (i++) gb_alt(b, r);
        gb_ref(b, r, v);
    }
    return r;
}

static int finish(sc *c, int root, nvlm_grammar **out, nvlm_err *err) {
    free(c->refs);
    if (c->failed || root < 0) {
        gb_free(&c->b);
        return err && err->code ? err->code : NVLM_E_UNSUPPORTED;
    }
    return gb_finish(&c->b, root, out, err);
}

int nvlm_grammar_from_json_schema(const char *schema, size_t len, nvlm_grammar **out, nvlm_err *err) {
    *out = NULL;
    if (!schema) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no schema");
    cJSON *doc = cJSON_ParseWithLength(schema, len);
    if (!doc) return nvlm_fail(err, NVLM_E_FORMAT, "the JSON Schema is not valid JSON");
    int rc = nvlm_grammar_from_json_schema_value(doc, out, err);
    cJSON_Delete(doc);
    return rc;
}

int nvlm_grammar_from_json_schema_value(const void *doc, nvlm_grammar **out, nvlm_err *err) {
    sc c = {.doc = doc, .err = err};
    gb_rule(&c.b); /* rule 0 stays unused so that 0 means "not made yet" above */
    int root = compile(&c, doc, "#", 0);
    return finish(&c, root, out, err);
}

/* json_object: any JSON object (OpenAI's JSON mode): "{" ws (member ("," ws member)*)? "}". */
int nvlm_grammar_json_object(nvlm_grammar **out, nvlm_err *err) {
    *out = NULL;
    sc c = {.err = err};
    gbuild *b = &c.b;
    gb_rule(b);
    int v = value_rule(&c);
    int member = gb_rule(b), more = gb_rule(b), members = gb_rule(b), r = gb_rule(b);
    gb_ref(b, member, string_rule(&c, 0, -1)), gb_ref(b, member, ws(&c)), gb_str(b, member, ":"),
        gb_ref(b, member, ws(&c)), gb_ref(b, member, v), gb_ref(b, member, ws(&c));
    gb_str(b, more, ","), gb_ref(b, more, ws(&c)), gb_ref(b, more, member);
    gb_ref(b, members, member), gb_ref(b, members, gb_star(b, more));
    gb_str(b, r, "{"), gb_ref(b, r, ws(&c)), gb_ref(b, r, gb_opt(b, members)), gb_str(b, r, "}");
    return finish(&c, r, out, err);
}
