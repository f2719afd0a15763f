/* nvlm run - one question about zero or more images (the checking contract of issue 4). */
#include "cli_model.h"
#include "core/err.h"
#include "core/file.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_IMAGES 64

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm run --model DIR [--image FILE]... --prompt TEXT [options]\n\n"
               "Answers one question the way NVLM-D's published chat() does: images fill the\n"
               "<image> placeholders of the history and the question in order; with no history and no\n"
               "placeholder, \"<image>\\n\" is put in front of the question.\n\n"
               "  -i, --image FILE         an image (JPEG, PNG, WebP, GIF, BMP); repeatable\n"
               "  -p, --prompt TEXT        the question\n"
               "      --history FILE       JSON [[question, answer], ...] of earlier turns\n"
               "      --json               print {prompt_ids, output_ids, response, num_patches_list}\n"
               "      --logits-out FILE    write the last prompt position's logits (float32 LE)\n"
               "      --json-schema FILE   the answer follows this JSON Schema (docs/grammar.md)\n"
               "      --json-object        the answer is a JSON object\n"
               "      --logprobs N         with --json: each token's logprob and the N (0-20) likeliest\n"
               "  -q, --quiet              no progress or timings on stderr\n\n%s",
            cli_model_flags_help());
}

static int load_history(const char *path, nvlm_chat *c) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(path, 64u << 20, &text, &len, &err)) return cli_report("run", &err);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int bad = !cJSON_IsArray(root);
    cJSON *turn, *turns = bad ? NULL : root;
    cJSON_ArrayForEach(turn, turns) {
        cJSON *q = cJSON_GetArrayItem(turn, 0), *a = cJSON_GetArrayItem(turn, 1);
        if (!cJSON_IsArray(turn) || cJSON_GetArraySize(turn) != 2 || !cJSON_IsString(q) || !cJSON_IsString(a)) {
            bad = 1;
            break;
        }
        if (nvlm_chat_add_history(c, q->valuestring, a->valuestring, &err)) {
            cJSON_Delete(root);
            return cli_report("run", &err);
        }
    }
    cJSON_Delete(root);
    if (bad) {
        fprintf(stderr, "nvlm run: %s: expected a JSON array of [question, answer] string pairs\n", path);
        return 1;
    }
    nvlm_chat_mark_history(c);
    return 0;
}

static int write_logits(const char *path, const float *logits, int n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(logits, sizeof(float), (size_t)n, f) != (size_t)n || fclose(f) != 0) {
        fprintf(stderr, "nvlm run: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

static void print_ids(const char *key, const int32_t *ids, size_t n) {
    printf("\"%s\": [", key);
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]");
}

/* "logprobs": [{"id", "token" (its bytes as text), "logprob", "top": [{"id", "token", "logprob"}]}] */
static void print_token(const nvlm_tokenizer *tok, const nvlm_token_logprob *t) {
    size_t n;
    const uint8_t *b = nvlm_tokenizer_token_bytes(tok, t->id, &n);
    printf("{\"id\": %d, \"token\": ", t->id);
    cli_json_string(stdout, b ? (const char *)b : "", n);
    printf(", \"logprob\": %.6g", t->logprob);
}

static void print_logprobs(const nvlm_tokenizer *tok, const nvlm_answer *a) {
    printf(", \"logprobs\": [");
    for (size_t i = 0; a->logprobs && i < a->n_output; i++) {
        printf(i ? ", " : "");
        print_token(tok, &a->logprobs[i].chosen);
        printf(", \"top\": [");
        for (int k = 0; k < a->logprobs[i].n_top; k++) {
            printf(k ? ", " : "");
            print_token(tok, &a->logprobs[i].top[k]);
            printf("}");
        }
        printf("]}");
    }
    printf("]");
}

static void print_json(const nvlm_tokenizer *tok, const nvlm_answer *a) {
    printf("{");
    print_ids("prompt_ids", a->prompt_ids, a->n_prompt);
    printf(", ");
    print_ids("output_ids", a->output_ids, a->n_output);
    printf(", \"response\": ");
    cli_json_string(stdout, a->response, strlen(a->response));
    printf(", \"num_patches_list\": [");
    for (size_t i = 0; i < a->n_images; i++) printf(i ? ", %d" : "%d", a->num_patches[i]);
    printf("]");
    if (a->logprobs) print_logprobs(tok, a);
    printf(", \"finish_reason\": \"%s\"}\n", a->finish_length ? "length" : "stop");
}

static int stream_token(void *user, int32_t id, const char *text, size_t len) {
    (void)user, (void)id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

typedef struct run_args {
    cli_model_opts o;
    const char *images[MAX_IMAGES];
    int n_images;
    const char *prompt, *history, *logits_out, *json_schema;
    int json, json_object, logprobs; /* logprobs: -1 off, else top_logprobs */
} run_args;

static int parse_args(int argc, char **argv, run_args *r) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int t = cli_model_flag("run", &r->o, argc, argv, &i);
        if (t < 0) return 2;
        if (t) continue;
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(a, "--json")) {
            r->json = 1;
        } else if (!strcmp(a, "--json-object")) {
            r->json_object = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            r->o.quiet = 1;
        } else if (!has_value && (!strcmp(a, "--image") || !strcmp(a, "-i") || !strcmp(a, "--prompt") ||
                                  !strcmp(a, "-p") || !strcmp(a, "--history") || !strcmp(a, "--logits-out") ||
                                  !strcmp(a, "--json-schema") || !strcmp(a, "--logprobs"))) {
            return cli_usage_error("run", "%s needs a value", a);
        } else if (!strcmp(a, "--image") || !strcmp(a, "-i")) {
            if (r->n_images == MAX_IMAGES) return cli_usage_error("run", "at most %d images", MAX_IMAGES);
            r->images[r->n_images++] = argv[++i];
        } else if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) {
            r->prompt = argv[++i];
        } else if (!strcmp(a, "--history")) {
            r->history = argv[++i];
        } else if (!strcmp(a, "--logits-out")) {
            r->logits_out = argv[++i];
        } else if (!strcmp(a, "--json-schema")) {
            r->json_schema = argv[++i];
        } else if (!strcmp(a, "--logprobs")) {
            long n;
            if (cli_parse_int(argv[++i], 0, NVLM_MAX_TOP_LOGPROBS, &n))
                return cli_usage_error("run", "--logprobs must be an integer from 0 to %d", NVLM_MAX_TOP_LOGPROBS);
            r->logprobs = (int)n;
        } else {
            return cli_usage_error("run", "unknown option '%s'", a);
        }
    }
    if (!r->prompt) return cli_usage_error("run", "--prompt TEXT is required");
    if (r->json_schema && r->json_object) return cli_usage_error("run", "--json-schema and --json-object exclude each other");
    if (r->logprobs >= 0 && !r->json) return cli_usage_error("run", "--logprobs needs --json (the figures are printed there)");
    return 0;
}

