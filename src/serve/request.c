/* A chat completion request body -> serve_request: OpenAI's fields validated one by one, the
 * messages reduced to chat()'s conversation (system, (question, answer) history, question)
 * and every image decoded. Each failure names the field, as OpenAI's errors do. */
#include "grammar/grammar.h"
#include "core/file.h"
#include "image/decode.h"
#include "serve/serve_int.h"
#include <cjson/cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum { MAX_STOP = 16, MAX_STOP_LEN = 1024, MAX_MESSAGES = 4096 };

/* A member that is present and not null, or NULL. */
static const cJSON *field(const cJSON *obj, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

static int get_int(const cJSON *it, const char *name, long lo, long hi, long *out, serve_error *e) {
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || !isfinite(v) || v != floor(v))
        return serve_fail(e, 400, "invalid_type", name, "'%s' must be an integer", name);
    if (v < (double)lo || v > (double)hi)
        return serve_fail(e, 400, "invalid_value", name, "'%s' must be between %ld and %ld", name, lo, hi);
    *out = (long)v;
    return 0;
}

static int get_num(const cJSON *it, const char *name, double lo, double hi, double *out, serve_error *e) {
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return serve_fail(e, 400, "invalid_type", name, "'%s' must be a number", name);
    if (it->valuedouble < lo || it->valuedouble > hi)
        return serve_fail(e, 400, "invalid_value", name, "'%s' must be between %g and %g", name, lo, hi);
    *out = it->valuedouble;
    return 0;
}

