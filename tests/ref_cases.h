/* ref_cases.h - what the end-to-end model tests share: reading the reference's float32 files
 * and case lines (tests/data/reference/model_cases*.jsonl), comparing ids and values, and
 * setting up a conversation as a case describes it. Header-only: each test is one program. */
#ifndef NVLM_TESTS_REF_CASES_H
#define NVLM_TESTS_REF_CASES_H
#include "check.h"
#include "core/file.h"
#include "nvlm.h"
#include <cjson/cJSON.h>
#include <math.h>

/* n float32 values from reference/<rel>, malloc'ed; NULL (message on stderr) if absent or sized wrong. */
static inline float *ref_read_f32(const char *rel, size_t n) {
    char *data;
    size_t len = 0;
    nvlm_err err = {0};
    if (nvlm_read_file(shared_path(rel), 0, &data, &len, &err) || len != n * 4) {
        if (!err.msg[0]) free(data);
        fprintf(stderr, "cannot read %s (%zu bytes, want %zu): %s\n", rel, len, n * 4, err.msg);
        return NULL;
    }
    return (float *)data; /* malloc'ed, so aligned for float */
}

/* Largest |a - b|; a NaN anywhere makes it NaN (so "<= bound" fails). */
static inline double ref_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static inline int ref_ids_equal(const cJSON *arr, const int32_t *ids, size_t n) {
    if ((size_t)cJSON_GetArraySize(arr) != n) return 0;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) if (e->valueint != ids[i++]) return 0;
    return 1;
}

static inline const char *ref_str(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valuestring; }
static inline int ref_int(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valueint; }

/* A chat set up as the case says: system message, history (null vs [] kept apart), max_num, images. */
static inline nvlm_chat *ref_case_chat(nvlm_model *m, const cJSON *cs, const char *id) {
    nvlm_err err = {0};
    nvlm_chat *c = NULL;
    CHECK(nvlm_chat_new(m, &c, &err) == 0, "%s: %s", id, err.msg);
    if (!c) return NULL;
    const cJSON *sys = cJSON_GetObjectItem(cs, "system_message"), *hist = cJSON_GetObjectItem(cs, "history");
    if (cJSON_IsString(sys)) nvlm_chat_set_system(c, sys->valuestring, &err);
    nvlm_chat_set_max_tiles(c, ref_int(cs, "max_num"));
    if (cJSON_IsArray(hist)) {
        nvlm_chat_mark_history(c);
        const cJSON *t;
        cJSON_ArrayForEach(t, hist)
            nvlm_chat_add_history(c, cJSON_GetArrayItem(t, 0)->valuestring, cJSON_GetArrayItem(t, 1)->valuestring, &err);
    }
    const cJSON *im;
    cJSON_ArrayForEach(im, cJSON_GetObjectItem(cs, "images")) {
        char rel[512];
        snprintf(rel, sizeof rel, "reference/%s", im->valuestring);
        CHECK(nvlm_chat_add_image_file(c, shared_path(rel), &err) == 0, "%s: %s", id, err.msg);
    }
    return c;
}

/* NVLM_MODEL_CASES=id1,id2 restricts a test to those cases (debugging). */
static inline int ref_selected(const char *id) {
    const char *only = getenv("NVLM_MODEL_CASES");
    if (!only || !*only) return 1;
    size_t n = strlen(id);
    for (const char *p = only; (p = strstr(p, id)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}
#endif
