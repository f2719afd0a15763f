/* tok_pretok.c - the Qwen2 pre-tokenizer regex, hand-coded:
 *
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*
 *   |\s*[\r\n]+|\s+(?!\S)|\s+
 *
 * with the semantics of Oniguruma (first alternative that matches, greedy with
 * backtracking), which Hugging Face tokenizers uses. Every character starts a match (each
 * is a letter, number, space or "other"), so pieces are consecutive matches. The classes
 * come from tok_unicode_tab.h, generated from Oniguruma itself; tests/test_tokenizer.c
 * checks this matcher against libonig running the pattern string of tokenizer.json. */
#include "tokenizer/tok.h"
#include "tokenizer/tok_unicode_tab.h"

unsigned tok_uc_class(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return tok_uc_blocks[tok_uc_stage1[cp >> 8]][cp & 255];
}

/* Decodes the (valid) UTF-8 character at s[i]; *end gets the offset after it. */
static inline uint32_t cp_at(const uint8_t *s, size_t i, size_t *end) {
    uint32_t c = s[i];
    if (c < 0x80) {
        *end = i + 1;
        return c;
    }
    if (c < 0xE0) {
        *end = i + 2;
        return (c & 0x1F) << 6 | (s[i + 1] & 0x3F);
    }
    if (c < 0xF0) {
        *end = i + 3;
        return (c & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
    }
    *end = i + 4;
    return (c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
           (s[i + 3] & 0x3F);
}

static inline unsigned cls(uint32_t cp) {
    return tok_uc_blocks[tok_uc_stage1[cp >> 8]][cp & 255];
}

/* Simple case folding as (?i) applies it to the contraction letters: ASCII upper case and
 * U+017F LATIN SMALL LETTER LONG S (folds to 's'). Other code points fold to none of them. */
static inline uint32_t fold(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';
    return c;
}

/* End of the run of characters from i whose class has any bit of `want` (or, if `invert`,
 * none of the bits of `want`). */
static size_t run(const uint8_t *s, size_t n, size_t i, unsigned want, int invert) {
    while (i < n) {
        size_t e;
        unsigned f = cls(cp_at(s, i, &e));
        if (((f & want) != 0) == invert) break;
        i = e;
    }
    return i;
}

static size_t run_newlines(const uint8_t *s, size_t n, size_t i) {
    while (i < n && (s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

size_t tok_pretok_next(const uint8_t *s, size_t n, size_t i) {
    size_t i1;
    uint32_t c0 = cp_at(s, i, &i1);
    unsigned f0 = cls(c0);

    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (c0 == '\'' && i1 < n) {
        size_t i2;
        uint32_t c1 = fold(cp_at(s, i1, &i2));
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i2;
        if ((c1 == 'r' || c1 == 'v' || c1 == 'l') && i2 < n) {
            size_t i3;
            uint32_t c2 = fold(cp_at(s, i2, &i3));
            if (c2 == (c1 == 'l' ? 'l' : 'e')) return i3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (f0 & TOK_L) return run(s, n, i1, TOK_L, 0);
    if (!(f0 & TOK_N) && c0 != '\r' && c0 != '\n' && i1 < n) {
        size_t i2;
        if (cls(cp_at(s, i1, &i2)) & TOK_L) return run(s, n, i2, TOK_L, 0);
    }
    /* \p{N} */
    if (f0 & TOK_N) return i1;
    /* " ?[^\s\p{L}\p{N}]+[\r\n]*" */
    size_t j = i;
    if (c0 == ' ' && i1 < n) {
        size_t e;
        if (!(cls(cp_at(s, i1, &e)) & (TOK_L | TOK_N | TOK_WS))) j = i1;
    }
    if (j != i || !(f0 & TOK_WS)) {
        j = run(s, n, j, TOK_L | TOK_N | TOK_WS, 1);
        return run_newlines(s, n, j);
    }
    /* c0 is white space. \s*[\r\n]+ : ends after the last CR/LF of the space run. */
    size_t end = i, last_nl = 0, last_start = i;
    while (end < n) {
        size_t e;
        uint32_t c = cp_at(s, end, &e);
        if (!(cls(c) & TOK_WS)) break;
        if (c == '\r' || c == '\n') last_nl = e;
        last_start = end;
        end = e;
    }
    if (last_nl) return last_nl;
    /* \s+(?!\S) : a run at the end stays whole, else it leaves its last character. */
    if (end == n || last_start == i) return end; /* (the latter is \s+ with one character) */
    return last_start;
}
