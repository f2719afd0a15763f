/* fuzz_tokenizer.c - libFuzzer target for the tokenizer: encode arbitrary bytes, decode
 * arbitrary ids (one-shot and streaming), the JSON line reader of `nvlm tokenize`, and
 * loading an arbitrary tokenizer.json / merges.txt. Build: fuzz/build.sh tokenizer.
 * NVLM_TOKENIZER names the tokenizer folder (default tests/data/reference/tiny-tokenizer). */
#include "nvlm.h"
#include "tokenizer/tok_json.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static nvlm_tokenizer *tok; /* the harness's own state, loaded once */

static void check_encode(const uint8_t *data, size_t size) {
    int32_t *ids;
    size_t n;
    if (nvlm_tokenizer_encode(tok, (const char *)data, size, &ids, &n, NULL)) abort();
    char *text;
    size_t len;
    if (nvlm_tokenizer_decode(tok, ids, n, 0, &text, &len, NULL)) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= nvlm_tokenizer_size(tok)) abort();
    free(text);
    free(ids);
}

static void check_decode(const uint8_t *data, size_t size) {
    size_t n = size / 4;
    int32_t *ids = malloc(n * 4 + 4);
    memcpy(ids, data, n * 4);
    for (int skip = 0; skip < 2; skip++) {
        char *text, *piece;
        size_t len, plen, total = 0;
        if (nvlm_tokenizer_decode(tok, ids, n, skip, &text, &len, NULL)) abort();
        nvlm_detok *d;
        if (nvlm_detok_new(tok, skip, &d, NULL)) abort();
        for (size_t i = 0; i <= n; i++) {
            int rc = i < n ? nvlm_detok_push(d, ids[i], &piece, &plen, NULL) : nvlm_detok_flush(d, &piece, &plen, NULL);
            if (rc || total + plen > len || memcmp(text + total, piece, plen)) abort(); /* stream == one shot */
            total += plen;
            free(piece);
        }
        if (total != len) abort();
        nvlm_detok_free(d);
        free(text);
    }
    free(ids);
}

static void check_load(const uint8_t *data, size_t size, const char *name) {
    char dir[] = "/tmp/fuzz_tok_XXXXXX", path[64];
    if (!mkdtemp(dir)) return;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, size, f);
        fclose(f);
    }
    if (!strcmp(name, "merges.txt")) { /* with a small vocabulary */
        char vpath[64];
        snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
        FILE *v = fopen(vpath, "wb");
        if (v) {
            fputs("{\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120\": 3, \"\\u0120a\": 4}", v);
            fclose(v);
        }
        nvlm_tokenizer *t = NULL;
        nvlm_err err;
        if (!nvlm_tokenizer_load(dir, &t, &err)) check_encode((const uint8_t *)"ab a b", 6);
        nvlm_tokenizer_free(t);
        unlink(vpath);
    } else {
        nvlm_tokenizer *t = NULL;
        nvlm_err err;
        nvlm_tokenizer_load(dir, &t, &err);
        nvlm_tokenizer_free(t);
    }
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) {
        const char *dir = getenv("NVLM_TOKENIZER");
        if (nvlm_tokenizer_load(dir ? dir : "tests/data/reference/tiny-tokenizer", &tok, NULL)) abort();
    }
    if (size == 0) return 0;
    switch (data[0] % 8) {
    case 0: check_decode(data + 1, size - 1); break;
    case 1: {
        tok_bytes out = {0};
        tok_json_get_string((const char *)data + 1, size - 1, "text", &out);
        free(out.p);
        break;
    }
    case 2: check_load(data + 1, size - 1, "tokenizer.json"); break;
    case 3: check_load(data + 1, size - 1, "merges.txt"); break;
    default: check_encode(data + 1, size - 1);
    }
    return 0;
}
