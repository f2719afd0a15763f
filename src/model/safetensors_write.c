/* safetensors_write.c - the writer declared in safetensors_write.h. */
#include "model/safetensors_write.h"
#include "core/err.h"
#include "core/file.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct wt {
    char *name;
    nvlm_dtype dt;
    int ndim;
    int64_t shape[NVLM_MAX_DIMS];
    uint64_t nbytes;
    const void *data;       /* borrowed, or NULL when fill is set */
    nvlm_stw_fill_fn fill;
    void *user;
    uint64_t offset;        /* assigned per file while writing */
} wt;

struct nvlm_stw {
    wt *t;
    size_t n, cap;
    char meta[512];         /* extra __metadata__ members, ",\"key\":\"value\"..." */
};

int nvlm_stw_new(nvlm_stw **out, nvlm_err *err) {
    *out = calloc(1, sizeof **out);
    return *out ? 0 : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
}

void nvlm_stw_free(nvlm_stw *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

int nvlm_stw_set_meta(nvlm_stw *w, const char *key, const char *value, nvlm_err *err) {
    for (const char *p = key; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789_", *p)) return nvlm_fail(err, NVLM_E_INVALID_ARG, "bad metadata key");
    for (const char *p = value; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) return nvlm_fail(err, NVLM_E_INVALID_ARG, "bad metadata value");
    size_t used = strlen(w->meta);
    int n = snprintf(w->meta + used, sizeof w->meta - used, ",\"%s\":\"%s\"", key, value);
    if (n < 0 || (size_t)n >= sizeof w->meta - used) {
        w->meta[used] = 0;
        return nvlm_fail(err, NVLM_E_LIMIT, "too much safetensors metadata");
    }
    return NVLM_OK;
}

size_t nvlm_stw_count(const nvlm_stw *w) { return w ? w->n : 0; }

uint64_t nvlm_stw_total_bytes(const nvlm_stw *w) {
    uint64_t s = 0;
    for (size_t i = 0; w && i < w->n; i++) s += w->t[i].nbytes;
    return s;
}

static int add(nvlm_stw *w, const char *name, nvlm_dtype dt, int ndim, const int64_t *shape,
               const void *data, nvlm_stw_fill_fn fill, void *user, nvlm_err *err) {
    size_t es = nvlm_dtype_size(dt);
    if (!name || !*name || !strcmp(name, "__metadata__"))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: invalid tensor name");
    if (!es)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "safetensors writer: tensor %s: dtype %s cannot be written", name, nvlm_dtype_name(dt));
    if (ndim < 0 || ndim > NVLM_MAX_DIMS)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: tensor %s: %d dimensions", name, ndim);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && numel > (UINT64_C(1) << 50) / (uint64_t)shape[i]))
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: tensor %s: bad shape", name);
        numel *= (uint64_t)shape[i];
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wt *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    wt *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    t->dt = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = numel * es;
    t->data = data;
    t->fill = fill;
    t->user = user;
    w->n++;
    return 0;
}

int nvlm_stw_add(nvlm_stw *w, const char *name, nvlm_dtype dt, int ndim, const int64_t *shape,
                 const void *data, nvlm_err *err) {
    if (!data) return nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: tensor %s has no data", name ? name : "?");
    return add(w, name, dt, ndim, shape, data, NULL, NULL, err);
}

int nvlm_stw_add_fill(nvlm_stw *w, const char *name, nvlm_dtype dt, int ndim,
                      const int64_t *shape, nvlm_stw_fill_fn fill, void *user, nvlm_err *err) {
    if (!fill) return nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: tensor %s has no fill function", name ? name : "?");
    return add(w, name, dt, ndim, shape, NULL, fill, user, err);
}

/* ---------------------------------------------------------- text buffer */

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len + 1) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, len);
    b->n += len;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, unsigned long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal. */
