/* Structured output (src/grammar): the schema compiler's refusals, the matcher on hand-written
 * texts (every integer of a span against its range), generation on the random-weight tiny
 * models and with random logits over the full 152k Qwen2 vocabulary: every answer parses
 * (cJSON) and validates against its schema (the small validator below). */
#include "check.h"
#include "grammar/grammar.h"
#include "generate/sampler.h"
#include <cjson/cJSON.h>
#include <math.h>

/* ------------------------------------------------------------------ validator */

static int utf8_chars(const char *s) {
    int n = 0;
    for (; *s; s++) n += ((uint8_t)*s & 0xc0) != 0x80;
    return n;
}

static const cJSON *resolve(const cJSON *doc, const char *ref) {
    if (!strcmp(ref, "#")) return doc;
    if (!strncmp(ref, "#/$defs/", 8)) return cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "$defs"), ref + 8);
    if (!strncmp(ref, "#/definitions/", 14)) return cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "definitions"), ref + 14);
    return NULL;
}

static int type_ok(const cJSON *v, const char *t, const cJSON *s) {
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "string")) {
        if (!cJSON_IsString(v)) return 0;
        const cJSON *lo = cJSON_GetObjectItem(s, "minLength"), *hi = cJSON_GetObjectItem(s, "maxLength");
        int n = utf8_chars(v->valuestring);
        return (!lo || n >= lo->valueint) && (!hi || n <= hi->valueint);
    }
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) return 0;
        const cJSON *b;
        double x = v->valuedouble;
        if ((b = cJSON_GetObjectItem(s, "minimum")) && x < b->valuedouble) return 0;
        if ((b = cJSON_GetObjectItem(s, "maximum")) && x > b->valuedouble) return 0;
        if ((b = cJSON_GetObjectItem(s, "exclusiveMinimum")) && x <= b->valuedouble) return 0;
        if ((b = cJSON_GetObjectItem(s, "exclusiveMaximum")) && x >= b->valuedouble) return 0;
        return 1;
    }
    if (!strcmp(t, "array")) return cJSON_IsArray(v);
    if (!strcmp(t, "object")) return cJSON_IsObject(v);
    return 0;
}

