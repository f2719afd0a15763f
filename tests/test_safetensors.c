/* safetensors: the reference tiny checkpoints (single, sharded), the writer's round trip,
 * and every kind of bad checkpoint, built in a temporary folder from a good one. */
#include "check.h"
#include "core/file.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/safetensors_write.h"
#include "model/tensors.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[64];


static void put_file(const char *dir, const char *name, const void *data, size_t len) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (f) {
        if (len) fwrite(data, 1, len, f);
        fclose(f);
    }
}

static uint8_t *get_file(const char *dir, const char *name, size_t *len) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *d;
    nvlm_err e;
    if (nvlm_read_file(p, 0, &d, len, &e)) return NULL;
    return (uint8_t *)d;
}

/* A fresh folder under tmp_root. */
static const char *new_dir(const char *name) {
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", tmp_root, name);
    check_rm_flat_dir(p);
    mkdir(p, 0777);
    return p;
}

/* Rebuilds a safetensors image with its header passed through edit (header JSON text in,
 * new text out), keeping the data bytes. */
typedef void (*header_edit)(cJSON *h);
static uint8_t *rebuild(const uint8_t *f, size_t len, header_edit edit, size_t *out_len) {
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | f[i];
    cJSON *h = cJSON_ParseWithLength((const char *)f + 8, (size_t)hl);
    edit(h);
    char *t = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t nl = strlen(t), dl = len - 8 - (size_t)hl;
    uint8_t *o = malloc(8 + nl + dl);
    for (int i = 0; i < 8; i++) o[i] = (uint8_t)((uint64_t)nl >> (8 * i));
    memcpy(o + 8, t, nl);
    memcpy(o + 8 + nl, f + 8 + hl, dl);
    free(t);
    *out_len = 8 + nl + dl;
    return o;
}

#define T_NORM "language_model.model.norm.weight"
#define T_EMB "language_model.model.embed_tokens.weight"
#define T_LM "language_model.lm_head.weight"

static void e_wrong_dtype(cJSON *h) {
    cJSON *t = cJSON_GetObjectItem(h, T_NORM);
    cJSON_ReplaceItemInObject(t, "dtype", cJSON_CreateString("I64"));
}
static void e_unknown_dtype(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "dtype", cJSON_CreateString("Q9"));
}
static void e_missing(cJSON *h) { cJSON_DeleteItemFromObject(h, T_NORM); }
static void e_reshape(cJSON *h) { /* same bytes, other shape */
    cJSON *t = cJSON_GetObjectItem(h, T_NORM);
    cJSON_ReplaceItemInObject(t, "shape", cJSON_Parse("[8, 8]"));
}
static void e_overlap(cJSON *h) { /* lm_head claims the bytes of embed_tokens */
    cJSON *a = cJSON_GetObjectItem(h, T_EMB), *b = cJSON_GetObjectItem(h, T_LM);
    cJSON_ReplaceItemInObject(b, "data_offsets", cJSON_Duplicate(cJSON_GetObjectItem(a, "data_offsets"), 1));
}
static void e_outside(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "data_offsets", cJSON_Parse("[99999872, 100000000]"));
}
static void e_span(cJSON *h) { /* span one element short of shape x dtype */
    cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(h, T_NORM), "data_offsets");
    cJSON *end = cJSON_GetArrayItem(o, 1);
    cJSON_SetNumberValue(end, end->valuedouble - 2);
}
static void e_negative(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "shape", cJSON_Parse("[-64]"));
}
static void e_reversed(cJSON *h) {
    cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(h, T_NORM), "data_offsets");
    double a = cJSON_GetArrayItem(o, 0)->valuedouble, b = cJSON_GetArrayItem(o, 1)->valuedouble;
    cJSON_SetNumberValue(cJSON_GetArrayItem(o, 0), b);
    cJSON_SetNumberValue(cJSON_GetArrayItem(o, 1), a);
}
static void e_no_offsets(cJSON *h) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(h, T_NORM), "data_offsets"); }
static void e_float_offsets(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "data_offsets", cJSON_Parse("[0.5, 128.5]"));
}
static void e_bad_meta(cJSON *h) { cJSON_ReplaceItemInObject(h, "__metadata__", cJSON_CreateNumber(3)); }
static void e_huge_shape(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "shape", cJSON_Parse("[4294967296, 4294967296, 4294967296]"));
}
static void e_too_many_dims(cJSON *h) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, T_NORM), "shape", cJSON_Parse("[1,1,1,1,1,1,1,1,64]"));
}

typedef struct bad_case {
    const char *id;
    header_edit edit;
    int stage;                /* 0: nvlm_st_open fails, 1: nvlm_check_tensors fails */
    const char *mention1, *mention2;
} bad_case;

