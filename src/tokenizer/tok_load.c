/* tok_load.c - nvlm_tokenizer_load: tokenizer.json, or vocab.json + merges.txt
 * (+ tokenizer_config.json's added_tokens_decoder). Settings other than the Qwen2 pipeline
 * (NFC, Split with the Qwen2 regex, ByteLevel, BPE) are refused with NVLM_E_UNSUPPORTED
 * rather than tokenized differently from Hugging Face. */
#include "tokenizer/tok.h"
#include "tokenizer/tok_json.h"
#include "core/err.h"
#include "core/file.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IDS (1 << 24) /* bounds allocations from a corrupt file */

static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Strings live in pools (offsets, so that the pools may grow while reading). */
typedef struct entry { uint32_t off, len; int32_t id; } entry;
typedef struct merge_src { uint32_t a, an, b, bn; } merge_src;

/* What the two file formats are read into before the tables are built. */
typedef struct spec {
    tok_bytes vpool, mpool;
    entry *vocab;
    size_t n_vocab, cap_vocab;
    merge_src *merges;
    size_t n_merges, cap_merges;
    tok_added *added;
    size_t n_added;
    int ignore_merges;
} spec;

static void spec_free(spec *s) {
    free(s->vpool.p);
    free(s->mpool.p);
    free(s->vocab);
    free(s->merges);
    for (size_t i = 0; s->added && i < s->n_added; i++) free(s->added[i].content);
    free(s->added);
}

void nvlm_tokenizer_free(nvlm_tokenizer *t) {
    if (!t) return;
    free(t->str_pool);
    free(t->str_off);
    free(t->vhash);
    free(t->merges);
    free(t->dec_pool);
    free(t->dec_off);
    free(t->kind);
    for (size_t i = 0; t->added && i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->raw_set.by_len);
    free(t->norm_set.by_len);
    tok_cache *gi = atomic_load(&t->grammar_index);
    if (gi) gi->free(gi);
    free(t);
}

/* Parses a JSON file; on a syntax error names the file and line. */
static int parse_json(const char *path, cJSON **out, nvlm_err *err) {
    char *data;
    size_t len;
    int rc = nvlm_read_file(path, 0, &data, &len, err);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!j) {
        size_t line = 1;
        for (const char *p = data; end && p < end && p < data + len; p++) line += *p == '\n';
        free(data);
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: invalid JSON near line %zu", path, line);
    }
    free(data);
    *out = j;
    return 0;
}

static int get_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MAX_IDS) || d != (double)(int32_t)d) return -1;
    *id = (int32_t)d;
    return 0;
}

static int grow(void **p, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 1024;
    void *q = realloc(*p, c * size);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* The vocabulary object {"token": id, ...} at text[0..n), read without building a tree
 * (151k members: a cJSON tree would cost most of the load time). */
static int read_vocab_span(const char *path, const char *text, size_t n, spec *s, nvlm_err *err) {
    const char *p = tok_json_ws(text, text + n), *e = text + n;
    int nomem = 0;
    if (p >= e || *p != '{') return nvlm_fail(err, NVLM_E_FORMAT, "%s: vocab is not an object", path);
    p = tok_json_ws(p + 1, e);
    if (p < e && *p == '}') return 0;
    while (p) {
        if (grow((void **)&s->vocab, &s->cap_vocab, s->n_vocab, sizeof *s->vocab)) nomem = 1;
        size_t off = s->vpool.n;
        if (!nomem) p = tok_json_str(p, e, &s->vpool, &nomem);
        if (nomem) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
        if (!p) break;
        p = tok_json_ws(p, e);
        if (p >= e || *p != ':') break;
        p = tok_json_ws(p + 1, e);
        uint64_t id = 0;
        const char *d = p;
        while (p < e && *p >= '0' && *p <= '9' && id < MAX_IDS) id = id * 10 + (uint64_t)(*p++ - '0');
        if (p == d || id >= MAX_IDS || (p < e && (*p == '.' || *p == 'e' || *p == 'E')))
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: vocab entry %zu: id is not an integer in [0, %d)", path,
                             s->n_vocab, MAX_IDS);
        s->vocab[s->n_vocab++] = (entry){(uint32_t)off, (uint32_t)(s->vpool.n - off), (int32_t)id};
        p = tok_json_ws(p, e);
        if (p < e && *p == ',') {
            p = tok_json_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}' && tok_json_ws(p + 1, e) == e) return 0;
        break;
    }
    return nvlm_fail(err, NVLM_E_FORMAT, "%s: malformed vocab near entry %zu", path, s->n_vocab);
}