static int validate(const cJSON *v, const cJSON *s, const cJSON *doc) {
    if (cJSON_IsTrue(s)) return 1;
    const cJSON *k;
    if ((k = cJSON_GetObjectItem(s, "$ref"))) return validate(v, resolve(doc, k->valuestring), doc);
    if ((k = cJSON_GetObjectItem(s, "const"))) return cJSON_Compare(v, k, 1);
    if ((k = cJSON_GetObjectItem(s, "enum"))) {
        const cJSON *e;
        cJSON_ArrayForEach(e, k) if (cJSON_Compare(v, e, 1)) return 1;
        return 0;
    }
    if ((k = cJSON_GetObjectItem(s, "anyOf"))) {
        const cJSON *e;
        cJSON_ArrayForEach(e, k) if (validate(v, e, doc)) return 1;
        return 0;
    }
    const cJSON *type = cJSON_GetObjectItem(s, "type");
    if (cJSON_IsString(type) && !type_ok(v, type->valuestring, s)) return 0;
    if (cJSON_IsArray(type)) {
        int any = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, type) any |= type_ok(v, t->valuestring, s);
        if (!any) return 0;
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItem(s, "properties"), *m, *r;
        cJSON_ArrayForEach(m, v) {
            const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
            if (ps && !validate(m, ps, doc)) return 0;
            if (!ps && cJSON_IsFalse(cJSON_GetObjectItem(s, "additionalProperties"))) return 0;
        }
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(s, "required")) if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) return 0;
    }
    if (cJSON_IsArray(v)) {
        const cJSON *items = cJSON_GetObjectItem(s, "items"), *lo = cJSON_GetObjectItem(s, "minItems"),
                    *hi = cJSON_GetObjectItem(s, "maxItems"), *e;
        int n = cJSON_GetArraySize(v);
        if ((lo && n < lo->valueint) || (hi && n > hi->valueint)) return 0;
        cJSON_ArrayForEach(e, v) if (items && !validate(e, items, doc)) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------- schemas */

static const char *const schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},\"age\":{\"type\":\"integer\","
    "\"minimum\":0,\"maximum\":120},\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"age\",\"ok\"],"
    "\"additionalProperties\":false}",
    "{\"type\":\"array\",\"items\":{\"enum\":[\"red\",\"green\",3,null,{\"a\":[1,2]}]},\"minItems\":1,\"maxItems\":4}",
    "{\"anyOf\":[{\"type\":\"integer\",\"minimum\":-5,\"maximum\":5},{\"type\":\"string\",\"maxLength\":5},{\"type\":\"null\"}]}",
    "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":9},"
    "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":2}},\"required\":[\"v\"],"
    "\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}",
    "{\"type\":\"object\",\"title\":\"receipt\",\"properties\":{\"kind\":{\"const\":\"receipt\"},\"total\":{\"type\":"
    "\"integer\",\"minimum\":100,\"maximum\":99999},\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
    "\"properties\":{\"n\":{\"type\":\"string\",\"maxLength\":8},\"q\":{\"type\":\"integer\",\"minimum\":1,"
    "\"exclusiveMaximum\":10}},\"required\":[\"n\",\"q\"],\"additionalProperties\":false},\"maxItems\":3}},"
    "\"required\":[\"kind\",\"items\"],\"additionalProperties\":false}",
    "{\"type\":[\"integer\",\"boolean\"],\"maximum\":99}",
    "{\"type\":\"string\",\"minLength\":2,\"maxLength\":6}",
    "{\"type\":\"integer\",\"minimum\":-1234,\"maximum\":-17}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"null\"},\"b\":{\"type\":\"boolean\"},\"c\":{\"enum\":[1,2]}},"
    "\"additionalProperties\":false}",
    "{\"type\":\"array\",\"items\":{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":7,\"maximum\":7},"
    "\"minItems\":2,\"maxItems\":2},\"minItems\":0,\"maxItems\":3}",
};
enum { N_SCHEMAS = sizeof schemas / sizeof schemas[0] };

/* ------------------------------------------------------------------ compiler */

static void check_refusals(void) {
    static const struct { const char *schema, *want; } bad[] = {
        {"{\"type\":\"string\",\"pattern\":\"^a\"}", "'pattern'"},
        {"{\"oneOf\":[{\"type\":\"string\"}]}", "'oneOf'"},
        {"{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\",\"format\":\"date\"}}}", "'format' at #/properties/x"},
        {"{\"type\":\"number\",\"minimum\":1}", "'minimum'"},
        {"{\"$ref\":\"#/$defs/nope\"}", "not defined"},
        {"{\"$ref\":\"http://x/y\"}", "$ref"},
        {"{\"type\":\"date\"}", "'date'"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "empty"},
        {"{\"type\":\"array\",\"prefixItems\":[]}", "'prefixItems'"},
        {"{\"allOf\":[]}", "'allOf'"},
        {"[1,2]", "must be an object"},
        {"{\"type\":", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nvlm_grammar *g = NULL;
        nvlm_err err = {0};
        int rc = nvlm_grammar_from_json_schema(bad[i].schema, strlen(bad[i].schema), &g, &err);
        CHECK(rc != 0 && !g && strstr(err.msg, bad[i].want), "schema %s: rc %d, '%s' (want '%s')", bad[i].schema, rc,
              err.msg, bad[i].want);
    }
    for (int i = 0; i < N_SCHEMAS; i++) {
        nvlm_grammar *g = NULL;
        nvlm_err err = {0};
        CHECK(nvlm_grammar_from_json_schema(schemas[i], strlen(schemas[i]), &g, &err) == 0, "schema %d: %s", i, err.msg);
        nvlm_grammar_free(g);
    }
}

/* 1 when the whole text is a sentence of g. */
static int accepts(const nvlm_grammar *g, const char *text) {
    gmatch m;
    if (gm_init(&m, g) || gm_start(&m)) return -1;
    int ok = gm_feed(&m, (const uint8_t *)text, strlen(text)) == 0 && m.cur.accept;
    gm_free(&m);
    return ok;
}

static nvlm_grammar *compile_or_fail(const char *schema) {
    nvlm_grammar *g = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_grammar_from_json_schema(schema, strlen(schema), &g, &err) == 0, "%s: %s", schema, err.msg);
    return g;
}

