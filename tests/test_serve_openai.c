/* `nvlm serve` as its users run it, checked with a real client: the server binary starts on a
 * random loopback port (--port 0) with the reference model, and the official `openai` npm
 * package (tests/openai/client.mjs; installed by tests/openai/install.sh from `make check`)
 * asks plain and streamed questions with and without images. Every greedy answer, its finish
 * reason and its token counts equal `nvlm run --json`'s for the same question and the reference
 * case's; the SDK sees the model list, a wrong key as a 401 and a bad request as a 400; SIGTERM
 * stops the server cleanly (exit status 0: under ASan that includes LeakSanitizer's verdict).
 *
 * Without node or the package the test prints a skip line and counts nothing as passed; with
 * CI set (CI=true) that is a failure instead. */
#include "generate/prompt.h"
#include "test_serve_util.h"
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY "sk-nvlm-test"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* ------------------------------------------------------------ children */

/* Runs argv with stdout captured (stderr passed through); returns the exit status or -1. */
static int run_capture(char *const argv[], char **out) {
    int p[2];
    *out = NULL;
    if (pipe(p)) return -1;
    pid_t pid = fork();
    if (pid < 0) return close(p[0]), close(p[1]), -1;
    if (!pid) {
        dup2(p[1], 1);
        close(p[0]), close(p[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    nvlm_buf b = {0};
    nvlm_buf_puts(&b, "");
    char tmp[65536];
    ssize_t k;
    while ((k = read(p[0], tmp, sizeof tmp)) > 0 || (k < 0 && errno == EINTR))
        if (k > 0) nvlm_buf_append(&b, tmp, (size_t)k);
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    *out = b.data;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

typedef struct server {
    pid_t pid;
    int err_fd;    /* the server's stderr */
    int port;
    nvlm_buf log;
} server;

/* Reads the server's stderr for up to ms milliseconds or until it closes. */
static void drain(server *s, int ms) {
    char tmp[4096];
    double end = now_s() + ms / 1e3;
    for (;;) {
        int left = (int)((end - now_s()) * 1e3);
        struct pollfd p = {s->err_fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0) return;
        ssize_t k = read(s->err_fd, tmp, sizeof tmp);
        if (k <= 0) return;
        nvlm_buf_append(&s->log, tmp, (size_t)k);
        if (s->port <= 0 && s->log.data) {
            const char *at = strstr(s->log.data, "on http://127.0.0.1:");
            if (at) s->port = atoi(at + strlen("on http://127.0.0.1:"));
            if (s->port > 0) return;
        }
    }
}

static int start_server(const char *nvlm, const char *model, server *s) {
    int p[2];
    memset(s, 0, sizeof *s);
    nvlm_buf_puts(&s->log, "");
    if (pipe(p)) return -1;
    s->pid = fork();
    if (s->pid < 0) return -1;
    if (!s->pid) {
        dup2(p[1], 2);
        close(p[0]), close(p[1]);
        execl(nvlm, nvlm, "serve", "--model", model, "--port", "0", "--api-key", KEY, "--parallel", "2", "-q",
              (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    s->err_fd = p[0];
    drain(s, 60000);
    return s->port > 0 ? 0 : -1;
}

/* SIGTERM, then the exit status (-1: killed after 30 s or by a signal). */
static int stop_server(server *s, double *secs) {
    double t0 = now_s();
    kill(s->pid, SIGTERM);
    int st = 0, done = 0;
    for (int i = 0; i < 3000 && !done; i++) {
        pid_t w = waitpid(s->pid, &st, WNOHANG);
        if (w == s->pid) done = 1;
        else usleep(10000);
    }
    *secs = now_s() - t0;
    if (!done) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &st, 0);
    }
    drain(s, 1000);
    close(s->err_fd);
    return done && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------ reference cases */

typedef struct refcase {
    char id[64];
    char question[512];
    char image[256];        /* "" or the reference image's path */
    char *response;
    const char *finish;
    long prompt_len, n_output;
    int max_tokens;
    cJSON *messages;
} refcase;

static int load_case(const char *id, refcase *rc) {
    size_t len;
    char *all = slurp(shared_path("reference/model_cases.jsonl"), &len);
    int found = 0;
    memset(rc, 0, sizeof *rc);
    for (char *line = all, *nl; all && line && *line && !found; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *c = cJSON_Parse(line);
        const cJSON *cid = cJSON_GetObjectItem(c, "id");
        if (cJSON_IsString(cid) && !strcmp(cid->valuestring, id) && expressible(c)) {
            const cJSON *imgs = cJSON_GetObjectItem(c, "images");
            char *url = NULL;
            if (cJSON_GetArraySize(imgs) == 1) {
                char rel[256];
                snprintf(rel, sizeof rel, "reference/%s", cJSON_GetArrayItem(imgs, 0)->valuestring);
                snprintf(rc->image, sizeof rc->image, "%s", shared_path(rel));
                url = data_url(rel);
            }
            snprintf(rc->id, sizeof rc->id, "%s", id);
            snprintf(rc->question, sizeof rc->question, "%s", cJSON_GetObjectItem(c, "question")->valuestring);
            rc->response = strdup(cJSON_GetObjectItem(c, "response")->valuestring);
            rc->finish = cJSON_IsTrue(cJSON_GetObjectItem(c, "stopped_on_im_end")) ? "stop" : "length";
            rc->prompt_len = cJSON_GetObjectItem(c, "prompt_len")->valueint;
            rc->n_output = cJSON_GetArraySize(cJSON_GetObjectItem(c, "output_ids"));
            rc->max_tokens = cJSON_GetObjectItem(c, "max_new_tokens")->valueint;
            const char *urls[1] = {url};
            rc->messages = case_messages(c, urls);
            free(url);
            found = cJSON_GetArraySize(imgs) <= 1 && cJSON_IsNull(cJSON_GetObjectItem(c, "history"));
        }
        cJSON_Delete(c);
    }
    free(all);
    return found ? 0 : -1;
}

/* `nvlm run --json` for the case: its response, finish reason and token counts. */
typedef struct run_answer {
    char *response;
    char finish[16];
    long n_prompt, n_output;
} run_answer;

static int nvlm_run(const char *nvlm, const char *model, const refcase *c, run_answer *a) {
    char n[16];
    snprintf(n, sizeof n, "%d", c->max_tokens);
    char *argv[16] = {(char *)nvlm, "run", "--model", (char *)model, "--json", "-q", "-n", n, "-p", (char *)c->question};
    int k = 10;
    if (*c->image) argv[k++] = "-i", argv[k++] = (char *)c->image;
    argv[k] = NULL;
    char *out = NULL;
    memset(a, 0, sizeof *a);
    int rc = run_capture(argv, &out);
    cJSON *j = rc == 0 ? cJSON_Parse(out) : NULL;
    free(out);
    const cJSON *r = cJSON_GetObjectItem(j, "response"), *f = cJSON_GetObjectItem(j, "finish_reason");
    if (cJSON_IsString(r)) a->response = strdup(r->valuestring);
    if (cJSON_IsString(f)) snprintf(a->finish, sizeof a->finish, "%s", f->valuestring);
    a->n_prompt = cJSON_GetArraySize(cJSON_GetObjectItem(j, "prompt_ids"));
    a->n_output = cJSON_GetArraySize(cJSON_GetObjectItem(j, "output_ids"));
    cJSON_Delete(j);
    return a->response ? 0 : -1;
}

/* ----------------------------------------------------------------- jobs */

static cJSON *chat_job(cJSON *jobs, const char *name, const refcase *c, int stream) {
    cJSON *job = cJSON_CreateObject(), *p = cJSON_AddObjectToObject(job, "params");
    cJSON_AddStringToObject(job, "name", name);
    cJSON_AddStringToObject(job, "op", "chat");
    cJSON_AddStringToObject(p, "model", "tiny-nvlm-d");
    cJSON_AddItemToObject(p, "messages", cJSON_Duplicate(c->messages, 1));
    cJSON_AddNumberToObject(p, "max_tokens", c->max_tokens);
    cJSON_AddNumberToObject(p, "temperature", 0);
    if (stream) {
        cJSON_AddTrueToObject(p, "stream");
        cJSON_AddTrueToObject(cJSON_AddObjectToObject(p, "stream_options"), "include_usage");
    }
    cJSON_AddItemToArray(jobs, job);
    return job;
}

static const cJSON *result(const cJSON *results, const char *name) {
    const cJSON *r;
    cJSON_ArrayForEach(r, results) {
        const cJSON *n = cJSON_GetObjectItem(r, "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return r;
    }
    return NULL;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static long num(const cJSON *o, const char *k) { return (long)cJSON_GetNumberValue(cJSON_GetObjectItem(o, k)); }

/* One case's answer through the SDK against `nvlm run` and the reference. */
static void check_answer(const cJSON *results, const char *name, const refcase *c, const run_answer *ra, int stream) {
    const cJSON *r = result(results, name), *u = cJSON_GetObjectItem(r, "usage");
    CHECK(r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")), "%s: the SDK failed: %s", name, str(r, "error"));
    if (!r) return;
    CHECK(ra->response && !strcmp(str(r, "content"), ra->response), "%s: API '%s' != nvlm run '%s'", name,
          str(r, "content"), ra->response ? ra->response : "(none)");
    CHECK(!strcmp(str(r, "content"), c->response), "%s: API '%s' != reference '%s'", name, str(r, "content"), c->response);
    CHECK(!strcmp(str(r, "finish_reason"), ra->finish) && !strcmp(ra->finish, c->finish), "%s: finish %s, nvlm run %s, want %s",
          name, str(r, "finish_reason"), ra->finish, c->finish);
    CHECK(num(u, "prompt_tokens") == ra->n_prompt && ra->n_prompt == c->prompt_len &&
              num(u, "completion_tokens") == ra->n_output && ra->n_output == c->n_output,
          "%s: usage %ld/%ld, nvlm run %ld/%ld, reference %ld/%ld", name, num(u, "prompt_tokens"),
          num(u, "completion_tokens"), ra->n_prompt, ra->n_output, c->prompt_len, c->n_output);
    CHECK(!strcmp(str(r, "role"), "assistant"), "%s: role '%s'", name, str(r, "role"));
    if (stream) CHECK(num(r, "chunks") >= 3, "%s: %ld chunks", name, num(r, "chunks"));
}

/* Runs the node client on the jobs; its result lines as an array (NULL on failure). */
static cJSON *run_client(const char *prefix, int port, cJSON *jobs) {
    char path[] = "/tmp/nvlm-openai-jobs-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    char *text = cJSON_PrintUnformatted(jobs);
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    close(fd);
    free(text);
    char url[64], script[] = "tests/openai/client.mjs";
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", port);
    char *argv[] = {"/usr/bin/env", "node", script, (char *)prefix, url, KEY, path, NULL};
    char *out = NULL;
    int rc = ok ? run_capture(argv, &out) : -1;
    unlink(path);
    CHECK(rc == 0, "node client exit status %d", rc);
    cJSON *arr = cJSON_CreateArray();
    for (char *line = out, *nl; out && line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *j = cJSON_Parse(line);
        if (j) cJSON_AddItemToArray(arr, j);
    }
    free(out);
    return arr;
}

/* ---------------------------------------------------------------- setup */

/* The folder holding node_modules/openai: $NVLM_OPENAI_DIR, <this build>/npm or build/npm. */
static int find_openai(const char *build, char out[PATH_MAX]) {
    const char *env = getenv("NVLM_OPENAI_DIR");
    char cand[3][4096];
    snprintf(cand[0], sizeof cand[0], "%.4000s", env ? env : "");
    snprintf(cand[1], sizeof cand[1], "%.4000s/npm", build);
    snprintf(cand[2], sizeof cand[2], "build/npm");
    for (int i = 0; i < 3; i++) {
        char pkg[4200];
        if (!*cand[i]) continue;
        snprintf(pkg, sizeof pkg, "%.4000s/node_modules/openai/package.json", cand[i]);
        if (!file_exists(pkg)) continue;
        if (!realpath(cand[i], out)) snprintf(out, PATH_MAX, "%.4000s", cand[i]);
        return 0;
    }
    return -1;
}

static int in_ci(void) {
    const char *ci = getenv("CI");
    return ci && *ci && strcmp(ci, "0") && strcasecmp(ci, "false");
}

static int skip(const char *why) {
    if (in_ci()) CHECK(0, "CI is set but %s (tests/openai/install.sh installs the client)", why);
    else printf("test_serve_openai: SKIPPED: %s (run tests/openai/install.sh, or make check)\n", why);
    return check_done("test_serve_openai");
}

int main(void) {
    char exe[4096], build[4096], nvlm[4200], prefix[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) return skip("cannot find this program's build folder");
    exe[k] = 0;
    snprintf(build, sizeof build, "%s", dirname(dirname(exe))); /* <build>/tests/test_x -> <build> */
    snprintf(nvlm, sizeof nvlm, "%.4000s/nvlm", build);
    if (system("node --version >/dev/null 2>&1") != 0) return skip("node is not installed");
    if (find_openai(build, prefix)) return skip("the openai npm package is not installed");
    CHECK(file_exists(nvlm), "no %s", nvlm);

    char model[4096];
    snprintf(model, sizeof model, "%s", shared_path("reference/models/tiny-nvlm-d"));
    refcase text, image;
    if (load_case("text_only", &text) || load_case("one_tile", &image)) {
        CHECK(0, "reference cases text_only and one_tile");
        return check_done("test_serve_openai");
    }
    run_answer rt, ri;
    CHECK(!nvlm_run(nvlm, model, &text, &rt), "nvlm run (text) failed");
    CHECK(!nvlm_run(nvlm, model, &image, &ri), "nvlm run (image) failed");

    server s;
    double t0 = now_s();
    if (start_server(nvlm, model, &s)) {
        CHECK(0, "nvlm serve did not start: %s", s.log.data);
        return check_done("test_serve_openai");
    }
    printf("nvlm serve: port %d, ready in %.2f s\n", s.port, now_s() - t0);

    cJSON *jobs = cJSON_CreateArray();
    chat_job(jobs, "text", &text, 0);
    chat_job(jobs, "text_stream", &text, 1);
    chat_job(jobs, "image", &image, 0);
    chat_job(jobs, "image_stream", &image, 1);
    cJSON *models = cJSON_CreateObject();
    cJSON_AddStringToObject(models, "name", "models");
    cJSON_AddStringToObject(models, "op", "models");
    cJSON_AddItemToArray(jobs, models);
    cJSON_AddStringToObject(chat_job(jobs, "wrong_key", &text, 0), "key", "sk-wrong");
    cJSON *bad = chat_job(jobs, "n_2", &text, 0);
    cJSON_AddNumberToObject(cJSON_GetObjectItem(bad, "params"), "n", 2);
    cJSON *stop = chat_job(jobs, "stop", &text, 1);
    cJSON_AddStringToObject(cJSON_GetObjectItem(stop, "params"), "stop", " dig");

    t0 = now_s();
    cJSON *res = run_client(prefix, s.port, jobs);
    double secs = now_s() - t0;
    CHECK(cJSON_GetArraySize(res) == cJSON_GetArraySize(jobs), "%d results for %d jobs", cJSON_GetArraySize(res),
          cJSON_GetArraySize(jobs));
    check_answer(res, "text", &text, &rt, 0);
    check_answer(res, "text_stream", &text, &rt, 1);
    check_answer(res, "image", &image, &ri, 0);
    check_answer(res, "image_stream", &image, &ri, 1);
    const cJSON *r = result(res, "models");
    const cJSON *ids = cJSON_GetObjectItem(r, "ids");
    CHECK(cJSON_GetArraySize(ids) == 1 && !strcmp(cJSON_GetArrayItem(ids, 0)->valuestring, "tiny-nvlm-d"),
          "models.list(): %s", str(r, "error"));
    r = result(res, "wrong_key");
    CHECK(r && cJSON_IsFalse(cJSON_GetObjectItem(r, "ok")) && num(r, "status") == 401 &&
              !strcmp(str(r, "code"), "invalid_api_key"), "wrong key: status %ld code '%s'", num(r, "status"),
          str(r, "code"));
    r = result(res, "n_2");
    CHECK(r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok")), "n=2 (supported since h20): status %ld '%s'",
          num(r, "status"), str(r, "error"));
    r = result(res, "stop"); /* the reference answer is "fa.Formsicy dig </_se ..." */
    CHECK(r && !strcmp(str(r, "content"), "fa.Formsicy") && !strcmp(str(r, "finish_reason"), "stop"),
          "stop string streamed: '%s' %s", str(r, "content"), str(r, "finish_reason"));
    printf("openai SDK: %d requests (4 answers checked against nvlm run) in %.2f s\n", cJSON_GetArraySize(jobs), secs);
    cJSON_Delete(res);
    cJSON_Delete(jobs);

    int st = stop_server(&s, &secs);
    CHECK(st == 0, "nvlm serve exit status %d after SIGTERM; its stderr:\n%s", st, s.log.data);
    CHECK(secs < 20, "SIGTERM took %.1f s", secs);
    CHECK(strstr(s.log.data, "SIGTERM, stopping") != NULL, "stderr: %s", s.log.data);
    nvlm_buf_free(&s.log);
    free(rt.response), free(ri.response), free(text.response), free(image.response);
    cJSON_Delete(text.messages), cJSON_Delete(image.messages);
    return check_done("test_serve_openai");
}
