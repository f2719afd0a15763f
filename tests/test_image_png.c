/* test_image_png - the PNG fast path (libdeflate + own unfiltering) against the libpng path:
 * every PNG of the reference set and many variants of each is decoded both ways, and the
 * two must agree exactly: same status, same message, same size, same pixels. Variants:
 * the IDAT data re-cut into chunks of other sizes (the fast path must then still be taken),
 * truncations inside and around the image data, damaged IDAT CRCs, zlib headers and
 * checksums, filter bytes, data after the zlib stream, chunks between IDATs, and random
 * byte mutations. Also the unfilter kernels against the byte-by-byte definition. */
#include "check.h"
#include "image/decode.h"
#include "image/png_fast.h"
#include <dirent.h>
/* Files above this size get only a few variants (fewer under ASan, where decoding is slow). */
#define BIG_FILE (UNDER_ASAN ? 8000 : 60000)
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;
static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_chunk(buf *b, const char *type, const uint8_t *d, size_t n) {
    uint8_t h[8];
    put32(h, (uint32_t)n);
    memcpy(h + 4, type, 4);
    put(b, h, 8);
    put(b, d, n);
    uint8_t *t = malloc(n + 4);
    memcpy(t, type, 4);
    if (n) memcpy(t + 4, d, n);
    put32(h, crc32_of(t, n + 4));
    free(t);
    put(b, h, 4);
}

/* Offsets of the parts of a PNG: the first IDAT chunk, the end of the last consecutive
 * IDAT chunk, and the concatenated IDAT data. 0 when the file is not that simple. */
typedef struct png_parts {
    size_t first_idat, idat_end;
    buf z;
} png_parts;
static int split_png(const uint8_t *d, size_t n, png_parts *pp) {
    memset(pp, 0, sizeof *pp);
    size_t pos = 8;
    while (pos + 12 <= n) {
        uint32_t l = be32(d + pos);
        if (l > n - pos - 12) return 0;
        if (!memcmp(d + pos + 4, "IDAT", 4)) {
            if (!pp->first_idat) pp->first_idat = pos;
            put(&pp->z, d + pos + 8, l);
            pp->idat_end = pos + 12 + l;
        } else if (pp->first_idat) {
            break;
        }
        pos += 12 + l;
    }
    return pp->first_idat != 0;
}

/* The file with its IDAT data z (any bytes) cut into chunks of `step`, the rest kept. */
static buf rebuild(const uint8_t *d, size_t n, const png_parts *pp, const uint8_t *z, size_t zn,
                   size_t step) {
    buf b = {0};
    put(&b, d, pp->first_idat);
    for (size_t off = 0; off < zn || off == 0; off += step) {
        size_t k = zn - off < step ? zn - off : step;
        put_chunk(&b, "IDAT", z + off, k);
        if (k == 0) break;
    }
    put(&b, d + pp->idat_end, n - pp->idat_end);
    return b;
}

static int n_compared, n_fast, n_agree_fail;

/* Decodes both ways and checks they agree. Returns 1 when the fast path was taken, 0 when
 * not, -1 when the file was refused. */
static int compare(const char *what, const uint8_t *d, size_t n) {
    img_ctl fast = {0}, slow = {0};
    slow.png_libpng_only = 1;
    nvlm_image a, b;
    nvlm_err ea = {0, ""}, eb = {0, ""};
    int ra = img_decode_ctl(IMG_PNG, d, n, &fast, &a, &ea);
    int rb = img_decode_ctl(IMG_PNG, d, n, &slow, &b, &eb);
    n_compared++;
    int refused = ra != NVLM_OK;
    int same = ra == rb && (ra != NVLM_OK || (a.width == b.width && a.height == b.height &&
                                              !memcmp(a.rgb, b.rgb, (size_t)a.width * a.height * 3)));
    if (ra != NVLM_OK && ra == rb) same = !strcmp(ea.msg, eb.msg);
    CHECK(same, "%s: fast %d '%s' vs libpng %d '%s'", what, ra, ea.msg, rb, eb.msg);
    CHECK(!slow.png_fast_taken, "%s: libpng_only took the fast path", what);
    if (ra != NVLM_OK) n_agree_fail++;
    nvlm_image_free(&a);
    nvlm_image_free(&b);
    if (fast.png_fast_taken) n_fast++;
    return refused ? -1 : fast.png_fast_taken;
}

