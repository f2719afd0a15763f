/* test_tokenizer.c - the Qwen2 tokenizer against Hugging Face's reference cases (both
 * loading paths), the tiny tokenizer, the pre-tokenizer against libonig, properties, invalid
 * UTF-8, streaming, large inputs and load errors. */
#include "check.h"
#include "nvlm.h"
#include "tokenizer/tok.h"
#include "tokenizer/tok_json.h"
#include <cjson/cJSON.h>
#include <oniguruma.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (b) b[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

static int write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int write_str(const char *path, const char *s) { return write_file(path, s, strlen(s)); }

static int copy_file(const char *from, const char *to) {
    size_t n;
    char *b = slurp(from, &n);
    int rc = b ? write_file(to, b, n) : -1;
    free(b);
    return rc;
}

static nvlm_tokenizer *load(const char *dir, double *secs) {
    nvlm_err err = {0};
    nvlm_tokenizer *t = NULL;
    double t0 = now();
    int rc = nvlm_tokenizer_load(dir, &t, &err);
    if (secs) *secs = now() - t0;
    CHECK(rc == 0 && t, "loading %s: %s", dir, err.msg);
    return t;
}

static int same_ids(const int32_t *a, size_t na, const cJSON *arr) {
    if ((size_t)cJSON_GetArraySize(arr) != na) return 0;
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++)
        if ((int32_t)e->valuedouble != a[i]) return 0;
    return 1;
}

static int32_t *ids_of(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next) v[i++] = (int32_t)(int64_t)e->valuedouble;
    return v;
}

static int decodes_to(const nvlm_tokenizer *t, const int32_t *ids, size_t n, int skip, const tok_bytes *want) {
    char *s = NULL;
    size_t len = 0;
    if (nvlm_tokenizer_decode(t, ids, n, skip, &s, &len, NULL)) return 0;
    int ok = len == want->n && !memcmp(s, want->p, len);
    free(s);
    return ok;
}

/* The streaming decoder's pieces, joined, equal the one-shot decode; every piece is valid. */
static int streams_to(const nvlm_tokenizer *t, const int32_t *ids, size_t n, int skip, const tok_bytes *want) {
    nvlm_detok *d;
    if (nvlm_detok_new(t, skip, &d, NULL)) return 0;
    tok_bytes all = {0};
    int ok = 1;
    for (size_t i = 0; i <= n && ok; i++) {
        char *s;
        size_t len;
        int rc = i < n ? nvlm_detok_push(d, ids[i], &s, &len, NULL) : nvlm_detok_flush(d, &s, &len, NULL);
        if (rc) break;
        ok = tok_utf8_valid_prefix((const uint8_t *)s, len) == len && !tok_bytes_put(&all, s, len);
        free(s);
    }
    nvlm_detok_free(d);
    ok = ok && all.n == want->n && !memcmp(all.p, want->p, all.n);
    free(all.p);
    return ok;
}

typedef struct counts { int cases, enc_fail, dec_fail; } counts;

