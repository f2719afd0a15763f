/* Core helpers: error formatting, file reading and mapping. */
#include "check.h"
#include "core/err.h"
#include "core/file.h"

int main(void) {
    nvlm_err err = {0};
    int rc = nvlm_fail(&err, NVLM_E_FORMAT, "bad %s at %d", "thing", 7);
    CHECK(rc == NVLM_E_FORMAT, "rc %d", rc);
    CHECK(!strcmp(err.msg, "bad thing at 7"), "msg '%s'", err.msg);
    nvlm_fail_prefix(&err, "loading %s: ", "x.json");
    CHECK(!strcmp(err.msg, "loading x.json: bad thing at 7"), "msg '%s'", err.msg);
    CHECK(nvlm_fail(NULL, NVLM_E_IO, "ignored") == NVLM_E_IO, "NULL err");

    char *data;
    size_t len;
    rc = nvlm_read_file("/nonexistent/nvlm", 0, &data, &len, &err);
    CHECK(rc == NVLM_E_IO && strstr(err.msg, "/nonexistent/nvlm"), "%s", err.msg);
    rc = nvlm_read_file("Makefile", 0, &data, &len, &err);
    CHECK(rc == 0 && len > 100 && data[len] == 0, "read Makefile");
    free(data);
    rc = nvlm_read_file("Makefile", 10, &data, &len, &err);
    CHECK(rc == NVLM_E_LIMIT, "limit rc %d", rc);

    nvlm_mapped_file mf;
    rc = nvlm_map_file("Makefile", &mf, &err);
    CHECK(rc == 0 && mf.len > 100, "map");
    nvlm_unmap_file(&mf);
    rc = nvlm_map_file(".", &mf, &err);
    CHECK(rc == NVLM_E_IO, "map dir");
    /* anonymous weight memory: from 2 MiB up aligned to a huge page (the whole range can
     * then be backed by them), writable until sealed, zeroed; freed by nvlm_unmap_file */
    const size_t sizes[] = {1, 4096, 100000, (2u << 20) - 1, 2u << 20, (5u << 20) + 123};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        uint8_t *mem;
        rc = nvlm_map_anon(sizes[i], &mf, &mem, "test", &err);
        CHECK(rc == 0 && mem && mf.data == mem && mf.len == sizes[i], "map_anon %zu", sizes[i]);
        if (rc) continue;
        CHECK(sizes[i] < (2u << 20) || (uintptr_t)mem % (2u << 20) == 0, "map_anon %zu alignment", sizes[i]);
        CHECK(mem[0] == 0 && mem[sizes[i] - 1] == 0, "map_anon %zu zeroed", sizes[i]);
        mem[sizes[i] - 1] = 2, mem[0] = 1;
        nvlm_seal_anon(&mf);
        CHECK(mf.data[0] == 1 && (sizes[i] == 1 || mf.data[sizes[i] - 1] == 2), "map_anon %zu kept", sizes[i]);
        nvlm_unmap_file(&mf);
        CHECK(mf.data == NULL && mf.len == 0, "unmap resets");
        uint8_t *w = nvlm_alloc_weights(sizes[i]);
        CHECK(w && (sizes[i] < (2u << 20) || (uintptr_t)w % (2u << 20) == 0), "alloc_weights %zu", sizes[i]);
        if (w) memset(w, 7, sizes[i]);
        free(w);
    }
    uint8_t *none;
    rc = nvlm_map_anon(0, &mf, &none, "empty", &err);
    CHECK(rc == 0 && none == NULL && mf.data == NULL && mf.len == 0, "map_anon 0");
    nvlm_unmap_file(&mf);
    CHECK(nvlm_map_anon(SIZE_MAX - 100, &mf, &none, "too big", &err) == NVLM_E_NOMEM && strstr(err.msg, "too big"), "%s", err.msg);
    CHECK(nvlm_alloc_weights(SIZE_MAX - 100) == NULL, "alloc_weights too big");
    char *p = nvlm_path_join("a/", "b");
    CHECK(p && !strcmp(p, "a/b"), "join");
    free(p);
    return check_done("test_core");
}
