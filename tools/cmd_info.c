/* nvlm info - architecture, sizes, parameter counts and memory of a model folder.
 * Works from config.json alone (the 72B reference folder has no weights); when weights
 * are present they are opened, validated against the config, and their dtype mix shown. */
#include "cli.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/model.h"
#include "model/tensors.h"
#include "model/finite.h"
#include "core/file.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/gemm_bf16.h"
#include "dist/dist.h"
#include "kernels/qblock.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
    fprintf(f, "usage: nvlm info --model DIR [--json] [--check-weights]\n"
               "       nvlm info --cpu\n\n"
               "Prints the architecture (NVLM_D, NVLM_X, NVLM_H), the main sizes of config.json,\n"
               "the parameter count of each part (computed from config.json; the ViT's dummy heads\n"
               "from the weights when present, else num_dummy_heads, else the release's 7), the\n"
               "approximate memory of the weights in each format, and, when the folder holds\n"
               "weights, their files, dtype mix and whether they match the config.\n"
               "Exit status 1 when config.json or the weights are invalid.\n\n"
               "  --model DIR   model folder (config.json [+ safetensors])\n"
               "  --json        one JSON object instead of text\n"
               "  --check-weights  read every tensor and report each that holds a NaN or Inf\n"
               "                (exit status 1 when one does)\n"
               "  --cpu         the CPU's features, the kernel level chosen (NVLM_CPU=<level> caps it)\n"
               "                and the kernel each op runs at that level\n");
}

/* 79379593344 -> "79,379,593,344" */
static const char *commas(uint64_t v, char *buf, size_t cap) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}

/* 1.5e9 -> "1.40 GiB" (binary units). */
static const char *human(double bytes, char buf[32]) {
    static const char *const unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, 32, u ? "%.2f %s" : "%.0f %s", bytes, unit[u]);
    return buf;
}

typedef struct dtype_mix {
    size_t tensors[5];
    uint64_t params[5], bytes[5];
} dtype_mix;

typedef struct ckpt_info {
    int has_weights;       /* some safetensors file or index exists */
    int opened;            /* nvlm_st_open succeeded */
    int valid;             /* opened and nvlm_check_tensors passed */
    int sharded;
    nvlm_st_index_info idx;
    size_t files, tensors, unknown;
    int dummy;             /* derived D_v, -1 when unknown */
    dtype_mix mix;
    uint64_t bytes;
    nvlm_err err;          /* why not opened / not valid */
} ckpt_info;

static void inspect_weights(const char *dir, const nvlm_config *cfg, ckpt_info *ci) {
    memset(ci, 0, sizeof *ci);
    ci->dummy = -1;
    char *index = nvlm_path_join(dir, "model.safetensors.index.json");
    char *single = nvlm_path_join(dir, "model.safetensors");
    ci->sharded = index && nvlm_file_exists(index);
    ci->has_weights = ci->sharded || (single && nvlm_file_exists(single));
    free(index);
    free(single);
    if (!ci->has_weights) return;
    if (ci->sharded && nvlm_st_index_summary(dir, &ci->idx, &ci->err)) return;
    if (ci->sharded && ci->idx.n_present == 0) { /* e.g. the 72B reference: index only */
        snprintf(ci->err.msg, sizeof ci->err.msg, "none of the %zu shards named by the index is present", ci->idx.n_files);
        return;
    }
    nvlm_st *st;
    if (nvlm_st_open(dir, &st, &ci->err)) return;
    ci->opened = 1;
    ci->files = nvlm_st_file_count(st);
    ci->tensors = nvlm_st_count(st);
    ci->bytes = nvlm_st_total_bytes(st);
    for (size_t i = 0; i < ci->tensors; i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        ci->mix.tensors[t->dtype]++;
        ci->mix.params[t->dtype] += (uint64_t)t->numel;
        ci->mix.bytes[t->dtype] += t->nbytes;
    }
    ci->dummy = nvlm_vit_dummy_heads(cfg, st);
    ci->valid = nvlm_check_tensors(cfg, st, &ci->err) == 0;
    ci->unknown = nvlm_unknown_tensors(cfg, st);
    nvlm_st_close(st);
}

/* ---- per-rank memory under mpirun -np N (docs/distributed.md) ---- */

typedef struct rank_mem {
    const nvlm_config *cfg;
    int ranks;
    uint64_t bytes[2]; /* the largest rank's weights: as BF16, with the matrices at Q8_0 */
} rank_mem;