/* Runs every case of tokenizer_cases.jsonl through one tokenizer. */
static void run_cases(const nvlm_tokenizer *t, const char *label, const nvlm_tokenizer *tiny) {
    size_t n;
    char *data = slurp(shared_path("reference/tokenizer_cases.jsonl"), &n);
    CHECK(data != NULL, "cannot read tokenizer_cases.jsonl");
    if (!data) return;
    counts c = {0};
    int tiny_checked = 0, tiny_fail = 0;
    tok_bytes text = {0}, dec = {0}, dec_skip = {0};
    for (char *line = data, *nl; line < data + n; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(data + n - line));
        if (!nl) nl = data + n;
        size_t len = (size_t)(nl - line);
        if (!len) continue;
        cJSON *j = cJSON_ParseWithLength(line, len);
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(j, "id"));
        CHECK(j && id && !tok_json_get_string(line, len, "decoded", &dec) &&
                  !tok_json_get_string(line, len, "decoded_skip_special", &dec_skip),
              "%s: bad case line", label);
        if (!j || !id) {
            cJSON_Delete(j);
            continue;
        }
        c.cases++;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        const cJSON *want = cJSON_GetObjectItem(j, "ids");
        if (!tok_json_get_string(line, len, "text", &text)) {
            int rc = nvlm_tokenizer_encode(t, (const char *)text.p, text.n, &ids, &n_ids, NULL);
            if (rc || !same_ids(ids, n_ids, want)) {
                c.enc_fail++;
                fprintf(stderr, "%s: case %s: ids differ (%zu ids, want %d)\n", label, id, n_ids,
                        cJSON_GetArraySize(want));
            }
            if (tiny) { /* tiny ids equal full ids when the full result only uses ids < 4256 */
                int small = 1;
                for (size_t i = 0; i < n_ids; i++) small &= ids[i] < 4256;
                if (small) {
                    int32_t *tids;
                    size_t tn;
                    tiny_checked++;
                    if (nvlm_tokenizer_encode(tiny, (const char *)text.p, text.n, &tids, &tn, NULL) ||
                        tn != n_ids || memcmp(tids, ids, tn * sizeof *ids))
                        tiny_fail++;
                    if (tiny_fail == 1 && tiny_checked) fprintf(stderr, "tiny differs on %s\n", id), tiny_fail++;
                    free(tids);
                }
            }
            free(ids);
            ids = ids_of(want, &n_ids);
        } else {
            ids = ids_of(cJSON_GetObjectItem(j, "decode_ids"), &n_ids);
        }
        if (!decodes_to(t, ids, n_ids, 0, &dec) || !decodes_to(t, ids, n_ids, 1, &dec_skip) ||
            !streams_to(t, ids, n_ids, 0, &dec) || !streams_to(t, ids, n_ids, 1, &dec_skip)) {
            c.dec_fail++;
            fprintf(stderr, "%s: case %s: decoded text differs\n", label, id);
        }
        free(ids);
        cJSON_Delete(j);
    }
    CHECK(c.cases == 633, "%s: %d cases read", label, c.cases);
    CHECK(c.enc_fail == 0, "%s: %d of %d cases encode differently", label, c.enc_fail, c.cases);
    CHECK(c.dec_fail == 0, "%s: %d of %d cases decode differently", label, c.dec_fail, c.cases);
    if (tiny) CHECK(tiny_checked > 50 && tiny_fail == 0, "tiny: %d of %d cases differ", tiny_fail, tiny_checked);
    printf("%s: %d cases, %d encode and %d decode failures\n", label, c.cases, c.enc_fail, c.dec_fail);
    free(text.p);
    free(dec.p);
    free(dec_skip.p);
    free(data);
}

/* ---- the hand-coded pre-tokenizer against Oniguruma running the tokenizer.json pattern */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static size_t put_utf8(uint8_t *b, uint32_t cp) {
    if (cp < 0x80) return b[0] = (uint8_t)cp, 1;
    if (cp < 0x800) return b[0] = (uint8_t)(0xC0 | cp >> 6), b[1] = (uint8_t)(0x80 | (cp & 63)), 2;
    if (cp < 0x10000)
        return b[0] = (uint8_t)(0xE0 | cp >> 12), b[1] = (uint8_t)(0x80 | ((cp >> 6) & 63)), b[2] = (uint8_t)(0x80 | (cp & 63)), 3;
    b[0] = (uint8_t)(0xF0 | cp >> 18), b[1] = (uint8_t)(0x80 | ((cp >> 12) & 63));
    b[2] = (uint8_t)(0x80 | ((cp >> 6) & 63)), b[3] = (uint8_t)(0x80 | (cp & 63));
    return 4;
}

