/* Hardening (issue 21) outside the HTTP server: special files refused at once, non-finite
 * weights refused with the layer named, torn training saves never current. The CLI cases run
 * the `nvlm` binary built beside this test (BUILD/nvlm) under `timeout`, so a hang fails
 * instead of stalling the suite. */
#include "check.h"
#include "core/file.h"
#include <cjson/cJSON.h>
#include "serve/serve_int.h"
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static char nvlm_bin[4096];
static char g_env[8192]; /* "env VAR=... " put before the binary (fault injection), or "" */
static char out[1 << 16];
static char scratch[4096];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs `timeout 20 nvlm ARGS` with stderr folded in; output in out, returns the exit code. */
static int nvlm(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int nvlm(const char *fmt, ...) {
    char args[6144], cmd[20480];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "timeout 20 %s%s %s 2>&1", g_env, nvlm_bin, args);
    FILE *p = popen(cmd, "r");
    out[0] = 0;
    if (!p) return -1;
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) {
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ special files */

static void test_open_regular(void) {
    char p[4200];
    nvlm_err err = {0};
    int fd;
    snprintf(p, sizeof p, "%s/fifo", scratch);
    CHECK(mkfifo(p, 0600) == 0, "mkfifo %s: %s", p, strerror(errno));
    double t0 = now_s();
    CHECK(nvlm_open_regular(p, &fd, NULL, &err) != 0 && strstr(err.msg, "FIFO") && strstr(err.msg, p), "fifo: %s", err.msg);
    char *data = NULL;
    size_t len;
    CHECK(nvlm_read_file(p, 0, &data, &len, &err) != 0 && strstr(err.msg, "FIFO"), "read fifo: %s", err.msg);
    nvlm_mapped_file mf;
    CHECK(nvlm_map_file(p, &mf, &err) != 0 && strstr(err.msg, "FIFO"), "map fifo: %s", err.msg);
    CHECK(now_s() - t0 < 2, "the FIFO was waited on");
    CHECK(nvlm_read_file("/dev/zero", 0, &data, &len, &err) != 0 && strstr(err.msg, "character device"), "/dev/zero: %s",
          err.msg);
    CHECK(nvlm_read_file(scratch, 0, &data, &len, &err) != 0 && strstr(err.msg, "directory"), "dir: %s", err.msg);
    unlink(p);
}

static void test_fifo_config(const char *model) {
    char m[4200];
    snprintf(m, sizeof m, "%s/fifo-model", scratch);
    check_sh("cp -r '%s' '%s' && rm '%s/config.json' && mkfifo '%s/config.json'", model, m, m, m);
    double t0 = now_s();
    int rc = nvlm("run -q -m '%s' -p hi", m);
    double dt = now_s() - t0;
    CHECK(rc == 1 && strstr(out, "config.json is a FIFO"), "FIFO config.json: exit %d: %s", rc, out);
    CHECK(dt < 10, "FIFO config.json took %.1f s", dt);
    check_sh("rm -f '%s/config.json' && ln -s /dev/zero '%s/config.json'", m, m);
    rc = nvlm("info --model '%s'", m);
    CHECK(rc == 1 && strstr(out, "character device"), "/dev/zero config.json: exit %d: %s", rc, out);
    check_sh("rm -f '%s/config.json' && cp '%s/config.json' '%s/' && mkfifo '%s/q.png'", m, model, m, m);
    rc = nvlm("run -q -m '%s' -p hi -i '%s/q.png'", m, m);
    CHECK(rc == 1 && strstr(out, "FIFO"), "FIFO image: exit %d: %s", rc, out);
    check_sh("rm -rf '%s'", m);
}

/* The server's local images: a FIFO in the allowed folder refused at once, and a path outside
 * the folder answered exactly as one that does not exist. */
static void test_local_images(void) {
    char dir[4200], fifo[4300], body[9000];
    snprintf(dir, sizeof dir, "%s/allowed", scratch);
    mkdir(dir, 0700);
    snprintf(fifo, sizeof fifo, "%s/pipe.png", dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    serve_limits lim = {.max_image_bytes = 1 << 20, .max_image_pixels = 1 << 20, .max_images = 4, .local_image_dir = dir};
    nvlm_sampling d;
    nvlm_sampling_default(&d);
    serve_request r;
    serve_error e;
    const char *tmpl = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}]}]}";
    snprintf(body, sizeof body, tmpl, fifo);
    double t0 = now_s();
    CHECK(serve_parse_request(body, strlen(body), &lim, &d, &r, &e) != 0 && e.status == 400, "fifo image: %d %s", e.status,
          e.message);
    CHECK(now_s() - t0 < 2, "the FIFO image was waited on");
    char outside[2][1200];
    const char *paths[2] = {"/etc/hostname", "/etc/no-such-file-here"};
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof body, tmpl, paths[i]);
        CHECK(serve_parse_request(body, strlen(body), &lim, &d, &r, &e) != 0 && e.status == 400, "outside %s", paths[i]);
        /* the same words once the path itself is taken out */
        char *at = strstr(e.message, paths[i]);
        if (at) memmove(at, at + strlen(paths[i]), strlen(at + strlen(paths[i])) + 1);
        snprintf(outside[i], sizeof outside[i], "%s", e.message);
    }
    CHECK(!strcmp(outside[0], outside[1]), "outside answers differ: '%s' vs '%s'", outside[0], outside[1]);
    unlink(fifo);
    rmdir(dir);
}

