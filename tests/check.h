/* check.h - the tests' tiny assertion kit. Each test program counts its checks and ends with
 * check_done(), which prints "<name>: N checks passed, M failed" and returns the exit code.
 * tests/run.sh sums these lines into the suite's closing "N passed, N failed". */
#ifndef NVLM_TESTS_CHECK_H
#define NVLM_TESTS_CHECK_H
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

/* Path of a file of the test data, rel being relative to the shared folder ("reference/..."):
 * under tests/data (the copy kept in the repository, see tests/data/README.md), or under
 * $NVLM_SHARED when it is set (the shared folder that copy was made from). Relative to the
 * repository root, where tests/run.sh runs the tests. The one place tests resolve data paths. */
static inline const char *shared_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("NVLM_SHARED");
    snprintf(buf, sizeof buf, "%s/%s", root && *root ? root : "tests/data", rel);
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

/* Writes a 24-bit BMP (bottom-up rows padded to 4 bytes) of W x H RGB pixels (HWC); 0 or -1. */
static inline int check_write_bmp24(const char *path, int W, int H, const uint8_t *px) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int row = (W * 3 + 3) & ~3;
    uint32_t size = 54 + (uint32_t)row * H;
    uint8_t h[54] = {'B', 'M'};
    memcpy(h + 2, &size, 4);
    h[10] = 54, h[14] = 40;
    memcpy(h + 18, &W, 4);
    memcpy(h + 22, &H, 4);
    h[26] = 1, h[28] = 24;
    fwrite(h, 1, 54, f);
    uint8_t pad[3] = {0};
    for (int y = H - 1; y >= 0; y--) {
        for (int x = 0; x < W; x++) {
            const uint8_t *p = px + ((size_t)y * W + x) * 3;
            uint8_t bgr[3] = {p[2], p[1], p[0]};
            fwrite(bgr, 1, 3, f);
        }
        fwrite(pad, 1, (size_t)(row - W * 3), f);
    }
    return fclose(f);
}

/* Runs a printf-formatted shell command; its exit status, or -1 when it did not exit normally. */
static inline int check_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int check_sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int check_done(const char *name) {
    printf("%s: %d checks passed, %d failed\n", name, check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}
#endif
