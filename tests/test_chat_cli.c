/* `nvlm chat` as a user drives it, on the shipped demo model: every slash command through stdin
 * (a pipe: plain lines), the saved conversation read back by `nvlm run --history`, and a session
 * on a pseudo-terminal (libedit: the prompt is drawn, the up arrow recalls the last line). */
#include "check.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>

static char nvlm_bin[4096], root[4096];
static char out[1 << 16];

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *s = hay; (s = strstr(s, needle)); s += strlen(needle)) n++;
    return n;
}

/* Runs `nvlm ARGS` (from the repository root) with stdin from the text `input` and stderr
 * folded into stdout; the output lands in out; returns the exit code. */
static int nvlm_stdin(const char *args, const char *input) {
    char in_path[] = "/tmp/nvlm_chat_in_XXXXXX";
    int fd = mkstemp(in_path);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t)strlen(input);
    int ok = write(fd, input, (size_t)len) == len;
    close(fd);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cd '%s' && %s %s < %s 2>&1", root, nvlm_bin, args, in_path);
    FILE *p = ok ? popen(cmd, "r") : NULL;
    out[0] = 0;
    if (!p) return unlink(in_path), -1;
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) {
    }
    int st = pclose(p);
    unlink(in_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_slash_commands(void) {
    char save1[] = "/tmp/nvlm_chat_save1_XXXXXX", save2[] = "/tmp/nvlm_chat_save2_XXXXXX";
    int f1 = mkstemp(save1), f2 = mkstemp(save2);
    close(f1), close(f2);
    char input[2048];
    snprintf(input, sizeof input,
             "/help\n"
             "/frobnicate now\n"
             "/image /nonexistent/cat.png\n"
             "/image\n"
             "/tiles\n/tiles 99\n/tiles 2\n/tiles 0\n"
             "/system\n/system Answer the questions.\n/system\n"
             "/image demo/image.png\n"
             "What colour is the shape?\n"
             "What shape is it?\n"
             "/save %s\n"
             "/reset\n"
             "/save %s\n"
             "/quit\n"
             "/help\n",
             save1, save2);
    int rc = nvlm_stdin("chat -m demo/model -q", input);
    CHECK(rc == 0, "chat exit %d: %s", rc, out);
    /* /help, the unknown command and the line after /quit: help twice, not three times */
    CHECK(count(out, "/save FILE") == 2 && strstr(out, "unknown command /frobnicate"), "help: %s", out);
    CHECK(strstr(out, "/nonexistent/cat.png") && strstr(out, "usage: /image PATH"), "bad /image: %s", out);
    CHECK(strstr(out, "(at most 1 tile per image)") && strstr(out, "usage: /tiles N") &&
          strstr(out, "from now on: at most 2 tiles)") && strstr(out, "from now on: at most 1 tile)"),
          "/tiles (the demo model's max_dynamic_patch is 1): %s", out);
    CHECK(count(out, "(system message: \"Answer the questions.\")") == 2 && strstr(out, "(system message set)"), "/system: %s", out);
    CHECK(strstr(out, "(image demo/image.png attached)"), "/image: %s", out);
    CHECK(strstr(out, "\nblue\n"), "answer (demo/image.png is a blue triangle): %s", out);
    CHECK(strstr(out, "2 turns saved to") && strstr(out, "--image demo/image.png") && strstr(out, "(new conversation)") &&
          strstr(out, "0 turns saved to"), "/save, /reset: %s", out);
    const char *saved = read_text(save1);
    const char *head = "[[\"<image>\\nWhat colour is the shape?\",\"blue\"],[\"What shape is it?\",\"";
    CHECK(saved && !strncmp(saved, head, strlen(head)) && strstr(saved, "\"]]\n") && count(saved, "[") == 3,
          "saved conversation: %s", saved ? saved : "(unreadable)");
    saved = read_text(save2);
    CHECK(saved && !strcmp(saved, "[]\n"), "saved after /reset: %s", saved ? saved : "(unreadable)");

    /* what /save wrote is what `nvlm run --history` reads: the conversation goes on */
    char args[4096];
    snprintf(args, sizeof args, "run -m demo/model -q --history %s --image demo/image.png --prompt 'And its colour?'", save1);
    rc = nvlm_stdin(args, "");
    CHECK(rc == 0, "run --history exit %d: %s", rc, out);
    unlink(save1), unlink(save2);

    /* an image attached after the first turn gets its placeholder too; // sends a literal slash */
    rc = nvlm_stdin("chat -m demo/model -q", "What shape is it?\n/image demo/image.png\nWhat shape is it?\n//tiles\n");
    CHECK(rc == 0 && count(out, "(image demo/image.png attached)") == 1 && !strstr(out, "unknown command") &&
          !strstr(out, "nvlm chat:"), "later image, //: %s", out);
}

/* Reads what the child writes to the pty until it exits or 60 s pass; returns the exit code. */
static int drain_pty(int fd, pid_t pid, size_t *len) {
    int status = -1, open_ = 1;
    for (int waited = 0; waited < 60000;) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = open_ ? poll(&p, 1, 100) : (usleep(100000), 0);
        if (r > 0) {
            ssize_t n = read(fd, out + *len, sizeof out - 1 - *len);
            if (n > 0) *len += (size_t)n, out[*len] = 0;
            else if (n == 0 || (errno != EINTR && errno != EAGAIN)) open_ = 0; /* EIO: closed; wait for the exit */
        } else waited += 100;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            pid = -1;
            break;
        }
    }
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_terminal(void) {
    int fd;
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    if (pid < 0) {
        CHECK(0, "forkpty: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        if (chdir(root)) _exit(127);
        setenv("HOME", "/nonexistent", 1); /* no ~/.editrc */
        setenv("TERM", "dumb", 1);
        execl(nvlm_bin, nvlm_bin, "chat", "-m", "demo/model", "-q", (char *)NULL);
        _exit(127);
    }
    /* typed ahead: the terminal buffers it; "\033[A" is the up arrow (recall the question) */
    char save[] = "/tmp/nvlm_chat_pty_XXXXXX";
    int sfd = mkstemp(save);
    if (sfd >= 0) close(sfd);
    char typed[512];
    snprintf(typed, sizeof typed, "/image demo/image.png\rWhat shape is it?\r\033[A\r/save %s\r/quit\r", save);
    ssize_t len = (ssize_t)strlen(typed);
    CHECK(write(fd, typed, (size_t)len) == len, "write to the pty");
    size_t n = 0;
    int rc = drain_pty(fd, pid, &n);
    close(fd);
    CHECK(rc == 0, "chat on a terminal exit %d: %s", rc, out);
    const char *saved = read_text(save);
    CHECK(saved && count(saved, "What shape is it?") == 2 && strstr(out, "2 turns saved"),
          "the recalled question asked again: %s\n%s", saved ? saved : "(unreadable)", out);
    CHECK(count(out, "> ") >= 4, "the prompt drawn: %s", out);
    unlink(save);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *slash = strrchr(argv[0], '/');
    int dl = slash ? (int)(slash - argv[0]) : 1;
    const char *d = slash ? argv[0] : ".";
    snprintf(root, sizeof root, "%.*s/../..", dl, d);
    char abs_root[4096];
    if (!realpath(root, abs_root)) {
        CHECK(0, "no repository root at %s", root);
        return check_done("test_chat_cli");
    }
    memcpy(root, abs_root, sizeof root);
    char rel_bin[2048];
    snprintf(rel_bin, sizeof rel_bin, "%.*s/../nvlm", dl, d);
    if (!realpath(rel_bin, nvlm_bin) || access(nvlm_bin, X_OK)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", rel_bin);
        return check_done("test_chat_cli");
    }
    test_slash_commands();
    test_terminal();
    return check_done("test_chat_cli");
}
