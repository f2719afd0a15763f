/* The JSON the server sends: errors in OpenAI's shape, the model list, completions and
 * streamed chunks (chat.completion.chunk), built with cJSON so every string is escaped. */
#include "serve/serve_int.h"
#include "tokenizer/tok.h"
#include <stdio.h>
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

static char *chunk_json(const char *id, const char *model, long created, const char *role, const char *content,
                        size_t content_len, const char *finish_r, cJSON *lp);

char *serve_chunk_json(const char *id, const char *model, long created, const char *role, const char *content,
                       size_t content_len, const char *finish_r) {
    return chunk_json(id, model, created, role, content, content_len, finish_r, NULL);
}

char *serve_chunk_logprobs_json(const char *id, const char *model, long created, const char *content, size_t content_len,
                                const char *finish_r, const nvlm_tokenizer *tok, const nvlm_logprobs *lp, size_t n) {
    cJSON *l = serve_chat_logprobs(tok, lp, n);
    return l ? chunk_json(id, model, created, NULL, content, content_len, finish_r, l) : NULL;
}

/* lp (taken, may be NULL) becomes the choice's logprobs. */
static char *chunk_json(const char *id, const char *model, long created, const char *role, const char *content,
                        size_t content_len, const char *finish_r, cJSON *lp) {
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
    if (ok && lp) ok = cJSON_AddItemToObject(c, "logprobs", lp), lp = NULL;
    else if (ok) ok = cJSON_AddNullToObject(c, "logprobs") != NULL;
    cJSON_Delete(lp);
    ok = ok && (finish_r ? cJSON_AddStringToObject(c, "finish_reason", finish_r) != NULL
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

/* ------------------------------------------------------- issue 20: choices, logprobs */

/* A token's text for logprobs: its bytes when they are valid UTF-8, else each byte that is
 * not written as \xNN (OpenAI's and vLLM's way for a token that splits a character); the raw
 * bytes go beside it in "bytes". */
static char *token_text(const uint8_t *b, size_t n) {
    char *s = malloc(4 * n + 1), *p = s;
    if (!s) return NULL;
    size_t i = 0;
    while (i < n) {
        size_t ok = tok_utf8_valid_prefix(b + i, n - i);
        memcpy(p, b + i, ok), p += ok, i += ok;
        if (i < n) p += sprintf(p, "\\x%02x", b[i++]);
    }
    *p = 0;
    return s;
}

static cJSON *token_entry(const nvlm_tokenizer *tok, const nvlm_token_logprob *t, int with_bytes) {
    size_t n = 0;
    const uint8_t *b = nvlm_tokenizer_token_bytes(tok, t->id, &n);
    char *text = token_text(b, n);
    cJSON *o = cJSON_CreateObject(), *bytes = NULL;
    int ok = text && o && cJSON_AddStringToObject(o, "token", text) && cJSON_AddNumberToObject(o, "logprob", t->logprob);
    if (ok && with_bytes) {
        ok = (bytes = cJSON_AddArrayToObject(o, "bytes")) != NULL;
        for (size_t i = 0; ok && i < n; i++) {
            cJSON *v = cJSON_CreateNumber(b[i]);
            ok = v && cJSON_AddItemToArray(bytes, v);
            if (!ok) cJSON_Delete(v);
        }
    }
    free(text);
    if (!ok) cJSON_Delete(o);
    return ok ? o : NULL;
}

/* The tokens an answer's logprobs cover: the generated ones but a closing stop token. */
static size_t covered(const nvlm_answer *a, int32_t stop_id) {
    size_t n = a->n_output;
    if (n && !a->finish_length && a->output_ids[n - 1] == stop_id) n--;
    return n;
}

cJSON *serve_chat_logprobs(const nvlm_tokenizer *tok, const nvlm_logprobs *lp, size_t n) {
    cJSON *root = cJSON_CreateObject(), *content = root ? cJSON_AddArrayToObject(root, "content") : NULL;
    int ok = content != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *e = token_entry(tok, &lp[i].chosen, 1), *top = e ? cJSON_AddArrayToObject(e, "top_logprobs") : NULL;
        ok = top && cJSON_AddItemToArray(content, e);
        if (!ok) cJSON_Delete(e);
        for (int k = 0; ok && k < lp[i].n_top; k++) {
            cJSON *t = token_entry(tok, &lp[i].top[k], 1);
            ok = t && cJSON_AddItemToArray(top, t);
            if (!ok) cJSON_Delete(t);
        }
    }
    if (!ok) cJSON_Delete(root);
    return ok ? root : NULL;
}

/* The legacy completions shape: tokens, token_logprobs, top_logprobs [{token: logprob}], text_offset. */
static cJSON *legacy_logprobs(const nvlm_tokenizer *tok, const nvlm_logprobs *lp, size_t n, int top_n) {
    cJSON *root = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(root, "tokens"), *vals = cJSON_AddArrayToObject(root, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(root, "top_logprobs"), *offs = cJSON_AddArrayToObject(root, "text_offset");
    int ok = toks && vals && tops && offs;
    size_t off = 0;
    for (size_t i = 0; ok && i < n; i++) {
        size_t len;
        const uint8_t *b = nvlm_tokenizer_token_bytes(tok, lp[i].chosen.id, &len);
        char *text = token_text(b, len);
        cJSON *t = text ? cJSON_CreateString(text) : NULL, *v = cJSON_CreateNumber(lp[i].chosen.logprob);
        cJSON *o = cJSON_CreateNumber((double)off), *m = top_n ? cJSON_CreateObject() : cJSON_CreateNull();
        ok = t && v && o && m;
        if (ok) cJSON_AddItemToArray(toks, t), cJSON_AddItemToArray(vals, v), cJSON_AddItemToArray(offs, o),
                cJSON_AddItemToArray(tops, m);
        else cJSON_Delete(t), cJSON_Delete(v), cJSON_Delete(o), cJSON_Delete(m);
        free(text);
        off += len;
        for (int k = 0; ok && top_n && k < lp[i].n_top; k++) {
            const uint8_t *kb = nvlm_tokenizer_token_bytes(tok, lp[i].top[k].id, &len);
            char *kt = token_text(kb, len);
            ok = kt && (cJSON_GetObjectItemCaseSensitive(m, kt) || cJSON_AddNumberToObject(m, kt, lp[i].top[k].logprob));
            free(kt);
        }
    }
    if (!ok) cJSON_Delete(root);
    return ok ? root : NULL;
}

char *serve_answers_json(const char *id, const char *model, long created, const serve_request *r,
                         const nvlm_tokenizer *tok, int32_t stop_id, const nvlm_answer *answers, int n, int cut) {
    cJSON *root = cJSON_CreateObject();
    int ok = root && add_head(root, id, r->raw ? "text_completion" : "chat.completion", model, created);
    cJSON *choices = ok ? cJSON_AddArrayToObject(root, "choices") : NULL;
    ok = choices != NULL;
    size_t completion = 0;
    for (int i = 0; ok && i < n; i++) {
        const nvlm_answer *a = &answers[i];
        completion += a->n_output;
        cJSON *c = cJSON_CreateObject(), *lp = NULL;
        ok = c && cJSON_AddItemToArray(choices, c) && cJSON_AddNumberToObject(c, "index", i);
        if (!ok) break;
        if (r->sampling.logprobs && a->logprobs) {
            size_t cov = covered(a, stop_id);
            lp = r->raw ? legacy_logprobs(tok, a->logprobs, cov, r->sampling.top_logprobs)
                        : serve_chat_logprobs(tok, a->logprobs, cov);
            ok = lp != NULL;
        }
        if (r->raw) {
            ok = ok && cJSON_AddStringToObject(c, "text", a->response);
        } else {
            cJSON *msg = ok ? cJSON_AddObjectToObject(c, "message") : NULL;
            ok = msg && cJSON_AddStringToObject(msg, "role", "assistant") &&
                 cJSON_AddStringToObject(msg, "content", a->response);
        }
        if (ok && lp) ok = cJSON_AddItemToObject(c, "logprobs", lp);
        else if (ok) ok = cJSON_AddNullToObject(c, "logprobs") != NULL;
        else cJSON_Delete(lp);
        ok = ok && cJSON_AddStringToObject(c, "finish_reason", cut ? "cancelled" : a->finish_length ? "length" : "stop");
    }
    ok = ok && add_usage(root, n ? answers[0].n_prompt : 0, completion);
    return finish(root, ok);
}

char *serve_text_chunk_json(const char *id, const char *model, long created, const char *text, size_t len,
                            const char *finish_r) {
    cJSON *root = cJSON_CreateObject();
    int ok = root && add_head(root, id, "text_completion", model, created);
    cJSON *choices = ok ? cJSON_AddArrayToObject(root, "choices") : NULL, *c = choices ? add_choice(choices) : NULL;
    char *t = malloc(len + 1);
    if (t) memcpy(t, text ? text : "", len), t[len] = 0;
    ok = c && t && cJSON_AddStringToObject(c, "text", t) && cJSON_AddNullToObject(c, "logprobs") &&
         (finish_r ? cJSON_AddStringToObject(c, "finish_reason", finish_r) != NULL
                   : cJSON_AddNullToObject(c, "finish_reason") != NULL);
    free(t);
    return finish(root, ok);
}

char *serve_model_list_json(const char *model_id, long created, int ctx, int max_tiles) {
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    int ok = data && m && cJSON_AddItemToArray(data, m);
    if (!ok) cJSON_Delete(m);
    ok = ok && cJSON_AddStringToObject(root, "object", "list") && cJSON_AddStringToObject(m, "id", model_id) &&
         cJSON_AddStringToObject(m, "object", "model") && cJSON_AddNumberToObject(m, "created", (double)created) &&
         cJSON_AddStringToObject(m, "owned_by", "nvlm") && cJSON_AddNumberToObject(m, "max_model_len", ctx) &&
         cJSON_AddNumberToObject(m, "context_length", ctx) && cJSON_AddNumberToObject(m, "max_dynamic_patch", max_tiles);
    return finish(root, ok);
}

char *serve_props_json(const nvlm_serve_options *o, const char *model_id, const char *arch, int ctx, int max_tiles) {
    cJSON *root = cJSON_CreateObject(), *d = cJSON_CreateObject();
    int ok = root && d && cJSON_AddItemToObject(root, "default_sampling", d);
    if (!ok) cJSON_Delete(d);
    const nvlm_sampling *s = &o->defaults;
    ok = ok && cJSON_AddStringToObject(root, "model", model_id) && cJSON_AddStringToObject(root, "arch", arch) &&
         cJSON_AddNumberToObject(root, "context_length", ctx) && cJSON_AddNumberToObject(root, "max_tiles", max_tiles) &&
         cJSON_AddNumberToObject(root, "max_tiles_per_request", o->max_tiles ? o->max_tiles : SERVE_MAX_TILES) &&
         cJSON_AddNumberToObject(root, "parallel", o->parallel) && cJSON_AddNumberToObject(root, "max_queue", o->max_queue) &&
         cJSON_AddNumberToObject(root, "max_images", o->max_images) &&
         cJSON_AddNumberToObject(root, "max_image_bytes", (double)o->max_image_bytes) &&
         cJSON_AddNumberToObject(root, "max_image_pixels", (double)o->max_image_pixels) &&
         cJSON_AddNumberToObject(root, "max_body", (double)o->max_body) &&
         cJSON_AddBoolToObject(root, "local_images", o->local_image_dir != NULL) &&
         cJSON_AddBoolToObject(root, "auth", o->api_key && *o->api_key) &&
         cJSON_AddNumberToObject(root, "max_n", SERVE_MAX_N) &&
         cJSON_AddNumberToObject(root, "max_top_logprobs", NVLM_MAX_TOP_LOGPROBS) &&
         cJSON_AddNumberToObject(d, "temperature", s->temperature) && cJSON_AddNumberToObject(d, "top_p", s->top_p) &&
         cJSON_AddNumberToObject(d, "top_k", s->top_k) && cJSON_AddNumberToObject(d, "min_p", s->min_p) &&
         cJSON_AddNumberToObject(d, "repetition_penalty", s->repetition_penalty) &&
         cJSON_AddNumberToObject(d, "max_tokens", s->max_new_tokens);
    return finish(root, ok);
}