/* "a b" (the legacy string form): exactly one space, both parts non-empty. */
static int split_merge(const char *line, size_t n, spec *s) {
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
        return -1;
    if (grow((void **)&s->merges, &s->cap_merges, s->n_merges, sizeof *s->merges)) return -2;
    uint32_t off = (uint32_t)s->mpool.n;
    if (tok_bytes_put(&s->mpool, line, n)) return -2;
    uint32_t an = (uint32_t)(sp - line);
    s->merges[s->n_merges++] = (merge_src){off, an, off + an + 1, (uint32_t)n - an - 1};
    return 0;
}

/* The merges array at text[0..n): "a b" strings or ["a", "b"] pairs. */
static int read_merges_span(const char *path, const char *text, size_t n, spec *s, nvlm_err *err) {
    const char *p = tok_json_ws(text, text + n), *e = text + n;
    tok_bytes tmp = {0};
    int nomem = 0, rc = 0;
    if (p >= e || *p != '[') return nvlm_fail(err, NVLM_E_FORMAT, "%s: model.merges is not an array", path);
    p = tok_json_ws(p + 1, e);
    if (p < e && *p == ']') return 0;
    while (p && !rc) {
        tmp.n = 0;
        if (p < e && *p == '[') { /* ["a", "b"]: kept as "a b" when neither part has a space */
            p = tok_json_str(tok_json_ws(p + 1, e), e, &tmp, &nomem);
            size_t an = tmp.n;
            if (p) p = tok_json_ws(p, e);
            if (p && p < e && *p == ',' && !tok_bytes_put(&tmp, " ", 1))
                p = tok_json_str(tok_json_ws(p + 1, e), e, &tmp, &nomem);
            else
                p = NULL;
            if (p) p = tok_json_ws(p, e);
            if (!p || p >= e || *p != ']' || memchr(tmp.p, ' ', an) != NULL) break;
            p++;
        } else
            p = tok_json_str(p, e, &tmp, &nomem);
        if (nomem) rc = -2;
        if (!p || rc) break;
        rc = split_merge((const char *)tmp.p, tmp.n, s);
        p = tok_json_ws(p, e);
        if (p < e && *p == ',') {
            p = tok_json_ws(p + 1, e);
            continue;
        }
        if (!rc && p < e && *p == ']' && tok_json_ws(p + 1, e) == e) {
            free(tmp.p);
            return 0;
        }
        break;
    }
    free(tmp.p);
    if (rc == -2 || nomem) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
    return nvlm_fail(err, NVLM_E_FORMAT, "%s: model.merges[%zu] is not \"a b\" or [\"a\", \"b\"]", path,
                     s->n_merges);
}

static int flag(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* One added token, from tokenizer.json's added_tokens or the config's added_tokens_decoder. */
static int read_added(const char *path, const cJSON *o, int32_t id, spec *s, nvlm_err *err) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!cJSON_IsString(c) || !*c->valuestring)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: added token %d has no content", path, id);
    if (flag(o, "lstrip", 0) || flag(o, "rstrip", 0) || flag(o, "single_word", 0))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: added token \"%.64s\": lstrip/rstrip/single_word not supported",
                         path, c->valuestring);
    tok_added *a = &s->added[s->n_added];
    a->content = strdup(c->valuestring);
    if (!a->content) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
    a->len = strlen(a->content);
    a->id = id;
    a->special = (uint8_t)flag(o, "special", 0);
    a->normalized = (uint8_t)flag(o, "normalized", !a->special);
    s->n_added++;
    return 0;
}

