/* nvlm chat - interactive multi-turn chat in the terminal, with slash commands; line editing
 * and history (libedit) when stdin is a terminal, plain lines otherwise (pipes, scripts). */
#include "cli_model.h"
#include "core/file.h"
#include <cjson/cJSON.h>
#include <histedit.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Set by SIGINT: stops the answer being generated; one at the prompt exits.
 * The only mutable global of the tool, as a signal handler needs. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* The slash commands, one table for the parser and the help. */
typedef enum { CMD_HELP, CMD_IMAGE, CMD_SYSTEM, CMD_RESET, CMD_TILES, CMD_SAVE, CMD_QUIT } chat_cmd;
static const struct slash {
    const char *name, *arg, *help;
    chat_cmd cmd;
} slashes[] = {
    {"/help", "", "this list", CMD_HELP},
    {"/image", "PATH", "attach an image to the next question (an <image> placeholder is put in\n"
                       "                  front of the question when it has none)", CMD_IMAGE},
    {"/system", "TEXT", "set the system message for the turns that follow (alone: show it)", CMD_SYSTEM},
    {"/reset", "", "forget the conversation and attached images (keeps /system and /tiles)", CMD_RESET},
    {"/tiles", "N", "at most N tiles per image attached afterwards (0: the model's default)", CMD_TILES},
    {"/save", "FILE", "write the conversation as JSON [[question, answer], ...], the format\n"
                      "                  of `nvlm run --history FILE`", CMD_SAVE},
    {"/quit", "", "leave (also /exit, Ctrl-D; Ctrl-C stops an answer being written)", CMD_QUIT},
    {"/exit", NULL, NULL, CMD_QUIT},
};
enum { N_SLASHES = sizeof slashes / sizeof *slashes };

static void print_commands(FILE *f) {
    fprintf(f, "commands (a line starting with // is sent with one / removed):\n");
    for (int i = 0; i < N_SLASHES; i++)
        if (slashes[i].help) {
            char head[32];
            snprintf(head, sizeof head, "%s %s", slashes[i].name, slashes[i].arg);
            fprintf(f, "  %-15s %s\n", head, slashes[i].help);
        }
}

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm chat --model DIR [--image FILE]... [options]\n\n"
               "Interactive conversation; the history is kept between turns (and its KV cache reused).\n"
               "Line editing and history (libedit) when stdin is a terminal; one question per line\n"
               "from a pipe (no prompt then). At the prompt, ");
    print_commands(f);
    fprintf(f, "\n%s", cli_model_flags_help());
}

/* --------------------------------------------------------------- reading lines */

typedef struct line_reader {
    EditLine *el; /* NULL: plain getline (stdin is not a terminal) */
    History *hist;
} line_reader;

static char *prompt(EditLine *el) {
    (void)el;
    return "> ";
}

static void reader_open(line_reader *r) {
    memset(r, 0, sizeof *r);
    if (!isatty(STDIN_FILENO)) return;
    r->el = el_init("nvlm", stdin, stderr, stderr);
    r->hist = history_init();
    if (!r->el || !r->hist) {
        if (r->el) el_end(r->el);
        if (r->hist) history_end(r->hist);
        memset(r, 0, sizeof *r); /* no editing, still a working chat */
        return;
    }
    HistEvent ev;
    history(r->hist, &ev, H_SETSIZE, 1000);
    history(r->hist, &ev, H_SETUNIQUE, 1);
    el_set(r->el, EL_EDITOR, "emacs");
    el_set(r->el, EL_PROMPT, prompt);
    el_set(r->el, EL_HIST, history, r->hist);
    el_source(r->el, NULL); /* the user's ~/.editrc, if any */
}

static void reader_close(line_reader *r) {
    if (r->el) el_end(r->el);
    if (r->hist) history_end(r->hist);
}

/* The next line without its newline (malloc'ed), or NULL at end of input or on Ctrl-C. */
static char *read_line_here(line_reader *r) {
    char *line = NULL;
    ssize_t n;
    if (r->el) {
        int count = 0;
        const char *s = el_gets(r->el, &count);
        if (!s || count <= 0) return NULL;
        line = strdup(s);
        n = line ? (ssize_t)strlen(line) : -1;
    } else { /* a pipe or a file: no prompt (the output stays the answers and messages) */
        size_t cap = 0;
        n = getline(&line, &cap, stdin);
    }
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (r->el && n > 0) {
        HistEvent ev;
        history(r->hist, &ev, H_ENTER, line);
    }
    return line;
}

/* read_line_here on rank 0, which hands the line to the other ranks under mpirun
 * (docs/distributed.md): every rank runs the same conversation. */
static char *read_line(line_reader *r) {
    nvlm_dist *d = cli_dist();
    if (nvlm_dist_size(d) == 1) return read_line_here(r);
    char *line = nvlm_dist_rank(d) == 0 ? read_line_here(r) : NULL;
    int64_t n = line && !interrupted ? (int64_t)strlen(line) : -1;
    if (n < 0) free(line), line = NULL;
    nvlm_dist_bcast_bytes(d, &line, &n);
    return line;
}

