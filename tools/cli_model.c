/* What `run`, `chat` and (later) `serve` share: model/sampling flags, loading with progress. */
#include "cli_model.h"
#include "core/err.h"
#include "model/finite.h"
#include "model/model.h"
#include "model/quant.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cli_model_opts_init(cli_model_opts *o) {
    memset(o, 0, sizeof *o);
    nvlm_sampling_default(&o->sampling);
}

/* Value of flag argv[*i] (advances *i), or NULL with a usage error printed. */
static const char *flag_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_model_flag(const char *cmd, cli_model_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long n;
    double d;
#define VALUE() if (!(v = flag_value(cmd, argc, argv, i))) return -1
#define BAD() return cli_usage_error(cmd, "bad value for %s: '%s'", a, v), -1
    if (!strcmp(a, "--model") || !strcmp(a, "-m")) {
        VALUE();
        o->model_dir = v;
    } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
        VALUE();
        if (cli_parse_int(v, 1, 1024, &n)) BAD();
        o->threads = (int)n;
    } else if (!strcmp(a, "--weights")) {
        VALUE();
        if (!strcmp(v, "stored")) o->weights = NVLM_WEIGHTS_STORED;
        else if ((o->weights = nvlm_quant_weights(v)) < 0) BAD();
    } else if (cli_weights_io_flag(a, &o->weights_io)) { /* taken: nothing more to read */
    } else if (!strcmp(a, "--check-weights")) {
        o->check_weights = 1;
    } else if (!strcmp(a, "--kv")) {
        VALUE();
        if (!strcmp(v, "f16")) o->kv_type = NVLM_KV_F16;
        else if (!strcmp(v, "f32")) o->kv_type = NVLM_KV_F32;
        else BAD();
    } else if (!strcmp(a, "--compute")) {
        VALUE();
        if (cli_compute_value(v, &o->compute)) BAD();
    } else if (!strcmp(a, "--max-num") || !strcmp(a, "--max-tiles")) {
        VALUE();
        if (cli_parse_int(v, 1, 64, &n)) BAD();
        o->max_num = (int)n;
    } else if (!strcmp(a, "--system")) {
        VALUE();
        o->system = v;
        o->system_set = 1;
    } else if (!strcmp(a, "--max-new-tokens") || !strcmp(a, "-n")) {
        VALUE();
        if (cli_parse_int(v, 0, 1 << 24, &n)) BAD();
        o->sampling.max_new_tokens = (int)n;
    } else if (!strcmp(a, "--temperature") || !strcmp(a, "--temp")) {
        VALUE();
        if (cli_parse_double(v, &d) || d < 0) BAD();
        o->sampling.temperature = (float)d;
    } else if (!strcmp(a, "--top-k")) {
        VALUE();
        if (cli_parse_int(v, 0, 1 << 30, &n)) BAD();
        o->sampling.top_k = (int)n;
    } else if (!strcmp(a, "--top-p")) {
        VALUE();
        if (cli_parse_double(v, &d) || d <= 0 || d > 1) BAD();
        o->sampling.top_p = (float)d;
    } else if (!strcmp(a, "--min-p")) {
        VALUE();
        if (cli_parse_double(v, &d) || d < 0 || d > 1) BAD();
        o->sampling.min_p = (float)d;
    } else if (!strcmp(a, "--repeat-penalty") || !strcmp(a, "--repetition-penalty")) {
        VALUE();
        if (cli_parse_double(v, &d) || d <= 0) BAD();
        o->sampling.repetition_penalty = (float)d;
    } else if (!strcmp(a, "--seed")) {
        VALUE();
        if (cli_parse_int(v, 0, 0x7fffffffffffffffL, &n)) BAD();
        o->sampling.seed = (uint64_t)n;
    } else if (!strcmp(a, "--stop")) {
        VALUE();
        if (o->n_stop >= CLI_MAX_STOP) return cli_usage_error(cmd, "at most %d --stop strings", CLI_MAX_STOP), -1;
        o->stop[o->n_stop++] = v;
        o->stop[o->n_stop] = NULL;
        o->sampling.stop = o->stop;
    } else {
        return 0;
    }
#undef VALUE
#undef BAD
    return 1;
}

const char *cli_model_flags_help(void) {
    return "model and generation options:\n"
           "  -m, --model DIR          model folder (config.json, *.safetensors, tokenizer)\n"
           "  -t, --threads N          worker threads (default: all cores)\n"
           "      --weights q8_0|q4|q4_0  quantize the weight matrices at load (default: as stored)\n"
           "      --mmap / --no-mmap   map the weight files / read them into memory (default: read\n"
           "                           when they fit in 3/4 of free memory; generation runs up\n"
           "                           to ~10% faster from memory, mapping starts at once)\n"
           "      --kv f16|f32         KV cache element type (default f32; f16 halves its memory)\n"
           "      --compute f32|bf16   matrix arithmetic of the ViT, the projector and the LLM's MLP\n"
           "                           in prefill (the rest stays f32)\n"
           "                           (default f32, exact; bf16 rounds as a GPU running the\n"
           "                           bfloat16 model, faster on CPUs with AVX512-BF16)\n"
           "      --max-num N          max tiles per image (default: the config's max_dynamic_patch;\n"
           "                           alias --max-tiles; serve: also caps a request's max_dynamic_patch)\n"
           "      --check-weights      read every tensor at load and refuse one holding NaN/Inf\n"
           "                           (without it, non-finite values are refused as they appear)\n"
           "      --system TEXT        system message (default \"Answer the questions.\"; \"\" for none)\n"
           "  -n, --max-new-tokens N   generation limit (default 1024)\n"
           "      --temperature T      0 = greedy, as the published chat() (default 0)\n"
           "      --top-k K            keep the K most likely tokens (0 = off)\n"
           "      --top-p P            nucleus sampling (1 = off)\n"
           "      --min-p P            drop tokens below P x the top probability (0 = off)\n"
           "      --repeat-penalty R   Hugging Face repetition penalty (1 = off)\n"
           "      --seed N             sampling seed (same seed, same answer)\n"
           "      --stop TEXT          extra stop string (repeatable); <|im_end|> always stops\n";
}