static void sb_json(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            sb_fmt(b, "\\u%04llx", c);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* -------------------------------------------------------------- one file */

static int cmp_wt_name(const void *a, const void *b) {
    return strcmp((*(wt *const *)a)->name, (*(wt *const *)b)->name);
}

/* Layout order: 8-byte multiples first (all 8-aligned), then larger elements first. */
static int cmp_wt_layout(const void *a, const void *b) {
    const wt *x = *(wt *const *)a, *y = *(wt *const *)b;
    int xa = x->nbytes % 8 != 0, ya = y->nbytes % 8 != 0;
    if (xa != ya) return xa - ya;
    size_t xs = nvlm_dtype_size(x->dt), ys = nvlm_dtype_size(y->dt);
    if (xs != ys) return xs > ys ? -1 : 1;
    return strcmp(x->name, y->name);
}

static char *temp_name(const char *path) {
    size_t n = strlen(path) + 32;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s.tmp-%ld", path, (long)getpid());
    return s;
}

static int write_all(FILE *f, const void *p, size_t n, const char *path, nvlm_err *err) {
    if (n && fwrite(p, 1, n, f) != n)
        return nvlm_fail(err, NVLM_E_IO, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

/* Flushes, syncs and closes f, then renames tmp to path. */
static int finish(FILE *f, const char *tmp, const char *path, nvlm_err *err) {
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad) return nvlm_fail(err, NVLM_E_IO, "cannot write %s: %s", path, strerror(errno));
    if (rename(tmp, path) != 0)
        return nvlm_fail(err, NVLM_E_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    return 0;
}

/* Writes tensors ts[0..n) (any order) as one safetensors file. */
static int write_one(wt **ts, size_t n, const char *meta, const char *path, nvlm_err *err) {
    /* 1. offsets in layout order */
    wt **lay = malloc((n ? n : 1) * sizeof *lay);
    if (!lay) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    memcpy(lay, ts, n * sizeof *lay);
    qsort(lay, n, sizeof *lay, cmp_wt_layout);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        lay[i]->offset = off;
        off += lay[i]->nbytes;
    }
    /* 2. header in name order */
    wt **byname = malloc((n ? n : 1) * sizeof *byname);
    if (!byname) {
        free(lay);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    memcpy(byname, ts, n * sizeof *byname);
    qsort(byname, n, sizeof *byname, cmp_wt_name);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++)
        if (!strcmp(byname[i - 1]->name, byname[i]->name))
            rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "safetensors writer: tensor %s added twice", byname[i]->name);
    sbuf h = {0};
    sb_str(&h, "{\"__metadata__\":{\"format\":\"pt\"");
    sb_str(&h, meta);
    sb_str(&h, "}");
    for (size_t i = 0; i < n && !rc; i++) {
        wt *t = byname[i];
        sb_str(&h, ",");
        sb_json(&h, t->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, nvlm_dtype_name(t->dt));
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) sb_fmt(&h, d ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
        sb_fmt(&h, "],\"data_offsets\":[%llu,", (unsigned long long)t->offset);
        sb_fmt(&h, "%llu]}", (unsigned long long)(t->offset + t->nbytes));
    }
    sb_str(&h, "}");
    while (h.n % 8) sb_str(&h, " ");
    free(byname);
    if (!rc && h.oom) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    /* 3. the file */
    char *tmp = rc ? NULL : temp_name(path);
    FILE *f = NULL;
    if (!rc && !tmp) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc && !(f = fopen(tmp, "wb"))) rc = nvlm_fail(err, NVLM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
    if (!rc) {
        uint8_t le[8];
        for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
        rc = write_all(f, le, 8, path, err);
        if (!rc) rc = write_all(f, h.s, h.n, path, err);
    }
    for (size_t i = 0; i < n && !rc; i++) {
        wt *t = lay[i];
        if (t->data) {
            rc = write_all(f, t->data, (size_t)t->nbytes, path, err);
            continue;
        }
        void *buf = malloc(t->nbytes ? (size_t)t->nbytes : 1);
        if (!buf) {
            rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory for tensor %s (%llu bytes)", t->name, (unsigned long long)t->nbytes);
            break;
        }
        rc = t->fill(t->user, t->name, t->dt, buf, t->nbytes, err);
        if (!rc) rc = write_all(f, buf, (size_t)t->nbytes, path, err);
        free(buf);
    }
    if (f) {
        if (!rc) rc = finish(f, tmp, path, err);
        else fclose(f);
    }
    if (rc && tmp) unlink(tmp);
    free(tmp);
    free(h.s);
    free(lay);
    return rc;
}

int nvlm_stw_write_file(const nvlm_stw *w, const char *path, nvlm_err *err) {
    wt **ts = malloc((w->n ? w->n : 1) * sizeof *ts);
    if (!ts) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < w->n; i++) ts[i] = &w->t[i];
    int rc = write_one(ts, w->n, w->meta, path, err);
    free(ts);
    return rc;
}

int nvlm_atomic_open(nvlm_atomic_file *a, const char *path, nvlm_err *err) {
    a->f = NULL;
    a->path = path;
    a->tmp = temp_name(path);
    if (!a->tmp) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    a->f = fopen(a->tmp, "wb");
    if (a->f) return NVLM_OK;
    int rc = nvlm_fail(err, NVLM_E_IO, "cannot create %s: %s", a->tmp, strerror(errno));
    free(a->tmp);
    a->tmp = NULL;
    return rc;
}

int nvlm_atomic_close(nvlm_atomic_file *a, int ok, nvlm_err *err) {
    int rc = NVLM_OK;
    if (!a->f) return NVLM_OK;
    if (ok) rc = finish(a->f, a->tmp, a->path, err);
    else fclose(a->f);
    if (!ok || rc) unlink(a->tmp);
    free(a->tmp);
    a->f = NULL, a->tmp = NULL;
    return rc;
}

int nvlm_write_file_atomic(const char *path, const void *data, size_t len, nvlm_err *err) {
    nvlm_atomic_file a;
    int rc = nvlm_atomic_open(&a, path, err);
    if (rc) return rc;
    rc = write_all(a.f, data, len, path, err);
    int rc2 = nvlm_atomic_close(&a, !rc, err);
    return rc ? rc : rc2;
}