/* An image file for the chat: in one process read by the chat; across ranks, rank 0 reads the
 * file and every rank decodes the same bytes (so a bad file fails on all of them alike). */
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

/* --------------------------------------------------------------- the conversation */

typedef struct turn {
    char *question, *answer;
} turn;

typedef struct chat_state {
    nvlm_model *m;
    nvlm_chat *c;
    const cli_model_opts *o;
    char *system;     /* NULL: the model's default; set by /system */
    int system_set;
    int max_tiles;    /* /tiles */
    turn *turns;      /* what /save writes: the questions as the model saw them */
    int n_turns, cap_turns;
    char **images;    /* every attached image, in order (the ones asked about come first) */
    int n_images, n_pending;
} chat_state;

static void forget(chat_state *s) {
    for (int i = 0; i < s->n_turns; i++) free(s->turns[i].question), free(s->turns[i].answer);
    for (int i = 0; i < s->n_images; i++) free(s->images[i]);
    s->n_turns = s->n_images = s->n_pending = 0;
}

static void state_free(chat_state *s) {
    forget(s);
    free(s->turns);
    free(s->images);
    free(s->system);
    nvlm_chat_free(s->c);
}

/* A fresh conversation with the current system message and tile limit. */
static int new_conversation(chat_state *s) {
    nvlm_err err = {0};
    nvlm_chat_free(s->c);
    s->c = NULL;
    forget(s);
    if (nvlm_chat_new(s->m, &s->c, &err)) return cli_report("chat", &err);
    if (s->system_set && nvlm_chat_set_system(s->c, s->system, &err)) return cli_report("chat", &err);
    nvlm_chat_set_max_tiles(s->c, s->max_tiles);
    return 0;
}

static int attach_image(chat_state *s, const char *path) {
    nvlm_err err = {0};
    char **grown = realloc(s->images, sizeof *grown * (size_t)(s->n_images + 1));
    if (!grown) return fprintf(stderr, "nvlm chat: out of memory\n"), 1;
    s->images = grown;
    if (!(s->images[s->n_images] = strdup(path))) return fprintf(stderr, "nvlm chat: out of memory\n"), 1;
    if (add_image(s->c, path, &err)) {
        free(s->images[s->n_images]);
        return cli_report("chat", &err);
    }
    s->n_images++, s->n_pending++;
    return 0;
}

static int count_placeholders(const char *q) {
    int n = 0;
    for (const char *p = q; (p = strstr(p, "<image>")); p += 7) n++;
    return n;
}

/* The question as sent: one "<image>\n" in front for each attached image the question has no
 * placeholder for (what chat() does for the first question; later ones need it too). */
static char *with_placeholders(const char *q, int pending) {
    int missing = pending - count_placeholders(q);
    if (missing < 0) missing = 0;
    size_t n = strlen(q);
    char *out = malloc(n + 8 * (size_t)missing + 1);
    if (!out) return NULL;
    for (int i = 0; i < missing; i++) memcpy(out + 8 * i, "<image>\n", 8);
    memcpy(out + 8 * (size_t)missing, q, n + 1);
    return out;
}

static int stream_token(void *user, int32_t id, const char *text, size_t len) {
    (void)user, (void)id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return nvlm_dist_any(cli_dist(), interrupted != 0); /* under mpirun every rank stops at the same token */
}

static int remember_turn(chat_state *s, char *question, const char *answer) {
    if (s->n_turns == s->cap_turns) {
        int cap = s->cap_turns ? 2 * s->cap_turns : 8;
        turn *t = realloc(s->turns, sizeof *t * (size_t)cap);
        if (!t) return -1;
        s->turns = t, s->cap_turns = cap;
    }
    char *a = strdup(answer);
    if (!a) return -1;
    s->turns[s->n_turns++] = (turn){question, a};
    return 0;
}

static void ask(chat_state *s, const char *line) {
    char *q = with_placeholders(line, s->n_pending);
    if (!q) {
        fprintf(stderr, "nvlm chat: out of memory\n");
        return;
    }
    nvlm_answer a;
    nvlm_err err = {0};
    int rc = nvlm_chat_ask(s->c, q, &s->o->sampling, stream_token, NULL, &a, &err);
    printf("\n");
    fflush(stdout);
    if (rc) {
        free(q);
        cli_report("chat", &err); /* the turn is not kept; attached images wait for the next one */
        return;
    }
    s->n_pending = 0;
    if (remember_turn(s, q, a.response)) free(q), fprintf(stderr, "nvlm chat: out of memory (this turn will not be saved)\n");
    if (!s->o->quiet) cli_print_timings(&a);
    nvlm_answer_free(&a);
}

