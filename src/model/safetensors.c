/* safetensors.c - memory-mapped, validated safetensors checkpoints (single or sharded).
 *
 * A file is: u64 little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, data.
 * Nothing in a file is trusted: the header length is bounded by the file and by
 * NVLM_ST_MAX_HEADER, the JSON is parsed from a NUL-terminated copy, every entry's dtype,
 * shape and offsets are checked (numel x element size == end - begin, end inside the data),
 * spans must not overlap, names must be unique (also across shards), and the index's
 * weight_map must agree with the shards' headers in both directions. */
#include "model/safetensors.h"
#include "core/err.h"
#include "core/file.h"
#include "kernels/dtype.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define INDEX_MAX_BYTES (256u << 20)
#define MAX_NUMEL (INT64_C(1) << 50)

typedef struct st_file {
    char *path;
    nvlm_mapped_file map;   /* empty when the data is borrowed (nvlm_st_parse_buffer) */
    int in_memory;          /* its tensors are where they stay: in arena, or in map (kept mapped) */
    nvlm_mapped_file arena; /* the anonymous memory the tensors read into memory are in; map is
                               then dropped unless some tensors stay mapped */
} st_file;

struct nvlm_st {
    char *where;            /* "DIR/model.safetensors", "checkpoint DIR" or the origin */
    int sharded;
    st_file *files;
    size_t n_files;
    nvlm_tensor *t;         /* sorted by name; names malloc'ed */
    size_t n, cap;
    char *checkpoint;       /* __metadata__ "nvlm_checkpoint" of the first file, or NULL */
};

/* ------------------------------------------------------------- helpers */

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const nvlm_tensor *)a)->name, ((const nvlm_tensor *)b)->name);
}

static int cmp_span(const void *a, const void *b) {
    const nvlm_tensor *x = *(const nvlm_tensor *const *)a, *y = *(const nvlm_tensor *const *)b;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q ? 1 : 0;
}

static int push(nvlm_st *st, nvlm_err *err) {
    if (st->n < st->cap) return 0;
    size_t cap = st->cap ? 2 * st->cap : 64;
    nvlm_tensor *nt = realloc(st->t, cap * sizeof *nt);
    if (!nt) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory reading tensor headers");
    st->t = nt;
    st->cap = cap;
    return 0;
}

/* A JSON number that is an integer in [0, hi]. */
static int json_uint(const cJSON *v, double hi, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > hi || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* A format of the traits table (Q8_0 and Q4_1 are nvlm quantize output, docs/quantization.md). */
static int parse_dtype(const char *s, nvlm_dtype *out) { return nvlm_dtype_parse(s, out) == 0; }

static int is_known_other_dtype(const char *s) {
    static const char *const other[] = {"F64", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
                                        "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"};
    for (size_t i = 0; i < sizeof other / sizeof *other; i++)
        if (!strcmp(s, other[i])) return 1;
    return 0;
}

/* --------------------------------------------------------- one header */

/* Validates and appends one entry of a header. */
static int parse_entry(nvlm_st *st, const cJSON *e, const uint8_t *base, uint64_t data_len,
                       const char *file, nvlm_err *err) {
    const char *name = e->string;
    if (!*name) return nvlm_fail(err, NVLM_E_FORMAT, "%s: a tensor has an empty name", file);
    if (!cJSON_IsObject(e))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: header entry is not an object", file, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s has no dtype string", file, name);
    nvlm_dtype dtype;
    if (!parse_dtype(dt->valuestring, &dtype))
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: tensor %.200s has dtype %.40s%s (nvlm loads F32, F16 and BF16 weights)",
                         file, name, dt->valuestring, is_known_other_dtype(dt->valuestring) ? "" : ", an unknown safetensors dtype");
    if (!cJSON_IsArray(sh))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s has no shape list", file, name);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > NVLM_MAX_DIMS)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "%s: tensor %.200s has %d dimensions (at most %d)", file, name, ndim, NVLM_MAX_DIMS);
    int rc = push(st, err);
    if (rc) return rc;
    nvlm_tensor *t = &st->t[st->n];
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = 1;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        uint64_t v;
        if (!json_uint(d, (double)MAX_NUMEL, &v))
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: shape entry %d is not a non-negative integer", file, name, i);
        t->shape[i++] = (int64_t)v;
        if (v && (uint64_t)t->numel > (uint64_t)MAX_NUMEL / v)
            return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: shape is absurdly large", file, name);
        t->numel *= (int64_t)v;
    }
    uint64_t b, en;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 ||
        !json_uint(cJSON_GetArrayItem(of, 0), 9007199254740992.0, &b) ||
        !json_uint(cJSON_GetArrayItem(of, 1), 9007199254740992.0, &en))
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: data_offsets must be [begin, end] non-negative integers", file, name);
    if (en < b)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: data_offsets [%llu, %llu] end before begin", file, name,
                         (unsigned long long)b, (unsigned long long)en);
    if (en > data_len)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: data_offsets [%llu, %llu] lie outside the file's %llu data bytes (truncated file?)",
                         file, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_len);
    const nvlm_dtype_traits *tr = nvlm_dtype_traits_of(dtype);
    if (tr->block > 1 && (ndim < 1 || t->shape[ndim - 1] % tr->block)) /* rows of whole blocks */
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: %s needs a last dimension divisible by %d", file, name,
                         nvlm_dtype_name(dtype), tr->block);
    uint64_t want = (uint64_t)t->numel / (uint64_t)tr->block * tr->block_bytes;
    if (en - b != want)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s: %s shape of %lld elements needs %llu bytes, data_offsets [%llu, %llu] span %llu",
                         file, name, nvlm_dtype_name(dtype), (long long)t->numel, (unsigned long long)want,
                         (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b));
    t->data = base + b;
    t->nbytes = want;
    t->file = file;
    t->name = strdup(name);
    if (!t->name) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    st->n++;
    return 0;
}