/* Every integer in [-2100, 2100] against ranges with every kind of edge. */
static void check_int_ranges(void) {
    static const long long r[][4] = { /* has_lo, lo, has_hi, hi */
        {1, 0, 1, 120}, {1, -1234, 1, -17}, {1, 5, 0, 0}, {0, 0, 1, -3}, {1, -99, 1, 1000}, {1, 7, 1, 7},
        {1, 0, 1, 0}, {1, 10, 1, 1999}, {0, 0, 1, 1}, {1, -1, 0, 0}, {1, 123, 1, 1230}};
    for (size_t k = 0; k < sizeof r / sizeof r[0]; k++) {
        char schema[200], num[32];
        int n = snprintf(schema, sizeof schema, "{\"type\":\"integer\"");
        if (r[k][0]) n += snprintf(schema + n, sizeof schema - n, ",\"minimum\":%lld", r[k][1]);
        if (r[k][2]) n += snprintf(schema + n, sizeof schema - n, ",\"maximum\":%lld", r[k][3]);
        snprintf(schema + n, sizeof schema - n, "}");
        nvlm_grammar *g = compile_or_fail(schema);
        if (!g) continue;
        int wrong = 0;
        for (long long v = -2100; v <= 2100; v++) {
            snprintf(num, sizeof num, "%lld", v);
            int want = (!r[k][0] || v >= r[k][1]) && (!r[k][2] || v <= r[k][3]);
            if (accepts(g, num) != want && wrong++ < 3) fprintf(stderr, "%s: %s wrong\n", schema, num);
        }
        CHECK(!wrong, "%s: %d integers judged wrongly", schema, wrong);
        CHECK(accepts(g, "01") == 0 && accepts(g, "-0") == 0 && accepts(g, "") == 0, "%s: leading zeros", schema);
        nvlm_grammar_free(g);
    }
}

