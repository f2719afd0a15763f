/* check.h - the tests' tiny assertion kit. Each test program counts its checks and ends with
 * check_done(), which prints "<name>: N checks passed, M failed" and returns the exit code.
 * tests/run.sh sums these lines into the suite's closing "N passed, N failed". */
#ifndef NVLM_TESTS_CHECK_H
#define NVLM_TESTS_CHECK_H
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 1 in a build with AddressSanitizer (gcc's or clang's spelling), where tests may do less. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

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

/* Removes a folder of plain files (a test's scratch output). */
static inline void check_rm_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static inline int check_done(const char *name) {
    printf("%s: %d checks passed, %d failed\n", name, check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}
#endif