/* Each 2-D matrix is split by output rows as the loader splits it (nvlm_tensor_split_unit;
 * rank 0 has the most); everything else is held whole by every rank. */
static int add_rank_share(void *user, const nvlm_tensor_spec *t) {
    rank_mem *r = user;
    if (r->cfg->llm.tie_word_embeddings && strstr(t->name, "lm_head")) return 0;
    if (t->ndim != 2) {
        r->bytes[0] += 2 * (uint64_t)t->numel, r->bytes[1] += 2 * (uint64_t)t->numel;
        return 0;
    }
    int r0, n, cols = (int)t->shape[1];
    nvlm_dist_split((int)t->shape[0], nvlm_tensor_split_unit(r->cfg, t->name), 0, r->ranks, &r0, &n);
    r->bytes[0] += (uint64_t)n * nvlm_row_bytes(NVLM_DT_BF16, cols);
    r->bytes[1] += (uint64_t)n * nvlm_row_bytes(cols % 32 ? NVLM_DT_BF16 : NVLM_DT_Q8_0, cols);
    return 0;
}

/* KV cache bytes per 1024 positions (F16 keys and values, every layer) of the rank that keeps
 * the most kv heads: the engine keeps only the kv heads of a rank's query heads. */
static uint64_t rank_kv_bytes(const nvlm_config *c, int ranks) {
    int most = 0;
    for (int r = 0; r < ranks; r++) {
        int h0, h1, g0, g1;
        nvlm_dist_heads(r, ranks, c->llm.num_heads, c->llm.num_kv_heads, &h0, &h1, &g0, &g1);
        most = g1 - g0 > most ? g1 - g0 : most;
    }
    return 1024ull * 2 * 2 * (uint64_t)c->llm.num_layers * (uint64_t)most * (uint64_t)nvlm_cfg_head_dim(c);
}

static void print_rank_memory(const nvlm_config *c, int dummy) {
    printf("MPI:           %s\n", nvlm_dist_built() ? "built in: mpirun -np N nvlm run|chat|serve|bench splits the model over N ranks"
                                                     : "not built in (install libopenmpi-dev and rebuild to run over several processes)");
    printf("per rank (the largest rank's share): weights at BF16 / with Q8_0 matrices, and the KV cache of its kv heads\n"
           "per 1024 positions (--kv f16; twice that at f32); activations not counted:\n");
    static const int ns[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++) {
        rank_mem r = {.cfg = c, .ranks = ns[i]};
        nvlm_expected_tensors(c, dummy, add_rank_share, &r);
        char a[32], b[32], k[32];
        printf("  N = %d        %12s  %12s  KV %10s\n", ns[i], human((double)r.bytes[0], a), human((double)r.bytes[1], b),
               human((double)rank_kv_bytes(c, ns[i]), k));
    }
}

static const char *arch_words(nvlm_arch a) {
    return a == NVLM_ARCH_D ? "decoder-only" : a == NVLM_ARCH_X ? "gated cross-attention" : "hybrid";
}