static void check_texts(void) {
    static const struct { int schema; const char *text; int ok; } t[] = {
        {0, "{\"name\":\"bob\",\"age\":42,\"ok\":true}", 1},
        {0, "{ \"name\": \"b\\u00e9\\n\", \"age\": 0,\n  \"ok\": false}", 1},
        {0, "{\"name\":\"bob\",\"age\":121,\"ok\":true}", 0},
        {0, "{\"age\":42,\"name\":\"bob\",\"ok\":true}", 0},   /* the schema's order only */
        {0, "{\"name\":\"bob\",\"age\":42}", 0},               /* required */
        {0, "{\"name\":\"\\ud800\",\"age\":42,\"ok\":true}", 0}, /* lone surrogate */
        {0, "{\"name\":\"\xc3\xa9\",\"age\":1,\"ok\":true}", 1},
        {0, "{\"name\":\"\xc3\",\"age\":1,\"ok\":true}", 0},     /* broken UTF-8 */
        {0, "{\"name\":\"\xed\xa0\x80\",\"age\":1,\"ok\":true}", 0}, /* a surrogate in UTF-8 */
        {0, "{\"name\":\"1234567890123\",\"age\":1,\"ok\":true}", 0}, /* maxLength */
        {0, "{  \"name\":\"x\",\"age\":1,\"ok\":true}", 0},     /* more than minimal whitespace */
        {1, "[\"red\",3,null,{\"a\":[1,2]}]", 1},
        {1, "[]", 0},
        {1, "[1,2,3,4,5]", 0},
        {2, "-5", 1}, {2, "6", 0}, {2, "\"abcde\"", 1}, {2, "\"abcdef\"", 0}, {2, "null", 1},
        {3, "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3,\"kids\":[]}]}", 1},
        {3, "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3},{\"v\":4}]}", 0},
        {4, "{\"kind\":\"receipt\",\"items\":[]}", 1},
        {4, "{\"kind\":\"receipt\",\"total\":99,\"items\":[]}", 0},
        {4, "{\"kind\":\"receipt\",\"total\":100,\"items\":[{\"n\":\"tea\",\"q\":9}]}", 1},
        {4, "{\"kind\":\"receipt\",\"items\":[{\"n\":\"tea\",\"q\":10}]}", 0},
        {5, "true", 1}, {5, "99", 1}, {5, "100", 0},
        {8, "{}", 1}, {8, "{\"b\":true}", 1}, {8, "{\"a\":null,\"c\":2}", 1}, {8, "{,\"b\":true}", 0}, {8, "{\"c\":3}", 0},
        {9, "[[7,7],[7,7]]", 1}, {9, "[[7]]", 0}, {9, "[]", 1},
    };
    nvlm_grammar *g[N_SCHEMAS] = {0};
    for (int i = 0; i < N_SCHEMAS; i++) g[i] = compile_or_fail(schemas[i]);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (g[t[i].schema]) CHECK(accepts(g[t[i].schema], t[i].text) == t[i].ok, "schema %d on %s: want %d", t[i].schema, t[i].text, t[i].ok);
    for (int i = 0; i < N_SCHEMAS; i++) nvlm_grammar_free(g[i]);
    nvlm_grammar *jo = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_grammar_json_object(&jo, &err) == 0, "json_object: %s", err.msg);
    if (jo) {
        CHECK(accepts(jo, "{\"a\": [1, 2.5e-3, {\"b\": null}], \"c\": \"\\\"\"}") == 1, "json_object accepts");
        CHECK(accepts(jo, "[1]") == 0 && accepts(jo, "{\"a\":}") == 0 && accepts(jo, "{\"a\":01}") == 0, "json_object refuses");
        nvlm_grammar_free(jo);
    }
}

/* ------------------------------------------------------------ generation */

typedef struct gen_stats { int runs, parsed, truncated; } gen_stats;

/* One answer: it parses and validates, or it was cut by the token limit while still a prefix. */
static void judge(const char *text, int cut, const char *schema, const char *what, gen_stats *st) {
    st->runs++;
    cJSON *doc = cJSON_Parse(schema);
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithOpts(text, &end, 1);
    if (cut) { /* only json_object's keys and values are unbounded */
        CHECK(strstr(what, "json_object") != NULL, "%s: cut by the token limit: %.300s", what, text);
        st->truncated++;
        if (getenv("NVLM_TEST_VERBOSE")) fprintf(stderr, "%s: cut: %.200s\n", what, text);
    } else {
        st->parsed += v != NULL;
        CHECK(v != NULL, "%s: the answer does not parse: %s", what, text);
        CHECK(!v || !doc || validate(v, doc, doc), "%s: the answer does not validate: %s", what, text);
    }
    cJSON_Delete(v);
    cJSON_Delete(doc);
}