static const char *type_of(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

static int is_type(const cJSON *o, const char *type) { return !strcmp(type_of(o), type); }

/* The parts of tokenizer.json around the model must be the Qwen2 pipeline. */
static int check_pipeline(const char *path, const cJSON *root, nvlm_err *err) {
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm) && !is_type(norm, "NFC"))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: normalizer \"%s\" not supported (NFC only)", path, type_of(norm));
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    const cJSON *split = cJSON_GetArrayItem(list, 0), *bl = cJSON_GetArrayItem(list, 1);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    int ok = is_type(pre, "Sequence") && cJSON_GetArraySize(list) == 2 && is_type(split, "Split") &&
             cJSON_IsString(pat) && !strcmp(pat->valuestring, QWEN2_PATTERN) && cJSON_IsString(beh) &&
             !strcmp(beh->valuestring, "Isolated") && !flag(split, "invert", 0) && is_type(bl, "ByteLevel") &&
             !flag(bl, "add_prefix_space", 0) && !flag(bl, "use_regex", 1);
    if (!ok)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED,
                         "%s: pre_tokenizer is not Qwen2's Sequence[Split(regex, Isolated), ByteLevel]", path);
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!is_type(dec, "ByteLevel"))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: decoder \"%s\" not supported (ByteLevel only)", path, type_of(dec));
    return 0;
}

static int check_model(const char *path, const cJSON *model, spec *s, nvlm_err *err) {
    if (!is_type(model, "BPE"))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: model type \"%s\" not supported (BPE only)", path, type_of(model));
    const char *empty_keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, empty_keys[k]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !*v->valuestring))
            return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: model.%s not supported", path, empty_keys[k]);
    }
    if (flag(model, "byte_fallback", 0))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: model.byte_fallback not supported", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: model.dropout not supported", path);
    s->ignore_merges = flag(model, "ignore_merges", 0);
    return 0;
}

/* The settings and added tokens, from the cJSON tree of tokenizer.json without its vocab
 * and merges (read separately). */
static int read_tokenizer_json(const char *path, cJSON *root, spec *s, nvlm_err *err) {
    int rc = check_pipeline(path, root, err);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!rc) rc = check_model(path, model, s, err);
    if (rc) return rc;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: added_tokens is not an array", path);
    s->added = calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *s->added);
    if (!s->added) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
    size_t k = 0;
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next, k++) {
        int32_t id;
        if (get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id))
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: added_tokens[%zu]: bad id", path, k);
        if ((rc = read_added(path, e, id, s, err))) return rc;
    }
    return 0;
}

/* merges.txt: one "a b" per line, rank = order; lines starting "#version" are headers (as
 * Hugging Face's reader skips them); lines end in \n or \r\n; the final newline ends the
 * last line. */
static int read_merges_txt(const char *path, const char *data, size_t len, spec *s, nvlm_err *err) {
    size_t lineno = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t e = nl ? (size_t)(nl - data) : len, n = e - i;
        lineno++;
        if (n && data[i + n - 1] == '\r') n--;
        if (!(n >= 8 && !memcmp(data + i, "#version", 8))) {
            int rc = split_merge(data + i, n, s);
            if (rc == -2) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
            if (rc) return nvlm_fail(err, NVLM_E_FORMAT, "%s: line %zu is not \"a b\"", path, lineno);
        }
        i = e + 1;
    }
    return 0;
}

static int read_config_added(const char *path, cJSON *cfg, spec *s, nvlm_err *err) {
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    if (!dec || cJSON_IsNull(dec)) return 0;
    if (!cJSON_IsObject(dec))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: added_tokens_decoder is not an object", path);
    s->added = calloc((size_t)cJSON_GetArraySize(dec) + 1, sizeof *s->added);
    if (!s->added) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", path);
    for (const cJSON *e = dec->child; e; e = e->next) {
        char *end;
        long id = strtol(e->string, &end, 10);
        if (*end || end == e->string || id < 0 || id >= MAX_IDS)
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: added_tokens_decoder key \"%.32s\" is not an id", path, e->string);
        int rc = read_added(path, e, (int32_t)id, s, err);
        if (rc) return rc;
    }
    return 0;
}

