/* bench_tok.c - nvlm's tokenizer: load time and encode throughput (one thread) on the
 * texts written by prepare.py. Prints one line per measure: "name value unit". */
#include "nvlm.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (b) b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Encodes every \x1e-separated text of the file, repeatedly for at least `secs`. */
static void bench_set(const nvlm_tokenizer *t, const char *dir, const char *name, double secs) {
    char path[4096];
    size_t len;
    snprintf(path, sizeof path, "%s/%s.txt", dir, name);
    char *data = slurp(path, &len);
    if (!data) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    double t0 = now(), bytes = 0;
    size_t ids_total = 0;
    int rounds = 0;
    do {
        for (char *p = data, *e; p < data + len; p = e + 1) {
            e = memchr(p, 0x1e, (size_t)(data + len - p));
            if (!e) e = data + len;
            int32_t *ids;
            size_t n;
            if (nvlm_tokenizer_encode(t, p, (size_t)(e - p), &ids, &n, NULL)) exit(1);
            ids_total += n;
            free(ids);
            bytes += (double)(e - p);
        }
        rounds++;
    } while (now() - t0 < secs);
    double dt = now() - t0;
    printf("%s %.2f MB/s (%zu ids per round, %d rounds)\n", name, bytes / dt / 1e6, ids_total / (size_t)rounds, rounds);
    free(data);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tok TOKENIZER_DIR TEXT_DIR\n");
        return 2;
    }
    double best = 1e9;
    nvlm_tokenizer *t = NULL;
    for (int i = 0; i < 5; i++) {
        nvlm_err err;
        nvlm_tokenizer_free(t);
        double t0 = now();
        if (nvlm_tokenizer_load(argv[1], &t, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("load %.1f ms (best of 5)\n", best * 1e3);
    const char *sets[] = {"prose", "code", "cjk", "doc1mb"};
    for (int i = 0; i < 4; i++) bench_set(t, argv[2], sets[i], 2.0);
    nvlm_tokenizer_free(t);
    return 0;
}