static void check_model_generation(const char *model_dir, int seeds) {
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 2};
    if (nvlm_model_load(shared_path(model_dir), &lo, &m, &err)) {
        CHECK(0, "%s: %s", model_dir, err.msg);
        return;
    }
    gen_stats st = {0};
    for (int i = 0; i <= N_SCHEMAS; i++) {
        nvlm_grammar *g = NULL;
        const char *schema = i < N_SCHEMAS ? schemas[i] : "{\"type\":\"object\"}";
        if (i < N_SCHEMAS) g = compile_or_fail(schema);
        else nvlm_grammar_json_object(&g, &err);
        if (!g) continue;
        for (int seed = 0; seed < seeds; seed++) {
            nvlm_sampling s;
            nvlm_sampling_default(&s);
            s.grammar = g, s.seed = (uint64_t)seed, s.max_new_tokens = 400;
            if (seed % 3 == 1) s.temperature = 1.0f;
            if (seed % 3 == 2) s.temperature = 0.7f, s.top_k = 20, s.top_p = 0.9f;
            nvlm_chat *c = NULL;
            nvlm_answer a;
            nvlm_chat_new(m, &c, &err);
            char q[64], what[160];
            snprintf(q, sizeof q, "Give me JSON number %d.", seed);
            snprintf(what, sizeof what, "%s schema %d%s seed %d", model_dir, i, i < N_SCHEMAS ? "" : " (json_object)", seed);
            int rc = c ? nvlm_chat_ask(c, q, &s, NULL, NULL, &a, &err) : -1;
            CHECK(rc == 0, "%s: %s", what, err.msg);
            if (rc == 0) {
                judge(a.response, a.finish_length, schema, what, &st);
                nvlm_answer_free(&a);
            }
            nvlm_chat_free(c);
        }
        nvlm_grammar_free(g);
    }
    fprintf(stderr, "%s: %d answers, %d parsed and validated, %d cut at 400 tokens\n", model_dir, st.runs, st.parsed,
            st.truncated);
    CHECK(st.truncated * 10 <= st.runs, "%s: too many answers cut by the token limit", model_dir);
    nvlm_model_free(m);
}

/* Random logits over the full Qwen2 vocabulary: the grammar alone decides what stays. */
static void check_full_vocab(int seeds) {
    nvlm_tokenizer *tok = NULL;
    nvlm_err err = {0};
    if (nvlm_tokenizer_load(shared_path("reference/tokenizer"), &tok, &err)) {
        CHECK(0, "tokenizer: %s", err.msg);
        return;
    }
    const int V = (int)nvlm_tokenizer_size(tok);
    int32_t eos = nvlm_tokenizer_token_id(tok, "<|im_end|>");
    float *logits = malloc(sizeof(float) * V);
    gen_stats st = {0};
    for (int i = 0; i <= N_SCHEMAS && logits; i++) {
        nvlm_grammar *g = NULL;
        const char *schema = i < N_SCHEMAS ? schemas[i] : "{\"type\":\"object\"}";
        if (i < N_SCHEMAS) g = compile_or_fail(schema);
        else nvlm_grammar_json_object(&g, &err);
        for (int seed = 0; g && seed < seeds; seed++) {
            nvlm_sampling s;
            nvlm_sampling_default(&s);
            s.grammar = g, s.seed = (uint64_t)seed, s.max_new_tokens = 400;
            s.temperature = seed % 2 ? 1.0f : 0;
            nvlm_sampler sp;
            nvlm_rng noise;
            nvlm_rng_seed(&noise, 1000 + (uint64_t)seed);
            CHECK(nvlm_sampler_init(&sp, &s, tok, V, eos, NULL, 0, &err) == 0, "sampler: %s", err.msg);
            int32_t *ids = malloc(sizeof(int32_t) * 400);
            size_t n = 0;
            int done = 0;
            while (ids && n < 400 && !done) {
                /* a peaked random distribution, as a trained model's is */
                for (int k = 0; k < V; k++) logits[k] = (float)(4 * nvlm_rng_uniform(&noise));
                for (int k = 0; k < 30; k++) logits[(int)(nvlm_rng_uniform(&noise) * V)] += 12;
                int32_t id;
                if (nvlm_sampler_next(&sp, logits, &id, &err)) {
                    CHECK(0, "schema %d seed %d: %s", i, seed, err.msg);
                    break;
                }
                if (id == eos) done = 1;
                else ids[n++] = id;
            }
            char *text = NULL;
            size_t len;
            if (ids && !nvlm_tokenizer_decode(tok, ids, n, 1, &text, &len, &err)) {
                char what[160];
                snprintf(what, sizeof what, "152k vocabulary, schema %d%s seed %d", i, i < N_SCHEMAS ? "" : " (json_object)", seed);
                judge(text, !done, schema, what, &st);
            }
            free(text);
            free(ids);
            nvlm_sampler_free(&sp);
        }
        nvlm_grammar_free(g);
    }
    fprintf(stderr, "152k vocabulary: %d answers, %d parsed and validated, %d cut at 400 tokens\n", st.runs, st.parsed,
            st.truncated);
    CHECK(st.truncated * 10 <= st.runs, "152k vocabulary: too many answers cut by the token limit");
    free(logits);
    nvlm_tokenizer_free(tok);
}