static int is_interlaced(const uint8_t *d, size_t n) { return n > 28 && d[28] != 0; }

static void variants(const char *name, const uint8_t *d, size_t n) {
    char what[512];
    png_parts pp;
    int fast = compare(name, d, n);
    if (!split_png(d, n, &pp)) {
        free(pp.z.p);
        return;
    }
    int plain = !is_interlaced(d, n), big = n > BIG_FILE;
    if (plain && fast >= 0) CHECK(fast == 1, "%s: fast path not taken on a plain PNG", name);
    /* re-cut IDAT data: the fast path must be taken exactly when it was before */
    static const size_t steps[] = {1, 7, 8192, 1u << 30};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        if ((steps[s] == 1 && pp.z.n > 4000) || (big && steps[s] != 8192)) continue;
        buf b = rebuild(d, n, &pp, pp.z.p, pp.z.n, steps[s]);
        snprintf(what, sizeof what, "%s recut %zu", name, steps[s]);
        int f = compare(what, b.p, b.n);
        if (fast >= 0) CHECK(f == plain, "%s: fast path %d, expected %d", what, f, plain);
        free(b.p);
    }
    /* truncations around and inside the image data */
    size_t cuts[] = {pp.first_idat + 4, pp.first_idat + 8, pp.first_idat + 10,
                     pp.first_idat + (pp.idat_end - pp.first_idat) / 2, pp.idat_end - 5,
                     pp.idat_end - 4, pp.idat_end - 1, pp.idat_end, pp.idat_end + 8};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        if (cuts[c] > n || (big && c != 3)) continue;
        snprintf(what, sizeof what, "%s cut at %zu", name, cuts[c]);
        compare(what, d, cuts[c]);
    }
    /* damaged IDAT CRC (ignored, as Pillow) and other single-field damage, in one chunk */
    uint8_t *z = malloc(pp.z.n + 64);
    memcpy(z, pp.z.p, pp.z.n);
    struct {
        const char *what;
        size_t at;
        uint8_t xor_;
    } flips[] = {{"zlib CINFO", 0, 0x10},      {"zlib FDICT", 1, 0x20},
                 {"adler32", pp.z.n - 1, 1},   {"deflate data", pp.z.n / 2, 0x40},
                 {"deflate start", 2, 0x04}};
    for (size_t f = 0; f < sizeof flips / sizeof flips[0]; f++) {
        if (flips[f].at >= pp.z.n || (big && f != 2)) continue;
        memcpy(z, pp.z.p, pp.z.n);
        z[flips[f].at] ^= flips[f].xor_;
        buf b = rebuild(d, n, &pp, z, pp.z.n, 1u << 30);
        snprintf(what, sizeof what, "%s %s", name, flips[f].what);
        compare(what, b.p, b.n);
        free(b.p);
    }
    if (big) { /* the rest on the small files only */
        free(z);
        free(pp.z.p);
        return;
    }
    { /* bad IDAT CRC: accepted both ways */
        buf b = rebuild(d, n, &pp, pp.z.p, pp.z.n, 1u << 30);
        b.p[pp.first_idat + 8 + pp.z.n] ^= 0xff;
        snprintf(what, sizeof what, "%s bad IDAT crc", name);
        compare(what, b.p, b.n);
        free(b.p);
    }
    { /* bytes after the end of the zlib stream, in the same chunk and in another one */
        memcpy(z, pp.z.p, pp.z.n);
        memset(z + pp.z.n, 0xab, 16);
        buf b = rebuild(d, n, &pp, z, pp.z.n + 16, 1u << 30);
        snprintf(what, sizeof what, "%s extra data", name);
        compare(what, b.p, b.n);
        free(b.p);
        b = rebuild(d, n, &pp, z, pp.z.n + 16, pp.z.n);
        snprintf(what, sizeof what, "%s extra chunk", name);
        compare(what, b.p, b.n);
        free(b.p);
    }
    { /* a tEXt chunk between two IDATs */
        size_t half = pp.z.n / 2;
        buf b = {0};
        put(&b, d, pp.first_idat);
        put_chunk(&b, "IDAT", pp.z.p, half);
        put_chunk(&b, "tEXt", (const uint8_t *)"a\0b", 3);
        put_chunk(&b, "IDAT", pp.z.p + half, pp.z.n - half);
        put(&b, d + pp.idat_end, n - pp.idat_end);
        snprintf(what, sizeof what, "%s chunk between IDATs", name);
        compare(what, b.p, b.n);
        free(b.p);
    }
    /* random mutations of the image data region (the header region is libpng's either way) */
    int nmut = n < 30000 ? 12 : 3;
    for (int m = 0; m < nmut; m++) {
        memcpy(z, pp.z.p, pp.z.n);
        int k = 1 + (int)(rnd() % 3);
        for (int i = 0; i < k; i++) z[rnd() % pp.z.n] ^= (uint8_t)(1u << (rnd() % 8));
        buf b = rebuild(d, n, &pp, z, pp.z.n, m & 1 ? 8192 : 1u << 30);
        snprintf(what, sizeof what, "%s mutation %d", name, m);
        compare(what, b.p, b.n);
        free(b.p);
    }
    free(z);
    free(pp.z.p);
}

