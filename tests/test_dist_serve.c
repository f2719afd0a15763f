/* `mpirun -np N nvlm serve` (docs/distributed.md): the server at 2 ranks over shared memory and
 * at 3 ranks over TCP (oversubscribed) answers like one process: the same greedy answers (text,
 * an image, a stream, n = 2 sampled with a seed, a raw completion), four requests at once; a bad
 * request gets its 400 on rank 0 and the next request is answered right; a SIGTERM to rank 0 stops every rank cleanly within seconds; NVLM-X and -H
 * answer an image request at 2 ranks as one process; a rank killed while the server generates
 * ends the job within seconds. Skipped when nvlm was built without MPI or mpirun is
 * missing. Uses the nvlm binary beside the tests. */
#include "test_serve_util.h"
#include "dist/dist.h"
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>

enum { N_REQ = 5 };

static const char *const paths[N_REQ] = {"/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions",
                                         "/v1/chat/completions", "/v1/completions"};
static char *bodies[N_REQ];

static void make_bodies(void) {
    char *url = data_url("reference/images/skimage_astronaut.png");
    size_t n = strlen(url ? url : "") + 512;
    bodies[0] = strdup("{\"messages\":[{\"role\":\"user\",\"content\":\"Hello, who are you?\"}],\"max_tokens\":12}");
    bodies[1] = malloc(n);
    snprintf(bodies[1], n, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},"
                           "{\"type\":\"text\",\"text\":\"Describe the image.\"}]}],\"max_tokens\":8}", url ? url : "");
    bodies[2] = strdup("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":"
                       "\"Count to five.\"}],\"max_tokens\":10,\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    bodies[3] = strdup("{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story.\"}],\"max_tokens\":8,\"n\":2,"
                       "\"temperature\":0.9,\"top_p\":0.95,\"seed\":7}");
    bodies[4] = strdup("{\"prompt\":\"The capital of France is\",\"max_tokens\":6}");
    free(url);
}

typedef struct reply {
    int status;
    char *body; /* the answer's text: content (a stream's deltas joined), or the whole body */
    long prompt, completion;
} reply;

static void post(int port, int k, reply *out) {
    resp r;
    memset(out, 0, sizeof *out);
    if (http(port, "POST", paths[k], NULL, bodies[k], &r)) return;
    out->status = r.status;
    if (r.status == 200 && strstr(r.head, "text/event-stream")) {
        answer a;
        memset(&a, 0, sizeof a);
        parse_stream(&r, &a);
        out->body = a.content, a.content = NULL;
        out->prompt = a.prompt, out->completion = a.completion;
        answer_free(&a);
    } else if (r.status == 200) { /* the choices' texts (n = 2: both), ids and times left out */
        cJSON *j = cJSON_Parse(r.body), *ch, *u = cJSON_GetObjectItem(j, "usage");
        nvlm_buf b = {0};
        nvlm_buf_puts(&b, "");
        cJSON_ArrayForEach(ch, cJSON_GetObjectItem(j, "choices")) {
            cJSON *m = cJSON_GetObjectItem(ch, "message"), *c = m ? cJSON_GetObjectItem(m, "content") : cJSON_GetObjectItem(ch, "text");
            cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
            nvlm_buf_puts(&b, cJSON_IsString(c) ? c->valuestring : "?");
            nvlm_buf_puts(&b, "|");
            nvlm_buf_puts(&b, cJSON_IsString(f) ? f->valuestring : "?");
            nvlm_buf_puts(&b, "\n");
        }
        out->body = b.data;
        out->prompt = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "prompt_tokens"));
        out->completion = (long)cJSON_GetNumberValue(cJSON_GetObjectItem(u, "completion_tokens"));
        cJSON_Delete(j);
    } else {
        out->body = strdup(r.body ? r.body : "");
    }
    resp_free(&r);
}

typedef struct worker_arg {
    int port, k;
    reply *out;
} worker_arg;

static void *worker(void *p) {
    worker_arg *w = p;
    post(w->port, w->k, w->out);
    return NULL;
}

/* The answers of one server: the N_REQ requests at once, then a bad request, then the first
 * again. [N_REQ]: the bad one's status in .status, [N_REQ + 1]: the first again. */