static void save(const chat_state *s, const char *path) {
    cJSON *root = cJSON_CreateArray();
    for (int i = 0; root && i < s->n_turns; i++) {
        cJSON *t = cJSON_CreateArray();
        if (!t || !cJSON_AddItemToArray(root, t)) {
            cJSON_Delete(t);
            cJSON_Delete(root), root = NULL;
            break;
        }
        cJSON_AddItemToArray(t, cJSON_CreateString(s->turns[i].question));
        cJSON_AddItemToArray(t, cJSON_CreateString(s->turns[i].answer));
    }
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    FILE *f = text ? fopen(path, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(text);
    if (!ok) {
        fprintf(stderr, "nvlm chat: cannot write %s\n", path);
        return;
    }
    int asked = s->n_images - s->n_pending;
    fprintf(stderr, "(%d turn%s saved to %s", s->n_turns, s->n_turns == 1 ? "" : "s", path);
    if (asked) {
        fprintf(stderr, "; continue it with nvlm run --history %s", path);
        for (int i = 0; i < asked; i++) fprintf(stderr, " --image %s", s->images[i]);
    }
    fprintf(stderr, ")\n");
}

/* The slash command of line, or -1 (and *arg = NULL) for an unknown one. */
static int parse_slash(const char *line, const char **arg) {
    size_t n = strcspn(line, " \t");
    *arg = line + n + strspn(line + n, " \t");
    for (int i = 0; i < N_SLASHES; i++)
        if (strlen(slashes[i].name) == n && !strncmp(line, slashes[i].name, n)) return (int)slashes[i].cmd;
    *arg = NULL;
    return -1;
}

/* Runs a slash command; returns 1 when the chat should end. */
static int run_slash(chat_state *s, const char *line) {
    const char *arg;
    int cmd = parse_slash(line, &arg);
    long n;
    nvlm_err err = {0};
    switch (cmd) {
    case CMD_QUIT: return 1;
    case CMD_IMAGE:
        if (!*arg) fprintf(stderr, "usage: /image PATH\n");
        else if (!attach_image(s, arg)) fprintf(stderr, "(image %s attached)\n", arg);
        return 0;
    case CMD_SYSTEM:
        if (!*arg) {
            fprintf(stderr, "(system message: \"%s\")\n", s->system_set && s->system ? s->system : "Answer the questions.");
            return 0;
        }
        if (nvlm_chat_set_system(s->c, arg, &err)) return cli_report("chat", &err), 0;
        free(s->system);
        s->system = strdup(arg);
        s->system_set = 1;
        fprintf(stderr, "(system message set)\n");
        return 0;
    case CMD_RESET:
        if (new_conversation(s)) return 1;
        fprintf(stderr, "(new conversation)\n");
        return 0;
    case CMD_TILES:
        if (!*arg) {
            n = s->max_tiles ? s->max_tiles : nvlm_model_max_tiles(s->m);
            fprintf(stderr, "(at most %ld tile%s per image)\n", n, n == 1 ? "" : "s");
        } else if (cli_parse_int(arg, 0, 64, &n)) {
            fprintf(stderr, "usage: /tiles N (0..64; 0: the model's default)\n");
        } else {
            s->max_tiles = (int)n;
            nvlm_chat_set_max_tiles(s->c, s->max_tiles);
            n = n ? n : nvlm_model_max_tiles(s->m);
            fprintf(stderr, "(images attached from now on: at most %ld tile%s)\n", n, n == 1 ? "" : "s");
        }
        return 0;
    case CMD_SAVE:
        if (!*arg) fprintf(stderr, "usage: /save FILE\n");
        else save(s, arg);
        return 0;
    case CMD_HELP: print_commands(stderr); return 0;
    default:
        fprintf(stderr, "unknown command %.*s\n", (int)strcspn(line, " \t"), line);
        print_commands(stderr);
        return 0;
    }
}

static int chat_loop(chat_state *s) {
    line_reader r;
    reader_open(&r);
    for (;;) {
        interrupted = 0;
        char *line = read_line(&r);
        if (!line || interrupted) {
            free(line);
            fprintf(stderr, "\n");
            break;
        }
        int quit = 0;
        if (line[0] == '/' && line[1] != '/') quit = run_slash(s, line);
        else if (*line) ask(s, line[0] == '/' ? line + 1 : line);
        free(line);
        if (quit) break;
    }
    reader_close(&r);
    return 0;
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
    chat_state s = {.o = &o, .system = o.system ? strdup(o.system) : NULL, .system_set = o.system_set, .max_tiles = o.max_num};
    int rc = cli_load_model("chat", &o, &s.m);
    if (!rc) rc = new_conversation(&s);
    for (int i = 0; !rc && i < n_images; i++) rc = attach_image(&s, images[i]);
    if (!rc) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: Ctrl-C interrupts the read */
        rc = chat_loop(&s);
    }
    state_free(&s);
    nvlm_model_free(s.m);
    return rc;
}