/* Hashes of merge r's parts and result; the result's bytes go to buf (NULL if too long). */
enum { MERGE_BUF = 1024, AHEAD = 8 };
typedef struct merge_hash { uint64_t a, b, c; int ok; } merge_hash;

static void hash_merge(const nvlm_tokenizer *t, const spec *s, size_t r, merge_hash *h) {
    const merge_src *m = &s->merges[r];
    const char *ma = (const char *)s->mpool.p + m->a;
    h->a = tok_hash_str(ma, m->an);
    h->b = tok_hash_str(ma + m->an + 1, m->bn);
    /* "a b" is stored contiguously: the result "ab" hashes as a, then b */
    uint64_t c = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < m->an + m->bn + 1; i++)
        if (i != m->an) c = (c ^ (uint8_t)ma[i]) * 0x100000001b3ull;
    h->c = c ^ (c >> 29);
    h->ok = m->an + m->bn <= MERGE_BUF && m->b == m->a + m->an + 1;
    tok_vocab_prefetch(t, h->a);
    tok_vocab_prefetch(t, h->b);
    tok_vocab_prefetch(t, h->c);
}

static int resolve_one(nvlm_tokenizer *t, const spec *s, size_t k, const merge_hash *h, char *buf,
                       const char *src, nvlm_err *err);

/* Fills the merge table: (id of a, id of b) -> (rank, id of ab). Hash lookups run AHEAD
 * merges behind their prefetches: the table is larger than the caches. */
static int resolve_merges(nvlm_tokenizer *t, const spec *s, const char *src, nvlm_err *err) {
    merge_hash hs[AHEAD];
    char buf[MERGE_BUF];
    tok_merge *table = t->merges; /* resolve into a plain array first, then hash it */
    t->merges = malloc((s->n_merges + 1) * sizeof *t->merges);
    if (!t->merges) {
        t->merges = table;
        return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", src), -1;
    }
    for (size_t r = 0; r < s->n_merges + AHEAD; r++) { /* slot r % AHEAD: merge r - AHEAD, then r */
        if (r >= AHEAD && resolve_one(t, s, r - AHEAD, &hs[r % AHEAD], buf, src, err)) {
            free(t->merges);
            t->merges = table;
            return -1;
        }
        if (r < s->n_merges) hash_merge(t, s, r, &hs[r % AHEAD]);
    }
    tok_merge *staged = t->merges;
    t->merges = table;
    for (size_t r = 0; r < s->n_merges; r++) {
        if (r + AHEAD < s->n_merges) tok_merges_prefetch(t, staged[r + AHEAD].key);
        tok_merges_put_key(t, staged[r].key, staged[r].rank, staged[r].id);
    }
    free(staged);
    return 0;
}

static int resolve_one(nvlm_tokenizer *t, const spec *s, size_t k, const merge_hash *h, char *buf,
                       const char *src, nvlm_err *err) {
    const merge_src *m = &s->merges[k];
    const char *ma = (const char *)s->mpool.p + m->a, *mb = (const char *)s->mpool.p + m->b;
    int32_t a = tok_vocab_find_h(t, ma, m->an, h->a), b = tok_vocab_find_h(t, mb, m->bn, h->b), c = -1;
    if (a >= 0 && b >= 0 && h->ok) {
        memcpy(buf, ma, m->an);
        memcpy(buf + m->an, mb, m->bn);
        c = tok_vocab_find_h(t, buf, m->an + m->bn, h->c);
    }
    if (c < 0) {
        nvlm_fail(err, NVLM_E_FORMAT, "%s: merge %zu (\"%.*s %.*s\") uses or makes a token not in the vocabulary",
                  src, k + 1, (int)(m->an > 64 ? 64 : m->an), ma, (int)(m->bn > 64 ? 64 : m->bn), mb);
        return -1;
    }
    t->merges[k] = (tok_merge){tok_merge_key(a, b), (uint32_t)k, c}; /* staged, see resolve_merges */
    return 0;
}