static void print_text(const char *dir, const nvlm_config *c, const nvlm_param_count *pc,
                       const ckpt_info *ci, int dummy, const char *dummy_src) {
    char b[5][40];
    const nvlm_vision_config *v = &c->vision;
    const nvlm_llm_config *l = &c->llm;
    char rs[48] = "";
    if (l->rope_scaling_type[0]) snprintf(rs, sizeof rs, " x%g", l->rope_scaling_factor);
    printf("model:         %s\n", dir);
    printf("architecture:  %s (%s)\n", nvlm_arch_name(c->arch), arch_words(c->arch));
    printf("vision:        InternViT, %d layers, hidden %d, %d heads + %d dummy (%s) of %d, MLP %d,\n"
           "               patch %d, tile %dx%d -> %d tokens per tile\n",
           v->num_layers, v->hidden_size, v->num_heads, dummy, dummy_src, nvlm_cfg_vit_head_dim(c),
           v->intermediate_size, v->patch_size, c->image_size, c->image_size, nvlm_cfg_tokens_per_tile(c));
    printf("projector:     mlp1, LayerNorm(%d) + %d Linear layer%s -> %d\n", 4 * v->hidden_size,
           c->projector_depth, c->projector_depth > 1 ? "s" : "", l->hidden_size);
    printf("language:      Qwen2, %d layers, hidden %d, %d heads / %d kv heads of %d, MLP %d,\n"
           "               vocab %d, rope_theta %g%s%s%s\n",
           l->num_layers, l->hidden_size, l->num_heads, l->num_kv_heads, nvlm_cfg_head_dim(c),
           l->intermediate_size, l->vocab_size, l->rope_theta, l->rope_scaling_type[0] ? ", rope_scaling " : "",
           l->rope_scaling_type, rs);
    if (c->arch != NVLM_ARCH_D) {
        printf("cross-attn:    %d blocks before LLM layers [", c->num_xattn);
        for (int i = 0; i < c->num_xattn; i++) printf("%s%d", i ? ", " : "", c->xattn_layers[i]);
        printf("], MLP %d\n", c->xattn_intermediate_size);
    }
    printf("tiles:         %d..%d per image, thumbnail %s\n", c->min_dynamic_patch, c->max_dynamic_patch,
           c->use_thumbnail ? "on" : "off");
    printf("parameters:\n  vision       %15s\n  projector    %15s\n  language     %15s\n",
           commas(pc->vision, b[0], 40), commas(pc->projector, b[1], 40), commas(pc->llm, b[2], 40));
    if (c->arch != NVLM_ARCH_D) printf("  cross-attn   %15s\n", commas(pc->xattn, b[3], 40));
    printf("  total        %15s\n", commas(pc->total, b[4], 40));
    double n = (double)pc->total;
    char m[4][32];
    printf("weights memory (approx.):\n"
           "  F32          %12s\n  BF16/F16     %12s\n"
           "  Q8_0         %12s  (34 bytes per 32 weights)\n"
           "  Q4           %12s  (20 bytes per 32 weights)\n",
           human(4 * n, m[0]), human(2 * n, m[1]), human(n / 32 * 34, m[2]), human(n / 32 * 20, m[3]));
    print_rank_memory(c, dummy);
    if (!ci->has_weights) {
        printf("checkpoint:    no weights in the folder (config only)\n");
        return;
    }
    if (ci->sharded && !ci->opened && ci->idx.n_files) {
        printf("checkpoint:    index names %s tensors in %zu shards, %zu present",
               commas(ci->idx.n_tensors, b[0], 40), ci->idx.n_files, ci->idx.n_present);
        if (ci->idx.total_size >= 0) printf("; total_size %s bytes", commas((uint64_t)ci->idx.total_size, b[1], 40));
        printf("\n");
    }
    if (ci->sharded && !ci->opened && ci->idx.n_files && !ci->idx.n_present) {
        printf("weights:       absent (index only)\n");
        return;
    }
    if (!ci->opened) {
        printf("weights:       INVALID: %s\n", ci->err.msg);
        return;
    }
    printf("checkpoint:    %zu file%s, %s tensors, %s bytes\n", ci->files, ci->files > 1 ? "s" : "",
           commas(ci->tensors, b[0], 40), commas(ci->bytes, b[1], 40));
    for (int d = 0; d < 5; d++)
        if (ci->mix.tensors[d])
            printf("  %-5s        %5zu tensors %15s params %15s bytes\n", nvlm_dtype_name((nvlm_dtype)d),
                   ci->mix.tensors[d], commas(ci->mix.params[d], b[2], 40), commas(ci->mix.bytes[d], b[3], 40));
    if (ci->unknown) printf("  %zu tensor%s of unknown names (ignored)\n", ci->unknown, ci->unknown > 1 ? "s" : "");
    printf("  %s%s\n", ci->valid ? "matches config.json" : "INVALID: ", ci->valid ? "" : ci->err.msg);
    uint64_t avail = nvlm_mem_available();
    if (avail) {
        char need[32], have[32];
        int io = nvlm_weights_io_choice(NVLM_IO_AUTO, ci->bytes, avail, NULL);
        if (io == NVLM_IO_READ)
            printf("loading:       read into memory by default (%s of weights, %s of memory available now;"
                   " --mmap maps instead)\n", human((double)ci->bytes, need), human((double)avail, have));
        else
            printf("loading:       mapped by default (%s of weights: over 3/4 of the %s of memory available now)\n",
                   human((double)ci->bytes, need), human((double)avail, have));
    }
}

static void json_str(const char *s) { cli_json_string(stdout, s, strlen(s)); }