static int get_bool(const cJSON *it, const char *name, int *out, serve_error *e) {
    if (!cJSON_IsBool(it)) return serve_fail(e, 400, "invalid_type", name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(it);
    return 0;
}

/* ---------------------------------------------------------------- images */

/* A path under the allowed folder, read with nvlm_open_regular (a FIFO or device there is
 * refused at once, never waited on). Every failure before the open reads the same, "not
 * found or outside the allowed folder": the answer must not tell whether a path outside the
 * folder exists. */
static int read_local(const char *path, const serve_limits *lim, const char *param, uint8_t **data, size_t *len,
                      serve_error *e) {
    char dir[PATH_MAX], real[PATH_MAX];
    size_t dl = 0;
    int inside = realpath(lim->local_image_dir, dir) && realpath(path, real);
    if (inside) {
        dl = strlen(dir);
        inside = !strncmp(real, dir, dl) && (real[dl] == '/' || dir[dl - 1] == '/');
    }
    if (!inside)
        return serve_fail(e, 400, "invalid_image_url", param,
                          "image file '%.300s' is not found or outside the allowed folder", path);
    nvlm_err err = {0};
    uint64_t size = 0;
    int fd;
    if (nvlm_open_regular(real, &fd, &size, &err))
        return serve_fail(e, 400, "invalid_image_url", param, "image file '%.300s' is not a readable regular file", path);
    if (size > lim->max_image_bytes) {
        close(fd);
        return serve_fail(e, 413, "image_too_large", param, "image file is over %zu bytes", lim->max_image_bytes);
    }
    uint8_t *buf = malloc(size ? (size_t)size : 1);
    int rc = buf ? nvlm_pread_all(fd, buf, (size_t)size, 0, real, &err) : NVLM_E_NOMEM;
    close(fd);
    if (rc) {
        free(buf);
        return rc == NVLM_E_NOMEM ? serve_fail(e, 500, NULL, param, "out of memory")
                                  : serve_fail(e, 400, "invalid_image_url", param, "cannot read image file '%.300s'", path);
    }
    *data = buf, *len = (size_t)size;
    return 0;
}

/* data:image/<type>[;params];base64,<data> */
static int decode_data_url(const char *url, const serve_limits *lim, const char *param, uint8_t **data, size_t *len,
                           serve_error *e) {
    const char *comma = strchr(url, ',');
    if (!comma) return serve_fail(e, 400, "invalid_image_url", param, "malformed data URL (no ',')");
    const char *meta = url + 5;
    size_t ml = (size_t)(comma - meta);
    if (ml < 7 || strncasecmp(meta + ml - 7, ";base64", 7))
        return serve_fail(e, 400, "invalid_image_url", param, "data URL must be base64 encoded (';base64,')");
    if (strncasecmp(meta, "image/", 6))
        return serve_fail(e, 400, "invalid_image_url", param, "data URL media type must be image/...");
    size_t b64 = strlen(comma + 1);
    if (b64 / 4 * 3 > lim->max_image_bytes + 2)
        return serve_fail(e, 413, "image_too_large", param, "image is over %zu bytes", lim->max_image_bytes);
    int rc = serve_base64_decode(comma + 1, b64, data, len);
    if (rc == -2) return serve_fail(e, 500, NULL, param, "out of memory");
    if (rc) return serve_fail(e, 400, "invalid_base64", param, "the image's base64 data is malformed");
    if (*len > lim->max_image_bytes) {
        free(*data);
        *data = NULL;
        return serve_fail(e, 413, "image_too_large", param, "image is over %zu bytes", lim->max_image_bytes);
    }
    return 0;
}

static int add_image(serve_request *r, const char *url, const serve_limits *lim, const char *param, serve_error *e) {
    if (r->n_images >= lim->max_images)
        return serve_fail(e, 400, "too_many_images", param, "at most %d images per request", lim->max_images);
    uint8_t *data = NULL;
    size_t len = 0;
    int rc;
    if (lim->given) { /* a follower rank: rank 0 read this image already */
        len = lim->given_len[r->n_images];
        data = malloc(len ? len : 1);
        if (!data) return serve_fail(e, 500, NULL, param, "out of memory");
        if (len) memcpy(data, lim->given[r->n_images], len);
        rc = 0;
    } else if (!strncasecmp(url, "data:", 5)) {
        rc = decode_data_url(url, lim, param, &data, &len, e);
    } else if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8)) {
        if (!lim->allow_remote)
            return serve_fail(e, 400, "remote_images_disabled", param,
                              "remote image URLs are refused (the server was not started with --allow-remote-images): "
                              "send the image as a data:image/...;base64, URL");
        char why[400];
        serve_fetch_opts fo = lim->fetch;
        fo.max_bytes = lim->max_image_bytes;
        rc = serve_fetch_url(url, &fo, &data, &len, why, sizeof why);
        if (rc == -2) return serve_fail(e, 500, NULL, param, "fetching the image '%.200s': %s", url, why);
        if (rc) return serve_fail(e, 400, "invalid_image_url", param, "cannot fetch the image '%.300s': %s", url, why);
    } else if (strstr(url, "://") && strncasecmp(url, "file://", 7)) {
        return serve_fail(e, 400, "invalid_image_url", param, "image URL '%.200s': only data:, http(s):// (with "
                          "--allow-remote-images) and local files (with --allow-local-images) are accepted", url);
    } else if (!lim->local_image_dir) {
        return serve_fail(e, 400, "local_images_disabled", param,
                          "local image paths are refused (the server was not started with --allow-local-images)");
    } else {
        rc = read_local(strncasecmp(url, "file://", 7) ? url : url + 7, lim, param, &data, &len, e);
    }
    if (rc) return rc;
    /* Only the header is read here: the pixels are decoded later, one image at a time, once
     * the server's image memory has room for them (serve_make_chat). */
    serve_image_src src = {data, len, 0, 0, 0, 0, {0}};
    snprintf(src.param, sizeof src.param, "%s", param);
    src.format = img_probe(data, len, &src.width, &src.height, &src.exact);
    if (src.format == IMG_UNKNOWN) rc = serve_fail(e, 400, "invalid_image", param,
                                                   "the image cannot be decoded: not a JPEG, PNG, WebP, GIF or BMP file");
    else if (src.exact && (src.width == 0 || src.height == 0))
        rc = serve_fail(e, 400, "invalid_image", param, "the image cannot be decoded: its header gives a zero size");
    else if (src.exact && (src.width > INT_MAX || src.height > INT_MAX || src.width * src.height > lim->max_image_pixels))
        rc = serve_fail(e, 400, "image_too_large", param,
                        "%s: image size %llux%llu exceeds the limit of %llu pixels (decompression bomb guard)",
                        img_format_name((img_format)src.format), (unsigned long long)src.width,
                        (unsigned long long)src.height, (unsigned long long)lim->max_image_pixels);
    nvlm_image *n = rc ? NULL : realloc(r->images, sizeof *n * (size_t)(r->n_images + 1));
    serve_image_src *ns = n ? realloc(r->image_src, sizeof *ns * (size_t)(r->n_images + 1)) : NULL;
    if (n) r->images = n;
    if (ns) r->image_src = ns;
    if (!rc && !ns) rc = serve_fail(e, 500, NULL, param, "out of memory");
    if (rc) {
        free(data);
        return rc;
    }
    /* width/height: the header's (GIF: a hint until decoded); no pixels yet */
    r->images[r->n_images] = (nvlm_image){(int)src.width, (int)src.height, NULL};
    r->image_src[r->n_images++] = src;
    return 0;
}