/* A code point drawn to hit the regex's corners. */
static uint32_t tricky_cp(void) {
    static const uint32_t pool[] = {
        ' ', ' ', ' ', '\n', '\r', '\t', '\v', '\f', '\'', '\'', 's', 'S', 't', 'T', 'r', 'R', 'e', 'E', 'v', 'V',
        'm', 'M', 'l', 'L', 'd', 'D', 'a', 'z', '0', '7', '.', ',', '!', '-', '(', '"', '<', '|', '_', 0x85, 0xA0,
        0x17F, 0x212A, 0x1680, 0x180E, 0x2000, 0x200A, 0x200B, 0x200D, 0x2028, 0x2029, 0x202F, 0x205F, 0x2060,
        0x3000, 0xFEFF, 0xB2, 0xBD, 0x216B, 0x2460, 0x660, 0x967, 0xFF10, 0x4E2D, 0x3042, 0xAC00, 0x301, 0x93C,
        0xE9, 0x3C9, 0x5D0, 0x627, 0x1F600, 0x1F468, 0x200D, 0xFE0F, 0x1D400, 0x20000, 0x10FFFF, 0xE000, 0,
        0x7F, 0x9F, 0x2019, 0x00DF, 0x1E9E, 0xFB05, 0x11DE0, 0x16FF4};
    uint32_t r = rnd() % 8;
    if (r == 0) { /* any code point */
        uint32_t cp = rnd() % 0x110000;
        return cp >= 0xD800 && cp < 0xE000 ? 'x' : cp;
    }
    return pool[rnd() % (sizeof pool / sizeof *pool)];
}

static void test_pretok_vs_onig(void) {
    size_t n;
    char *json = slurp(shared_path("reference/tokenizer/tokenizer.json"), &n);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    const cJSON *pat = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(root, "pre_tokenizer"), "pretokenizers"), 0), "pattern"), "Regex");
    CHECK(cJSON_IsString(pat), "no regex in tokenizer.json");
    if (!cJSON_IsString(pat)) return;
    OnigEncoding enc[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(enc, 1);
    regex_t *re;
    OnigErrorInfo einfo;
    const UChar *p = (const UChar *)pat->valuestring;
    int rc = onig_new(&re, p, p + strlen(pat->valuestring), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                      ONIG_SYNTAX_DEFAULT, &einfo);
    CHECK(rc == ONIG_NORMAL, "onig_new failed");
    OnigRegion *reg = onig_region_new();
    int strings = 0, bad = 0;
    uint8_t buf[400];
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0, chars = 1 + rnd() % 24;
        for (size_t k = 0; k < chars; k++) len += put_utf8(buf + len, tricky_cp());
        /* onig's piece boundaries (Isolated: matches and the gaps between them) */
        size_t pos = 0, want[400], nw = 0;
        while (pos < len) {
            int r = onig_search(re, buf, buf + len, buf + pos, buf + len, reg, ONIG_OPTION_NONE);
            if (r < 0) {
                want[nw++] = len;
                break;
            }
            if ((size_t)reg->beg[0] > pos) want[nw++] = (size_t)reg->beg[0];
            size_t e = (size_t)reg->end[0];
            if (e == (size_t)reg->beg[0]) e = (size_t)reg->beg[0] + 1; /* (no empty matches in this pattern) */
            want[nw++] = e;
            pos = e;
        }
        size_t got[400], ng = 0;
        for (size_t i = 0; i < len;) got[ng++] = i = tok_pretok_next(buf, len, i);
        strings++;
        if (ng != nw || memcmp(got, want, ng * sizeof *got)) {
            if (bad++ < 5) {
                fprintf(stderr, "pre-tokenizer differs from onig on:");
                for (size_t i = 0; i < len; i++) fprintf(stderr, " %02X", buf[i]);
                fprintf(stderr, "\n");
            }
        }
    }
    /* the generated class table against the installed Oniguruma, code point by code point
     * (planes 0-3 and 14: every assigned letter, number and space lives there) */
    const char *cls_pat[3] = {"\\p{L}", "\\p{N}", "\\s"};
    regex_t *cre[3];
    for (int k = 0; k < 3; k++)
        onig_new(&cre[k], (const UChar *)cls_pat[k], (const UChar *)cls_pat[k] + strlen(cls_pat[k]),
                 ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &einfo);
    int cls_bad = 0;
    for (uint32_t cp = 0; cp < 0xF0000; cp++) {
        if ((cp >= 0xD800 && cp < 0xE000) || (cp >= 0x40000 && cp < 0xE0000)) continue;
        UChar b[4];
        size_t l = put_utf8(b, cp);
        unsigned want = 0;
        for (int k = 0; k < 3; k++)
            if (onig_match(cre[k], b, b + l, b, NULL, ONIG_OPTION_NONE) == (int)l) want |= 1u << k;
        if (want != tok_uc_class(cp) && cls_bad++ < 5) fprintf(stderr, "class of U+%04X differs from onig\n", cp);
    }
    for (int k = 0; k < 3; k++) onig_free(cre[k]);
    CHECK(cls_bad == 0, "%d code points classified differently from Oniguruma %s", cls_bad, onig_version());
    CHECK(bad == 0, "pre-tokenizer: %d of %d random strings split differently from Oniguruma", bad, strings);
    onig_region_free(reg, 1);
    onig_free(re);
    onig_end();
    cJSON_Delete(root);
    free(json);
}