static void print_json(const char *dir, const nvlm_config *c, const nvlm_param_count *pc,
                       const ckpt_info *ci, int dummy) {
    const nvlm_vision_config *v = &c->vision;
    const nvlm_llm_config *l = &c->llm;
    printf("{\"model\": ");
    json_str(dir);
    printf(", \"architecture\": \"%s\", \"image_size\": %d, \"tokens_per_tile\": %d, "
           "\"min_dynamic_patch\": %d, \"max_dynamic_patch\": %d, \"use_thumbnail\": %s,\n",
           nvlm_arch_name(c->arch), c->image_size, nvlm_cfg_tokens_per_tile(c), c->min_dynamic_patch,
           c->max_dynamic_patch, c->use_thumbnail ? "true" : "false");
    printf(" \"vision\": {\"layers\": %d, \"hidden_size\": %d, \"heads\": %d, \"dummy_heads\": %d, "
           "\"intermediate_size\": %d, \"patch_size\": %d},\n",
           v->num_layers, v->hidden_size, v->num_heads, dummy, v->intermediate_size, v->patch_size);
    printf(" \"projector_depth\": %d,\n", c->projector_depth);
    printf(" \"llm\": {\"layers\": %d, \"hidden_size\": %d, \"heads\": %d, \"kv_heads\": %d, "
           "\"intermediate_size\": %d, \"vocab_size\": %d, \"rope_theta\": %.17g},\n",
           l->num_layers, l->hidden_size, l->num_heads, l->num_kv_heads, l->intermediate_size,
           l->vocab_size, l->rope_theta);
    if (c->arch != NVLM_ARCH_D) {
        printf(" \"cross_attention_layers\": [");
        for (int i = 0; i < c->num_xattn; i++) printf("%s%d", i ? ", " : "", c->xattn_layers[i]);
        printf("], \"xattn_intermediate_size\": %d,\n", c->xattn_intermediate_size);
    }
    printf(" \"params\": {\"vision\": %llu, \"projector\": %llu, \"llm\": %llu, \"xattn\": %llu, \"total\": %llu},\n",
           (unsigned long long)pc->vision, (unsigned long long)pc->projector, (unsigned long long)pc->llm,
           (unsigned long long)pc->xattn, (unsigned long long)pc->total);
    uint64_t n = pc->total;
    printf(" \"memory_bytes_approx\": {\"f32\": %llu, \"bf16\": %llu, \"q8_0\": %llu, \"q4\": %llu},\n",
           (unsigned long long)(4 * n), (unsigned long long)(2 * n), (unsigned long long)((n + 31) / 32 * 34),
           (unsigned long long)((n + 31) / 32 * 20));
    printf(" \"mpi\": %s, \"weights_per_rank_bytes\": {", nvlm_dist_built() ? "true" : "false");
    for (int r = 1; r <= 8; r *= 2) {
        rank_mem rm = {.cfg = c, .ranks = r};
        nvlm_expected_tensors(c, dummy, add_rank_share, &rm);
        printf("%s\"%d\": {\"bf16\": %llu, \"q8_0\": %llu, \"kv_f16_per_1k_positions\": %llu}", r > 1 ? ", " : "", r,
               (unsigned long long)rm.bytes[0], (unsigned long long)rm.bytes[1], (unsigned long long)rank_kv_bytes(c, r));
    }
    printf("},\n");
    printf(" \"checkpoint\": {\"weights\": %s, \"sharded\": %s, \"loadable\": %s, \"valid\": %s",
           ci->has_weights ? "true" : "false", ci->sharded ? "true" : "false", ci->opened ? "true" : "false",
           ci->valid ? "true" : "false");
    if (ci->sharded && ci->idx.n_files)
        printf(", \"index_tensors\": %zu, \"index_files\": %zu, \"index_files_present\": %zu, \"index_total_size\": %lld",
               ci->idx.n_tensors, ci->idx.n_files, ci->idx.n_present, (long long)ci->idx.total_size);
    if (ci->opened) {
        printf(", \"files\": %zu, \"tensors\": %zu, \"bytes\": %llu, \"unknown_tensors\": %zu, \"dtypes\": {",
               ci->files, ci->tensors, (unsigned long long)ci->bytes, ci->unknown);
        int first = 1;
        for (int d = 0; d < 5; d++)
            if (ci->mix.tensors[d]) {
                printf("%s\"%s\": {\"tensors\": %zu, \"params\": %llu, \"bytes\": %llu}", first ? "" : ", ",
                       nvlm_dtype_name((nvlm_dtype)d), ci->mix.tensors[d], (unsigned long long)ci->mix.params[d],
                       (unsigned long long)ci->mix.bytes[d]);
                first = 0;
            }
        printf("}");
    }
    if (ci->has_weights && !ci->valid) {
        printf(", \"error\": ");
        json_str(ci->err.msg);
    }
    printf("}}\n");
}