/* -------------------------------------------------------------- messages */

typedef struct segment {
    char role;    /* 'u' or 'a' */
    nvlm_buf text;
} segment;

typedef struct convo {
    nvlm_buf system;
    int has_system;
    segment *seg;
    int n_seg;
    int placeholder_in_text;
} convo;

static int put(nvlm_buf *b, const char *s, size_t n, serve_error *e) {
    if (nvlm_buf_append(b, s, n)) return serve_fail(e, 500, NULL, NULL, "out of memory");
    return 0;
}

static int check_text(convo *c, const char *s, const char *param, serve_error *e) {
    if (strstr(s, "<|vision_pad|>"))
        return serve_fail(e, 400, "invalid_value", param, "text may not contain the image token <|vision_pad|>");
    if (strstr(s, "<image>")) c->placeholder_in_text = 1;
    return 0;
}

/* Appends the content (string or parts) of one message to b; images only for users. */
static int put_content(serve_request *r, convo *c, nvlm_buf *b, const cJSON *content, int user, int mi,
                       const serve_limits *lim, serve_error *e) {
    char param[96];
    snprintf(param, sizeof param, "messages[%d].content", mi);
    if (cJSON_IsString(content)) {
        if (check_text(c, content->valuestring, param, e)) return -1;
        return put(b, content->valuestring, strlen(content->valuestring), e);
    }
    if (!cJSON_IsArray(content))
        return serve_fail(e, 400, "invalid_type", param, "'%s' must be a string or an array of parts", param);
    int pi = 0;
    for (const cJSON *part = content->child; part; part = part->next, pi++) {
        snprintf(param, sizeof param, "messages[%d].content[%d]", mi, pi);
        const cJSON *type = field(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return serve_fail(e, 400, "invalid_type", param, "'%s' must be an object with a string 'type'", param);
        if (!strcmp(type->valuestring, "text")) {
            const cJSON *t = field(part, "text");
            if (!cJSON_IsString(t)) return serve_fail(e, 400, "invalid_type", param, "'%s.text' must be a string", param);
            if (check_text(c, t->valuestring, param, e) || put(b, t->valuestring, strlen(t->valuestring), e)) return -1;
        } else if (!strcmp(type->valuestring, "image_url")) {
            if (!user)
                return serve_fail(e, 400, "invalid_value", param, "only user messages may contain images");
            const cJSON *iu = field(part, "image_url");
            const cJSON *url = cJSON_IsObject(iu) ? field(iu, "url") : iu;
            if (!cJSON_IsString(url))
                return serve_fail(e, 400, "invalid_type", param, "'%s.image_url.url' must be a string", param);
            snprintf(param, sizeof param, "messages[%d].content[%d].image_url", mi, pi);
            if (add_image(r, url->valuestring, lim, param, e) || put(b, "<image>\n", 8, e)) return -1;
        } else {
            return serve_fail(e, 400, "invalid_value", param, "content part type '%.40s' is not supported",
                              type->valuestring);
        }
    }
    return 0;
}

/* Appends a user or assistant message, merging it into the previous one of the same role. */
static int add_message(serve_request *r, convo *c, char role, const cJSON *content, int mi, const serve_limits *lim,
                       serve_error *e) {
    if (!c->n_seg || c->seg[c->n_seg - 1].role != role) {
        segment *n = realloc(c->seg, sizeof *n * (size_t)(c->n_seg + 1));
        if (!n) return serve_fail(e, 500, NULL, NULL, "out of memory");
        c->seg = n;
        c->seg[c->n_seg++] = (segment){role, {0}};
    } else if (put(&c->seg[c->n_seg - 1].text, "\n", 1, e)) {
        return -1;
    }
    nvlm_buf *b = &c->seg[c->n_seg - 1].text;
    if (put(b, "", 0, e)) return -1; /* never NULL data */
    if (!content) return 0;
    return put_content(r, c, b, content, role == 'u', mi, lim, e);
}

static int parse_messages(serve_request *r, const cJSON *msgs, const serve_limits *lim, convo *c, serve_error *e) {
    if (!cJSON_IsArray(msgs)) return serve_fail(e, 400, "invalid_type", "messages", "'messages' must be an array");
    int mi = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, mi++) {
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", mi);
        if (mi >= MAX_MESSAGES) return serve_fail(e, 400, "invalid_value", "messages", "too many messages");
        const cJSON *role = field(m, "role"), *content = field(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return serve_fail(e, 400, "invalid_type", param, "'%s' must be an object with a string 'role'", param);
        const char *ro = role->valuestring;
        if (!strcmp(ro, "system") || !strcmp(ro, "developer")) {
            if (!content) return serve_fail(e, 400, "invalid_value", param, "'%s.content' is required", param);
            if (c->has_system && put(&c->system, "\n", 1, e)) return -1;
            c->has_system = 1;
            if (put(&c->system, "", 0, e) || put_content(r, c, &c->system, content, 0, mi, lim, e)) return -1;
        } else if (!strcmp(ro, "user")) {
            if (!content) return serve_fail(e, 400, "invalid_value", param, "'%s.content' is required", param);
            if (add_message(r, c, 'u', content, mi, lim, e)) return -1;
        } else if (!strcmp(ro, "assistant")) {
            if (field(m, "tool_calls") || field(m, "function_call"))
                return serve_fail(e, 400, "unsupported_value", param, "tool calls are not supported");
            if (add_message(r, c, 'a', content, mi, lim, e)) return -1;
        } else {
            return serve_fail(e, 400, "invalid_value", param, "role '%.40s' is not supported (system, user, assistant)",
                              ro);
        }
    }
    if (!c->n_seg) return serve_fail(e, 400, "invalid_value", "messages", "'messages' has no user message");
    if (c->seg[0].role != 'u')
        return serve_fail(e, 400, "invalid_value", "messages", "the conversation must start with a user message");
    if (c->seg[c->n_seg - 1].role != 'u')
        return serve_fail(e, 400, "invalid_value", "messages", "the last message must be from the user");
    if (r->n_images && c->placeholder_in_text)
        return serve_fail(e, 400, "invalid_value", "messages",
                          "text may not contain '<image>' when the request has images (images are placed by their parts)");
    return 0;
}

/* Moves the conversation into r: system, history pairs, question. */
static int take_convo(serve_request *r, convo *c, serve_error *e) {
    if (c->has_system) r->system = c->system.data, c->system = (nvlm_buf){0};
    r->n_history = c->n_seg / 2;
    if (r->n_history && !(r->history = calloc((size_t)r->n_history, sizeof *r->history)))
        return serve_fail(e, 500, NULL, NULL, "out of memory");
    for (int i = 0; i < r->n_history; i++) {
        r->history[i].question = c->seg[2 * i].text.data, c->seg[2 * i].text = (nvlm_buf){0};
        r->history[i].answer = c->seg[2 * i + 1].text.data, c->seg[2 * i + 1].text = (nvlm_buf){0};
    }
    r->question = c->seg[c->n_seg - 1].text.data, c->seg[c->n_seg - 1].text = (nvlm_buf){0};
    return 0;
}

static void convo_free(convo *c) {
    nvlm_buf_free(&c->system);
    for (int i = 0; i < c->n_seg; i++) nvlm_buf_free(&c->seg[i].text);
    free(c->seg);
}

/* -------------------------------------------------------------- sampling */

static int parse_stop(serve_request *r, const cJSON *stop, serve_error *e) {
    int n = cJSON_IsString(stop) ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
    if (n < 0) return serve_fail(e, 400, "invalid_type", "stop", "'stop' must be a string or an array of strings");
    if (n > MAX_STOP) return serve_fail(e, 400, "invalid_value", "stop", "at most %d stop strings", MAX_STOP);
    if (!(r->stop = calloc((size_t)n + 1, sizeof *r->stop))) return serve_fail(e, 500, NULL, NULL, "out of memory");
    const cJSON *it = cJSON_IsString(stop) ? stop : stop->child;
    for (int i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsString(it)) return serve_fail(e, 400, "invalid_type", "stop", "'stop' entries must be strings");
        if (strlen(it->valuestring) > MAX_STOP_LEN)
            return serve_fail(e, 400, "invalid_value", "stop", "stop strings are at most %d bytes", MAX_STOP_LEN);
        if (!(r->stop[i] = strdup(it->valuestring))) return serve_fail(e, 500, NULL, NULL, "out of memory");
    }
    r->sampling.stop = (const char *const *)r->stop;
    return 0;
}