/* The files the answer needs, checked before the model loads (a 72B load takes minutes, and a
 * typo in an image path should not wait for it): images and history readable, the logits
 * file's folder writable. Returns the exit status. */
static int check_files(const run_args *r) {
    for (int i = 0; i < r->n_images; i++)
        if (access(r->images[i], R_OK))
            return fprintf(stderr, "nvlm run: cannot read image %s: %s\n", r->images[i], strerror(errno)), 1;
    if (r->history && access(r->history, R_OK))
        return fprintf(stderr, "nvlm run: cannot read history %s: %s\n", r->history, strerror(errno)), 1;
    if (r->logits_out) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", r->logits_out);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        const char *d = !slash ? "." : dir[0] ? dir : "/";
        if (access(d, W_OK))
            return fprintf(stderr, "nvlm run: cannot write --logits-out %s: folder %s: %s\n", r->logits_out, d, strerror(errno)), 1;
    }
    return 0;
}

/* The grammar of --json-schema or --json-object, made before the model loads (a bad schema
 * should not wait minutes for a 72B load). */
static int make_grammar(const run_args *r, nvlm_grammar **g) {
    nvlm_err err = {0};
    if (r->json_object && nvlm_grammar_json_object(g, &err)) return cli_report("run", &err);
    if (!r->json_schema) return 0;
    char *text;
    size_t len;
    if (nvlm_read_file(r->json_schema, 16u << 20, &text, &len, &err)) return cli_report("run", &err);
    int rc = nvlm_grammar_from_json_schema(text, len, g, &err);
    free(text);
    if (rc) return nvlm_fail_prefix(&err, "--json-schema %s: ", r->json_schema), cli_report("run", &err);
    return 0;
}

int cmd_run(int argc, char **argv) {
    run_args r;
    memset(&r, 0, sizeof r);
    r.logprobs = -1;
    cli_model_opts_init(&r.o);
    int rc = parse_args(argc, argv, &r);
    if (rc) return rc < 0 ? 0 : rc;
    nvlm_model *m = NULL;
    nvlm_chat *c = NULL;
    nvlm_answer ans = {0};
    nvlm_err err = {0};
    nvlm_grammar *g = NULL;
    if ((rc = check_files(&r)) || (rc = make_grammar(&r, &g))) return rc;
    r.o.sampling.grammar = g;
    if (r.logprobs >= 0) r.o.sampling.logprobs = 1, r.o.sampling.top_logprobs = r.logprobs;
    if ((rc = cli_load_model("run", &r.o, &m))) {
        nvlm_grammar_free(g);
        return rc;
    }
    if ((rc = cli_chat_new("run", &r.o, m, &c))) goto done;
    if (r.history && (rc = load_history(r.history, c))) goto done;
    for (int i = 0; i < r.n_images; i++)
        if (nvlm_chat_add_image_file(c, r.images[i], &err)) {
            rc = cli_report("run", &err);
            goto done;
        }
    if (nvlm_chat_ask(c, r.prompt, &r.o.sampling, r.json ? NULL : stream_token, NULL, &ans, &err)) {
        rc = cli_report("run", &err);
        goto done;
    }
    if (r.json) print_json(nvlm_model_tokenizer(m), &ans);
    else printf("\n");
    fflush(stdout); /* the answer before the timings on stderr */
    if (!r.o.quiet) cli_print_timings(&ans);
    if (r.logits_out && nvlm_dist_rank(cli_dist()) == 0) rc = write_logits(r.logits_out, ans.last_logits, nvlm_model_vocab_size(m));
done:
    nvlm_answer_free(&ans);
    nvlm_chat_free(c);
    nvlm_model_free(m);
    nvlm_grammar_free(g);
    return rc;
}