/* ------------------------------------------------------------ non-finite */

/* Puts a BF16 NaN into element 5 of tensor `name` of dir/model.safetensors. 0 or -1. */
static int poison_bf16(const char *dir, const char *name) {
    char p[4400];
    snprintf(p, sizeof p, "%.4300s/model.safetensors", dir);
    FILE *f = fopen(p, "r+b");
    if (!f) return -1;
    uint64_t hl = 0;
    char *h = NULL;
    int rc = -1;
    if (fread(&hl, 8, 1, f) == 1 && hl < (1u << 24) && (h = calloc(1, hl + 1)) && fread(h, 1, hl, f) == hl) {
        cJSON *root = cJSON_Parse(h);
        const cJSON *t = cJSON_GetObjectItem(root, name), *offs = t ? cJSON_GetObjectItem(t, "data_offsets") : NULL;
        if (cJSON_GetArraySize(offs) == 2) {
            long at = (long)(8 + hl) + (long)cJSON_GetArrayItem(offs, 0)->valuedouble + 2 * 5;
            const uint8_t nan_bf16[2] = {0xc0, 0x7f};
            rc = fseek(f, at, SEEK_SET) == 0 && fwrite(nan_bf16, 1, 2, f) == 2 ? 0 : -1;
        }
        cJSON_Delete(root);
    }
    free(h);
    return fclose(f) == 0 ? rc : -1;
}

static void test_nan_weights(const char *model) {
    char m[4200];
    snprintf(m, sizeof m, "%s/nan-model", scratch);
    check_sh("cp -r '%s' '%s'", model, m);
    int rc = nvlm("info --model '%s' --check-weights", m);
    CHECK(rc == 0 && strstr(out, "all ") && strstr(out, "tensors finite"), "clean weights: exit %d: %s", rc, out);
    CHECK(poison_bf16(m, "language_model.model.layers.1.input_layernorm.weight") == 0, "cannot patch %s", m);
    rc = nvlm("run -q -m '%s' -p 'Hello there'", m);
    CHECK(rc == 1 && strstr(out, "non-finite") && strstr(out, "decoder layer 1 "), "NaN norm weight: exit %d: %s", rc, out);
    rc = nvlm("info --model '%s' --check-weights", m);
    CHECK(rc == 1 && strstr(out, "tensor language_model.model.layers.1.input_layernorm.weight") && strstr(out, "element 5"),
          "--check-weights: exit %d: %s", rc, out);
    rc = nvlm("run -q -m '%s' -p hi --check-weights", m);
    CHECK(rc == 1 && strstr(out, "tensor language_model.model.layers.1.input_layernorm.weight"),
          "run --check-weights: exit %d: %s", rc, out);
    check_sh("rm -rf '%s'", m);
}

/* ------------------------------------------------------------ torn saves */

/* The "step" of DIR/trainer_state.json, -1 when unreadable. */
static long saved_step(const char *dir) {
    char p[4400], buf[4096] = {0};
    snprintf(p, sizeof p, "%.4300s/trainer_state.json", dir);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    const cJSON *st = cJSON_GetObjectItem(j, "step");
    long v = cJSON_IsNumber(st) ? (long)st->valuedouble : -1;
    cJSON_Delete(j);
    return v;
}

/* Fault injection where no tmpfs can be mounted: a shim (built here with cc) whose fwrite
 * fails with ENOSPC once `limit` bytes have gone to files under a .ckpt-* folder (where the
 * trainer writes a save), as a full disk would. Sets g_env; 0 when no compiler. */