typedef struct progress_line {
    char what[64];
    int pct;
} progress_line;

/* One line rewritten in place on a terminal; in a log, one line per step and per 10%. */
static int show_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    progress_line *last = user;
    int tty = isatty(fileno(stderr)), pct = total ? (int)(100 * done / total) : 100;
    int same = !strncmp(last->what, what, sizeof last->what - 1);
    if (!tty && same && pct / 10 == last->pct / 10 && done != total) return 0;
    snprintf(last->what, sizeof last->what, "%s", what);
    last->pct = pct;
    fprintf(stderr, "%snvlm: %-24s %3d%%", tty ? "\r" : "", what, pct);
    if (!tty || done == total) fputc('\n', stderr);
    return 0;
}

int cli_weights_io_flag(const char *arg, int *io) {
    if (!strcmp(arg, "--mmap")) *io = NVLM_IO_MMAP;
    else if (!strcmp(arg, "--no-mmap")) *io = NVLM_IO_READ;
    else return 0;
    return 1;
}

int cli_compute_value(const char *v, int *compute) {
    if (!strcmp(v, "f32")) *compute = NVLM_COMPUTE_F32;
    else if (!strcmp(v, "bf16")) *compute = NVLM_COMPUTE_BF16;
    else return -1;
    return 0;
}

int cli_weights_io(int io, int weights) {
    return io == NVLM_IO_AUTO && weights != NVLM_WEIGHTS_STORED ? NVLM_IO_MMAP : io;
}

/* The first tensor of the loaded checkpoint holding a NaN/Inf, as an error. */
static int check_weights(const nvlm_model *m, nvlm_err *err) {
    size_t n = nvlm_st_count(m->st);
    for (size_t i = 0; i < n; i++) {
        const nvlm_tensor *t = nvlm_st_at(m->st, i);
        int64_t at = nvlm_tensor_first_nonfinite(t);
        if (at >= 0)
            return nvlm_fail(err, NVLM_E_NUMERIC, "tensor %s (%s, in %s) holds a NaN or Inf at element %lld: the weights are damaged",
                             t->name, nvlm_dtype_name(t->dtype), t->file, (long long)at);
    }
    return NVLM_OK;
}

int cli_load_model(const char *cmd, const cli_model_opts *o, nvlm_model **m) {
    if (!o->model_dir) return cli_usage_error(cmd, "--model DIR is required");
    progress_line line = {"", -1};
    int quiet = o->quiet || nvlm_dist_rank(cli_dist()) > 0; /* rank 0 speaks for the job */
    nvlm_load_options lo = {.n_threads = o->threads, .progress = quiet ? NULL : show_progress, .progress_user = &line,
                            .weights_io = cli_weights_io(o->weights_io, o->weights), .compute = o->compute,
                            .dist = cli_dist()};
    nvlm_err err = {0};
    if (nvlm_model_load(o->model_dir, &lo, m, &err)) return cli_report(cmd, &err);
    if ((o->check_weights && check_weights(*m, &err)) || nvlm_model_quantize(*m, o->weights, &err) ||
        nvlm_model_set_kv_type(*m, o->kv_type, &err)) {
        nvlm_model_free(*m);
        *m = NULL;
        return cli_report(cmd, &err);
    }
    return 0;
}

int cli_chat_new(const char *cmd, const cli_model_opts *o, nvlm_model *m, nvlm_chat **c) {
    nvlm_err err = {0};
    if (nvlm_chat_new(m, c, &err)) return cli_report(cmd, &err);
    if (o->system_set && nvlm_chat_set_system(*c, o->system, &err)) return cli_report(cmd, &err);
    nvlm_chat_set_max_tiles(*c, o->max_num);
    return 0;
}

void cli_print_timings(const nvlm_answer *a) {
    nvlm_dist *d = cli_dist();
    if (nvlm_dist_rank(d) > 0) return;
    if (nvlm_dist_size(d) > 1) {
        nvlm_dist_stats s;
        nvlm_dist_get_stats(d, &s);
        size_t toks = a->n_prompt - a->n_prompt_reused + a->n_output;
        fprintf(stderr, "nvlm: %d ranks: %llu exchanges, %.1f MB received by rank 0 in %.1f ms (%.1f KB, %.2f ms per token)\n",
                nvlm_dist_size(d), (unsigned long long)s.n_exchanges, s.bytes_received / 1e6, s.ms,
                toks ? s.bytes_received / 1e3 / toks : 0.0, toks ? s.ms / toks : 0.0);
    }
    size_t computed = a->n_prompt - a->n_prompt_reused;
    fprintf(stderr, "nvlm: vit %.1f ms | prompt %zu tokens (%zu reused from the last turn) %.1f ms (%.1f tok/s) | "
                    "generated %zu tokens %.1f ms (%.1f tok/s)\n",
            a->vit_ms, a->n_prompt, a->n_prompt_reused, a->prompt_ms,
            a->prompt_ms > 0 ? computed * 1e3 / a->prompt_ms : 0.0, a->n_output, a->gen_ms,
            a->gen_ms > 0 ? a->n_output * 1e3 / a->gen_ms : 0.0);
}
