/* nvlm train: two-stage training (stage 1: alignment, stage 2: SFT) of NVLM checkpoints. */
#include "cli_model.h"
#include "train/trainer.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: nvlm train --model DIR --data FILE.jsonl --stage 1|2 --out DIR [options]\n\n"
            "Trains an NVLM checkpoint on conversations ({\"image\": ..., \"conversations\": [...]}).\n"
            "Stage 1 trains the projector (mlp1) and, for NVLM-X/H, the gated cross-attention blocks;\n"
            "stage 2 those and every LLM weight. The ViT is frozen unless --trainable names one of its\n"
            "tensors (e.g. \"vision_model.*,mlp1.*,language_model.*\"). NVLM-D, -X and -H checkpoints.\n\n"
            "  --steps N | --epochs N     length of the run (default 1 epoch)\n"
            "  --batch N --grad-accum N   sequences per micro-batch, micro-batches per step (1, 1)\n"
            "  --lr X --warmup N --schedule cosine|constant   (1e-4, 0, cosine to 10%%)\n"
            "  --weight-decay X --clip X  AdamW decay (0; not on norms/biases unless --decay-all), clip (1)\n"
            "  --seed N                   data order and text mixing (1)\n"
            "  --text-data FILE --text-ratio R   text-only samples mixed in with probability R\n"
            "  --eval FILE --eval-every N        eval loss and exact-match accuracy\n"
            "  --save-every N --resume DIR       checkpoints / continue a run bit-identically\n"
            "  --threads N --max-tiles N --recompute --trainable PATTERNS --log FILE\n"
            "  --compute f32|bf16         the forward's matrix products in float32 (default) or BF16\n"
            "Under mpirun -np N: data parallel, each step's sequences dealt over the N ranks and the\n"
            "gradients summed before AdamW (docs/distributed.md); --resume works with another N.\n"
            "Ctrl-C saves a checkpoint and exits. Progress on stderr (a bar on a terminal, else one line\n"
            "a step); JSONL log in OUT/train_log.jsonl.\n");
}

/* On a terminal the step line is one progress bar rewritten in place (evaluations and events on
 * lines of their own); in a log, one line per step. */
static void progress(void *user, const nvlm_train_report *r) {
    int *bar_open = user, tty = isatty(fileno(stderr));
    if (nvlm_dist_rank(cli_dist()) > 0) return; /* rank 0 speaks for the job */
    if (r->event || r->eval) {
        if (*bar_open) fputc('\n', stderr), *bar_open = 0;
        if (r->event) fprintf(stderr, "step %lld: %s %s\n", (long long)r->step, r->event, r->path ? r->path : "");
        else fprintf(stderr, "step %lld: eval loss %.4f, exact match %.1f%%\n", (long long)r->step, r->eval_loss, 100 * r->eval_acc);
        return;
    }
    if (!tty) {
        fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.3g  |g| %.3g  %.0f tok/s  ETA %.0fs  (%ld MB)\n",
                (long long)r->step, (long long)r->total_steps, r->loss, r->lr, r->grad_norm, r->tokens_per_s,
                r->eta_s, r->peak_rss_mb);
        return;
    }
    enum { WIDTH = 30 };
    int done = r->total_steps > 0 ? (int)(WIDTH * r->step / r->total_steps) : WIDTH;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++) bar[i] = i < done ? '#' : '.';
    bar[WIDTH] = 0;
    fprintf(stderr, "\r[%s] step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs   ", bar, (long long)r->step,
            (long long)r->total_steps, r->loss, r->tokens_per_s, r->eta_s);
    *bar_open = r->step < r->total_steps;
    if (!*bar_open) fputc('\n', stderr);
}

int cmd_train(int argc, char **argv) {
    nvlm_train_opts o;
    nvlm_train_opts_default(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        double x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
#define STR(flag, field) if (!strcmp(a, flag)) { if (!v) return cli_usage_error("train", "%s needs a value", a); o.field = v; i++; continue; }
#define INT(flag, field, lo, hi) if (!strcmp(a, flag)) { if (!v || cli_parse_int(v, lo, hi, &n)) return cli_usage_error("train", "%s needs an integer in [%ld, %ld]", a, (long)(lo), (long)(hi)); o.field = n; i++; continue; }
#define DBL(flag, field) if (!strcmp(a, flag)) { if (!v || cli_parse_double(v, &x)) return cli_usage_error("train", "%s needs a number", a); o.field = x; i++; continue; }
        STR("--model", model_dir) STR("--data", data) STR("--out", out_dir) STR("--text-data", text_data)
        STR("--eval", eval_data) STR("--resume", resume_dir) STR("--trainable", trainable) STR("--log", log_path)
        INT("--stage", stage, 1, 2) INT("--steps", steps, 1, 1000000000L) INT("--epochs", epochs, 1, 1000000)
        INT("--batch", batch, 1, 1 << 20) INT("--grad-accum", grad_accum, 1, 1 << 20) INT("--warmup", warmup, 0, 1000000000L)
        INT("--seed", seed, 0, 0x7fffffffffffffffL) INT("--save-every", save_every, 0, 1 << 30)
        INT("--eval-every", eval_every, 0, 1 << 30) INT("--threads", threads, 0, 1024) INT("--max-tiles", max_tiles, 0, 64)
        DBL("--lr", lr) DBL("--weight-decay", weight_decay) DBL("--clip", clip) DBL("--text-ratio", text_ratio)
        DBL("--beta1", beta1) DBL("--beta2", beta2) DBL("--eps", eps)
#undef STR
#undef INT
#undef DBL
        if (!strcmp(a, "--schedule")) {
            if (!v || (strcmp(v, "cosine") && strcmp(v, "constant")))
                return cli_usage_error("train", "--schedule is cosine or constant");
            o.cosine = !strcmp(v, "cosine");
            i++;
            continue;
        }
        if (!strcmp(a, "--compute")) {
            if (!v || cli_compute_value(v, &o.compute)) return cli_usage_error("train", "--compute is f32 or bf16");
            i++;
            continue;
        }
        if (!strcmp(a, "--recompute")) { o.recompute = 1; continue; }
        if (!strcmp(a, "--decay-all")) { o.decay_all = 1; continue; }
        return cli_usage_error("train", "unknown option %s (see nvlm train --help)", a);
    }
    if ((!o.model_dir && !o.resume_dir) || !o.data || !o.out_dir) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    o.stop = &g_stop;
    o.dist = cli_dist(); /* under mpirun: data parallel, rank 0 reports, logs and saves */
    nvlm_err err = {0};
    int bar_open = 0;
    int rc = nvlm_train_run(&o, progress, &bar_open, &err);
    if (bar_open) fputc('\n', stderr);
    if (rc == NVLM_E_CANCELLED) {
        fprintf(stderr, "nvlm train: %s\n", err.msg);
        return 130;
    }
    return rc ? cli_report("train", &err) : 0;
}
