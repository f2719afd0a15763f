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

/* Lower-level pieces, for reading large arrays and objects without a tree:
 * tok_json_ws skips white space; tok_json_skip validates and skips one value (NULL if
 * malformed); tok_json_str decodes the string literal at p into out (appending; NULL if
 * malformed, *nomem set when memory ran out). */
const char *tok_json_ws(const char *p, const char *e);
const char *tok_json_skip(const char *p, const char *e);
const char *tok_json_str(const char *p, const char *e, tok_bytes *out, int *nomem);
/* Spans [vb[k], ve[k]) of the values of members keys[k] of the object s[0..n) (the last
 * one when repeated; SIZE_MAX when absent), in one fast pass that checks the object's own
 * syntax but not the inside of its values (the caller validates what it reads). Returns 0,
 * or -1 if s is not an object. */
int tok_json_find_keys(const char *s, size_t n, const char *const *keys, int n_keys, size_t *vb, size_t *ve);
#endif
