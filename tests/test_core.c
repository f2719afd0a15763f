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
    char *p = nvlm_path_join("a/", "b");
    CHECK(p && !strcmp(p, "a/b"), "join");
    free(p);
    return check_done("test_core");
}