/* ---- properties */

static void test_roundtrip(const nvlm_tokenizer *t) {
    int bad = 0, n = 3000;
    uint8_t buf[600];
    for (int iter = 0; iter < n; iter++) {
        size_t len = 0, chars = rnd() % 60;
        for (size_t k = 0; k < chars; k++) len += put_utf8(buf + len, tricky_cp());
        int32_t *ids;
        size_t n_ids;
        char *out = NULL;
        size_t out_len = 0;
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m = len ? utf8proc_map(buf, (utf8proc_ssize_t)len, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE) : 0;
        int ok = m >= 0 && !nvlm_tokenizer_encode(t, (const char *)buf, len, &ids, &n_ids, NULL) &&
                 !nvlm_tokenizer_decode(t, ids, n_ids, 0, &out, &out_len, NULL) && out_len == (size_t)m &&
                 (m == 0 || !memcmp(out, nfc, out_len));
        if (!ok && bad++ < 3) fprintf(stderr, "round trip fails on a %zu-byte string\n", len);
        free(nfc);
        free(out);
        free(ids);
    }
    CHECK(bad == 0, "decode(encode(s)) != NFC(s) for %d of %d random strings", bad, n);
}

static void encode_same(const nvlm_tokenizer *t, const char *a, size_t na, const char *b) {
    int32_t *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int rc = nvlm_tokenizer_encode(t, a, na, &x, &nx, NULL) | nvlm_tokenizer_encode(t, b, strlen(b), &y, &ny, NULL);
    CHECK(rc == 0 && nx == ny && !memcmp(x, y, nx * sizeof *x), "invalid UTF-8 not repaired as \"%s\"", b);
    free(x);
    free(y);
}

static void test_invalid_utf8(const nvlm_tokenizer *t) {
#define R "\xEF\xBF\xBD"
    encode_same(t, "\xFF", 1, R);
    encode_same(t, "a\xC3", 2, "a" R);
    encode_same(t, "\xE4\xBD", 2, R);                         /* truncated: one */
    encode_same(t, "\xED\xA0\x80x", 4, R R R "x");            /* surrogate: three */
    encode_same(t, "\xF4\x90\x80\x80", 4, R R R R);           /* above U+10FFFF */
    encode_same(t, "\xC0\x80", 2, R R);                       /* overlong */
    encode_same(t, "\xF0\x9F\x98", 3, R);                     /* truncated emoji */
    encode_same(t, "\x80\x81 hi", 5, R R " hi");
    encode_same(t, "<|im_end|\xFF>", 11, "<|im_end|" R ">");
    encode_same(t, "\xE0\x80\xAF", 3, R R R);
#undef R
    int32_t *ids = NULL;
    size_t n = 99;
    CHECK(nvlm_tokenizer_encode(t, "", 0, &ids, &n, NULL) == 0 && n == 0, "empty input");
    free(ids);
    CHECK(nvlm_tokenizer_encode(t, NULL, 0, &ids, &n, NULL) == 0 && n == 0, "NULL empty input");
    free(ids);
}