static void answers(int port, reply *out) {
    pthread_t th[N_REQ];
    worker_arg wa[N_REQ];
    for (int k = 0; k < N_REQ; k++) {
        wa[k] = (worker_arg){port, k, &out[k]};
        if (pthread_create(&th[k], NULL, worker, &wa[k])) post(port, k, &out[k]), th[k] = 0;
    }
    for (int k = 0; k < N_REQ; k++)
        if (th[k]) pthread_join(th[k], NULL);
    resp r;
    memset(&out[N_REQ], 0, sizeof out[N_REQ]);
    if (!http(port, "POST", "/v1/chat/completions", NULL, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", &r))
        out[N_REQ].status = r.status;
    resp_free(&r);
    post(port, 0, &out[N_REQ + 1]);
}

/* A gauge's value from /metrics ("\nname value"), -1 when absent. */
static double gauge(int port, const char *name) {
    resp r;
    double v = -1;
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    if (!http(port, "GET", "/metrics", NULL, NULL, &r) && r.body) {
        const char *p = strstr(r.body, key);
        if (p) v = atof(p + strlen(key));
    }
    resp_free(&r);
    return v;
}

static void replies_free(reply *r, int n) {
    for (int k = 0; k < n; k++) free(r[k].body);
}

/* ------------------------------------------------------------ the servers */

typedef struct server {
    pid_t sh;        /* the shell that exec'd timeout (mpirun) */
    int port;
    char log[4200], tag[64];
} server;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Starts `launch nvlm serve` of a reference model with its output in a log; waits for the port it announces. */
static int start_model(server *s, const char *launch, const char *nvlm, const char *tmp, int id, const char *model) {
    snprintf(s->log, sizeof s->log, "%.4000s/serve%d.log", tmp, id);
    snprintf(s->tag, sizeof s->tag, "%d-%d", (int)getpid(), id);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "exec timeout 300 %s %.4000s serve --model %.4000s --port 0 -t 1 -q >%.4000s 2>&1", launch,
             nvlm, shared_path(model), s->log);
    setenv("NVLM_TEST_SERVE_TAG", s->tag, 1); /* finds rank 0's process for the signal */
    s->sh = fork();
    if (s->sh == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->port = 0;
    for (double t0 = now_s(); s->sh > 0 && now_s() - t0 < 120 && !s->port;) {
        size_t n;
        char *log = slurp(s->log, &n), *at = log ? strstr(log, "on http://127.0.0.1:") : NULL;
        if (at) s->port = atoi(at + strlen("on http://127.0.0.1:"));
        free(log);
        if (!s->port && waitpid(s->sh, NULL, WNOHANG) == s->sh) s->sh = -1;
        if (!s->port) usleep(100000);
    }
    return s->port > 0 ? 0 : -1;
}

static int start(server *s, const char *launch, const char *nvlm, const char *tmp, int id) {
    return start_model(s, launch, nvlm, tmp, id, "reference/models/tiny-nvlm-d");
}

/* The nvlm process of `rank` (0: also the single process) of the server tagged s->tag. */
static pid_t rank_pid(const server *s, int rank) {
    char want[96];
    snprintf(want, sizeof want, "NVLM_TEST_SERVE_TAG=%s", s->tag);
    DIR *proc = opendir("/proc");
    for (struct dirent *de; proc && (de = readdir(proc));) {
        int pid = atoi(de->d_name);
        if (pid <= 0) continue;
        char path[64], exe[PATH_MAX];
        snprintf(path, sizeof path, "/proc/%d/exe", pid);
        ssize_t k = readlink(path, exe, sizeof exe - 1);
        if (k < 5) continue;
        exe[k] = 0;
        if (strcmp(exe + k - 5, "/nvlm")) continue;
        snprintf(path, sizeof path, "/proc/%d/environ", pid);
        static char env[1 << 16]; /* a /proc file has no size: read it whole */
        FILE *f = fopen(path, "rb");
        size_t n = f ? fread(env, 1, sizeof env - 1, f) : 0;
        if (f) fclose(f);
        env[n] = 0;
        int tagged = 0, other_rank = 0, ranked = 0;
        for (size_t i = 0; i < n; i += strlen(env + i) + 1) {
            int is_rank = !strncmp(env + i, "OMPI_COMM_WORLD_RANK=", 21);
            tagged |= !strcmp(env + i, want);
            ranked |= is_rank;
            other_rank |= is_rank && atoi(env + i + 21) != rank;
        }
        if (rank && !ranked) continue; /* no rank in its environment: not under mpirun */
        if (tagged && !other_rank) {
            closedir(proc);
            return pid;
        }
    }
    if (proc) closedir(proc);
    return -1;
}

/* SIGTERM to rank 0: every rank must end, the launcher with status 0. Returns the status. */
static int stop(server *s, double *secs) {
    pid_t p = rank_pid(s, 0);
    double t0 = now_s();
    kill(p > 0 ? p : s->sh, SIGTERM);
    int st = -1;
    if (s->sh > 0) waitpid(s->sh, &st, 0);
    *secs = now_s() - t0;
    return p > 0 && st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A rank killed while the server generates: the job ends within seconds, the client is not
 * left waiting. */
static void check_killed_rank(const char *nvlm, const char *tmp) {
    server s;
    if (start(&s, "mpirun --oversubscribe -np 2 -x NVLM_TEST_SERVE_TAG", nvlm, tmp, 9)) {
        CHECK(0, "killed rank: the server did not start");
        if (s.sh > 0) kill(s.sh, SIGTERM), waitpid(s.sh, NULL, 0);
        return;
    }
    free(bodies[0]);
    bodies[0] = strdup("{\"messages\":[{\"role\":\"user\",\"content\":\"Count to a thousand.\"}],"
                       "\"stream\":true,\"logit_bias\":{\"4258\":-100}}"); /* never <|im_end|>: it generates until killed */
    reply r;
    worker_arg wa = {s.port, 0, &r};
    pthread_t th;
    int have = !pthread_create(&th, NULL, worker, &wa);
    double t0 = now_s();
    while (now_s() - t0 < 30 && gauge(s.port, "nvlm_batch_tokens_total") < 80) usleep(50000); /* generating */
    double waited = now_s() - t0, tokens = gauge(s.port, "nvlm_batch_tokens_total");
    pid_t p = rank_pid(&s, 1);
    double t1 = now_s();
    kill(p > 0 ? p : s.sh, SIGKILL);
    int st = -1;
    waitpid(s.sh, &st, 0);
    double secs = now_s() - t1;
    if (have) pthread_join(th, NULL);
    double t_client = now_s() - t1;
    size_t n;
    char *log = slurp(s.log, &n);
    CHECK(p > 0 && WIFEXITED(st) && WEXITSTATUS(st) != 0 && secs < 20 && t_client < 25 && log && strstr(log, "rank 1"),
          "killed rank: pid %d, status %d after %.1f s (client %.1f s):\n%s", (int)p, st, secs, t_client, log ? log : "");
    printf("  rank 1 killed while the server generates (%.0f tokens in %.1f s): the job ended in %.1f s, the client was let "
           "go after %.1f s\n", tokens, waited, secs, t_client);
    free(log);
    free(r.body);
}

/* NVLM-X and -H (cross-attention over the image's memory): the image request at 2 ranks as one process. */
static void check_xh(const char *nvlm, const char *tmp) {
    static const char *const models[] = {"reference/models/tiny-nvlm-x", "reference/models/tiny-nvlm-h"};
    static const char *const launch[] = {"", "mpirun --oversubscribe -np 2 -x NVLM_TEST_SERVE_TAG"};
    for (int m = 0; m < 2; m++) {
        reply r[2];
        memset(r, 0, sizeof r);
        for (int k = 0; k < 2; k++) {
            server s;
            double secs;
            if (start_model(&s, launch[k], nvlm, tmp, 10 + 2 * m + k, models[m])) {
                CHECK(0, "%s: the server did not start", models[m]);
                if (s.sh > 0) kill(s.sh, SIGTERM), waitpid(s.sh, NULL, 0);
                continue;
            }
            post(s.port, 1, &r[k]);
            CHECK(stop(&s, &secs) == 0, "%s: the server did not stop cleanly", models[m]);
        }
        CHECK(r[0].status == 200 && r[1].status == 200 && r[0].body && r[1].body && !strcmp(r[0].body, r[1].body) &&
                  r[0].prompt == r[1].prompt,
              "%s: the image request at 2 ranks is answered unlike one process:\n  %s\n  %s", models[m],
              r[1].body ? r[1].body : "(none)", r[0].body ? r[0].body : "(none)");
        free(r[0].body), free(r[1].body);
    }
    printf("  NVLM-X and -H: an image request at 2 ranks answered as one process\n");
}

static int nvlm_binary(const char *self, char *out, size_t cap) {
    snprintf(out, cap, "%s", self);
    char *slash = strrchr(out, '/');
    snprintf(slash ? slash + 1 : out, cap - (size_t)(slash ? slash + 1 - out : 0), "../nvlm");
    return access(out, X_OK) == 0;
}

int main(int argc, char **argv) {
    (void)argc;
    char self[PATH_MAX], nvlm[PATH_MAX + 16];
    if (!realpath(argv[0], self)) snprintf(self, sizeof self, "%s", argv[0]);
    if (!nvlm_dist_built()) {
        printf("test_dist_serve: skipped: nvlm was built without MPI (install libopenmpi-dev and rebuild)\n");
        return check_done("test_dist_serve");
    }
    if (system("command -v mpirun >/dev/null 2>&1")) {
        printf("test_dist_serve: skipped: no mpirun on PATH (install openmpi-bin)\n");
        return check_done("test_dist_serve");
    }
    if (!nvlm_binary(self, nvlm, sizeof nvlm)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm);
        return check_done("test_dist_serve");
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1); /* the MPI library's own allocations at exit */
    char tmp[] = "/tmp/nvlm-test-dist-serve-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    make_bodies();
    static const struct {
        const char *launch, *what;
    } servers[] = {
        {"", "one process"},
        {"mpirun --oversubscribe -np 2 -x NVLM_TEST_SERVE_TAG", "2 ranks, shared memory"},
        {"mpirun --oversubscribe -np 3 --mca btl self,tcp -x NVLM_TEST_SERVE_TAG", "3 ranks over TCP"},
    };
    enum { N_SRV = sizeof servers / sizeof servers[0] };
    reply got[N_SRV][N_REQ + 2];
    double kv_bytes[N_SRV] = {0}; /* rank 0's KV pages: the answers' pages kept for reuse */
    memset(got, 0, sizeof got);
    for (int i = 0; i < N_SRV; i++) {
        server s;
        double t0 = now_s(), secs = 0;
        if (start(&s, servers[i].launch, nvlm, tmp, i)) {
            size_t n;
            char *log = slurp(s.log, &n);
            CHECK(0, "%s: the server did not start:\n%s", servers[i].what, log ? log : "");
            free(log);
            if (s.sh > 0) kill(s.sh, SIGTERM), waitpid(s.sh, NULL, 0);
            continue;
        }
        answers(s.port, got[i]);
        double t_ans = now_s() - t0;
        kv_bytes[i] = gauge(s.port, "nvlm_kv_bytes_allocated");
        int rc = stop(&s, &secs);
        size_t n;
        char *log = slurp(s.log, &n);
        CHECK(rc == 0 && secs < 30 && log && strstr(log, "nvlm serve: stopped"),
              "%s: a SIGTERM to rank 0 did not end every rank cleanly (status %d after %.1f s):\n%s", servers[i].what, rc,
              secs, log ? log : "");
        free(log);
        for (int k = 0; k < N_REQ; k++)
            CHECK(got[i][k].status == 200 && got[i][k].body && got[i][k].completion > 0, "%s: request %d: status %d: %s",
                  servers[i].what, k, got[i][k].status, got[i][k].body ? got[i][k].body : "");
        CHECK(got[i][N_REQ].status == 400, "%s: a bad request got %d, not 400", servers[i].what, got[i][N_REQ].status);
        CHECK(got[i][N_REQ + 1].status == 200 && got[i][0].body && got[i][N_REQ + 1].body &&
                  !strcmp(got[i][0].body, got[i][N_REQ + 1].body),
              "%s: after the bad request the first request is answered differently", servers[i].what);
        if (i == 0) {
            printf("  one process: %d requests at once, a 400, the first again (%.1f s)\n", N_REQ, t_ans);
            continue;
        }
        int same = 1;
        for (int k = 0; k < N_REQ + 2; k++) {
            int eq = got[i][k].status == got[0][k].status && got[i][k].prompt == got[0][k].prompt &&
                     got[i][k].completion == got[0][k].completion &&
                     (got[0][k].status != 200 || (got[i][k].body && got[0][k].body && !strcmp(got[i][k].body, got[0][k].body)));
            CHECK(eq, "%s: request %d answered unlike one process:\n  %s\n  %s", servers[i].what, k,
                  got[i][k].body ? got[i][k].body : "(none)", got[0][k].body ? got[0][k].body : "(none)");
            same &= eq;
        }
        if (same)
            printf("  %s: the same answers as one process (text, image, stream, n = 2 sampled, completion; a 400 "
                   "between), stopped in %.1f s (%.1f s); rank 0 holds %.0f KB of KV pages, one process %.0f KB\n",
                   servers[i].what, secs, t_ans, kv_bytes[i] / 1024, kv_bytes[0] / 1024);
    }
    for (int i = 0; i < N_SRV; i++) replies_free(got[i], N_REQ + 2);
    check_xh(nvlm, tmp);
    check_killed_rank(nvlm, tmp);
    for (int k = 0; k < N_REQ; k++) free(bodies[k]);
    char rm[4300];
    snprintf(rm, sizeof rm, "rm -rf %s", tmp);
    if (system(rm)) fprintf(stderr, "cannot remove %s\n", tmp);
    return check_done("test_dist_serve");
}