/* Fields nvlm does not implement: accepted only at their neutral value. */
static int refuse_unsupported(const cJSON *root, serve_error *e) {
    static const char *empty_ok[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        const cJSON *it = field(root, empty_ok[i]);
        if (it && cJSON_GetArraySize(it) > 0)
            return serve_fail(e, 400, "unsupported_parameter", empty_ok[i], "'%s' is not supported", empty_ok[i]);
    }
    return 0;
}

/* OpenAI's logit_bias: {"token id": bias in [-100, 100]}. The ids are checked against the
 * vocabulary when the answer starts (an error there is a 400 as well). */
static int parse_logit_bias(serve_request *r, const cJSON *lb, serve_error *e) {
    if (!cJSON_IsObject(lb))
        return serve_fail(e, 400, "invalid_type", "logit_bias", "'logit_bias' must be an object of token id: bias");
    int n = cJSON_GetArraySize(lb);
    if (n > 1024) return serve_fail(e, 400, "invalid_value", "logit_bias", "at most 1024 logit_bias entries");
    if (n && !(r->bias = calloc((size_t)n, sizeof *r->bias))) return serve_fail(e, 500, NULL, NULL, "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, lb) {
        char *end;
        long id = strtol(it->string, &end, 10);
        if (!*it->string || *end || id < 0 || id > INT32_MAX)
            return serve_fail(e, 400, "invalid_value", "logit_bias", "logit_bias key '%.40s' is not a token id",
                              it->string);
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || fabs(it->valuedouble) > 100)
            return serve_fail(e, 400, "invalid_value", "logit_bias", "logit_bias values must be numbers from -100 to 100");
        r->bias[i++] = (nvlm_logit_bias){(int32_t)id, (float)it->valuedouble};
    }
    r->sampling.logit_bias = r->bias, r->sampling.n_logit_bias = (size_t)i;
    return 0;
}

