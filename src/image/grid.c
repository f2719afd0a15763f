/* grid.c - candidate order (CPython set replay) and the grid choice. */
#include "image/grid.h"
#include "core/err.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* CPython 3.11 hash of the tuple (i, j) of small non-negative ints (Objects/tupleobject.c,
 * xxHash-based; hash(int) is the int itself). */
static uint64_t tuple2_hash(uint64_t i, uint64_t j) {
    const uint64_t P1 = 11400714785074694791ull, P2 = 14029467366897019727ull,
                   P5 = 2870177450012600261ull;
    uint64_t acc = P5, lanes[2] = {i, j};
    for (int k = 0; k < 2; k++) {
        acc += lanes[k] * P2;
        acc = (acc << 31) | (acc >> 33);
        acc *= P1;
    }
    acc += 2 ^ (P5 ^ 3527539ull);
    if (acc == UINT64_MAX) return 1546275796;
    return acc;
}

/* A CPython set of int pairs without deletions (Objects/setobject.c). */
typedef struct pyset {
    size_t mask, fill;
    uint64_t *hash;
    grid_cand *key;
    uint8_t *full;
} pyset;

enum { LINEAR_PROBES = 9, PERTURB_SHIFT = 5, SET_MINSIZE = 8 };

static int pyset_alloc(pyset *s, size_t size) {
    s->mask = size - 1;
    s->fill = 0;
    s->hash = calloc(size, sizeof *s->hash);
    s->key = calloc(size, sizeof *s->key);
    s->full = calloc(size, 1);
    return s->hash && s->key && s->full ? 0 : -1;
}

static void pyset_free(pyset *s) {
    free(s->hash);
    free(s->key);
    free(s->full);
    memset(s, 0, sizeof *s);
}

/* set_insert_clean: the key is known to be absent and the table has room. */
static void insert_clean(pyset *s, grid_cand key, uint64_t h) {
    size_t perturb = h, i = h & s->mask;
    for (;;) {
        if (!s->full[i]) break;
        int found = 0;
        if (i + LINEAR_PROBES <= s->mask) {
            for (size_t j = 1; j <= LINEAR_PROBES; j++)
                if (!s->full[i + j]) {
                    i += j;
                    found = 1;
                    break;
                }
        }
        if (found) break;
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & s->mask;
    }
    s->full[i] = 1;
    s->key[i] = key;
    s->hash[i] = h;
    s->fill++;
}

static int pyset_resize(pyset *s, size_t minused) {
    size_t size = SET_MINSIZE;
    while (size <= minused) size <<= 1;
    pyset old = *s;
    if (pyset_alloc(s, size) != 0) {
        pyset_free(s);
        *s = old;
        return -1;
    }
    for (size_t i = 0; i <= old.mask; i++)
        if (old.full[i]) insert_clean(s, old.key[i], old.hash[i]);
    pyset_free(&old);
    return 0;
}

/* set_add_entry */
static int pyset_add(pyset *s, grid_cand key) {
    uint64_t h = tuple2_hash((uint64_t)key.cols, (uint64_t)key.rows);
    size_t perturb = h, i = h & s->mask;
    for (;;) {
        size_t e = i;
        size_t probes = (i + LINEAR_PROBES <= s->mask) ? LINEAR_PROBES : 0;
        for (;;) {
            if (!s->full[e]) goto unused;
            if (s->hash[e] == h && s->key[e].cols == key.cols && s->key[e].rows == key.rows)
                return 0; /* already present */
            e++;
            if (probes-- == 0) break;
        }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & s->mask;
        continue;
    unused:
        s->full[e] = 1;
        s->key[e] = key;
        s->hash[e] = h;
        s->fill++;
        if (s->fill * 5 < s->mask * 3) return 0;
        return pyset_resize(s, s->fill > 50000 ? s->fill * 2 : s->fill * 4);
    }
}

static int cmp_area(const void *a, const void *b) {
    const grid_cand *x = a, *y = b;
    int ax = x->cols * x->rows, ay = y->cols * y->rows;
    return (ax > ay) - (ax < ay);
}

int grid_candidates(int min_num, int max_num, grid_cand **out, int *n, nvlm_err *err) {
    *out = NULL;
    *n = 0;
    if (min_num < 1 || max_num < min_num || max_num > 4096)
        return nvlm_fail(err, NVLM_E_INVALID_ARG,
                         "tiles: need 1 <= min_num <= max_num <= 4096 (got %d, %d)", min_num, max_num);
    pyset s;
    if (pyset_alloc(&s, SET_MINSIZE) != 0) {
        pyset_free(&s);
        return nvlm_fail(err, NVLM_E_NOMEM, "tiles: out of memory");
    }
    /* the generator of the published code, in its order */
    for (int m = min_num; m <= max_num; m++)
        for (int i = 1; i <= m; i++)
            for (int j = 1; j <= m; j++)
                if (i * j <= max_num && i * j >= min_num &&
                    pyset_add(&s, (grid_cand){i, j}) != 0) {
                    pyset_free(&s);
                    return nvlm_fail(err, NVLM_E_NOMEM, "tiles: out of memory");
                }
    grid_cand *c = malloc(sizeof *c * (s.fill ? s.fill : 1));
    if (!c) {
        pyset_free(&s);
        return nvlm_fail(err, NVLM_E_NOMEM, "tiles: out of memory");
    }
    int k = 0;
    for (size_t i = 0; i <= s.mask; i++)
        if (s.full[i]) c[k++] = s.key[i];
    pyset_free(&s);
    /* stable sort by area: insertion sort keeps equal areas in set order */
    for (int i = 1; i < k; i++) {
        grid_cand v = c[i];
        int j = i - 1;
        while (j >= 0 && cmp_area(&c[j], &v) > 0) {
            c[j + 1] = c[j];
            j--;
        }
        c[j + 1] = v;
    }
    *out = c;
    *n = k;
    return NVLM_OK;
}

int grid_choose(int width, int height, int tile, int min_num, int max_num, int *cols, int *rows,
                nvlm_err *err) {
    if (width <= 0 || height <= 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "tiles: empty image %dx%d", width, height);
    grid_cand *c;
    int n;
    int rc = grid_candidates(min_num, max_num, &c, &n, err);
    if (rc != NVLM_OK) return rc;
    double aspect = (double)width / (double)height;
    double best_diff = INFINITY;
    double area = (double)width * (double)height; /* exact below 2^53 */
    grid_cand best = {1, 1};
    for (int i = 0; i < n; i++) {
        double diff = fabs(aspect - (double)c[i].cols / (double)c[i].rows);
        if (diff < best_diff) {
            best_diff = diff;
            best = c[i];
        } else if (diff == best_diff &&
                   area > 0.5 * tile * tile * (double)c[i].cols * (double)c[i].rows) {
            best = c[i];
        }
    }
    free(c);
    *cols = best.cols;
    *rows = best.rows;
    return NVLM_OK;
}
