/* The JSON the server sends: errors in OpenAI's shape, the model list, completions and
 * streamed chunks (chat.completion.chunk), built with cJSON so every string is escaped. */
#include "serve/serve_int.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* Prints and deletes obj; NULL when any allocation failed (cJSON returns NULL on the way). */
static char *finish(cJSON *obj, int ok) {
    char *s = ok && obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return s;
}

char *serve_error_json(const serve_error *e) {
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    int ok = err && cJSON_AddStringToObject(err, "message", e->message) && cJSON_AddStringToObject(err, "type", e->type);
    ok = ok && (e->param[0] ? cJSON_AddStringToObject(err, "param", e->param) != NULL
                            : cJSON_AddNullToObject(err, "param") != NULL);
    ok = ok && (e->code ? cJSON_AddStringToObject(err, "code", e->code) != NULL
                        : cJSON_AddNullToObject(err, "code") != NULL);
    return finish(root, ok);
}

char *serve_models_json(const char *model_id, long created) {
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    int ok = data && m && cJSON_AddItemToArray(data, m);
    if (!ok) cJSON_Delete(m);
    ok = ok && cJSON_AddStringToObject(root, "object", "list") && cJSON_AddStringToObject(m, "id", model_id) &&
         cJSON_AddStringToObject(m, "object", "model") && cJSON_AddNumberToObject(m, "created", (double)created) &&
         cJSON_AddStringToObject(m, "owned_by", "nvlm");
    return finish(root, ok);
}

static int add_head(cJSON *root, const char *id, const char *object, const char *model, long created) {
    return cJSON_AddStringToObject(root, "id", id) && cJSON_AddStringToObject(root, "object", object) &&
           cJSON_AddNumberToObject(root, "created", (double)created) && cJSON_AddStringToObject(root, "model", model) &&
           cJSON_AddStringToObject(root, "system_fingerprint", "nvlm");
}

static int add_usage(cJSON *root, size_t prompt, size_t completion) {
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    return u && cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt) &&
           cJSON_AddNumberToObject(u, "completion_tokens", (double)completion) &&
           cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt + completion));
}

/* A choice object appended to choices. */
static cJSON *add_choice(cJSON *choices) {
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    if (!cJSON_AddItemToArray(choices, c)) {
        cJSON_Delete(c);
        return NULL;
    }
    return cJSON_AddNumberToObject(c, "index", 0) ? c : NULL;
}

char *serve_completion_json(const char *id, const char *model, long created, const char *content, const char *finish_r,
                            size_t prompt_tokens, size_t completion_tokens) {
    cJSON *root = cJSON_CreateObject();
    int ok = root && add_head(root, id, "chat.completion", model, created);
    cJSON *choices = ok ? cJSON_AddArrayToObject(root, "choices") : NULL, *c = choices ? add_choice(choices) : NULL;
    cJSON *msg = c ? cJSON_AddObjectToObject(c, "message") : NULL;
    ok = msg && cJSON_AddStringToObject(msg, "role", "assistant") && cJSON_AddStringToObject(msg, "content", content) &&
         cJSON_AddNullToObject(c, "logprobs") && cJSON_AddStringToObject(c, "finish_reason", finish_r) &&
         add_usage(root, prompt_tokens, completion_tokens);
    return finish(root, ok);
}

char *serve_chunk_json(const char *id, const char *model, long created, const char *role, const char *content,
                       size_t content_len, const char *finish_r) {
    cJSON *root = cJSON_CreateObject();
    int ok = root && add_head(root, id, "chat.completion.chunk", model, created);
    cJSON *choices = ok ? cJSON_AddArrayToObject(root, "choices") : NULL, *c = choices ? add_choice(choices) : NULL;
    cJSON *delta = c ? cJSON_AddObjectToObject(c, "delta") : NULL;
    ok = delta != NULL;
    if (ok && role) ok = cJSON_AddStringToObject(delta, "role", role) != NULL;
    if (ok && content) {
        char *t = malloc(content_len + 1);
        if (t) memcpy(t, content, content_len), t[content_len] = 0;
        ok = t && cJSON_AddStringToObject(delta, "content", t);
        free(t);
    }
    ok = ok && cJSON_AddNullToObject(c, "logprobs") &&
         (finish_r ? cJSON_AddStringToObject(c, "finish_reason", finish_r) != NULL
                   : cJSON_AddNullToObject(c, "finish_reason") != NULL);
    return finish(root, ok);
}

char *serve_usage_chunk_json(const char *id, const char *model, long created, size_t prompt_tokens,
                             size_t completion_tokens) {
    cJSON *root = cJSON_CreateObject();
    int ok = root && add_head(root, id, "chat.completion.chunk", model, created) &&
             cJSON_AddArrayToObject(root, "choices") && add_usage(root, prompt_tokens, completion_tokens);
    return finish(root, ok);
}
