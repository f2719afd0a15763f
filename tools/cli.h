/* cli.h - what the nvlm subcommands share: the command entry points and small helpers
 * for parsing flags and reporting errors on stderr. */
#ifndef NVLM_TOOLS_CLI_H
#define NVLM_TOOLS_CLI_H
#include "nvlm.h"

int cmd_tokenize(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_mkdata(int argc, char **argv);

/* The MPI job of `mpirun -np N nvlm ...` (docs/distributed.md), NULL for one process. */
nvlm_dist *cli_dist(void);
void cli_set_dist(nvlm_dist *d);

/* Prints "nvlm <cmd>: <message>" (from err) on stderr, with the rank in a job of several;
 * returns 1 (the exit status). */
int cli_report(const char *cmd, const nvlm_err *err);
/* Prints "nvlm <cmd>: <printf message>" on stderr; returns 2 (usage error). */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses a whole-string integer in [lo, hi]; returns 0 on success. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
/* Parses a whole-string finite double; returns 0 on success. */
int cli_parse_double(const char *s, double *out);
/* Writes s as a JSON string literal (quotes and escapes) to f. */
#include <stdio.h>
void cli_json_string(FILE *f, const char *s, size_t len);
/* Writes w x h 8-bit RGB pixels (rows packed) as a PNG file; 0 on success, -1 on any error
 * (the file may then be partly written). */
int cli_write_png(const char *path, const uint8_t *rgb, int w, int h);
#endif