/* Builds the tables from what was read; names `src` in errors. */
static int build(nvlm_tokenizer *t, const spec *s, const char *src, nvlm_err *err) {
    size_t n_ids = 0, bytes = 0;
    for (size_t i = 0; i < s->n_vocab; i++) {
        if ((size_t)s->vocab[i].id >= n_ids) n_ids = (size_t)s->vocab[i].id + 1;
        bytes += s->vocab[i].len;
    }
    for (size_t i = 0; i < s->n_added; i++) {
        if ((size_t)s->added[i].id >= n_ids) n_ids = (size_t)s->added[i].id + 1;
        bytes += s->added[i].len;
    }
    if (bytes >= UINT32_MAX) return nvlm_fail(err, NVLM_E_LIMIT, "%s: vocabulary too large", src);
    t->n_ids = n_ids;
    t->n_vocab = s->n_vocab;
    t->kind = calloc(n_ids + 1, 1);
    t->str_off = calloc(n_ids + 1, sizeof *t->str_off);
    const char **str = calloc(n_ids + 1, sizeof *str);
    t->str_pool = malloc(bytes + 1);
    if (!t->kind || !t->str_off || !str || !t->str_pool) {
        free(str);
        return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", src);
    }
    for (size_t i = 0; i < s->n_vocab; i++) {
        const entry *e = &s->vocab[i];
        if (t->kind[e->id]) {
            free(str);
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: vocabulary id %d appears twice", src, e->id);
        }
        t->kind[e->id] = 1, str[e->id] = (const char *)s->vpool.p + e->off, t->str_off[e->id] = e->len;
    }
    for (size_t i = 0; i < s->n_added; i++) { /* an added token names its id's text */
        const tok_added *a = &s->added[i];
        t->kind[a->id] = a->special ? 3 : 2, str[a->id] = a->content, t->str_off[a->id] = (uint32_t)a->len;
    }
    uint32_t off = 0;
    for (size_t id = 0; id <= n_ids; id++) {
        uint32_t n = id < n_ids ? t->str_off[id] : 0;
        t->str_off[id] = off;
        if (n) memcpy(t->str_pool + off, str[id], n);
        off += n;
    }
    free(str);
    if (tok_vocab_index(t) || tok_merges_alloc(t, s->n_merges))
        return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", src);
    if (resolve_merges(t, s, src, err)) return NVLM_E_FORMAT;
    t->ignore_merges = s->ignore_merges;
    /* move the added tokens (content already malloc'ed) into the tokenizer */
    t->added = calloc(s->n_added + 1, sizeof *t->added);
    if (!t->added) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", src);
    for (size_t i = 0; i < s->n_added; i++) {
        t->added[i] = s->added[i];
        t->added[i].content = strdup(s->added[i].content);
        if (!t->added[i].content) return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory", src);
        t->n_added++;
    }
    return tok_finish(t, err);
}

/* Reads tokenizer.json: vocab and merges with the streaming reader, the rest (a few KB once
 * those two are cut out) with cJSON. */
