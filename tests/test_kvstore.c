/* The engine's paged KV store (src/engine/kv.c): pages, fork with shared prefix pages, copy on
 * write of a shared page, truncate, free, reference counts, the size bound (NVLM_E_BUSY, the
 * sequence unchanged), F16 elements. */
#include "check.h"
#include "engine/kv.h"

enum { L = 3, D = 4, P = 4 };

/* Writes a recognisable value into every element of positions [from, to) of seq. */
static void fill(nvlm_kvstore *kv, int seq, int from, int to, float base) {
    for (int p = from; p < to; p++)
        for (int l = 0; l < L; l++)
            for (int w = 0; w < 2; w++) {
                float *r = nvlm_kv_row(kv, seq, l, w, p);
                for (int i = 0; i < D; i++) r[i] = base + p * 100 + l * 10 + w * 5 + i * 0.5f;
            }
}

static int holds(const nvlm_kvstore *kv, int seq, int from, int to, float base) {
    for (int p = from; p < to; p++)
        for (int l = 0; l < L; l++)
            for (int w = 0; w < 2; w++) {
                const float *r = nvlm_kv_row_c(kv, seq, l, w, p);
                for (int i = 0; i < D; i++)
                    if (r[i] != base + p * 100 + l * 10 + w * 5 + i * 0.5f) return 0;
            }
    return 1;
}

static void test_fork_cow(void) {
    nvlm_err err = {0};
    nvlm_kvstore *kv = NULL;
    nvlm_kv_opts o = {.n_layers = L, .kv_dim = D, .page_tokens = P, .max_pages = 6};
    CHECK(nvlm_kvstore_new(&o, &kv, &err) == 0, "%s", err.msg);
    if (!kv) return;
    int a, b, c;
    CHECK(nvlm_kv_seq_new(kv, &a, &err) == 0 && nvlm_kv_seq_len(kv, a) == 0, "new");
    CHECK(nvlm_kv_seq_reserve(kv, a, 6, &err) == 0, "%s", err.msg);
    fill(kv, a, 0, 6, 1);
    nvlm_kv_seq_advance(kv, a, 6);
    nvlm_kv_stats st;
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.pages_used == 2 && st.pages_free == 4 && st.page_tokens == P, "2 pages for 6 positions: %zu used, %zu free",
          st.pages_used, st.pages_free);
    CHECK(st.page_bytes == sizeof(float) * 2 * L * P * D, "page bytes %zu", st.page_bytes);

    /* fork: both pages shared, none copied */
    CHECK(nvlm_kv_seq_fork(kv, a, 6, &b, &err) == 0 && nvlm_kv_seq_len(kv, b) == 6, "fork: %s", err.msg);
    int p0 = nvlm_kv_page_of(kv, a, 0), p1 = nvlm_kv_page_of(kv, a, 4);
    CHECK(nvlm_kv_page_of(kv, b, 0) == p0 && nvlm_kv_page_of(kv, b, 5) == p1, "the fork shares the pages");
    CHECK(nvlm_kv_page_refs(kv, p0) == 2 && nvlm_kv_page_refs(kv, p1) == 2, "refs %d %d", nvlm_kv_page_refs(kv, p0),
          nvlm_kv_page_refs(kv, p1));
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.pages_used == 2, "a fork takes no page: %zu", st.pages_used);

    /* writing the fork's partly filled last page copies it; the source keeps its values */
    CHECK(nvlm_kv_seq_reserve(kv, b, 1, &err) == 0, "%s", err.msg);
    int q1 = nvlm_kv_page_of(kv, b, 4);
    CHECK(q1 != p1 && nvlm_kv_page_of(kv, b, 0) == p0, "copy on write of the last page only");
    CHECK(nvlm_kv_page_refs(kv, p1) == 1 && nvlm_kv_page_refs(kv, q1) == 1 && nvlm_kv_page_refs(kv, p0) == 2, "refs after COW");
    CHECK(holds(kv, b, 0, 6, 1), "the copy holds the shared positions");
    fill(kv, b, 6, 7, 7000);
    nvlm_kv_seq_advance(kv, b, 1);
    CHECK(holds(kv, a, 0, 6, 1) && holds(kv, b, 6, 7, 7000), "the source is untouched by the fork's writes");

    /* a fork of part of a sequence: the page holding its end is shared, then copied on write */
    CHECK(nvlm_kv_seq_fork(kv, a, 5, &c, &err) == 0 && nvlm_kv_seq_len(kv, c) == 5, "partial fork");
    CHECK(nvlm_kv_page_refs(kv, p1) == 2, "partial fork shares page 1");
    CHECK(nvlm_kv_seq_reserve(kv, c, 2, &err) == 0 && nvlm_kv_page_of(kv, c, 4) != p1, "COW at position 5");
    fill(kv, c, 5, 7, 9000);
    nvlm_kv_seq_advance(kv, c, 2);
    CHECK(holds(kv, a, 0, 6, 1) && holds(kv, c, 0, 5, 1) && holds(kv, c, 5, 7, 9000), "values after the partial fork");

    /* full: a reservation past the bound fails, changing nothing */
    nvlm_kvstore_stats(kv, &st);
    size_t used = st.pages_used;
    int len = nvlm_kv_seq_len(kv, a);
    CHECK(nvlm_kv_seq_reserve(kv, a, 4 * P, &err) == NVLM_E_BUSY, "full: %d", err.code);
    CHECK(strstr(err.msg, "KV cache is full") && strstr(err.msg, "--kv-size"), "message: %s", err.msg);
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.pages_used == used && nvlm_kv_seq_len(kv, a) == len && holds(kv, a, 0, 6, 1), "nothing changed by the refusal");
    CHECK(nvlm_kv_seq_reserve(kv, a, 2, &err) == 0, "what fits still fits: %s", err.msg);

    /* truncate releases pages past the new end */
    nvlm_kv_seq_truncate(kv, c, 3);
    CHECK(nvlm_kv_seq_len(kv, c) == 3 && nvlm_kv_page_of(kv, c, 4) == -1, "truncate");
    CHECK(nvlm_kv_page_refs(kv, p0) == 3, "truncate keeps the shared first page (refs %d)", nvlm_kv_page_refs(kv, p0));
    CHECK(holds(kv, c, 0, 3, 1), "truncate keeps the values before the end");

    /* free: references go back, pages return to the free list */
    nvlm_kv_seq_free(kv, b);
    nvlm_kv_seq_free(kv, b); /* twice: ignored */
    CHECK(nvlm_kv_page_refs(kv, p0) == 2, "free drops a reference");
    nvlm_kv_seq_free(kv, a);
    nvlm_kv_seq_free(kv, c);
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.pages_used == 0 && st.pages_free == 6 && st.sequences == 0, "all free: %zu used, %zu free, %d sequences",
          st.pages_used, st.pages_free, st.sequences);
    CHECK(nvlm_kv_seq_len(kv, a) == -1 && nvlm_kv_seq_reserve(kv, a, 1, &err) == NVLM_E_INVALID_ARG, "freed ids are gone");
    CHECK(nvlm_kv_seq_fork(kv, a, 0, &b, &err) == NVLM_E_INVALID_ARG, "fork of a freed sequence");

    /* ids and pages are reused */
    CHECK(nvlm_kv_seq_new(kv, &b, &err) == 0 && b <= 2, "id reused: %d", b);
    CHECK(nvlm_kv_seq_reserve(kv, b, 6 * P, &err) == 0, "the whole store for one sequence: %s", err.msg);
    nvlm_kv_seq_advance(kv, b, 6 * P);
    CHECK(nvlm_kv_seq_fork(kv, b, 5 * P, &c, &err) == 0, "fork at a page boundary");
    CHECK(nvlm_kv_seq_reserve(kv, c, 1, &err) == NVLM_E_BUSY, "the fork's next page does not fit");
    nvlm_kvstore_free(kv);
}