/* Spans of the tensors [from, to) of st (one file) must not overlap. */
static int check_overlap(nvlm_st *st, size_t from, size_t to, const char *file, nvlm_err *err) {
    size_t n = to - from;
    if (n < 2) return 0;
    nvlm_tensor **order = malloc(n * sizeof *order);
    if (!order) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) order[i] = &st->t[from + i];
    qsort(order, n, sizeof *order, cmp_span);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++) {
        const nvlm_tensor *a = order[i - 1], *b = order[i];
        if ((const uint8_t *)a->data + a->nbytes > (const uint8_t *)b->data)
            rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: the data of tensors %.200s and %.200s overlap (lying data_offsets)", file, a->name, b->name);
    }
    free(order);
    return rc;
}

/* Parses the header of one file image and appends its tensors (file = name for messages,
 * owned by the caller and kept alive as long as st). */
static int parse_file(nvlm_st *st, const uint8_t *data, size_t len, const char *file, nvlm_err *err) {
    if (len < 8)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: %zu bytes is too short for a safetensors file (truncated?)", file, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    if (hlen > NVLM_ST_MAX_HEADER)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: absurd header length %llu (limit %u): not a safetensors file or corrupt",
                         file, (unsigned long long)hlen, NVLM_ST_MAX_HEADER);
    if (hlen > len - 8)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes): truncated?",
                         file, (unsigned long long)hlen, len);
    if (hlen < 2)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: header of %llu bytes cannot hold a JSON object", file, (unsigned long long)hlen);
    char *h = malloc((size_t)hlen + 1);
    if (!h) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the header of %s", file);
    memcpy(h, data + 8, (size_t)hlen);
    h[hlen] = 0;
    const char *end = NULL;
    cJSON *root = (h[0] == '{') ? cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, 0) : NULL;
    int rc = 0;
    if (!root) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: the header is not valid JSON (must start with '{'; error near byte %lld)", file,
                       (long long)(end && end >= h ? end - h : 0));
    } else if (!cJSON_IsObject(root)) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: the header is not a JSON object", file);
    } else {
        for (const char *p = end; p && p < h + hlen && !rc; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
                rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: junk after the header's JSON object (byte %lld)", file, (long long)(p - h));
    }
    size_t first = st->n;
    const uint8_t *base = data + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    const cJSON *e;
    if (!rc) cJSON_ArrayForEach(e, root) {
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) {
                rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: __metadata__ must be an object", file);
                break;
            }
            const cJSON *ck = cJSON_GetObjectItemCaseSensitive(e, "nvlm_checkpoint");
            if (cJSON_IsString(ck) && !st->checkpoint && !(st->checkpoint = strdup(ck->valuestring))) {
                rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
                break;
            }
            continue;
        }
        if ((rc = parse_entry(st, e, base, data_len, file, err))) break;
    }
    cJSON_Delete(root);
    free(h);
    if (!rc) rc = check_overlap(st, first, st->n, file, err);
    return rc;
}