static int load_json(const char *dir, nvlm_tokenizer *t, nvlm_err *err) {
    static const char *const root_keys[] = {"model"}, *const model_keys[] = {"vocab", "merges"};
    char *path = nvlm_path_join(dir, "tokenizer.json"), *data = NULL, *rest = NULL;
    size_t len = 0, mb, me, vb[2] = {SIZE_MAX, SIZE_MAX}, ve[2];
    cJSON *root = NULL;
    spec s = {0};
    int rc = path ? nvlm_read_file(path, 0, &data, &len, err) : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc && tok_json_find_keys(data, len, root_keys, 1, &mb, &me))
        rc = parse_json(path, &root, err); /* names the line of the syntax error */
    if (!rc && !root && mb != SIZE_MAX && !tok_json_find_keys(data + mb, me - mb, model_keys, 2, vb, ve) &&
        vb[0] != SIZE_MAX && vb[1] != SIZE_MAX) {
        /* parse the document with "vocab": {} and "merges": [] */
        for (int k = 0; k < 2; k++) vb[k] += mb, ve[k] += mb;
        int lo = vb[0] > vb[1];
        size_t k = 0, b1 = vb[lo], e1 = ve[lo], b2 = vb[!lo], e2 = ve[!lo];
        if (!(rest = malloc(len + 8))) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        if (!rc) {
            memcpy(rest + k, data, b1), k += b1;
            memcpy(rest + k, data[b1] == '{' ? "{}" : "[]", 2), k += 2;
            memcpy(rest + k, data + e1, b2 - e1), k += b2 - e1;
            memcpy(rest + k, data[b2] == '{' ? "{}" : "[]", 2), k += 2;
            memcpy(rest + k, data + e2, len - e2), k += len - e2;
            root = cJSON_ParseWithLength(rest, k);
        }
    } else if (!rc && !root)
        rc = parse_json(path, &root, err); /* no vocab or merges: small, and the checks say what is wrong */
    if (!rc && !root) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: invalid JSON", path);
    if (!rc) rc = read_tokenizer_json(path, root, &s, err);
    if (!rc && (vb[0] == SIZE_MAX || vb[1] == SIZE_MAX))
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: model has no vocab or no merges", path);
    if (!rc) rc = read_vocab_span(path, data + vb[0], ve[0] - vb[0], &s, err);
    if (!rc) rc = read_merges_span(path, data + vb[1], ve[1] - vb[1], &s, err);
    if (!rc) rc = build(t, &s, path, err);
    spec_free(&s);
    cJSON_Delete(root);
    free(rest);
    free(data);
    free(path);
    return rc;
}

static int load_files(const char *dir, nvlm_tokenizer *t, nvlm_err *err) {
    char *vpath = nvlm_path_join(dir, "vocab.json"), *mpath = nvlm_path_join(dir, "merges.txt");
    char *cpath = nvlm_path_join(dir, "tokenizer_config.json");
    cJSON *cfg = NULL;
    char *vocab = NULL, *merges = NULL;
    size_t vlen = 0, mlen = 0;
    spec s = {0};
    int rc = vpath && mpath && cpath ? 0 : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc && !nvlm_file_exists(vpath))
        rc = nvlm_fail(err, NVLM_E_IO, "%s: no tokenizer.json and no vocab.json in this folder", dir);
    if (!rc) rc = nvlm_read_file(vpath, 0, &vocab, &vlen, err);
    if (!rc) rc = read_vocab_span(vpath, vocab, vlen, &s, err);
    if (!rc) rc = nvlm_read_file(mpath, 0, &merges, &mlen, err);
    if (!rc) rc = read_merges_txt(mpath, merges, mlen, &s, err);
    if (!rc && nvlm_file_exists(cpath)) {
        rc = parse_json(cpath, &cfg, err);
        if (!rc) rc = read_config_added(cpath, cfg, &s, err);
    }
    if (!rc) rc = build(t, &s, vpath, err);
    spec_free(&s);
    cJSON_Delete(cfg);
    free(vocab);
    free(merges);
    free(vpath);
    free(mpath);
    free(cpath);
    return rc;
}

int nvlm_tokenizer_load(const char *dir, nvlm_tokenizer **out, nvlm_err *err) {
    if (!dir || !out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_tokenizer_load: NULL argument");
    *out = NULL;
    nvlm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    char *json = nvlm_path_join(dir, "tokenizer.json");
    int has_json = json && nvlm_file_exists(json);
    free(json);
    int rc = has_json ? load_json(dir, t, err) : load_files(dir, t, err);
    if (rc) {
        nvlm_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