static int fault_env(size_t limit) {
    static const char src[] =
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <errno.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
        "#include <string.h>\n#include <unistd.h>\nstatic size_t used;\n"
        "size_t fwrite(const void *p, size_t sz, size_t n, FILE *f) {\n"
        "  static size_t (*real)(const void *, size_t, size_t, FILE *);\n"
        "  if (!real) real = (size_t (*)(const void *, size_t, size_t, FILE *))dlsym(RTLD_NEXT, \"fwrite\");\n"
        "  char link[64], path[4096];\n  snprintf(link, sizeof link, \"/proc/self/fd/%d\", fileno(f));\n"
        "  ssize_t k = readlink(link, path, sizeof path - 1);\n"
        "  const char *lim = getenv(\"NVLM_FAULT_BYTES\");\n"
        "  if (k > 0 && lim) {\n    path[k] = 0;\n"
        "    if (strstr(path, \"/.ckpt-\")) {\n"
        "      if (used + sz * n > strtoull(lim, NULL, 10)) { errno = ENOSPC; return 0; }\n      used += sz * n;\n    }\n  }\n"
        "  return real(p, sz, n, f);\n}\n";
    char c[4400], so[4400];
    snprintf(c, sizeof c, "%.4300s/fault.c", scratch);
    snprintf(so, sizeof so, "%.4300s/fault.so", scratch);
    FILE *f = fopen(c, "w");
    if (!f) return 0;
    fputs(src, f);
    fclose(f);
    if (check_sh("cc -shared -fPIC -O1 -o '%s' '%s' -ldl 2>/dev/null", so, c)) return 0;
    snprintf(g_env, sizeof g_env, "env LD_PRELOAD='%s' NVLM_FAULT_BYTES=%zu ASAN_OPTIONS=verify_asan_link_order=0 ", so, limit);
    return 1;
}

/* A disk that fills during a save (a 16 MiB tmpfs: room for one save of the tiny model, not
 * for the second beside it): the run fails, the step-1 save stays current and loads, nothing
 * of the cut save is left. And a folder mixing two saves' files is refused. */
static void test_torn_save(const char *model) {
    char mnt[4200], data[4200], odir[4300], full[4300], mixed[4300];
    snprintf(mnt, sizeof mnt, "%s/small-disk", scratch);
    snprintf(data, sizeof data, "%s/data.jsonl", scratch);
    snprintf(odir, sizeof odir, "%s/out", mnt);
    snprintf(full, sizeof full, "%s/full-run", scratch);
    snprintf(mixed, sizeof mixed, "%s/mixed", scratch);
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 4; i++)
        fprintf(f, "{\"conversations\": [{\"from\": \"human\", \"value\": \"Say hi %d\"}, {\"from\": \"gpt\", "
                   "\"value\": \"Hi there %d\"}]}\n", i, i);
    if (f) fclose(f);
    mkdir(mnt, 0700);
    const char *no_mount = getenv("NVLM_TEST_NO_MOUNT");
    int mounted = !(no_mount && *no_mount == '1') && !check_sh("mount -t tmpfs -o size=16m nvlm-test '%s' 2>/dev/null", mnt);
    if (!mounted && !fault_env(15u << 20)) {
        printf("test_hardening: torn-save check skipped: no tmpfs (needs root) and no C compiler for the fault shim\n");
        rmdir(mnt);
        return;
    }
    if (!mounted) printf("test_hardening: no tmpfs; a full disk is simulated by an LD_PRELOAD shim (ENOSPC after 15 MiB)\n");
    int rc = nvlm("train --model '%s' --data '%s' --stage 2 --out '%s' --steps 3 --save-every 1 --threads 2", model, data, odir);
    CHECK(rc != 0 && strstr(out, "No space left") && strstr(out, "previous save stays current"),
          "a full disk during the save: exit %d: %.600s", rc, out);
    CHECK(saved_step(odir) == 1, "the current save is step %ld, want 1", saved_step(odir));
    /* one save folder left, the current one: the cut save's was removed */
    int saves = 0;
    DIR *d = opendir(odir);
    struct dirent *e;
    while (d && (e = readdir(d))) saves += !strncmp(e->d_name, ".ckpt-", 6);
    if (d) closedir(d);
    char cur[4400], target[256] = "";
    snprintf(cur, sizeof cur, "%s/.current", odir);
    ssize_t tn = readlink(cur, target, sizeof target - 1);
    target[tn > 0 ? tn : 0] = 0;
    CHECK(saves == 1 && !strcmp(target, ".ckpt-step1"), "%d save folders left, .current -> '%s'", saves, target);
    g_env[0] = 0;
    rc = nvlm("run -q -m '%s' -p hi --max-new-tokens 4", odir);
    CHECK(rc == 0, "the step-1 save loads: exit %d: %.400s", rc, out);
    /* the same run on a disk with room: a step-3 save; its trainer state beside step 1's weights */
    rc = nvlm("train --model '%s' --data '%s' --stage 2 --out '%s' --steps 3 --save-every 1 --threads 2", model, data, full);
    CHECK(rc == 0 && saved_step(full) == 3, "full run: exit %d: %.300s", rc, out);
    check_sh("cp -r '%s' '%s' && cp '%s/trainer_state.json' '%s/'", odir, mixed, full, mixed);
    rc = nvlm("run -q -m '%s' -p hi --max-new-tokens 4", mixed);
    CHECK(rc == 1 && strstr(out, "different training saves") && strstr(out, "step1-") && strstr(out, "step3-"),
          "mixed saves: exit %d: %.400s", rc, out);
    rc = nvlm("train --model '%s' --data '%s' --stage 2 --out '%s/more' --steps 4 --resume '%s' --threads 2", model, data,
              scratch, mixed);
    CHECK(rc != 0 && strstr(out, "different training saves"), "resume from mixed saves: exit %d: %.300s", rc, out);
    if (mounted) check_sh("umount '%s'", mnt);
    else check_sh("rm -rf '%s'", odir);
    rmdir(mnt);
}