int nvlm_copy_files(const char *from_dir, const char *to_dir, const char *const *names, size_t n, nvlm_err *err) {
    int rc = NVLM_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        char *src = nvlm_path_join(from_dir, names[i]), *dst = nvlm_path_join(to_dir, names[i]);
        char *data = NULL;
        size_t len;
        if (!src || !dst) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        else if (nvlm_file_exists(src) && !(rc = nvlm_read_file(src, 0, &data, &len, err)))
            rc = nvlm_write_file_atomic(dst, data, len, err);
        free(data), free(src), free(dst);
    }
    return rc;
}

int nvlm_copy_side_files(const char *from_dir, const char *to_dir, nvlm_err *err) {
    static const char *const names[] = {"config.json", "tokenizer.json", "vocab.json", "merges.txt",
                                        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                                        "generation_config.json", "preprocessor_config.json"};
    return nvlm_copy_files(from_dir, to_dir, names, sizeof names / sizeof *names, err);
}

int nvlm_same_dir(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && !strcmp(ra, rb);
}

/* ------------------------------------------------------------- a folder */

static int remove_if_present(const char *dir, const char *name, nvlm_err *err) {
    char *p = nvlm_path_join(dir, name);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int rc = 0;
    if (unlink(p) != 0 && errno != ENOENT) rc = nvlm_fail(err, NVLM_E_IO, "cannot remove stale %s: %s", p, strerror(errno));
    free(p);
    return rc;
}

static int write_sharded(const nvlm_stw *w, const char *dir, int n_shards, nvlm_err *err) {
    size_t n = w->n;
    if ((size_t)n_shards > n)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "cannot cut %zu tensors into %d shards", n, n_shards);
    wt **ts = malloc(n * sizeof *ts);
    int *shard_of = malloc(n * sizeof *shard_of);
    char **paths = calloc((size_t)n_shards, sizeof *paths);
    if (!ts || !shard_of || !paths) {
        free(ts);
        free(shard_of);
        free(paths);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) ts[i] = &w->t[i];
    qsort(ts, n, sizeof *ts, cmp_wt_name);
    /* cut by cumulative size, keeping at least one tensor for every remaining shard */
    uint64_t total = nvlm_stw_total_bytes(w), acc = 0;
    int cur = 0;
    size_t in_cur = 0;
    for (size_t i = 0; i < n; i++) {
        int must_cut = n - i == (size_t)(n_shards - cur - 1);
        double bound = (double)total * (cur + 1) / n_shards;
        if (cur < n_shards - 1 && in_cur > 0 && (must_cut || (double)(acc + ts[i]->nbytes) > bound)) {
            cur++;
            in_cur = 0;
        }
        shard_of[i] = cur;
        in_cur++;
        acc += ts[i]->nbytes;
    }
    int rc = 0;
    if (cur != n_shards - 1) rc = nvlm_fail(err, NVLM_E_INTERNAL, "shard cut gave %d shards, wanted %d", cur + 1, n_shards);
    for (int s = 0; s < n_shards && !rc; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        paths[s] = nvlm_path_join(dir, name);
        if (!paths[s]) {
            rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
            break;
        }
        size_t a = 0;
        while (a < n && shard_of[a] != s) a++;
        size_t b = a;
        while (b < n && shard_of[b] == s) b++;
        rc = write_one(ts + a, b - a, w->meta, paths[s], err);
    }
    /* the index, written last: a reader never sees an index naming unwritten shards */
    sbuf idx = {0};
    if (!rc) {
        sb_str(&idx, "{\n    \"metadata\": {\n        \"total_size\": ");
        sb_fmt(&idx, "%llu", (unsigned long long)total);
        sb_str(&idx, "\n    },\n    \"weight_map\": {\n");
        for (size_t i = 0; i < n; i++) {
            char name[64];
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
            sb_str(&idx, "        ");
            sb_json(&idx, ts[i]->name);
            sb_str(&idx, ": ");
            sb_json(&idx, name);
            sb_str(&idx, i + 1 < n ? ",\n" : "\n");
        }
        sb_str(&idx, "    }\n}\n");
        if (idx.oom) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    char *ipath = rc ? NULL : nvlm_path_join(dir, "model.safetensors.index.json");
    if (!rc && !ipath) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = nvlm_write_file_atomic(ipath, idx.s, idx.n, err);
    if (!rc) rc = remove_if_present(dir, "model.safetensors", err);
    free(ipath);
    free(idx.s);
    for (int s = 0; s < n_shards; s++) free(paths[s]);
    free(paths);
    free(shard_of);
    free(ts);
    return rc;
}

int nvlm_stw_write_dir(const nvlm_stw *w, const char *dir, int n_shards, nvlm_err *err) {
    if (n_shards > 1) return write_sharded(w, dir, n_shards, err);
    char *p = nvlm_path_join(dir, "model.safetensors");
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    int rc = nvlm_stw_write_file(w, p, err);
    free(p);
    if (!rc) rc = remove_if_present(dir, "model.safetensors.index.json", err);
    return rc;
}
