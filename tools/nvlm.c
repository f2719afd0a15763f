/* nvlm - command-line front end: a thin user of libnvlm (include/nvlm.h). */
#include "cli.h"
#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"run", cmd_run, "answer one question about zero or more images"},
    {"chat", cmd_chat, "interactive multi-turn chat in the terminal"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server (chat completions with images)"},
    {"info", cmd_info, "architecture, parameter counts and memory of a model folder"},
    {"tokenize", cmd_tokenize, "token ids of texts (Hugging Face tokenizers compatible)"},
    {"preprocess", cmd_preprocess, "decode an image and cut it into NVLM tiles"},
    {"train", cmd_train, "two-stage training: align (stage 1), then fine-tune (stage 2)"},
    {"plot", cmd_plot, "loss curves of training logs as an SVG chart"},
    {"quantize", cmd_quantize, "write a Q8_0 / Q4 copy of a model folder"},
    {"bench", cmd_bench, "kernel, machine-limit and model benchmarks"},
    {"mkmodel", cmd_mkmodel, "write a random-weight checkpoint of any shape (tests, demos)"},
    {"mkdata", cmd_mkdata, "draw synthetic training data (shapes: the demo model's)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm <command> [options]   (nvlm <command> --help for details)\n\n"
               "NVLM 1.0 vision-language models (NVLM-D, -X, -H) in C.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
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
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "nvlm: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