/* ------------------------------------------------------------ quantize temporaries */

static int temps_in(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += strstr(e->d_name, ".tmp-") != NULL;
    if (d) closedir(d);
    return n;
}

/* `nvlm quantize` leaves no temporary file: not on a full disk, not when killed mid-write. */
static void test_quantize_temps(const char *model) {
    char mnt[4200], big[4200], q[4300];
    snprintf(mnt, sizeof mnt, "%s/tiny-disk", scratch);
    snprintf(q, sizeof q, "%s/q", mnt);
    mkdir(mnt, 0700);
    if (!check_sh("mount -t tmpfs -o size=1m nvlm-test '%s' 2>/dev/null", mnt)) {
        int rc = nvlm("quantize --model '%s' --out '%s' --type q8_0", model, q);
        CHECK(rc == 1 && temps_in(q) == 0, "quantize on a full disk: exit %d, %d temporary files left: %.300s", rc,
              temps_in(q), out);
        check_sh("umount '%s'", mnt);
    }
    rmdir(mnt);
    /* killed while writing: a model large enough that the write takes a while */
    snprintf(big, sizeof big, "%s/bigger", scratch);
    snprintf(q, sizeof q, "%s/bigger-q8", scratch);
    if (nvlm("mkmodel --out '%s' --llm-hidden 512 --llm-layers 6 --llm-intermediate 1408 --dtype f32 --tokenizer '%s'", big,
             model)) {
        CHECK(0, "mkmodel: %s", out);
        return;
    }
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "exec %.4000s quantize --model '%s' --out '%.4200s' --type q8_0 >/dev/null 2>&1", nvlm_bin, big, q);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int seen = 0;
    for (int i = 0; i < 20000 && !seen; i++) {
        seen = temps_in(q) > 0;
        if (!seen) usleep(200);
        if (waitpid(pid, NULL, WNOHANG) == pid) { pid = -1; break; }
    }
    if (pid > 0) {
        kill(pid, SIGTERM);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM, "killed quantize: status %d", st);
        CHECK(temps_in(q) == 0, "a killed quantize left %d temporary files in %s", temps_in(q), q);
    }
    if (!seen) printf("test_hardening: quantize finished before its temporary file was seen (signal case not exercised)\n");
    check_sh("rm -rf '%s' '%s'", big, q);
}

int main(int argc, char **argv) {
    (void)argc;
    const char *slash = strrchr(argv[0], '/');
    snprintf(nvlm_bin, sizeof nvlm_bin, "%.*s/../nvlm", slash ? (int)(slash - argv[0]) : 1, slash ? argv[0] : ".");
    snprintf(scratch, sizeof scratch, "/tmp/nvlm-hardening-%d", (int)getpid());
    mkdir(scratch, 0700);
    char model[4096];
    snprintf(model, sizeof model, "%s", shared_path("reference/models/tiny-nvlm-d"));
    test_open_regular();
    test_local_images();
    if (access(nvlm_bin, X_OK)) CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm_bin);
    else test_fifo_config(model), test_nan_weights(model), test_torn_save(model), test_quantize_temps(model);
    check_sh("rm -rf '%s'", scratch);
    return check_done("test_hardening");
}