/* Sorts all tensors by name and refuses duplicates (in one header or across shards). */
static int sort_and_dedup(nvlm_st *st, nvlm_err *err) {
    if (st->n) qsort(st->t, st->n, sizeof *st->t, cmp_name);
    for (size_t i = 1; i < st->n; i++)
        if (!strcmp(st->t[i - 1].name, st->t[i].name)) {
            if (st->t[i - 1].file == st->t[i].file)
                return nvlm_fail(err, NVLM_E_FORMAT, "%s: tensor %.200s appears twice in the header", st->t[i].file, st->t[i].name);
            return nvlm_fail(err, NVLM_E_FORMAT, "tensor %.200s is in two shards: %s and %s", st->t[i].name,
                             st->t[i - 1].file, st->t[i].file);
        }
    return 0;
}

/* ------------------------------------------------------------ opening */

static nvlm_st *st_new(void) { return calloc(1, sizeof(nvlm_st)); }

void nvlm_st_close(nvlm_st *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free((void *)st->t[i].name);
    for (size_t i = 0; i < st->n_files; i++) {
        nvlm_unmap_file(&st->files[i].map);
        nvlm_unmap_file(&st->files[i].arena);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->t);
    free(st->where);
    free(st->checkpoint);
    free(st);
}

/* Maps path and parses it as the next file of st. */
static int add_file(nvlm_st *st, char *path, nvlm_err *err) {
    st_file *nf = realloc(st->files, (st->n_files + 1) * sizeof *nf);
    if (!nf) {
        free(path);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    st->files = nf;
    st_file *f = &st->files[st->n_files++];
    f->path = path;
    f->map.data = NULL;
    f->map.len = 0;
    f->in_memory = 0;
    f->arena = (nvlm_mapped_file){0};
    int rc = nvlm_map_file(path, &f->map, err);
    if (rc) return rc;
    return parse_file(st, f->map.data, f->map.len, f->path, err);
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Shard names come from a file: they must name a file inside the folder. */
static int safe_shard_name(const char *s) {
    size_t n = strlen(s);
    return n > 0 && n < 256 && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static const nvlm_tensor *find_in(const nvlm_st *st, const char *name) {
    nvlm_tensor key;
    key.name = name;
    return st->n ? bsearch(&key, st->t, st->n, sizeof *st->t, cmp_name) : NULL;
}

static int open_sharded(nvlm_st *st, const char *dir, const char *index_path, nvlm_err *err) {
    char *text;
    size_t len;
    int rc = nvlm_read_file(index_path, INDEX_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root || !cJSON_IsObject(root)) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: not a JSON object", index_path);
    else if (!cJSON_IsObject(wm)) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: weight_map is missing or not an object", index_path);
    const cJSON *e;
    /* 1. open every distinct shard once, in order of first mention */
    if (!rc) cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !safe_shard_name(e->valuestring)) {
            rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: weight_map entry %.200s must name a file in the folder", index_path, e->string);
            break;
        }
        int seen = 0;
        for (size_t i = 0; i < st->n_files && !seen; i++)
            seen = !strcmp(base_name(st->files[i].path), e->valuestring);
        if (seen) continue;
        char *path = nvlm_path_join(dir, e->valuestring);
        if (!path) {
            rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
            break;
        }
        if (!nvlm_file_exists(path)) {
            rc = nvlm_fail(err, NVLM_E_IO, "%s names shard %s (for tensor %.200s), which is missing from %s", index_path,
                           e->valuestring, e->string, dir);
            free(path);
            break;
        }
        if ((rc = add_file(st, path, err))) break;
    }
    if (!rc) rc = sort_and_dedup(st, err);
    /* 2. every weight_map entry is in the shard it names */
    size_t listed = 0;
    if (!rc) cJSON_ArrayForEach(e, wm) {
        listed++;
        const nvlm_tensor *t = find_in(st, e->string);
        if (!t) {
            rc = nvlm_fail(err, NVLM_E_FORMAT, "tensor %.200s is missing from shard %s/%s (named by %s)", e->string, dir,
                           e->valuestring, index_path);
            break;
        }
        if (strcmp(base_name(t->file), e->valuestring)) {
            rc = nvlm_fail(err, NVLM_E_FORMAT, "tensor %.200s is in %s but %s places it in %s", e->string, t->file,
                           index_path, e->valuestring);
            break;
        }
    }
    /* 3. and nothing in the shards is left out of the weight_map */
    if (!rc && listed != st->n) {
        for (size_t i = 0; i < st->n; i++)
            if (!cJSON_GetObjectItemCaseSensitive(wm, st->t[i].name)) {
                rc = nvlm_fail(err, NVLM_E_FORMAT, "tensor %.200s in %s is not listed in %s", st->t[i].name, st->t[i].file, index_path);
                break;
            }
        if (!rc) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: weight_map lists a tensor twice", index_path);
    }
    cJSON_Delete(root);
    return rc;
}

static char *str_printf2(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s", a, b);
    return s;
}

int nvlm_st_open(const char *dir, nvlm_st **out, nvlm_err *err) {
    *out = NULL;
    nvlm_st *st = st_new();
    if (!st) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    char *index = nvlm_path_join(dir, INDEX_NAME);
    char *single = nvlm_path_join(dir, SINGLE_NAME);
    int rc = 0;
    if (!index || !single) {
        rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    } else if (nvlm_file_exists(index)) {
        st->sharded = 1;
        st->where = str_printf2("checkpoint ", dir);
        rc = st->where ? open_sharded(st, dir, index, err) : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    } else if (nvlm_file_exists(single)) {
        st->where = strdup(single);
        if (!st->where) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        else {
            rc = add_file(st, single, err);
            single = NULL; /* owned by st now */
            if (!rc) rc = sort_and_dedup(st, err);
        }
    } else {
        rc = nvlm_fail(err, NVLM_E_IO, "no weights in %s: neither %s nor %s exists", dir, SINGLE_NAME, INDEX_NAME);
    }
    free(index);
    free(single);
    if (rc) {
        nvlm_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

int nvlm_st_parse_buffer(const uint8_t *data, size_t len, const char *origin, nvlm_st **out,
                         nvlm_err *err) {
    *out = NULL;
    nvlm_st *st = st_new();
    if (!st) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    st->files = calloc(1, sizeof *st->files);
    st->where = strdup(origin ? origin : "buffer");
    int rc = 0;
    if (!st->files || !st->where) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    else {
        st->n_files = 1;
        st->files[0].path = strdup(st->where);
        if (!st->files[0].path) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
        else if (!(rc = parse_file(st, data, len, st->files[0].path, err))) rc = sort_and_dedup(st, err);
    }
    if (rc) {
        nvlm_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

/* ------------------------------------------------------------- lookups */

const char *nvlm_st_checkpoint(const nvlm_st *st) { return st ? st->checkpoint : NULL; }

size_t nvlm_st_count(const nvlm_st *st) { return st ? st->n : 0; }

const nvlm_tensor *nvlm_st_at(const nvlm_st *st, size_t i) {
    return st && i < st->n ? &st->t[i] : NULL;
}

const nvlm_tensor *nvlm_st_find(const nvlm_st *st, const char *name) {
    return st ? find_in(st, name) : NULL;
}

size_t nvlm_st_file_count(const nvlm_st *st) { return st ? st->n_files : 0; }

const char *nvlm_st_file_path(const nvlm_st *st, size_t i) {
    return st && i < st->n_files ? st->files[i].path : NULL;
}

uint64_t nvlm_st_total_bytes(const nvlm_st *st) {
    uint64_t s = 0;
    for (size_t i = 0; st && i < st->n; i++) s += st->t[i].nbytes;
    return s;
}

/* ------------------------------------------------- reading into memory */

/* READ_CHUNK: the unit a reader takes (small enough to share a file among threads, large
 * enough that a pread costs nothing beside its copy); MAX_READERS: more threads than this do
 * not read memory or a disk any faster. */
enum { READ_ALIGN = 64, READ_CHUNK = 8 << 20, MAX_READERS = 8 };

typedef struct read_state {
    nvlm_st_keep_mapped keep; /* NULL: every tensor is read */
    void *keep_user;
    nvlm_st_progress progress;
    void *user;
    uint64_t done, total; /* done: bytes of the files finished before the current one */
} read_state;

static size_t round_up(uint64_t n) { return (size_t)((n + READ_ALIGN - 1) / READ_ALIGN * READ_ALIGN); }

/* 1 when tensor t of file f is to be read (not kept in the mapping). */
static int to_read(const read_state *rs, const st_file *f, const nvlm_tensor *t) {
    return t->file == f->path && !(rs->keep && rs->keep(rs->keep_user, t->name));
}

/* One pread of at most READ_CHUNK bytes: file offset off into dst. */
typedef struct read_piece {
    uint8_t *dst;
    uint64_t off;
    size_t len;
} read_piece;

/* The pieces of one file, taken in turn by the reader threads and the caller. Only the caller
 * reports progress (done) and sees the cancel; the first error stops every reader. */
typedef struct read_job {
    int fd;
    const char *path;
    const read_piece *piece;
    size_t n_piece;
    atomic_size_t next;
    atomic_uint_fast64_t done;
    atomic_int stop;
    pthread_mutex_t mu; /* guards rc and err */
    int rc;
    nvlm_err err;
} read_job;

/* Reads pieces until none are left or a reader stopped; returns after the piece it holds when
 * once is set (the caller, to report progress between pieces). */
static void read_pieces(read_job *j, int once) {
    while (!atomic_load(&j->stop)) {
        size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n_piece) return;
        const read_piece *pc = &j->piece[i];
        nvlm_err e = {0};
        int rc = nvlm_pread_all(j->fd, pc->dst, pc->len, pc->off, j->path, &e);
        if (rc) {
            pthread_mutex_lock(&j->mu);
            if (!j->rc) { /* the first error is the one reported */
                j->rc = rc;
                j->err = e;
            }
            pthread_mutex_unlock(&j->mu);
            atomic_store(&j->stop, 1);
            return;
        }
        atomic_fetch_add(&j->done, pc->len);
        if (once) return;
    }
}

static void *reader_main(void *arg) {
    read_pieces(arg, 0);
    return NULL;
}

/* The pieces of f's tensors (*out, *n_out; free it), placed one after the other in mem at
 * 64-byte boundaries. */
static int file_pieces(const nvlm_st *st, const st_file *f, const read_state *rs, uint8_t *mem, read_piece **out, size_t *n_out,
                       nvlm_err *err) {
    const uint8_t *lo = f->map.data, *hi = f->map.data + f->map.len;
    size_t n = 0, at = 0;
    for (size_t i = 0; i < st->n; i++)
        if (to_read(rs, f, &st->t[i])) n += (size_t)((st->t[i].nbytes + READ_CHUNK - 1) / READ_CHUNK);
    read_piece *pc = malloc(sizeof *pc * (n ? n : 1));
    if (!pc) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory reading %s", f->path);
    n = 0;
    for (size_t i = 0; i < st->n; i++) {
        const nvlm_tensor *t = &st->t[i];
        if (!to_read(rs, f, t)) continue;
        const uint8_t *src = t->data;
        if (src < lo || src + t->nbytes > hi) {
            free(pc);
            return nvlm_fail(err, NVLM_E_INTERNAL, "%s: tensor %s outside its file", f->path, t->name);
        }
        for (uint64_t o = 0; o < t->nbytes; o += READ_CHUNK)
            pc[n++] = (read_piece){mem + at + o, (uint64_t)(src - lo) + o, t->nbytes - o < READ_CHUNK ? (size_t)(t->nbytes - o) : READ_CHUNK};
        at += round_up(t->nbytes);
    }
    *out = pc;
    *n_out = n;
    return NVLM_OK;
}

/* Reads the pieces with up to n_threads threads (the caller one of them), reporting progress
 * from the caller after each of its pieces. */
static int read_parallel(read_job *j, int n_threads, read_state *rs, nvlm_err *err) {
    pthread_t th[MAX_READERS];
    int started = 0;
    if (n_threads > MAX_READERS) n_threads = MAX_READERS;
    if ((size_t)n_threads > j->n_piece) n_threads = (int)j->n_piece;
    for (int i = 1; i < n_threads; i++) /* a thread that does not start leaves its share to the others */
        if (pthread_create(&th[started], NULL, reader_main, j) == 0) started++;
    int cancelled = 0;
    while (!atomic_load(&j->stop) && atomic_load(&j->next) < j->n_piece) {
        read_pieces(j, 1);
        if (rs->progress && rs->progress(rs->user, rs->done + atomic_load(&j->done), rs->total)) {
            cancelled = 1;
            atomic_store(&j->stop, 1);
        }
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    rs->done += atomic_load(&j->done);
    if (j->rc) {
        *err = j->err;
        return j->rc;
    }
    if (cancelled) return nvlm_fail(err, NVLM_E_CANCELLED, "loading cancelled");
    if (rs->progress && rs->progress(rs->user, rs->done, rs->total)) return nvlm_fail(err, NVLM_E_CANCELLED, "loading cancelled");
    return NVLM_OK;
}

/* The tensors of f into one arena; on success the tensors point into it and f holds it. */
static int read_file_tensors(nvlm_st *st, st_file *f, int n_threads, read_state *rs, nvlm_err *err) {
    size_t need = 0, kept = 0;
    for (size_t i = 0; i < st->n; i++) {
        if (to_read(rs, f, &st->t[i])) need += round_up(st->t[i].nbytes);
        else kept += st->t[i].file == f->path;
    }
    if (need == 0) return NVLM_OK; /* nothing to read: the mapping stays */
    nvlm_mapped_file arena;
    uint8_t *mem;
    int rc = nvlm_map_anon(need, &arena, &mem, f->path, err);
    if (rc)
        return nvlm_fail(err, rc, "not enough memory to read the %.1f MB of weights of %s into memory; map the file instead (--mmap)",
                         (double)need / 1e6, f->path);
    read_job j = {.path = f->path, .fd = -1};
    rc = nvlm_open_regular(f->path, &j.fd, NULL, err);
    read_piece *pieces = NULL;
    if (!rc) rc = file_pieces(st, f, rs, mem, &pieces, &j.n_piece, err);
    if (!rc) {
        j.piece = pieces;
        atomic_init(&j.next, 0);
        atomic_init(&j.done, 0);
        atomic_init(&j.stop, 0);
        pthread_mutex_init(&j.mu, NULL);
        rc = read_parallel(&j, n_threads, rs, err);
        pthread_mutex_destroy(&j.mu);
    }
    free(pieces);
    if (j.fd >= 0) close(j.fd);
    if (rc) {
        nvlm_unmap_file(&arena);
        return rc;
    }
    size_t at = 0; /* every read succeeded: only now repoint the tensors */
    for (size_t i = 0; i < st->n; i++) {
        if (!to_read(rs, f, &st->t[i])) continue;
        st->t[i].data = mem + at;
        at += round_up(st->t[i].nbytes);
    }
    nvlm_seal_anon(&arena);
    if (!kept) nvlm_unmap_file(&f->map); /* no tensor points into it any more */
    f->arena = arena;
    f->in_memory = 1;
    return NVLM_OK;
}

int nvlm_st_arenas_writable(nvlm_st *st, int on) {
    for (size_t i = 0; st && i < st->n_files; i++) {
        nvlm_mapped_file *a = &st->files[i].arena;
        if (!a->data) continue;
        if (!on) nvlm_seal_anon(a);
        else if (mprotect((void *)a->data, a->len, PROT_READ | PROT_WRITE)) {
            while (i-- > 0) nvlm_seal_anon(&st->files[i].arena);
            return -1;
        }
    }
    return 0;
}

int nvlm_st_in_arena(const nvlm_st *st, const void *p, size_t n) {
    for (size_t i = 0; st && i < st->n_files; i++) {
        const nvlm_mapped_file *a = &st->files[i].arena;
        const uint8_t *lo = a->data, *q = p;
        if (lo && q >= lo && n <= a->len && (size_t)(q - lo) <= a->len - n) return 1;
    }
    return 0;
}

int nvlm_st_read_into_memory(nvlm_st *st, int n_threads, nvlm_st_progress progress, void *user, nvlm_err *err) {
    return nvlm_st_read_some_into_memory(st, n_threads, NULL, NULL, progress, user, err);
}

int nvlm_st_read_some_into_memory(nvlm_st *st, int n_threads, nvlm_st_keep_mapped keep, void *keep_user,
                                  nvlm_st_progress progress, void *user, nvlm_err *err) {
    read_state rs = {.keep = keep, .keep_user = keep_user, .progress = progress, .user = user};
    for (size_t i = 0; st && i < st->n; i++)
        if (!(keep && keep(keep_user, st->t[i].name))) rs.total += st->t[i].nbytes;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)(n < MAX_READERS ? n : MAX_READERS) : 1;
    }
    for (size_t i = 0; i < st->n_files; i++) {
        if (!st->files[i].map.data || st->files[i].in_memory) continue; /* empty, borrowed or done */
        int rc = read_file_tensors(st, &st->files[i], n_threads, &rs, err);
        if (rc) return rc;
    }
    return NVLM_OK;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = 0;
    buf[o++] = '[';
    buf[o] = 0;
    for (int i = 0; i < ndim && o + 24 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    snprintf(buf + o, cap - o, "]");
}

int nvlm_st_expect(const nvlm_st *st, const char *name, int ndim, const int64_t *shape,
                   const nvlm_tensor **out, nvlm_err *err) {
    if (out) *out = NULL;
    const nvlm_tensor *t = nvlm_st_find(st, name);
    if (!t)
        return nvlm_fail(err, NVLM_E_FORMAT, "tensor %s is missing (expected in %s)", name,
                         st && st->where ? st->where : "the checkpoint");
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[160], want[160];
        shape_str(have, sizeof have, t->ndim, t->shape);
        shape_str(want, sizeof want, ndim, shape);
        return nvlm_fail(err, NVLM_E_FORMAT, "tensor %s in %s has shape %s, expected %s", name, t->file, have, want);
    }
    if (out) *out = t;
    return 0;
}

/* ------------------------------------------------------- index summary */

int nvlm_st_index_summary(const char *dir, nvlm_st_index_info *out, nvlm_err *err) {
    memset(out, 0, sizeof *out);
    out->total_size = -1;
    char *path = nvlm_path_join(dir, INDEX_NAME);
    if (!path) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    char *text;
    size_t len;
    int rc = nvlm_read_file(path, INDEX_MAX_BYTES, &text, &len, err);
    if (rc) {
        free(path);
        return rc;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: not JSON with a weight_map object", path);
    } else {
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
        const cJSON *ts = meta ? cJSON_GetObjectItemCaseSensitive(meta, "total_size") : NULL;
        uint64_t v;
        if (ts && json_uint(ts, 9007199254740992.0, &v)) out->total_size = (int64_t)v;
        /* distinct names: the index is small, a quadratic scan over distinct files is fine */
        const char **names = NULL;
        size_t nn = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, wm) {
            out->n_tensors++;
            if (!cJSON_IsString(e) || !safe_shard_name(e->valuestring)) {
                rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: weight_map entry %.200s must name a file in the folder", path, e->string);
                break;
            }
            size_t i = 0;
            while (i < nn && strcmp(names[i], e->valuestring)) i++;
            if (i < nn) continue;
            const char **nb = realloc(names, (nn + 1) * sizeof *nb);
            if (!nb) {
                rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
                break;
            }
            names = nb;
            names[nn++] = e->valuestring;
            char *sp = nvlm_path_join(dir, e->valuestring);
            if (sp && nvlm_file_exists(sp)) out->n_present++;
            free(sp);
        }
        out->n_files = nn;
        free(names);
    }
    cJSON_Delete(root);
    free(path);
    return rc;
}

int nvlm_st_read_span(const nvlm_st *st, const nvlm_tensor *t, uint64_t off, uint64_t n, void *dst, nvlm_err *err) {
    if (off > t->nbytes || n > t->nbytes - off)
        return nvlm_fail(err, NVLM_E_INTERNAL, "bytes %llu..%llu of %s are outside its %llu bytes", (unsigned long long)off,
                         (unsigned long long)(off + n), t->name, (unsigned long long)t->nbytes);
    const st_file *f = NULL;
    for (size_t i = 0; i < st->n_files && !f; i++)
        if (st->files[i].path == t->file) f = &st->files[i];
    if (!f || f->in_memory || !f->map.data) { /* in memory already (or a borrowed buffer) */
        memcpy(dst, (const uint8_t *)t->data + off, (size_t)n);
        return NVLM_OK;
    }
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nvlm_fail(err, NVLM_E_IO, "cannot open %s: %s", f->path, strerror(errno));
    uint64_t at = (uint64_t)((const uint8_t *)t->data - f->map.data) + off;
    int rc = nvlm_pread_all(fd, dst, (size_t)n, at, f->path, err);
    close(fd);
    return rc ? nvlm_fail_prefix(err, "reading %s: ", t->name) : NVLM_OK;
}
