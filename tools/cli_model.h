/* cli_model.h - flags and helpers shared by the commands that load a model. */
#ifndef NVLM_TOOLS_CLI_MODEL_H
#define NVLM_TOOLS_CLI_MODEL_H
#include "cli.h"

#define CLI_MAX_STOP 16

typedef struct cli_model_opts {
    const char *model_dir;
    int threads;
    int weights;        /* NVLM_WEIGHTS_*: --weights q8_0|q4 */
    int weights_io;     /* NVLM_IO_*: --mmap / --no-mmap */
    int kv_type;        /* NVLM_KV_*: --kv f16|f32 */
    int compute;        /* NVLM_COMPUTE_*: --compute f32|bf16 */
    int max_num;
    const char *system;
    int system_set;
    int quiet;
    int check_weights;  /* --check-weights: every tensor scanned for NaN/Inf after loading */
    nvlm_sampling sampling;
    const char *stop[CLI_MAX_STOP + 1];
    int n_stop;
} cli_model_opts;

void cli_model_opts_init(cli_model_opts *o);
/* Consumes argv[*i] (and its value) if it is a model/sampling flag: returns 1 when taken,
 * 0 when not one of these flags, -1 after printing a usage error. */
int cli_model_flag(const char *cmd, cli_model_opts *o, int argc, char **argv, int *i);
const char *cli_model_flags_help(void);
/* Takes --mmap (NVLM_IO_MMAP) or --no-mmap (NVLM_IO_READ) into *io: 1 when arg is one of them. */
int cli_weights_io_flag(const char *arg, int *io);
/* The load's weights_io for a --mmap/--no-mmap choice io and a --weights choice: quantizing
 * at load makes its own copy, so by default the stored weights are then only mapped. */
int cli_weights_io(int io, int weights);
/* --compute's value: "f32" or "bf16" into *compute (NVLM_COMPUTE_*); 0, or -1 for another value. */
int cli_compute_value(const char *v, int *compute);
/* Load with progress on stderr; returns 0 or the exit status after printing the error. */
int cli_load_model(const char *cmd, const cli_model_opts *o, nvlm_model **m);
int cli_chat_new(const char *cmd, const cli_model_opts *o, nvlm_model *m, nvlm_chat **c);
void cli_print_timings(const nvlm_answer *a);
#endif
