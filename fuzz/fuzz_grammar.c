/* libFuzzer target: the JSON Schema compiler and the byte matcher. Input: a schema, a NUL, then
 * text. The schema either compiles or is refused with a message; the text is fed byte by byte
 * (and to json_object's grammar); whenever a grammar accepts the whole text, cJSON must parse it
 * (every sentence of every grammar is JSON). */
#include "grammar/grammar.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void feed(const nvlm_grammar *g, const uint8_t *text, size_t n) {
    gmatch m;
    if (gm_init(&m, g)) return;
    if (!gm_start(&m)) {
        size_t i = 0;
        while (i < n && gm_feed(&m, text + i, 1) == 0) i++;
        if (i == n && m.cur.accept) {
            cJSON *v = cJSON_ParseWithLength((const char *)text, n);
            if (!v) __builtin_trap();
            cJSON_Delete(v);
        }
    }
    gm_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    const uint8_t *nul = memchr(data, 0, len);
    size_t slen = nul ? (size_t)(nul - data) : len;
    const uint8_t *text = nul ? nul + 1 : data + len;
    size_t tlen = nul ? len - slen - 1 : 0;
    nvlm_grammar *g = NULL;
    nvlm_err err = {0};
    if (nvlm_grammar_from_json_schema((const char *)data, slen, &g, &err) == 0) {
        feed(g, text, tlen);
        nvlm_grammar_free(g);
    } else if (!err.msg[0]) {
        __builtin_trap(); /* a refusal always says why */
    }
    if (nvlm_grammar_json_object(&g, &err) == 0) {
        feed(g, text, tlen);
        nvlm_grammar_free(g);
    }
    return 0;
}
