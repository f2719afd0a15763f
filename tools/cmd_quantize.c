/* nvlm quantize - write a Q8_0 / Q4 copy of a model folder (docs/quantization.md). */
#include "cli.h"
#include "model/quant.h"
#include <stdio.h>
#include <string.h>

static void help(FILE *f) {
    fprintf(f, "usage: nvlm quantize --model DIR --out DIR2 --type q8_0|q4\n\n"
               "Writes DIR2 (config, tokenizer files, model.safetensors) with every weight matrix in\n"
               "Q8_0 or Q4 (Q4_1 layout: scale and minimum) blocks of 32; the engine loads DIR2 directly. Matrices whose rows do not\n"
               "divide into blocks of 32 stay in their stored format and are listed. With q4 the\n"
               "token embedding, lm_head and the vision side are written as Q8_0.\n");
}

int cmd_quantize(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *type = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help(stdout);
            return 0;
        }
        const char **dst = !strcmp(argv[i], "--model") || !strcmp(argv[i], "-m") ? &in
                           : !strcmp(argv[i], "--out")                           ? &out
                           : !strcmp(argv[i], "--type")                          ? &type
                                                                                 : NULL;
        if (!dst) return cli_usage_error("quantize", "unknown option '%s' (see --help)", argv[i]);
        if (i + 1 >= argc) return cli_usage_error("quantize", "%s needs a value", argv[i]);
        *dst = argv[++i];
    }
    if (!in || !out || !type) return cli_usage_error("quantize", "--model, --out and --type are required");
    nvlm_dtype to;
    if (nvlm_quant_parse(type, &to)) return cli_usage_error("quantize", "--type must be q8_0 or q4, not '%s'", type);
    nvlm_quant_report rep;
    nvlm_err err = {0};
    if (nvlm_quantize_folder(in, out, to, &rep, &err)) return cli_report("quantize", &err);
    printf("quantized %d matrices to %s: %.1f MB -> %.1f MB\n", rep.n_quantized, nvlm_dtype_name(to),
           rep.bytes_before / 1e6, rep.bytes_after / 1e6);
    if (rep.n_kept) printf("kept as stored (rows not divisible into blocks of 32): %d: %s\n", rep.n_kept, rep.kept);
    return 0;
}
