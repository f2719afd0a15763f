/* nvlm quantize - write a Q8_0 / Q4 copy of a model folder (docs/quantization.md). */
#include "cli.h"
#include "model/quant.h"
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Files are written as NAME.tmp-PID and renamed when whole (src/model/safetensors_write.c):
 * on SIGINT/SIGTERM/SIGHUP this thread removes this process's temporary files from the
 * output folder before the process ends, so an interrupted quantize leaves nothing behind. */
typedef struct sig_watch {
    const char *dir;
    sigset_t set;
} sig_watch;

static void remove_temps(const char *dir) {
    char suffix[32], path[4096];
    snprintf(suffix, sizeof suffix, ".tmp-%ld", (long)getpid());
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    size_t sl = strlen(suffix);
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > sl && !strcmp(e->d_name + n - sl, suffix) && snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
            unlink(path);
    }
    closedir(d);
}

static void *watch_signals(void *arg) {
    sig_watch *w = arg;
    int sig = 0;
    if (sigwait(&w->set, &sig)) return NULL;
    remove_temps(w->dir);
    fprintf(stderr, "nvlm quantize: %s: stopped; the temporary files in %s are removed\n", strsignal(sig), w->dir);
    _exit(128 + sig);
}

static void help(FILE *f) {
    fprintf(f, "usage: nvlm quantize --model DIR --out DIR2 --type q8_0|q4|q4_0\n\n"
               "Writes DIR2 (config, tokenizer files, model.safetensors) with every weight matrix in\n"
               "blocks of 32 weights; the engine loads DIR2 directly:\n"
               "  q8_0  8.5 bits a weight (f16 scale + 32 int8), llama.cpp's Q8_0\n"
               "  q4    5.0 bits a weight (f16 scale and minimum + 32 nibbles), llama.cpp's Q4_1 layout\n"
               "  q4_0  4.5 bits a weight (f16 scale + 32 nibbles), llama.cpp's Q4_0: 10%% smaller than q4,\n"
               "        a little less exact (docs/quantization.md)\n"
               "Matrices whose rows do not divide into blocks of 32 stay in their stored format and are\n"
               "listed. With q4 and q4_0 the token embedding, lm_head and the vision side are written as Q8_0.\n");
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
    if (nvlm_quant_parse(type, &to)) return cli_usage_error("quantize", "--type must be " NVLM_QUANT_NAMES ", not '%s'", type);
    /* blocked here, so every thread started below (the pool's) leaves them to the watcher */
    static sig_watch w;
    w.dir = out;
    sigemptyset(&w.set);
    sigaddset(&w.set, SIGINT);
    sigaddset(&w.set, SIGTERM);
    sigaddset(&w.set, SIGHUP);
    pthread_t th;
    if (!pthread_sigmask(SIG_BLOCK, &w.set, NULL) && !pthread_create(&th, NULL, watch_signals, &w)) pthread_detach(th);
    nvlm_quant_report rep;
    nvlm_err err = {0};
    if (nvlm_quantize_folder(in, out, to, &rep, &err)) return cli_report("quantize", &err);
    printf("quantized %d matrices to %s: %.1f MB -> %.1f MB\n", rep.n_quantized, nvlm_dtype_name(to),
           rep.bytes_before / 1e6, rep.bytes_after / 1e6);
    if (rep.n_kept) printf("kept as stored (rows not divisible into blocks of 32): %d: %s\n", rep.n_kept, rep.kept);
    return 0;
}
