/* test_serve_util.h - what the server tests share: reading reference files, data: URLs of
 * reference images, and a reference case's conversation as OpenAI messages. */
#ifndef NVLM_TESTS_TEST_SERVE_UTIL_H
#define NVLM_TESTS_TEST_SERVE_UTIL_H
#include "check.h"
#include <cjson/cJSON.h>
#include <string.h>

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    if (d && fread(d, 1, (size_t)n, f) != (size_t)n) free(d), d = NULL;
    if (d) d[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return d;
}

static char *b64(const unsigned char *d, size_t n) {
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(n / 3 * 4 + 8), *p = o;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = d[i] << 16 | (i + 1 < n ? d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *p++ = A[v >> 18], *p++ = A[v >> 12 & 63];
        *p++ = i + 1 < n ? A[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? A[v & 63] : '=';
    }
    *p = 0;
    return o;
}

/* "data:image/png;base64,..." of a reference image (malloc'ed). */
static char *data_url(const char *rel) {
    size_t n;
    char *d = slurp(shared_path(rel), &n);
    if (!d) return NULL;
    char *e = b64((unsigned char *)d, n), *u = malloc(strlen(e) + 32);
    sprintf(u, "data:image/png;base64,%s", e);
    free(d), free(e);
    return u;
}

/* The conversation of a reference case as an API request: each "<image>\n" of the texts
 * becomes an image part (chat()'s implicit one in front when history is None). */
static void add_parts(cJSON *content, const char *text, const char *const *urls, int *next) {
    const char *p = text;
    for (const char *hit; (hit = strstr(p, "<image>\n")); p = hit + 8) {
        if (hit > p) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "type", "text");
            char *s = strndup(p, (size_t)(hit - p));
            cJSON_AddStringToObject(t, "text", s);
            free(s);
            cJSON_AddItemToArray(content, t);
        }
        cJSON *im = cJSON_CreateObject(), *iu = cJSON_AddObjectToObject(im, "image_url");
        cJSON_AddStringToObject(im, "type", "image_url");
        cJSON_AddStringToObject(iu, "url", urls[(*next)++]);
        cJSON_AddItemToArray(content, im);
    }
    if (*p) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "type", "text");
        cJSON_AddStringToObject(t, "text", p);
        cJSON_AddItemToArray(content, t);
    }
}

static cJSON *case_messages(const cJSON *c, const char *const *urls) {
    cJSON *msgs = cJSON_CreateArray();
    const cJSON *sys = cJSON_GetObjectItem(c, "system_message"), *hist = cJSON_GetObjectItem(c, "history");
    const char *q = cJSON_GetObjectItem(c, "question")->valuestring;
    int n_img = cJSON_GetArraySize(cJSON_GetObjectItem(c, "images")), next = 0;
    if (cJSON_IsString(sys)) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", sys->valuestring);
        cJSON_AddItemToArray(msgs, m);
    }
    for (const cJSON *t = cJSON_IsArray(hist) ? hist->child : NULL; t; t = t->next) {
        cJSON *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        add_parts(cJSON_AddArrayToObject(u, "content"), cJSON_GetArrayItem(t, 0)->valuestring, urls, &next);
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", cJSON_GetArrayItem(t, 1)->valuestring);
        cJSON_AddItemToArray(msgs, u);
        cJSON_AddItemToArray(msgs, a);
    }
    char *qq = malloc(strlen(q) + 16);
    sprintf(qq, "%s%s", (!cJSON_IsArray(hist) && n_img && !strstr(q, "<image>")) ? "<image>\n" : "", q);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    add_parts(cJSON_AddArrayToObject(u, "content"), qq, urls, &next);
    cJSON_AddItemToArray(msgs, u);
    free(qq);
    return msgs;
}

/* The cases whose conversation the API can express (every placeholder followed by "\n";
 * the config's tile bound). */
static int expressible(const cJSON *c) {
    const char *q = cJSON_GetObjectItem(c, "question")->valuestring;
    const char *model = cJSON_GetObjectItem(c, "model")->valuestring;
    for (const char *p = q; (p = strstr(p, "<image>")); p += 7)
        if (p[7] != '\n') return 0;
    return !strcmp(model, "models/tiny-nvlm-d") && cJSON_GetObjectItem(c, "max_num")->valueint == 6;
}

#endif
