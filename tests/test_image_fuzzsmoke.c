/* test_image_fuzzsmoke - a short, deterministic mutation run over every decoder: the small
 * reference images (and the bad ones) get random byte flips, "interesting" 16/32-bit values
 * written over header fields, inserted and deleted bytes, and truncations, and go through
 * nvlm_image_decode (and now and then nvlm_image_tile). Nothing may crash or read out of
 * bounds (run under ASan+UBSan in the suite); every success must be a well-formed image and
 * every failure an error with a message. Every mutated PNG is also decoded with libpng only
 * and must give the same result as the default decode (which takes the PNG fast path when
 * it can; every other input), and now and then the tiles are also made on two threads and must be the same.
 * The real fuzzing is fuzz/fuzz_image*.c. */
#include "check.h"
#include "nvlm.h"
#include "image/decode.h"
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SEED_BYTES 24000
#define ITERATIONS 10000

typedef struct seed {
    char name[256];
    uint8_t *data;
    size_t len;
} seed;

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static int cmp_seed(const void *a, const void *b) {
    return strcmp(((const seed *)a)->name, ((const seed *)b)->name);
}

static int load_dir(const char *rel, seed *seeds, int n, int max) {
    DIR *d = opendir(shared_path(rel));
    if (!d) return n;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", shared_path(rel));
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.') continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        uint8_t *buf = malloc(MAX_SEED_BYTES + 1);
        size_t len = fread(buf, 1, MAX_SEED_BYTES + 1, f);
        fclose(f);
        if (len == 0 || len > MAX_SEED_BYTES) {
            free(buf);
            continue;
        }
        snprintf(seeds[n].name, sizeof seeds[n].name, "%s", e->d_name);
        seeds[n].data = buf;
        seeds[n].len = len;
        n++;
    }
    closedir(d);
    return n;
}

/* One mutation of buf (capacity cap), returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
    static const uint32_t interesting[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff,
                                           0x10000, 0x7fffffff, 0x80000000u, 0xffffffffu, 448, 65535};
    int n = 1 + (int)(rnd() % 3);
    for (int i = 0; i < n && len > 0; i++) {
        /* header bytes are where the interesting branches are: favour the first 64 */
        size_t pos = (rnd() & 1) ? rnd() % (len < 64 ? len : 64) : rnd() % len;
        switch (rnd() % 10) {
        case 0: buf[pos] ^= (uint8_t)(1u << (rnd() % 8)); break;
        case 1: buf[pos] = (uint8_t)rnd(); break;
        case 2: { /* interesting value, either byte order */
            uint32_t v = interesting[rnd() % (sizeof interesting / sizeof interesting[0])];
            int w = (rnd() & 1) ? 2 : 4;
            for (int k = 0; k < w && pos + (size_t)k < len; k++)
                buf[pos + (size_t)k] = (rnd() & 1) ? (uint8_t)(v >> (8 * k)) : (uint8_t)(v >> (8 * (w - 1 - k)));
            break;
        }
        case 3: /* truncate (rarely: most inputs would just be refused) */
            if (rnd() % 4 == 0) len = pos + 1;
            break;
        case 4:                       /* delete a run */
            if (len > 2) {
                size_t k = 1 + rnd() % 16;
                if (pos + k > len) k = len - pos;
                memmove(buf + pos, buf + pos + k, len - pos - k);
                len -= k;
            }
            break;
        case 5: /* insert a run */
            if (len + 16 <= cap) {
                size_t k = 1 + rnd() % 16;
                memmove(buf + pos + k, buf + pos, len - pos);
                memset(buf + pos, (rnd() & 1) ? 0xff : 0, k);
                len += k;
            }
            break;
        case 6: case 7: case 8: case 9: { /* copy a chunk from elsewhere */
            size_t from = rnd() % len, k = 1 + rnd() % 32;
            if (from + k > len) k = len - from;
            if (pos + k > len) k = len - pos;
            memmove(buf + pos, buf + from, k);
            break;
        }
        }
    }
    return len;
}

