/* nvlm chat - interactive multi-turn chat in the terminal. */
#include "cli_model.h"
#include "core/file.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Set by SIGINT: stops the answer being generated; a second one at the prompt exits.
 * The only mutable global of the tool, as a signal handler needs. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm chat --model DIR [--image FILE]... [options]\n\n"
               "Interactive conversation; the history is kept between turns (and its KV cache reused).\n"
               "At the prompt:\n"
               "  /image PATH     attach an image to the next question (fills its <image> placeholder,\n"
               "                  or is put in front of the first question)\n"
               "  /quit           leave (also Ctrl-D); Ctrl-C stops the answer being written\n\n%s",
            cli_model_flags_help());
}

/* Under mpirun the ranks agree on every token whether Ctrl-C (seen by rank 0) stops the answer. */
static int stream_token(void *user, int32_t id, const char *text, size_t len) {
    (void)user, (void)id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return nvlm_dist_any(cli_dist(), interrupted != 0);
}

/* A line of input: read by rank 0, which hands it to the other ranks (docs/distributed.md). */
static char *read_line(void) {
    nvlm_dist *d = cli_dist();
    char *line = NULL;
    int64_t n = -1;
    if (nvlm_dist_rank(d) == 0) {
        size_t cap = 0;
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0 || interrupted) {
            free(line);
            line = NULL;
        } else {
            while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
            n = got;
        }
    }
    nvlm_dist_bcast_bytes(d, &line, &n);
    return line;
}

/* /image PATH: in one process, read by the chat; across ranks, rank 0 reads the file and every
 * rank decodes the same bytes (so a bad file fails on all of them alike). */
static int add_image(nvlm_chat *c, const char *path, nvlm_err *err) {
    nvlm_dist *d = cli_dist();
    if (nvlm_dist_size(d) == 1) return nvlm_chat_add_image_file(c, path, err);
    char *data = NULL;
    int64_t n = -1;
    size_t len = 0;
    if (nvlm_dist_rank(d) == 0 && !nvlm_read_file(path, 0, &data, &len, err)) n = (int64_t)len;
    nvlm_dist_bcast_bytes(d, &data, &n);
    if (n < 0) {
        free(data);
        if (nvlm_dist_rank(d) > 0) snprintf(err->msg, sizeof err->msg, "rank 0 cannot read %s", path);
        return err->code = NVLM_E_IO;
    }
    nvlm_image img;
    int rc = nvlm_image_decode((const uint8_t *)data, (size_t)n, NULL, &img, err);
    free(data);
    if (rc) return rc;
    rc = nvlm_chat_add_image(c, &img, err);
    nvlm_image_free(&img);
    return rc;
}

static int chat_loop(nvlm_chat *c, const cli_model_opts *o) {
    nvlm_err err = {0};
    for (;;) {
        interrupted = 0;
        if (nvlm_dist_rank(cli_dist()) == 0) {
            fprintf(stderr, "> ");
            fflush(stderr);
        }
        char *line = read_line();
        if (!line) {
            free(line);
            fprintf(stderr, "\n");
            return 0;
        }
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) {
            free(line);
            return 0;
        }
        if (!strncmp(line, "/image ", 7)) {
            if (add_image(c, line + 7, &err)) cli_report("chat", &err);
            else if (nvlm_dist_rank(cli_dist()) == 0) fprintf(stderr, "(image %s attached)\n", line + 7);
            free(line);
            continue;
        }
        if (!*line) {
            free(line);
            continue;
        }
        nvlm_answer a;
        int rc = nvlm_chat_ask(c, line, &o->sampling, stream_token, NULL, &a, &err);
        free(line);
        printf("\n");
        fflush(stdout);
        if (rc) {
            cli_report("chat", &err);
            continue;
        }
        if (!o->quiet) cli_print_timings(&a);
        nvlm_answer_free(&a);
    }
}

int cmd_chat(int argc, char **argv) {
    cli_model_opts o;
    cli_model_opts_init(&o);
    const char *images[64];
    int n_images = 0;
    for (int i = 1; i < argc; i++) {
        int t = cli_model_flag("chat", &o, argc, argv, &i);
        if (t < 0) return 2;
        if (t) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            o.quiet = 1;
        } else if ((!strcmp(argv[i], "--image") || !strcmp(argv[i], "-i")) && i + 1 < argc && n_images < 64) {
            images[n_images++] = argv[++i];
        } else {
            return cli_usage_error("chat", "unknown or incomplete option '%s'", argv[i]);
        }
    }
    nvlm_model *m = NULL;
    nvlm_chat *c = NULL;
    nvlm_err err = {0};
    int rc = cli_load_model("chat", &o, &m);
    if (!rc) rc = cli_chat_new("chat", &o, m, &c);
    for (int i = 0; !rc && i < n_images; i++)
        if (add_image(c, images[i], &err)) rc = cli_report("chat", &err);
    if (!rc) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: Ctrl-C interrupts the read */
        rc = chat_loop(c, &o);
    }
    nvlm_chat_free(c);
    nvlm_model_free(m);
    return rc;
}