/* The constrained draw at temperature 1 has the distribution of the model restricted to the
 * allowed tokens: frequencies over 6000 draws (one sampler per draw, seeds 0..5999) against
 * the renormalised probabilities, at the start of an enum whose first bytes few tokens fit. */
static void check_draw_distribution(void) {
    nvlm_tokenizer *tok = NULL;
    nvlm_err err = {0};
    if (nvlm_tokenizer_load(shared_path("reference/models/tiny-nvlm-d"), &tok, &err)) {
        CHECK(0, "tokenizer: %s", err.msg);
        return;
    }
    const char *schema = "{\"enum\":[\"ab\",\"a\",\"b\",\"cd\",\"the\",\"then\",12,true]}";
    nvlm_grammar *g = compile_or_fail(schema);
    int V = (int)nvlm_tokenizer_size(tok);
    float *logits = malloc(sizeof(float) * V);
    double *want = calloc(V, sizeof *want), *got = calloc(V, sizeof *got);
    nvlm_rng r;
    nvlm_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) logits[i] = (float)(3 * nvlm_rng_uniform(&r));
    gconstraint gc;
    const uint8_t *mask;
    if (g && logits && want && got && !gc_init(&gc, g, tok, V, -1, &err) && gc_mask(&gc, &mask) > 0) {
        double z = 0;
        for (int i = 0; i < V; i++) z += mask[i] ? exp(logits[i]) : 0;
        for (int i = 0; i < V; i++) want[i] = mask[i] ? exp(logits[i]) / z : 0;
        gc_free(&gc);
        enum { DRAWS = 6000 };
        int outside = 0;
        for (int d = 0; d < DRAWS; d++) {
            nvlm_sampling s;
            nvlm_sampling_default(&s);
            s.grammar = g, s.temperature = 1, s.seed = (uint64_t)d;
            nvlm_sampler sp;
            int32_t id = -1;
            float *l = malloc(sizeof(float) * V);
            memcpy(l, logits, sizeof(float) * V);
            if (!nvlm_sampler_init(&sp, &s, tok, V, -1, NULL, 0, &err) && !nvlm_sampler_next(&sp, l, &id, &err)) {
                if (id >= 0 && want[id] > 0) got[id] += 1.0 / DRAWS;
                else outside++;
            }
            nvlm_sampler_free(&sp);
            free(l);
        }
        double worst = 0;
        for (int i = 0; i < V; i++) worst = fabs(got[i] - want[i]) > worst ? fabs(got[i] - want[i]) : worst;
        CHECK(!outside && worst < 0.025, "constrained draws: %d outside the mask, max frequency error %.4f", outside, worst);
    } else {
        CHECK(0, "distribution setup: %s", err.msg);
    }
    free(logits), free(want), free(got);
    nvlm_grammar_free(g);
    nvlm_tokenizer_free(tok);
}

int main(void) {
    check_draw_distribution();
    check_refusals();
    check_int_ranges();
    check_texts();
    int seeds = UNDER_ASAN ? 2 : 6;
    check_model_generation("reference/models/tiny-nvlm-d", seeds);
    check_model_generation("reference/models/tiny-nvlm-h", UNDER_ASAN ? 1 : 3);
    check_full_vocab(UNDER_ASAN ? 2 : 6);
    return check_done("test_grammar");
}