static void test_reference(void) {
    nvlm_st *st;
    nvlm_err err = {0};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", shared_path("reference/models/tiny-nvlm-d"));
    int rc = nvlm_st_open(dir, &st, &err);
    CHECK(rc == 0, "open tiny: %s", err.msg);
    if (rc) return;
    CHECK(nvlm_st_count(st) == 61 && nvlm_st_file_count(st) == 1, "61 tensors in 1 file");
    const nvlm_tensor *t = nvlm_st_find(st, "vision_model.encoder.layers.0.attn.qkv.weight");
    CHECK(t && t->dtype == NVLM_DT_F32 && t->ndim == 2 && t->shape[0] == 384 && t->shape[1] == 80 &&
          t->numel == 384 * 80 && t->nbytes == 384 * 80 * 4 && strstr(t->file, "model.safetensors"), "qkv");
    t = nvlm_st_find(st, T_EMB);
    CHECK(t && t->dtype == NVLM_DT_BF16 && t->nbytes == 4272 * 64 * 2, "embed");
    CHECK(!nvlm_st_find(st, "nope"), "find absent");
    CHECK(nvlm_st_at(st, 61) == NULL && nvlm_st_at(st, 0) != NULL, "at bounds");
    for (size_t i = 1; i < nvlm_st_count(st); i++)
        CHECK(strcmp(nvlm_st_at(st, i - 1)->name, nvlm_st_at(st, i)->name) < 0, "sorted");
    int64_t want[1] = {64};
    const nvlm_tensor *o;
    CHECK(nvlm_st_expect(st, T_NORM, 1, want, &o, &err) == 0 && o && o->numel == 64, "expect ok");
    want[0] = 65;
    rc = nvlm_st_expect(st, T_NORM, 1, want, &o, &err);
    CHECK(rc < 0 && !o && strstr(err.msg, "tensor " T_NORM " in ") && strstr(err.msg, "has shape [64], expected [65]"), "%s", err.msg);
    rc = nvlm_st_expect(st, "x.y", 1, want, NULL, &err);
    CHECK(rc < 0 && strstr(err.msg, "tensor x.y is missing (expected in ") && strstr(err.msg, "tiny-nvlm-d/model.safetensors)"), "%s", err.msg);
    nvlm_st *sh;
    snprintf(dir, sizeof dir, "%s", shared_path("reference/models/tiny-nvlm-d-sharded"));
    rc = nvlm_st_open(dir, &sh, &err);
    CHECK(rc == 0, "open sharded: %s", err.msg);
    if (!rc) {
        CHECK(nvlm_st_count(sh) == 61 && nvlm_st_file_count(sh) == 3, "61 tensors in 3 files");
        CHECK(nvlm_st_total_bytes(sh) == 2220384, "total bytes = index total_size");
        for (size_t i = 0; i < 61; i++) {
            const nvlm_tensor *a = nvlm_st_at(st, i), *b = nvlm_st_at(sh, i);
            CHECK(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->nbytes == b->nbytes, "same layout %s", a->name);
        }
        rc = nvlm_st_expect(sh, "x.y", 1, want, NULL, &err);
        CHECK(rc < 0 && strstr(err.msg, "is missing (expected in checkpoint ") && strstr(err.msg, "tiny-nvlm-d-sharded"), "%s", err.msg);
        nvlm_st_index_info ii;
        CHECK(nvlm_st_index_summary(dir, &ii, &err) == 0 && ii.n_tensors == 61 && ii.n_files == 3 &&
              ii.n_present == 3 && ii.total_size == 2220384, "index summary");
        nvlm_st_close(sh);
    }
    nvlm_st_close(st);
    nvlm_st_close(NULL);
    /* the 72B folder: an index and no shard */
    nvlm_st_index_info ii;
    snprintf(dir, sizeof dir, "%s", shared_path("reference/nvlm-d-72b"));
    CHECK(nvlm_st_index_summary(dir, &ii, &err) == 0 && ii.n_tensors == 1556 && ii.n_files == 46 &&
          ii.n_present == 0 && ii.total_size == 176901927168ll, "72B index: %s", err.msg);
    rc = nvlm_st_open(dir, &st, &err);
    CHECK(rc == NVLM_E_IO && strstr(err.msg, "model-000") && strstr(err.msg, "missing"), "72B open: %s", err.msg);
    rc = nvlm_st_open("/nonexistent", &st, &err);
    CHECK(rc == NVLM_E_IO && strstr(err.msg, "no weights in /nonexistent"), "%s", err.msg);
}