/* response_format: text, json_object, or json_schema {name, schema, strict}; a schema outside
 * the supported subset is a 400 naming the keyword (docs/grammar.md). */
static int parse_response_format(serve_request *r, const cJSON *rf, serve_error *e) {
    const cJSON *rt = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
    if (!cJSON_IsString(rt))
        return serve_fail(e, 400, "invalid_type", "response_format", "'response_format' must be an object with a 'type'");
    nvlm_err err = {0};
    int rc = 0;
    if (!strcmp(rt->valuestring, "text")) return 0;
    if (!strcmp(rt->valuestring, "json_object")) {
        rc = nvlm_grammar_json_object(&r->grammar, &err);
    } else if (!strcmp(rt->valuestring, "json_schema")) {
        const cJSON *js = field(rf, "json_schema"), *schema = js ? field(js, "schema") : NULL;
        if (!cJSON_IsObject(js) || !schema)
            return serve_fail(e, 400, "invalid_value", "response_format.json_schema",
                              "'response_format.json_schema' must be an object with a 'schema'");
        rc = nvlm_grammar_from_json_schema_value(schema, &r->grammar, &err);
        if (rc && rc != NVLM_E_NOMEM)
            return serve_fail(e, 400, "invalid_value", "response_format.json_schema.schema", "%s", err.msg);
    } else {
        return serve_fail(e, 400, "invalid_value", "response_format.type",
                          "response_format type '%.40s' is not one of text, json_object, json_schema", rt->valuestring);
    }
    if (rc) return serve_fail(e, 500, NULL, NULL, "%s", err.msg);
    r->sampling.grammar = r->grammar;
    return 0;
}