static void test_api(const nvlm_tokenizer *t) {
    CHECK(nvlm_tokenizer_size(t) == 151665, "size %zu", nvlm_tokenizer_size(t));
    CHECK(nvlm_tokenizer_token_id(t, "<|im_end|>") == 151645, "im_end id");
    CHECK(nvlm_tokenizer_token_id(t, "<|vision_pad|>") == 151654, "vision_pad id");
    CHECK(nvlm_tokenizer_token_id(t, "Hello") == 9707, "Hello id");
    CHECK(nvlm_tokenizer_token_id(t, "\xC4\xA0world") == 1879, "Ġworld id");
    CHECK(nvlm_tokenizer_token_id(t, "<think>") == -1, "<think> is not a token");
    CHECK(nvlm_tokenizer_is_special(t, 151645) && !nvlm_tokenizer_is_special(t, 151657) &&
              !nvlm_tokenizer_is_special(t, 9707) && !nvlm_tokenizer_is_special(t, 151665) &&
              !nvlm_tokenizer_is_special(t, -1),
          "is_special");
    /* streaming: a character split over tokens comes out whole, once */
    nvlm_detok *d;
    CHECK(nvlm_detok_new(t, 0, &d, NULL) == 0, "detok_new");
    char *s;
    size_t len;
    int32_t ids[] = {160, 121, 254}; /* 你 in three byte tokens */
    CHECK(nvlm_detok_push(d, ids[0], &s, &len, NULL) == 0 && len == 0, "first byte held back");
    free(s);
    CHECK(nvlm_detok_push(d, ids[1], &s, &len, NULL) == 0 && len == 0, "second byte held back");
    free(s);
    CHECK(nvlm_detok_push(d, ids[2], &s, &len, NULL) == 0 && len == 3 && !memcmp(s, "\xE4\xBD\xA0", 3), "char out");
    free(s);
    CHECK(nvlm_detok_push(d, 160, &s, &len, NULL) == 0 && len == 0, "held back");
    free(s);
    CHECK(nvlm_detok_flush(d, &s, &len, NULL) == 0 && len == 3 && !memcmp(s, "\xEF\xBF\xBD", 3), "flush -> U+FFFD");
    free(s);
    nvlm_detok_free(d);
}

static void test_tiny(const nvlm_tokenizer *tiny) {
    CHECK(nvlm_tokenizer_size(tiny) == 4270, "tiny size %zu", nvlm_tokenizer_size(tiny));
    int32_t *ids;
    size_t n;
    const char *s = "<|im_start|>user\n<|vision_pad|><tool_call><|im_end|>";
    CHECK(nvlm_tokenizer_encode(tiny, s, strlen(s), &ids, &n, NULL) == 0, "tiny encode");
    CHECK(n > 4 && ids[0] == 4257 && ids[1] == 872 && ids[2] == 198 && ids[3] == 4267 && ids[n - 1] == 4258,
          "tiny ids");
    for (size_t i = 4; i + 1 < n; i++) CHECK(ids[i] < 4256, "<tool_call> is plain text in tiny");
    char *out;
    size_t len;
    CHECK(nvlm_tokenizer_decode(tiny, ids, n, 1, &out, &len, NULL) == 0 && !strcmp(out, "user\n<tool_call>"),
          "tiny decode skip special");
    free(out);
    free(ids);
}

static void test_large(const nvlm_tokenizer *t) {
    size_t n = 1 << 20;
    char *s = malloc(10 * n + 1);
    int32_t *ids;
    size_t n_ids;
    const char *one[] = {"a", " ", "\xE4\xB8\xAD", "!", "1"};
    for (int k = 0; k < 5; k++) {
        size_t l = strlen(one[k]), len = 0;
        while (len + l <= n) memcpy(s + len, one[k], l), len += l;
        double t0 = now();
        int rc = nvlm_tokenizer_encode(t, s, len, &ids, &n_ids, NULL);
        double secs = now() - t0;
        char *out = NULL;
        size_t out_len = 0;
        rc |= nvlm_tokenizer_decode(t, ids, n_ids, 0, &out, &out_len, NULL);
        CHECK(rc == 0 && out_len == len && !memcmp(out, s, len), "1 MB of \"%s\" round trip", one[k]);
        printf("1 MB of one character (\"%s\"): %zu ids in %.3f s\n", k == 1 ? "space" : one[k], n_ids, secs);
        free(out);
        free(ids);
    }
    /* 10 MB of mixed text: the 100 KB case repeated */
    size_t cn;
    char *cases = slurp(shared_path("reference/tokenizer_cases.jsonl"), &cn);
    char *line = cases ? strstr(cases, "{\"id\":\"big_100kb_mixed\"") : NULL;
    tok_bytes text = {0};
    if (line && !tok_json_get_string(line, strcspn(line, "\n"), "text", &text)) {
        size_t len = 0;
        while (len + text.n <= 10 * n) memcpy(s + len, text.p, text.n), len += text.n;
        double t0 = now();
        int rc = nvlm_tokenizer_encode(t, s, len, &ids, &n_ids, NULL);
        double secs = now() - t0;
        CHECK(rc == 0 && n_ids > len / 8, "10 MB encode");
        printf("10 MB mixed text: %zu ids in %.3f s\n", n_ids, secs);
        free(ids);
    } else
        CHECK(0, "big_100kb_mixed case not found");
    free(text.p);
    free(cases);
    free(s);
}