/* The CPU report: features, levels, and the dispatch table's kernel for each op. */
static void print_cpu(void) {
    char feat[512];
    nvlm_cpu_features(feat, sizeof feat);
    int level = nvlm_cpu_level(), hw = nvlm_cpu_hw_level(), n;
    const int *levels = nvlm_cpu_levels(&n);
    printf("cpu features: %s\n", feat[0] ? feat : "(none the kernels use)");
    printf("levels on this machine:");
    for (int i = 0; i < n; i++)
        if (nvlm_cpu_level_usable(levels[i])) printf(" %s", nvlm_cpu_level_name(levels[i]));
    const char *cap = getenv("NVLM_CPU");
    printf("\nkernel level: %s", nvlm_cpu_level_name(level));
    if (level != hw) printf(" (hardware %s, capped by NVLM_CPU=%s)", nvlm_cpu_level_name(hw), cap ? cap : "");
    printf("\n\n%-26s kernel\n", "op");
    for (int op = 0; op < NVLM_OP_COUNT; op++)
        printf("%-26s %s\n", nvlm_op_name((nvlm_op)op), nvlm_kernel_for((nvlm_op)op, level)->name);
    printf("--compute bf16 (ViT, projector, the LLM's MLP in prefill; the ViT's attention):\n");
    printf("%-26s %s\n", "matmul and attention", nvlm_bf16_kernels_name(level));
}

/* Reads every tensor of the folder's weights; reports (on stream f) each one holding a NaN
 * or Inf with its file and first bad element. Returns the number of such tensors, -1 when the
 * weights cannot be opened. */
static long check_weights(const char *dir, FILE *f) {
    nvlm_st *st;
    nvlm_err err = {0};
    if (nvlm_st_open(dir, &st, &err)) {
        fprintf(stderr, "nvlm info: --check-weights: %s\n", err.msg);
        return -1;
    }
    long bad = 0;
    size_t n = nvlm_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        int64_t at = nvlm_tensor_first_nonfinite(t);
        if (at < 0) continue;
        bad++;
        fprintf(f, "non-finite weight: tensor %s (%s, in %s) holds a NaN or Inf at element %lld\n", t->name,
                nvlm_dtype_name(t->dtype), t->file, (long long)at);
    }
    if (!bad) fprintf(f, "weights:       all %zu tensors finite (no NaN or Inf)\n", n);
    nvlm_st_close(st);
    return bad;
}

int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0, cpu = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--cpu")) {
            cpu = 1;
        } else if (!strcmp(argv[i], "--check-weights")) {
            check = 1;
        } else if (!strcmp(argv[i], "--model")) {
            if (++i >= argc) return cli_usage_error("info", "--model needs a folder");
            dir = argv[i];
        } else {
            return cli_usage_error("info", "unknown option %s", argv[i]);
        }
    }
    if (cpu && json) return cli_usage_error("info", "--cpu prints text only; leave out --json");
    if (cpu) {
        print_cpu();
        if (!dir) return 0;
        printf("\n");
    }
    if (!dir) return cli_usage_error("info", "--model DIR (or --cpu) is required");
    nvlm_config cfg;
    nvlm_err err = {0};
    if (nvlm_config_load(dir, &cfg, &err)) return cli_report("info", &err);
    ckpt_info ci;
    inspect_weights(dir, &cfg, &ci);
    /* The dummy heads: the weights know best; else the config's field; else the release's 7. */
    const char *src = "num_dummy_heads";
    if (ci.dummy >= 0) {
        cfg.vision.num_dummy_heads = ci.dummy;
        src = "from the weights";
    } else if (cfg.vision.num_dummy_heads < 0) {
        src = "release default";
    }
    nvlm_param_count pc;
    nvlm_config_count_params(&cfg, &pc);
    int dummy = cfg.vision.num_dummy_heads >= 0 ? cfg.vision.num_dummy_heads : 7;
    if (json) print_json(dir, &cfg, &pc, &ci, dummy);
    else print_text(dir, &cfg, &pc, &ci, dummy, src);
    nvlm_config_free(&cfg);
    /* a folder with only an index (no shard present) is fine for info; broken weights are not */
    int broken = ci.has_weights && !ci.valid && !(ci.sharded && !ci.opened && ci.idx.n_files && !ci.idx.n_present);
    if (check && (!ci.has_weights || check_weights(dir, json ? stderr : stdout) != 0)) {
        if (!ci.has_weights) fprintf(stderr, "nvlm info: --check-weights: %s holds no weights\n", dir);
        broken = 1;
    }
    return broken ? 1 : 0;
}
