/* tok_json.h - one string member of a one-line JSON object (escaped NULs kept, lone
 * surrogate escapes -> U+FFFD). Internal; used by `nvlm tokenize` and the tests. */
#ifndef NVLM_TOKENIZER_TOK_JSON_H
#define NVLM_TOKENIZER_TOK_JSON_H
#include "tokenizer/tok.h"
#include <stdlib.h>

/* Validates s[0..n) as one JSON object and puts the string value of its member `key` in
 * *out (NUL-terminated, length out->n). Returns 0; -1 if s is not a JSON object; -2 if it
 * has no such string member; -3 when out of memory. */
int tok_json_get_string(const char *s, size_t n, const char *key, tok_bytes *out);
#endif