/* The OpenAI fields of issue 20: penalties, logit_bias, logprobs, n, response_format and the
 * per-request tile bound (vLLM's max_dynamic_patch, in the body or in mm_processor_kwargs). */
static int parse_openai_extras(serve_request *r, const cJSON *root, serve_error *e) {
    const cJSON *it;
    long l;
    double d;
    if ((it = field(root, "presence_penalty"))) {
        if (get_num(it, "presence_penalty", -2, 2, &d, e)) return -1;
        r->sampling.presence_penalty = (float)d;
    }
    if ((it = field(root, "frequency_penalty"))) {
        if (get_num(it, "frequency_penalty", -2, 2, &d, e)) return -1;
        r->sampling.frequency_penalty = (float)d;
    }
    if ((it = field(root, "logit_bias")) && parse_logit_bias(r, it, e)) return -1;
    if ((it = field(root, "response_format")) && parse_response_format(r, it, e)) return -1;
    r->n = 1;
    if ((it = field(root, "n"))) {
        if (get_int(it, "n", 1, SERVE_MAX_N, &l, e)) return -1;
        r->n = (int)l;
    }
    const cJSON *mm = field(root, "mm_processor_kwargs");
    if (mm && !cJSON_IsObject(mm))
        return serve_fail(e, 400, "invalid_type", "mm_processor_kwargs", "'mm_processor_kwargs' must be an object");
    if ((it = field(root, "max_dynamic_patch")) || (mm && (it = field(mm, "max_dynamic_patch")))) {
        if (get_int(it, "max_dynamic_patch", 1, SERVE_MAX_TILES, &l, e)) return -1;
        r->max_tiles = (int)l;
    }
    return 0;
}