static void expect_fail(const char *dir, int code, const char *what) {
    nvlm_err err = {0};
    nvlm_tokenizer *t = (nvlm_tokenizer *)1;
    int rc = nvlm_tokenizer_load(dir, &t, &err);
    CHECK(rc == code && t == NULL && err.msg[0], "%s: rc %d (%s)", what, rc, err.msg);
}

static void test_errors(const char *tmp) {
    char dir[600], path[700];
    expect_fail("/nonexistent/tokenizer", NVLM_E_IO, "missing folder");
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_str(path, "{\"model\": {\"type\": \"BPE\",\n");
    expect_fail(dir, NVLM_E_FORMAT, "truncated tokenizer.json");
    write_str(path, "{\"model\": {\"type\": \"WordPiece\"}, \"decoder\": {\"type\": \"ByteLevel\"}}");
    expect_fail(dir, NVLM_E_UNSUPPORTED, "WordPiece model");
    unlink(path);
    expect_fail(dir, NVLM_E_IO, "empty folder");
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    write_str(path, "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    expect_fail(dir, NVLM_E_IO, "no merges.txt");
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    write_str(path, "#version: 0.2\na b\n");
    nvlm_err err = {0};
    nvlm_tokenizer *t = NULL;
    CHECK(nvlm_tokenizer_load(dir, &t, &err) == 0, "minimal vocab + merges: %s", err.msg);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(t && nvlm_tokenizer_encode(t, "ab", 2, &ids, &n, NULL) == 0 && n == 1 && ids[0] == 2, "minimal ab");
    free(ids);
    nvlm_tokenizer_free(t);
    write_str(path, "a b\nab\n");
    expect_fail(dir, NVLM_E_FORMAT, "bad merges line");
    write_str(path, "a c\n");
    expect_fail(dir, NVLM_E_FORMAT, "merge of unknown token");
    CHECK(nvlm_tokenizer_load(NULL, &t, NULL) == NVLM_E_INVALID_ARG, "NULL dir");
    nvlm_tokenizer_free(NULL);
}

int main(void) {
    char tmp[] = "/tmp/nvlm_tok_XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    char dir[128], from[8192], to[700];
    snprintf(dir, sizeof dir, "%s/slow", tmp);
    mkdir(dir, 0700);
    for (int i = 0; i < 3; i++) {
        snprintf(from, sizeof from, "%s/%s", shared_path("reference/tokenizer"), files[i]);
        from[sizeof from - 1] = 0;
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        CHECK(copy_file(from, to) == 0, "copying %s", from);
    }
    double secs_fast, secs_slow;
    char fast_dir[4096];
    snprintf(fast_dir, sizeof fast_dir, "%s", shared_path("reference/tokenizer"));
    nvlm_tokenizer *fast = load(fast_dir, &secs_fast), *slow = load(dir, &secs_slow);
    nvlm_tokenizer *tiny = load(shared_path("reference/tiny-tokenizer"), NULL);
    printf("load: tokenizer.json %.3f s, vocab.json + merges.txt %.3f s\n", secs_fast, secs_slow);
    if (fast) run_cases(fast, "tokenizer.json", tiny);
    if (slow) run_cases(slow, "vocab+merges", NULL);
    if (fast) {
        test_api(fast);
        test_roundtrip(fast);
        test_invalid_utf8(fast);
        test_large(fast);
    }
    if (tiny) test_tiny(tiny);
    test_pretok_vs_onig();
    test_errors(tmp);
    nvlm_tokenizer_free(fast);
    nvlm_tokenizer_free(slow);
    nvlm_tokenizer_free(tiny);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    return check_done("test_tokenizer");
}