static void test_writer(void) {
    nvlm_stw *w;
    nvlm_err err = {0};
    CHECK(nvlm_stw_new(&w, &err) == 0, "new");
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040}; /* bf16 1, 2, -3 */
    uint16_t c[1] = {0x3c00};                 /* f16 1 */
    int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[1] = {1};
    CHECK(nvlm_stw_add(w, "z.a", NVLM_DT_F32, 2, sa, a, &err) == 0, "add a");
    CHECK(nvlm_stw_add(w, "b \"quoted\"\\", NVLM_DT_BF16, 1, sb, b, &err) == 0, "add b");
    CHECK(nvlm_stw_add(w, "c", NVLM_DT_F16, 1, sc, c, &err) == 0, "add c");
    CHECK(nvlm_stw_add(w, "scalar", NVLM_DT_F32, 0, NULL, a, &err) == 0, "add scalar");
    CHECK(nvlm_stw_add(w, "q", NVLM_DT_Q8_0, 1, sb, b, &err) == NVLM_E_UNSUPPORTED, "block dtype refused");
    CHECK(nvlm_stw_add(w, "__metadata__", NVLM_DT_F32, 1, sb, a, &err) == NVLM_E_INVALID_ARG, "reserved name");
    CHECK(nvlm_stw_count(w) == 4 && nvlm_stw_total_bytes(w) == 24 + 6 + 2 + 4, "count/bytes");
    const char *d = new_dir("writer");
    CHECK(nvlm_stw_write_dir(w, d, 1, &err) == 0, "write: %s", err.msg);
    nvlm_st *st;
    int rc = nvlm_st_open(d, &st, &err);
    CHECK(rc == 0, "reopen: %s", err.msg);
    if (!rc) {
        const nvlm_tensor *t = nvlm_st_find(st, "z.a");
        CHECK(t && t->dtype == NVLM_DT_F32 && t->ndim == 2 && t->shape[1] == 3 && !memcmp(t->data, a, 24) &&
              ((uintptr_t)t->data - (uintptr_t)nvlm_st_at(st, 0)->data) % 1 == 0, "a back");
        t = nvlm_st_find(st, "b \"quoted\"\\");
        CHECK(t && t->dtype == NVLM_DT_BF16 && !memcmp(t->data, b, 6), "b back (escaped name)");
        t = nvlm_st_find(st, "c");
        CHECK(t && t->dtype == NVLM_DT_F16 && !memcmp(t->data, c, 2), "c back");
        t = nvlm_st_find(st, "scalar");
        CHECK(t && t->ndim == 0 && t->numel == 1 && !memcmp(t->data, a, 4), "scalar back");
        /* the 8-byte multiple tensor is 8-byte aligned in the file (mmap is page aligned) */
        CHECK(((uintptr_t)nvlm_st_find(st, "z.a")->data) % 8 == 0, "aligned");
        nvlm_st_close(st);
    }
    size_t len;
    uint8_t *f = get_file(d, "model.safetensors", &len);
    CHECK(f && len >= 8, "file");
    if (f) {
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | f[i];
        CHECK((8 + hl) % 8 == 0 && len == 8 + hl + 36, "header padded, no gaps");
        CHECK(!memcmp(f + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31), "metadata first");
        free(f);
    }
    /* sharded, then single again: the stale index must go */
    CHECK(nvlm_stw_write_dir(w, d, 3, &err) == 0, "sharded: %s", err.msg);
    rc = nvlm_st_open(d, &st, &err);
    CHECK(rc == 0 && nvlm_st_file_count(st) == 3 && nvlm_st_count(st) == 4, "sharded back: %s", err.msg);
    if (!rc) nvlm_st_close(st);
    char p[300];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CHECK(!nvlm_file_exists(p), "stale single file removed");
    CHECK(nvlm_stw_write_dir(w, d, 5, &err) == NVLM_E_INVALID_ARG, "more shards than tensors");
    CHECK(nvlm_stw_write_dir(w, d, 1, &err) == 0, "single again");
    rc = nvlm_st_open(d, &st, &err);
    CHECK(rc == 0 && nvlm_st_file_count(st) == 1, "single wins: %s", err.msg);
    if (!rc) nvlm_st_close(st);
    CHECK(nvlm_stw_write_file(w, "/nonexistent/x.safetensors", &err) == NVLM_E_IO, "unwritable: %s", err.msg);
    /* no temporary files left behind */
    DIR *dd = opendir(d);
    int tmp = 0;
    struct dirent *e;
    while (dd && (e = readdir(dd))) tmp += strstr(e->d_name, ".tmp") != NULL;
    if (dd) closedir(dd);
    CHECK(tmp == 0, "no temporaries");
    /* duplicates refused at write time */
    CHECK(nvlm_stw_add(w, "c", NVLM_DT_F16, 1, sc, c, &err) == 0, "dup add");
    CHECK(nvlm_stw_write_dir(w, d, 1, &err) == NVLM_E_INVALID_ARG && strstr(err.msg, "twice"), "dup write: %s", err.msg);
    nvlm_stw_free(w);
    nvlm_stw_free(NULL);
}