/* The SIMD unfilter against a byte loop on random rows, every filter and pixel size. */
static void check_unfilter(void) {
    enum { N = 301 };
    uint8_t in[N], prior[N], out[N], ref[N];
    int bad = 0;
    for (int it = 0; it < 1200; it++) {
        int isa = it % 3; /* bytes, SSE2, SSE4.1 (each where the CPU has it) */
        size_t bpp = 1 + (size_t)(it / 3 % 8), n = 1 + rnd() % N;
        int f = (it / 24) % 5;
        for (size_t i = 0; i < N; i++) {
            in[i] = (uint8_t)rnd();
            prior[i] = (uint8_t)rnd();
        }
        png_unfilter_row_isa(f, in, prior, out, n, bpp, isa);
        for (size_t i = 0; i < n; i++) {
            int a = i >= bpp ? ref[i - bpp] : 0, b = prior[i], c = i >= bpp ? prior[i - bpp] : 0;
            int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
            int pred = f == 0 ? 0 : f == 1 ? a : f == 2 ? b : f == 3 ? (a + b) / 2
                     : (pa <= pb && pa <= pc) ? a : pb <= pc ? b : c;
            ref[i] = (uint8_t)(in[i] + pred);
        }
        if (memcmp(out, ref, n)) bad++;
    }
    CHECK(bad == 0, "%d unfiltered rows differ from the definition", bad);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_dir(const char *rel) {
    char dir[4096];
    memcpy(dir, shared_path(rel), sizeof dir);
    DIR *dd = opendir(dir);
    CHECK(dd != NULL, "cannot open %s", dir);
    if (!dd) return;
    char *names[512];
    int nn = 0;
    struct dirent *e;
    while ((e = readdir(dd)) && nn < 512) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".png")) names[nn++] = strdup(e->d_name);
    }
    closedir(dd);
    qsort(names, (size_t)nn, sizeof names[0], cmp_str);
    for (int i = 0; i < nn; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long len = ftell(f);
            rewind(f);
            uint8_t *d = malloc(len > 0 ? (size_t)len : 1);
            if (len > 0 && fread(d, 1, (size_t)len, f) == (size_t)len) variants(names[i], d, (size_t)len);
            else if (len == 0) compare(names[i], d, 0);
            free(d);
            fclose(f);
        }
        free(names[i]);
    }
}

int main(void) {
    crc_init();
    check_unfilter();
    run_dir("reference/images");
    run_dir("reference/images/bad");
    CHECK(n_fast > 300, "fast path taken only %d times", n_fast);
    printf("test_image_png: %d decodes compared both ways (fast path %d, refused both %d)\n",
           n_compared, n_fast, n_agree_fail);
    return check_done("test_image_png");
}