/* Chat logprobs: a boolean, with top_logprobs 0-20 beside it. */
static int parse_chat_logprobs(serve_request *r, const cJSON *root, serve_error *e) {
    const cJSON *lp = field(root, "logprobs"), *top = field(root, "top_logprobs");
    long l;
    if (lp && get_bool(lp, "logprobs", &r->sampling.logprobs, e)) return -1;
    if (top) {
        if (get_int(top, "top_logprobs", 0, NVLM_MAX_TOP_LOGPROBS, &l, e)) return -1;
        if (!r->sampling.logprobs)
            return serve_fail(e, 400, "invalid_value", "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->sampling.top_logprobs = (int)l;
    }
    return 0;
}

static int parse_sampling(serve_request *r, const cJSON *root, serve_error *e) {
    const cJSON *it;
    long l;
    double d;
    if ((it = field(root, "max_tokens")) && get_int(it, "max_tokens", 1, 1 << 24, &l, e) == 0) r->max_tokens = (int)l;
    else if (it) return -1;
    if ((it = field(root, "max_completion_tokens"))) {
        if (get_int(it, "max_completion_tokens", 1, 1 << 24, &l, e)) return -1;
        r->max_tokens = (int)l;
    }
    if ((it = field(root, "temperature"))) {
        if (get_num(it, "temperature", 0, 2, &d, e)) return -1;
        r->sampling.temperature = (float)d;
    }
    if ((it = field(root, "top_p"))) {
        if (get_num(it, "top_p", 0, 1, &d, e)) return -1;
        if (d == 0) return serve_fail(e, 400, "invalid_value", "top_p", "'top_p' must be above 0");
        r->sampling.top_p = (float)d;
    }
    if ((it = field(root, "top_k"))) {
        if (get_int(it, "top_k", 0, 1 << 30, &l, e)) return -1;
        r->sampling.top_k = (int)l;
    }
    if ((it = field(root, "min_p"))) {
        if (get_num(it, "min_p", 0, 1, &d, e)) return -1;
        r->sampling.min_p = (float)d;
    }
    if ((it = field(root, "repetition_penalty"))) {
        if (get_num(it, "repetition_penalty", 1e-3, 100, &d, e)) return -1;
        r->sampling.repetition_penalty = (float)d;
    }
    if ((it = field(root, "seed"))) {
        if (get_int(it, "seed", LONG_MIN / 2, LONG_MAX / 2, &l, e)) return -1;
        r->sampling.seed = (uint64_t)l;
    }
    if ((it = field(root, "stop")) && parse_stop(r, it, e)) return -1;
    if ((it = field(root, "stream")) && get_bool(it, "stream", &r->stream, e)) return -1;
    const cJSON *so = field(root, "stream_options");
    if (so && !cJSON_IsObject(so))
        return serve_fail(e, 400, "invalid_type", "stream_options", "'stream_options' must be an object");
    if (so && (it = field(so, "include_usage")) && get_bool(it, "stream_options.include_usage", &r->include_usage, e))
        return -1;
    if (parse_openai_extras(r, root, e)) return -1;
    if (r->n > 1 && r->stream)
        return serve_fail(e, 400, "unsupported_value", "n", "'n' above 1 is not supported with 'stream' yet");
    return refuse_unsupported(root, e);
}

int serve_parse_request(const char *body, size_t len, const serve_limits *lim, const nvlm_sampling *defaults,
                        serve_request *r, serve_error *e) {
    memset(r, 0, sizeof *r);
    r->sampling = *defaults;
    r->sampling.stop = NULL;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return serve_fail(e, 400, "invalid_json", NULL, "the request body is not valid JSON");
    convo c = {0};
    int rc = 0;
    const cJSON *model = field(root, "model");
    if (!cJSON_IsObject(root)) rc = serve_fail(e, 400, "invalid_type", NULL, "the request body must be a JSON object");
    else if (model && !cJSON_IsString(model))
        rc = serve_fail(e, 400, "invalid_type", "model", "'model' must be a string");
    else if (model && !(r->model = strdup(model->valuestring)))
        rc = serve_fail(e, 500, NULL, NULL, "out of memory");
    if (!rc && !field(root, "messages"))
        rc = serve_fail(e, 400, "missing_required_parameter", "messages", "'messages' is required");
    if (!rc) rc = parse_sampling(r, root, e);
    if (!rc) rc = parse_chat_logprobs(r, root, e);
    if (!rc) rc = parse_messages(r, field(root, "messages"), lim, &c, e);
    if (!rc) rc = take_convo(r, &c, e);
    convo_free(&c);
    cJSON_Delete(root);
    if (rc) serve_request_free(r);
    return rc;
}

void serve_request_free(serve_request *r) {
    if (!r) return;
    free(r->model);
    free(r->system);
    for (int i = 0; i < r->n_history; i++) free(r->history[i].question), free(r->history[i].answer);
    free(r->history);
    free(r->question);
    for (int i = 0; i < r->n_images; i++) nvlm_image_free(&r->images[i]);
    free(r->images);
    for (int i = 0; i < r->n_images; i++) free(r->image_src[i].data);
    free(r->image_src);
    free(r->image_hash);
    for (int i = 0; r->stop && r->stop[i]; i++) free(r->stop[i]);
    free(r->stop);
    nvlm_grammar_free(r->grammar);
    free(r->bias);
    memset(r, 0, sizeof *r);
}

/* --------------------------------------------------------------- completions */

/* Legacy logprobs: an integer 0-20, the number of alternatives (0: the chosen token's only). */
static int parse_completion_logprobs(serve_request *r, const cJSON *root, serve_error *e) {
    const cJSON *lp = field(root, "logprobs");
    long l;
    if (!lp) return 0;
    if (get_int(lp, "logprobs", 0, NVLM_MAX_TOP_LOGPROBS, &l, e)) return -1;
    r->sampling.logprobs = 1, r->sampling.top_logprobs = (int)l;
    return 0;
}

static int parse_prompt(serve_request *r, const cJSON *root, serve_error *e) {
    const cJSON *p = field(root, "prompt");
    if (!p) return serve_fail(e, 400, "missing_required_parameter", "prompt", "'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1) p = p->child;
    if (!cJSON_IsString(p))
        return serve_fail(e, 400, "invalid_type", "prompt", "'prompt' must be a string (or an array of one string)");
    if (!*p->valuestring) return serve_fail(e, 400, "invalid_value", "prompt", "'prompt' is empty");
    if (strstr(p->valuestring, "<|vision_pad|>"))
        return serve_fail(e, 400, "invalid_value", "prompt",
                          "images are not allowed in /v1/completions (the prompt has <|vision_pad|>): use /v1/chat/completions");
    static const char *const image_fields[] = {"images", "image", "image_url", "multi_modal_data", "messages"};
    for (size_t i = 0; i < sizeof image_fields / sizeof image_fields[0]; i++)
        if (field(root, image_fields[i]))
            return serve_fail(e, 400, "invalid_value", image_fields[i],
                              "'%s' is not allowed in /v1/completions: images and messages go to /v1/chat/completions",
                              image_fields[i]);
    static const char *const neutral_false[] = {"echo"};
    const cJSON *it = field(root, neutral_false[0]);
    if (it && !cJSON_IsFalse(it)) return serve_fail(e, 400, "unsupported_parameter", "echo", "'echo' is not supported");
    if ((it = field(root, "suffix")) && !(cJSON_IsString(it) && !*it->valuestring))
        return serve_fail(e, 400, "unsupported_parameter", "suffix", "'suffix' is not supported");
    if ((it = field(root, "best_of")) && !(cJSON_IsNumber(it) && it->valuedouble == 1))
        return serve_fail(e, 400, "unsupported_parameter", "best_of", "'best_of' is not supported (only 1)");
    if (!(r->question = strdup(p->valuestring))) return serve_fail(e, 500, NULL, NULL, "out of memory");
    r->raw = 1;
    return 0;
}

int serve_parse_completion(const char *body, size_t len, const nvlm_sampling *defaults, serve_request *r,
                           serve_error *e) {
    memset(r, 0, sizeof *r);
    r->sampling = *defaults;
    r->sampling.stop = NULL;
    r->sampling.max_new_tokens = 16; /* OpenAI's default max_tokens for completions */
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return serve_fail(e, 400, "invalid_json", NULL, "the request body is not valid JSON");
    int rc = 0;
    const cJSON *model = field(root, "model");
    if (!cJSON_IsObject(root)) rc = serve_fail(e, 400, "invalid_type", NULL, "the request body must be a JSON object");
    else if (model && !cJSON_IsString(model))
        rc = serve_fail(e, 400, "invalid_type", "model", "'model' must be a string");
    else if (model && !(r->model = strdup(model->valuestring)))
        rc = serve_fail(e, 500, NULL, NULL, "out of memory");
    if (!rc) rc = parse_prompt(r, root, e);
    if (!rc) rc = parse_sampling(r, root, e);
    if (!rc) rc = parse_completion_logprobs(r, root, e);
    if (!rc && r->max_tiles) rc = serve_fail(e, 400, "invalid_value", "max_dynamic_patch",
                                             "'max_dynamic_patch' has no use in /v1/completions (no images)");
    cJSON_Delete(root);
    if (rc) serve_request_free(r);
    return rc;
}