/* Writes a one-file checkpoint from the tiny model's bytes (optionally edited) into dir. */
static void test_bad_single(void) {
    size_t len;
    char ref[4096];
    snprintf(ref, sizeof ref, "%s", shared_path("reference/models/tiny-nvlm-d"));
    uint8_t *good = get_file(ref, "model.safetensors", &len);
    uint8_t *cfgt;
    size_t cl;
    cfgt = get_file(ref, "config.json", &cl);
    CHECK(good && cfgt, "reference files");
    if (!good || !cfgt) return;
    nvlm_config cfg;
    nvlm_err err = {0};
    CHECK(nvlm_config_parse((char *)cfgt, cl, "config.json", &cfg, &err) == 0, "cfg");
    const bad_case cases[] = {
        {"wrong dtype", e_wrong_dtype, 0, T_NORM, "I64"},
        {"unknown dtype", e_unknown_dtype, 0, T_NORM, "unknown"},
        {"missing tensor", e_missing, 1, "tensor " T_NORM " is missing", "model.safetensors"},
        {"shape mismatch", e_reshape, 1, "has shape [8, 8], expected [64]", T_NORM},
        {"overlap", e_overlap, 0, "overlap", T_LM},
        {"outside", e_outside, 0, "outside the file", T_NORM},
        {"span", e_span, 0, "needs 128 bytes", T_NORM},
        {"negative dim", e_negative, 0, "shape", T_NORM},
        {"reversed offsets", e_reversed, 0, "end before begin", T_NORM},
        {"no offsets", e_no_offsets, 0, "data_offsets", T_NORM},
        {"float offsets", e_float_offsets, 0, "data_offsets", T_NORM},
        {"bad metadata", e_bad_meta, 0, "__metadata__", "model.safetensors"},
        {"huge shape", e_huge_shape, 0, "absurdly large", T_NORM},
        {"too many dims", e_too_many_dims, 0, "dimensions", T_NORM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t nl;
        uint8_t *b = rebuild(good, len, cases[i].edit, &nl);
        const char *d = new_dir("bad");
        put_file(d, "model.safetensors", b, nl);
        free(b);
        nvlm_st *st;
        int rc = nvlm_st_open(d, &st, &err);
        if (cases[i].stage == 1) {
            CHECK(rc == 0, "%s: open: %s", cases[i].id, err.msg);
            if (!rc) {
                rc = nvlm_check_tensors(&cfg, st, &err);
                nvlm_st_close(st);
            }
        } else if (!rc) {
            nvlm_st_close(st);
        }
        CHECK(rc < 0 && strstr(err.msg, cases[i].mention1) && strstr(err.msg, cases[i].mention2),
              "%s: rc %d '%s'", cases[i].id, rc, err.msg);
    }
    /* raw byte damage */
    const char *d = new_dir("raw");
    uint8_t *b = malloc(len);
    nvlm_st *st;
    struct {
        const char *id;
        size_t keep;
        uint64_t hlen;     /* 0: unchanged */
        int first;         /* replace the header's first byte (-1: no) */
        const char *mention;
    } raw[] = {
        {"truncated", len - 100, 0, -1, "outside the file"},
        {"absurd header length", len, UINT64_C(1) << 62, -1, "absurd header length"},
        {"header past end", len, 1u << 24, -1, "past the end"},
        {"non-JSON header", len, 0, 'x', "not valid JSON"},
        {"too short", 5, 0, -1, "too short"},
        {"empty", 0, 0, -1, "too short"},
        {"tiny header", len, 1, -1, "cannot hold"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof *raw; i++) {
        memcpy(b, good, len);
        if (raw[i].hlen)
            for (int k = 0; k < 8; k++) b[k] = (uint8_t)(raw[i].hlen >> (8 * k));
        if (raw[i].first >= 0) b[8] = (uint8_t)raw[i].first;
        put_file(d, "model.safetensors", b, raw[i].keep);
        int rc = nvlm_st_open(d, &st, &err);
        if (!rc) nvlm_st_close(st);
        CHECK(rc < 0 && strstr(err.msg, raw[i].mention) && strstr(err.msg, "model.safetensors"), "%s: '%s'", raw[i].id, err.msg);
    }
    /* junk after the JSON inside the header, duplicate names */
    memcpy(b, good, len);
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--) hl = hl << 8 | b[k];
    b[8 + hl - 1] = '#';
    int rc = nvlm_st_parse_buffer(b, len, "junk.safetensors", &st, &err);
    CHECK(rc < 0 && (strstr(err.msg, "junk") || strstr(err.msg, "JSON")), "junk: %s", err.msg);
    const char *dup = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    uint8_t img[256] = {0};
    size_t dl = strlen(dup);
    img[0] = (uint8_t)dl;
    memcpy(img + 8, dup, dl);
    rc = nvlm_st_parse_buffer(img, 8 + dl + 8, "dup.safetensors", &st, &err);
    CHECK(rc < 0 && strstr(err.msg, "appears twice"), "dup: %s", err.msg);
    /* the wrong number of dummy heads in the config */
    memcpy(b, good, len);
    put_file(d, "model.safetensors", b, len);
    rc = nvlm_st_open(d, &st, &err);
    CHECK(rc == 0, "good copy opens: %s", err.msg);
    if (!rc) {
        cfg.vision.num_dummy_heads = 2;
        rc = nvlm_check_tensors(&cfg, st, &err);
        CHECK(rc < 0 && strstr(err.msg, "num_dummy_heads") && strstr(err.msg, "implies 3"), "dummy: %s", err.msg);
        cfg.vision.num_dummy_heads = -1; /* absent: derived, fine */
        CHECK(nvlm_check_tensors(&cfg, st, &err) == 0, "derived dummy ok: %s", err.msg);
        nvlm_st_close(st);
    }
    free(b);
    free(good);
    free(cfgt);
    nvlm_config_free(&cfg);
}

/* Sharded damage: a copy of tiny-nvlm-d-sharded with one thing broken. */
static void copy_sharded(const char *d, const char *skip) {
    char ref[4096];
    snprintf(ref, sizeof ref, "%s", shared_path("reference/models/tiny-nvlm-d-sharded"));
    const char *names[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json", "config.json"};
    for (int i = 0; i < 5; i++) {
        if (skip && !strcmp(skip, names[i])) continue;
        size_t len;
        uint8_t *f = get_file(ref, names[i], &len);
        if (f) put_file(d, names[i], f, len);
        free(f);
    }
}

static void edit_index(const char *d, const char *tensor, const char *file, int remove) {
    size_t len;
    char *t = (char *)get_file(d, "model.safetensors.index.json", &len);
    cJSON *j = cJSON_Parse(t);
    free(t);
    cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    if (remove) cJSON_DeleteItemFromObject(wm, tensor);
    else if (cJSON_GetObjectItem(wm, tensor)) cJSON_ReplaceItemInObject(wm, tensor, cJSON_CreateString(file));
    else cJSON_AddItemToObject(wm, tensor, cJSON_CreateString(file));
    t = cJSON_Print(j);
    cJSON_Delete(j);
    put_file(d, "model.safetensors.index.json", t, strlen(t));
    free(t);
}

static void expect_open_fails(const char *d, const char *what, const char *m1, const char *m2) {
    nvlm_st *st;
    nvlm_err err = {0};
    int rc = nvlm_st_open(d, &st, &err);
    if (!rc) nvlm_st_close(st);
    CHECK(rc < 0 && strstr(err.msg, m1) && strstr(err.msg, m2), "%s: rc %d '%s'", what, rc, err.msg);
}

static void test_bad_sharded(void) {
    const char *d = new_dir("sharded");
    copy_sharded(d, NULL);
    nvlm_st *st;
    nvlm_err err = {0};
    int rc = nvlm_st_open(d, &st, &err);
    CHECK(rc == 0, "copy opens: %s", err.msg);
    if (!rc) nvlm_st_close(st);
    const char *s2 = "model-00002-of-00003.safetensors";
    /* truncated shard */
    size_t len;
    uint8_t *f = get_file(d, s2, &len);
    put_file(d, s2, f, len - 1000);
    expect_open_fails(d, "truncated shard", s2, "outside the file");
    put_file(d, s2, f, len);
    free(f);
    /* a shard the index names is missing */
    d = new_dir("sharded2");
    copy_sharded(d, "model-00003-of-00003.safetensors");
    expect_open_fails(d, "missing shard", "model-00003-of-00003.safetensors", "missing");
    /* index names a shard that does not exist */
    d = new_dir("sharded3");
    copy_sharded(d, NULL);
    edit_index(d, T_NORM, "model-00009-of-00003.safetensors", 0);
    expect_open_fails(d, "index names absent shard", "model-00009-of-00003.safetensors", T_NORM);
    /* index entry not in the named shard (it is in another) */
    copy_sharded(d, NULL);
    size_t il;
    char *it = (char *)get_file(d, "model.safetensors.index.json", &il);
    cJSON *ij = cJSON_Parse(it);
    free(it);
    const char *where = cJSON_GetObjectItem(cJSON_GetObjectItem(ij, "weight_map"), T_NORM)->valuestring;
    const char *other = strcmp(where, s2) ? s2 : "model-00001-of-00003.safetensors";
    edit_index(d, T_NORM, other, 0);
    expect_open_fails(d, "entry in wrong shard", T_NORM, other);
    cJSON_Delete(ij);
    /* index entry that no shard has */
    copy_sharded(d, NULL);
    edit_index(d, "ghost.weight", s2, 0);
    expect_open_fails(d, "ghost entry", "ghost.weight", "missing from shard");
    /* tensor in a shard but not in the weight_map */
    copy_sharded(d, NULL);
    edit_index(d, T_NORM, NULL, 1);
    expect_open_fails(d, "unlisted tensor", T_NORM, "not listed");
    /* shard names must stay inside the folder */
    copy_sharded(d, NULL);
    edit_index(d, T_NORM, "../model-00001-of-00003.safetensors", 0);
    expect_open_fails(d, "path escape", "must name a file in the folder", T_NORM);
    /* bad index JSON */
    put_file(d, "model.safetensors.index.json", "{\"weight_map\": [", 16);
    expect_open_fails(d, "bad index", "model.safetensors.index.json", "JSON");
    put_file(d, "model.safetensors.index.json", "{\"metadata\": {}}", 16);
    expect_open_fails(d, "no weight_map", "weight_map", "index");
    /* a tensor in two shards */
    d = new_dir("twoshards");
    nvlm_stw *w;
    nvlm_stw_new(&w, &err);
    float v[2] = {1, 2};
    int64_t s[1] = {2};
    nvlm_stw_add(w, "a", NVLM_DT_F32, 1, s, v, &err);
    nvlm_stw_add(w, "b", NVLM_DT_F32, 1, s, v, &err);
    char p[300];
    snprintf(p, sizeof p, "%s/one.safetensors", d);
    nvlm_stw_write_file(w, p, &err);
    snprintf(p, sizeof p, "%s/two.safetensors", d);
    nvlm_stw_write_file(w, p, &err);
    nvlm_stw_free(w);
    const char *idx = "{\"weight_map\": {\"a\": \"one.safetensors\", \"b\": \"two.safetensors\"}}";
    put_file(d, "model.safetensors.index.json", idx, strlen(idx));
    expect_open_fails(d, "two shards", "in two shards", "one.safetensors");
}

/* Reading into memory: the same bytes at 64-byte boundaries, progress to the total, cancel and
 * a file cut short under the reader leave a usable checkpoint behind. */
typedef struct read_count {
    uint64_t last, total;
    int calls, cancel_at;
    int backwards; /* set when done ever shrank */
} read_count;

static int count_read(void *user, uint64_t done, uint64_t total) {
    read_count *c = user;
    c->backwards |= done < c->last;
    c->last = done, c->total = total;
    return ++c->calls == c->cancel_at;
}

static int keep_vision(void *user, const char *name) {
    (void)user;
    return !strncmp(name, "vision_model.", 13);
}

/* Some tensors kept in the mapping (the loader keeps the vision encoder there): those stay
 * where they were, the rest move to memory, all keep their bytes, and progress counts the
 * bytes read; nvlm_st_read_span reads both kinds. */
static void test_read_some(void) {
    nvlm_err err = {0};
    nvlm_st *mapped, *st;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", shared_path("reference/models/tiny-nvlm-d-sharded"));
    if (nvlm_st_open(dir, &mapped, &err) || nvlm_st_open(dir, &st, &err)) {
        CHECK(0, "open: %s", err.msg);
        return;
    }
    const void *before[4096];
    uint64_t want = 0;
    size_t n = nvlm_st_count(st), kept = 0;
    for (size_t i = 0; i < n && i < 4096; i++) {
        before[i] = nvlm_st_at(st, i)->data;
        if (!keep_vision(NULL, nvlm_st_at(st, i)->name)) want += nvlm_st_at(st, i)->nbytes;
    }
    read_count c = {0, 0, 0, 0, 0};
    int rc = nvlm_st_read_some_into_memory(st, 2, keep_vision, NULL, count_read, &c, &err);
    CHECK(rc == 0 && c.last == want && c.total == want, "read some: %d %s (%llu of %llu)", rc, err.msg,
          (unsigned long long)c.last, (unsigned long long)want);
    int placed = 1, same = 1, span = 1;
    for (size_t i = 0; i < n && i < 4096; i++) {
        const nvlm_tensor *a = nvlm_st_at(mapped, i), *b = nvlm_st_at(st, i);
        int keep = keep_vision(NULL, b->name);
        kept += keep;
        placed &= keep ? b->data == before[i] : b->data != before[i] && (uintptr_t)b->data % 64 == 0;
        same &= !memcmp(a->data, b->data, a->nbytes);
        uint8_t buf[64];
        size_t len = b->nbytes < sizeof buf ? (size_t)b->nbytes : sizeof buf;
        span &= nvlm_st_read_span(st, b, b->nbytes - len, len, buf, &err) == 0 &&
                !memcmp(buf, (const uint8_t *)a->data + (a->nbytes - len), len);
    }
    CHECK(kept > 0 && kept < n && placed && same && span, "kept %zu of %zu in the mapping: placed %d, same bytes %d, spans %d",
          kept, n, placed, same, span);
    nvlm_st_close(st);
    nvlm_st_close(mapped);
}

static void test_read_into_memory(void) {
    nvlm_err err = {0};
    const char *names[] = {"reference/models/tiny-nvlm-d", "reference/models/tiny-nvlm-d-sharded"};
    for (int k = 0; k < 2; k++) {
        nvlm_st *mapped, *st;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", shared_path(names[k]));
        if (nvlm_st_open(dir, &mapped, &err) || nvlm_st_open(dir, &st, &err)) {
            CHECK(0, "open %s: %s", names[k], err.msg);
            return;
        }
        read_count c = {0, 0, 0, 0, 0};
        int rc = nvlm_st_read_into_memory(st, 1 + k, count_read, &c, &err);
        CHECK(rc == 0 && c.calls >= 1 && c.last == c.total && c.total == nvlm_st_total_bytes(st), "read %s: %s", names[k], err.msg);
        int same = 1, aligned = 1;
        for (size_t i = 0; i < nvlm_st_count(st); i++) {
            const nvlm_tensor *a = nvlm_st_at(mapped, i), *b = nvlm_st_at(st, i);
            same &= a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes) && a->data != b->data;
            aligned &= (uintptr_t)b->data % 64 == 0;
        }
        CHECK(same && aligned, "%s: every tensor read, the same bytes, 64-byte aligned", names[k]);
        const void *before = nvlm_st_at(st, 0)->data;
        CHECK(nvlm_st_read_into_memory(st, 0, NULL, NULL, &err) == 0 && nvlm_st_at(st, 0)->data == before,
              "reading again leaves what is in memory: %s", err.msg);
        nvlm_st_close(st);
        /* cancelled after the first chunk: an error, the checkpoint still whole */
        if (nvlm_st_open(dir, &st, &err)) continue;
        c = (read_count){0, 0, 0, 1, 0};
        rc = nvlm_st_read_into_memory(st, 2, count_read, &c, &err);
        CHECK(rc == NVLM_E_CANCELLED && strstr(err.msg, "cancelled"), "cancel: %d %s", rc, err.msg);
        same = 1;
        for (size_t i = 0; i < nvlm_st_count(st); i++)
            same &= !memcmp(nvlm_st_at(mapped, i)->data, nvlm_st_at(st, i)->data, nvlm_st_at(st, i)->nbytes);
        CHECK(same, "%s: still readable after a cancelled read", names[k]);
        nvlm_st_close(st);
        nvlm_st_close(mapped);
    }
    /* a file cut short between opening and reading: an error naming it, no crash */
    size_t len;
    char src[4096];
    snprintf(src, sizeof src, "%s", shared_path("reference/models/tiny-nvlm-d"));
    uint8_t *img = get_file(src, "model.safetensors", &len);
    const char *d = new_dir("cut");
    put_file(d, "model.safetensors", img, len);
    nvlm_st *st;
    if (img && nvlm_st_open(d, &st, &err) == 0) {
        char p[512];
        snprintf(p, sizeof p, "%s/model.safetensors", d);
        CHECK(truncate(p, (off_t)(len / 2)) == 0, "truncate");
        int rc = nvlm_st_read_into_memory(st, 2, NULL, NULL, &err);
        CHECK(rc == NVLM_E_IO && strstr(err.msg, "model.safetensors ends at byte") && strstr(err.msg, "truncated"), "cut: %d %s", rc,
              err.msg);
        nvlm_st_close(st);
    } else {
        CHECK(0, "open the copy: %s", err.msg);
    }
    free(img);
}

/* A checkpoint whose tensors span several 8 MiB read pieces, in 2 shards: read by 1 to 5
 * threads, every byte lands where it belongs; progress only grows and ends at the total;
 * a cancel at any progress call and a shard cut short are errors that leave it readable. */
static void test_read_parallel(void) {
    nvlm_err err = {0};
    nvlm_stw *w;
    if (nvlm_stw_new(&w, &err)) {
        CHECK(0, "new: %s", err.msg);
        return;
    }
    enum { BIG = (20 << 20) / 4 + 3, SMALL = 1000 };
    float *big = malloc(sizeof(float) * BIG), small[SMALL];
    for (int i = 0; i < BIG; i++) big[i] = (float)i;
    for (int i = 0; i < SMALL; i++) small[i] = -(float)i;
    int64_t sb[1] = {BIG}, ss[1] = {SMALL}, s2[1] = {BIG / 2}, st1[1] = {SMALL - 1};
    CHECK(nvlm_stw_add(w, "big", NVLM_DT_F32, 1, sb, big, &err) == 0 && nvlm_stw_add(w, "small", NVLM_DT_F32, 1, ss, small, &err) == 0 &&
              nvlm_stw_add(w, "half", NVLM_DT_F32, 1, s2, big + 1, &err) == 0 && nvlm_stw_add(w, "tiny", NVLM_DT_F32, 1, st1, small + 1, &err) == 0,
          "add: %s", err.msg);
    const char *d = new_dir("parallel");
    CHECK(nvlm_stw_write_dir(w, d, 2, &err) == 0, "write: %s", err.msg);
    nvlm_stw_free(w);
    nvlm_st *mapped, *st;
    if (nvlm_st_open(d, &mapped, &err)) {
        CHECK(0, "open: %s", err.msg);
        free(big);
        return;
    }
    for (int nt = 1; nt <= 5; nt++) {
        if (nvlm_st_open(d, &st, &err)) break;
        read_count c = {0, 0, 0, 0, 0};
        int rc = nvlm_st_read_into_memory(st, nt, count_read, &c, &err);
        int same = rc == 0;
        for (size_t i = 0; same && i < nvlm_st_count(st); i++)
            same = !memcmp(nvlm_st_at(mapped, i)->data, nvlm_st_at(st, i)->data, nvlm_st_at(st, i)->nbytes) &&
                   (uintptr_t)nvlm_st_at(st, i)->data % 64 == 0;
        CHECK(same && c.last == c.total && c.total == nvlm_st_total_bytes(st) && c.calls >= 2 && !c.backwards, "%d readers: %s", nt, err.msg);
        nvlm_st_close(st);
        for (int at = 1; at <= 3; at++) { /* cancelled at the at-th progress call */
            if (nvlm_st_open(d, &st, &err)) break;
            c = (read_count){0, 0, 0, at, 0};
            rc = nvlm_st_read_into_memory(st, nt, count_read, &c, &err);
            same = 1;
            for (size_t i = 0; i < nvlm_st_count(st); i++)
                same &= !memcmp(nvlm_st_at(mapped, i)->data, nvlm_st_at(st, i)->data, nvlm_st_at(st, i)->nbytes);
            /* with several readers the caller may see fewer progress calls than `at` (the others
             * took the pieces): then the read completes, and that is right too */
            int cancelled = rc == NVLM_E_CANCELLED || (rc == 0 && c.calls < at);
            CHECK(cancelled && same, "%d readers, cancel at call %d: %d %s (%d calls)", nt, at, rc, err.msg, c.calls);
            nvlm_st_close(st);
        }
    }
    /* the shard holding "big" cut short after opening: an I/O error naming it */
    char p[600];
    snprintf(p, sizeof p, "%s", nvlm_st_find(mapped, "big")->file);
    if (nvlm_st_open(d, &st, &err) == 0) {
        CHECK(truncate(p, 12 << 20) == 0, "truncate");
        int rc = nvlm_st_read_into_memory(st, 3, NULL, NULL, &err);
        CHECK(rc == NVLM_E_IO && strstr(err.msg, "ends at byte"), "cut shard, 3 readers: %d %s", rc, err.msg);
        nvlm_st_close(st);
    }
    nvlm_st_close(mapped);
    free(big);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/nvlm_test_st_XXXXXX");
    if (!mkdtemp(tmp_root)) return 1;
    test_reference();
    test_writer();
    test_bad_single();
    test_bad_sharded();
    test_read_into_memory();
    test_read_some();
    test_read_parallel();
    const char *sub[] = {"writer", "bad", "raw", "sharded", "sharded2", "sharded3", "twoshards", "cut", "parallel"};
    for (size_t i = 0; i < sizeof sub / sizeof *sub; i++) check_rm_flat_dir(new_dir(sub[i]));
    rmdir(tmp_root);
    return check_done("test_safetensors");
}
