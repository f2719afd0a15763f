/* check.h - the tests' tiny assertion kit. Each test program counts its checks and ends with
 * check_done(), which prints "<name>: N checks passed, M failed" and returns the exit code.
 * tests/run.sh sums these lines into the suite's closing "N passed, N failed". */
#ifndef NVLM_TESTS_CHECK_H
#define NVLM_TESTS_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_passed_, check_failed_;

#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        if (cond) {                                                                \
            check_passed_++;                                                       \
        } else {                                                                   \
            check_failed_++;                                                       \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
        }                                                                          \
    } while (0)

/* Path of a file under the shared reference folder (NVLM_SHARED, default ../shared). */
static inline const char *shared_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("NVLM_SHARED");
    snprintf(buf, sizeof buf, "%s/%s", root && *root ? root : "../shared", rel);
    return buf;
}

static inline int check_done(const char *name) {
    printf("%s: %d checks passed, %d failed\n", name, check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}
#endif
