/* nvlm tokenize - text to token ids with a folder's tokenizer (Hugging Face's ids). */
#include "cli.h"
#include "core/file.h"
#include "tokenizer/tok_json.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char USAGE[] =
    "usage: nvlm tokenize --model DIR (--jsonl FILE | --text TEXT)\n"
    "\n"
    "Encodes text with the tokenizer of DIR (tokenizer.json, or vocab.json + merges.txt +\n"
    "tokenizer_config.json), exactly as Hugging Face tokenizers does: added tokens such as\n"
    "<|im_start|> in the text are recognised, nothing is prepended or appended.\n"
    "\n"
    "  --model DIR    a checkpoint folder or any folder holding the tokenizer files\n"
    "  --jsonl FILE   one JSON object {\"text\": ...} per line ('-' reads stdin); prints\n"
    "                 {\"ids\": [...]} per line, in order. A line that is not such an object\n"
    "                 stops with an error naming it and exit status 1. Lone surrogate escapes\n"
    "                 (\\ud800) become U+FFFD, as does invalid UTF-8.\n"
    "  --text TEXT    encodes one text and prints {\"ids\": [...]}\n"
    "  --help         this help\n";

static void print_ids(FILE *f, const int32_t *ids, size_t n) {
    fputs("{\"ids\": [", f);
    for (size_t i = 0; i < n; i++) fprintf(f, i ? ", %d" : "%d", ids[i]);
    fputs("]}\n", f);
}

static int encode_print(const nvlm_tokenizer *tok, const char *text, size_t len, nvlm_err *err) {
    int32_t *ids;
    size_t n;
    int rc = nvlm_tokenizer_encode(tok, text, len, &ids, &n, err);
    if (rc) return rc;
    print_ids(stdout, ids, n);
    free(ids);
    return 0;
}

static int run_jsonl(const nvlm_tokenizer *tok, const char *path) {
    nvlm_err oerr = {0};
    FILE *f = strcmp(path, "-") ? nvlm_fopen_regular(path, &oerr) : stdin;
    if (!f) {
        fprintf(stderr, "nvlm tokenize: %s\n", oerr.msg);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    tok_bytes text = {0};
    int status = 0;
    nvlm_err err = {0};
    while (!status && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t n = (size_t)len;
        if (n && line[n - 1] == '\n') n--;
        if (n && line[n - 1] == '\r') n--;
        int rc = tok_json_get_string(line, n, "text", &text);
        if (rc == -3) {
            fprintf(stderr, "nvlm tokenize: %s:%zu: out of memory\n", path, lineno);
            status = 1;
        } else if (rc) {
            fprintf(stderr, "nvlm tokenize: %s:%zu: %s\n", path, lineno,
                    rc == -1 ? "not a JSON object" : "no string member \"text\"");
            status = 1;
        } else if (encode_print(tok, (const char *)text.p, text.n, &err)) {
            fprintf(stderr, "nvlm tokenize: %s:%zu: %s\n", path, lineno, err.msg);
            status = 1;
        }
    }
    if (!status && ferror(f)) {
        fprintf(stderr, "nvlm tokenize: %s: read error after line %zu\n", path, lineno);
        status = 1;
    }
    free(line);
    free(text.p);
    if (f != stdin) fclose(f);
    return status;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *jsonl = NULL, *text = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "--model") ? &model : !strcmp(a, "--jsonl") ? &jsonl
                         : !strcmp(a, "--text") ? &text : NULL;
        if (!dst) return cli_usage_error("tokenize", "unknown argument '%s'", a);
        if (i + 1 >= argc) return cli_usage_error("tokenize", "%s needs a value", a);
        *dst = argv[++i];
    }
    if (!model) return cli_usage_error("tokenize", "--model DIR is required");
    if (!jsonl == !text) return cli_usage_error("tokenize", "give exactly one of --jsonl FILE and --text TEXT");
    nvlm_err err = {0};
    nvlm_tokenizer *tok = NULL;
    if (nvlm_tokenizer_load(model, &tok, &err)) return cli_report("tokenize", &err);
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    int status = 0;
    if (text) {
        if (encode_print(tok, text, strlen(text), &err)) status = cli_report("tokenize", &err);
    } else
        status = run_jsonl(tok, jsonl);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "nvlm tokenize: cannot write the output\n");
        status = 1;
    }
    nvlm_tokenizer_free(tok);
    return status;
}