int main(void) {
    enum { MAX_SEEDS = 256 };
    static seed seeds[MAX_SEEDS];
    int n = load_dir("reference/images", seeds, 0, MAX_SEEDS);
    n = load_dir("reference/images/bad", seeds, n, MAX_SEEDS);
    qsort(seeds, (size_t)n, sizeof seeds[0], cmp_seed); /* readdir order is not stable */
    CHECK(n >= 40, "only %d seed files", n);
    if (n == 0) return check_done("test_image_fuzzsmoke");

    nvlm_image_limits lim = {1u << 22}; /* mutated headers may ask for anything */
    size_t cap = MAX_SEED_BYTES + 4096;
    uint8_t *buf = malloc(cap);
    int ok = 0, refused = 0, bad_success = 0, bad_failure = 0, tiled = 0;
    int png_compared = 0, png_fast = 0, png_differ = 0, mt_differ = 0;
    time_t start = time(NULL);
    int it = 0;
    for (; it < ITERATIONS; it++) {
        const seed *s = &seeds[rnd() % (uint32_t)n];
        memcpy(buf, s->data, s->len);
        size_t len = mutate(buf, s->len, cap);
        nvlm_image img;
        nvlm_err err = {0, ""};
        int rc = nvlm_image_decode(buf, len, &lim, &img, &err);
        if ((it & 1) == 0 && img_sniff(buf, len) == IMG_PNG) { /* again, libpng only */
            img_ctl fast = {0}, slow = {0};
            fast.max_pixels = slow.max_pixels = lim.max_pixels;
            slow.png_libpng_only = 1;
            nvlm_image a, b;
            nvlm_err ea = {0, ""}, eb = {0, ""};
            int ra = img_decode_ctl(IMG_PNG, buf, len, &fast, &a, &ea);
            int rb = img_decode_ctl(IMG_PNG, buf, len, &slow, &b, &eb);
            int same = ra == rb && ra == rc &&
                       (ra != NVLM_OK ? !strcmp(ea.msg, eb.msg)
                                      : a.width == b.width && a.height == b.height &&
                                            !memcmp(a.rgb, b.rgb, (size_t)a.width * a.height * 3));
            if (!same) {
                png_differ++;
                fprintf(stderr, "PNG mutation %d of %s: fast %d '%s', libpng %d '%s'\n", it,
                        s->name, ra, ea.msg, rb, eb.msg);
            }
            png_compared++;
            png_fast += fast.png_fast_taken;
            nvlm_image_free(&a);
            nvlm_image_free(&b);
        }
        if (rc == NVLM_OK) {
            ok++;
            if (img.width <= 0 || img.height <= 0 || !img.rgb ||
                (uint64_t)img.width * (uint64_t)img.height > lim.max_pixels) {
                bad_success++;
            } else {
                /* touch every byte: ASan checks the buffer really is w*h*3 */
                unsigned sum = 0;
                for (size_t i = 0, m = (size_t)img.width * img.height * 3; i < m; i++) sum += img.rgb[i];
                (void)sum;
                if (it % 64 == 0 && (uint64_t)img.width * img.height <= 1u << 20) {
                    nvlm_tiles t;
                    if (nvlm_image_tile(&img, 448, 1, 6, 1, &t, &err) == NVLM_OK) {
                        tiled++;
                        nvlm_tile_batch b;
                        nvlm_tile_opts o = {0};
                        o.threads = 2;
                        if (nvlm_images_tile(&img, 1, &o, &b, &err) != NVLM_OK ||
                            b.total_tiles != t.num_tiles ||
                            memcmp(b.rgb, t.rgb, (size_t)t.num_tiles * 448 * 448 * 3))
                            mt_differ++;
                        nvlm_tile_batch_free(&b);
                    }
                    nvlm_tiles_free(&t);
                }
            }
            nvlm_image_free(&img);
        } else {
            refused++;
            if (rc != err.code || !err.msg[0] || img.rgb || img.width || img.height) bad_failure++;
        }
        if (time(NULL) - start > 60) break; /* a slow machine: stop early rather than time out */
    }
    CHECK(bad_success == 0, "%d decodes returned a malformed image", bad_success);
    CHECK(bad_failure == 0, "%d failures without a proper error", bad_failure);
    CHECK(png_differ == 0, "%d of %d mutated PNGs decode differently fast and libpng-only",
          png_differ, png_compared);
    CHECK(png_fast > 50, "the PNG fast path took only %d mutated PNGs", png_fast);
    CHECK(mt_differ == 0, "%d images tile differently on two threads", mt_differ);
    CHECK(ok > it / 20 && refused > it / 20, "mutations should both pass and fail (%d ok, %d refused)", ok,
          refused);
    printf("test_image_fuzzsmoke: %d seeds, %d mutated inputs: %d decoded (%d tiled), %d refused; "
           "%d PNGs compared with libpng only (%d by the fast path)\n", n, it, ok, tiled, refused,
           png_compared, png_fast);
    free(buf);
    for (int i = 0; i < n; i++) free(seeds[i].data);
    return check_done("test_image_fuzzsmoke");
}
