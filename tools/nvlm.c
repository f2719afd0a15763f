/* nvlm - command-line front end: a thin user of libnvlm (include/nvlm.h). */
#include "cli.h"
#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
    int ranks;  /* runs as several MPI ranks (docs/distributed.md) */
} command;

static const command commands[] = {
    {"run", cmd_run, "answer one question about zero or more images", .ranks = 1},
    {"chat", cmd_chat, "interactive multi-turn chat in the terminal", .ranks = 1},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server (chat completions with images)", .ranks = 1},
    {"info", cmd_info, "architecture, parameter counts and memory of a model folder", .ranks = 0},
    {"tokenize", cmd_tokenize, "token ids of texts (Hugging Face tokenizers compatible)", .ranks = 0},
    {"preprocess", cmd_preprocess, "decode an image and cut it into NVLM tiles", .ranks = 0},
    {"train", cmd_train, "two-stage training: align (stage 1), then fine-tune (stage 2)", .ranks = 1},
    {"plot", cmd_plot, "loss curves of training logs as an SVG chart", .ranks = 0},
    {"quantize", cmd_quantize, "write a Q8_0 / Q4 copy of a model folder", .ranks = 0},
    {"bench", cmd_bench, "kernel, machine-limit and model benchmarks", .ranks = 1},
    {"mkmodel", cmd_mkmodel, "write a random-weight checkpoint of any shape (tests, demos)", .ranks = 0},
    {"mkdata", cmd_mkdata, "draw synthetic training data (shapes: the demo model's)", .ranks = 0},
};

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm <command> [options]   (nvlm <command> --help for details)\n\n"
               "NVLM 1.0 vision-language models (NVLM-D, -X, -H) in C.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nUnder mpirun -np N, run, chat, serve, bench and train use N processes (docs/distributed.md)%s.\n",
            nvlm_dist_built() ? "" : "; this build has no MPI");
}

/* Under mpirun: join the job, let rank 0 alone write stdout, and end the whole job when a rank
 * fails (the others may be waiting for it in an exchange). */
static int run_ranks(const command *c, int argc, char **argv) {
    int n = nvlm_dist_launch_size();
    if (!nvlm_dist_built()) {
        fprintf(stderr, "nvlm: started as one of %d MPI ranks, but this nvlm was built without MPI: install "
                        "libopenmpi-dev (scripts/install-deps.sh) and rebuild with make\n", n);
        return 2;
    }
    if (!c->ranks) {
        fprintf(stderr, "nvlm %s: runs as one process only (not under mpirun -np %d); across ranks: run, chat, serve, bench, train "
                        "(docs/distributed.md)\n", c->name, n);
        return 2;
    }
    nvlm_dist *d = NULL;
    nvlm_err err = {0};
    if (nvlm_dist_init(&argc, &argv, &d, &err)) {
        fprintf(stderr, "nvlm %s: %s\n", c->name, err.msg);
        return 1;
    }
    cli_set_dist(d);
    if (nvlm_dist_rank(d) > 0 && !freopen("/dev/null", "w", stdout)) {
        nvlm_dist_abort(d, 1, "cannot silence stdout");
    }
    int rc = c->run(argc - 1, argv + 1);
    fflush(stdout);
    if (rc) {
        char msg[128];
        snprintf(msg, sizeof msg, "nvlm %s failed (status %d)", c->name, rc);
        nvlm_dist_abort(d, rc, msg);
    }
    cli_set_dist(NULL);
    nvlm_dist_finish(d);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return nvlm_dist_launch_size() > 1 ? run_ranks(&commands[i], argc, argv) : commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "nvlm: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