static void test_f16_unbounded(void) {
    nvlm_err err = {0};
    nvlm_kvstore *kv = NULL;
    nvlm_kv_opts o = {.n_layers = 2, .kv_dim = 8, .f16 = 1};
    CHECK(nvlm_kvstore_new(&o, &kv, &err) == 0, "%s", err.msg);
    if (!kv) return;
    nvlm_kv_stats st;
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.page_tokens == 16 && st.page_bytes == 2 * 2 * 2 * 16 * 8 && nvlm_kv_is_f16(kv), "F16 pages of 16 by default");
    int s;
    CHECK(nvlm_kv_seq_new(kv, &s, &err) == 0 && nvlm_kv_seq_reserve(kv, s, 1000, &err) == 0, "unbounded: %s", err.msg);
    uint16_t *r = nvlm_kv_row(kv, s, 1, 1, 999);
    r[7] = 0x3c00;
    CHECK(((const uint16_t *)nvlm_kv_row_c(kv, s, 1, 1, 999))[7] == 0x3c00, "F16 rows");
    nvlm_kvstore_stats(kv, &st);
    CHECK(st.pages_used == 63 && st.pages_max == 0, "63 pages: %zu", st.pages_used);
    nvlm_kvstore_free(kv);
    nvlm_kv_opts bad = {.n_layers = 0, .kv_dim = 8};
    CHECK(nvlm_kvstore_new(&bad, &kv, &err) == NVLM_E_INVALID_ARG && kv == NULL, "bad shape refused");
}

int main(void) {
    test_fork_cow();
    test_f16_unbounded();
    return check_done("test_kvstore");
}
