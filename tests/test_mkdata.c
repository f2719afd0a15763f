/* `nvlm mkdata shapes`: the pictures and the training JSONL it writes (decodable PNGs of the
 * drawn sizes, two conversations per picture with one-word answers, what --shape/--colour/
 * --width/--height fix), the same bytes for the same seed, and the messages for bad input. */
#include "check.h"
#include "nvlm.h"
#include <sys/wait.h>

static char nvlm_bin[4096];
static char out[1 << 16];

static int nvlm(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", nvlm_bin, args);
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

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 20];
    *len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *s = hay; (s = strstr(s, needle)); s += strlen(needle)) n++;
    return n;
}

int main(int argc, char **argv) {
    (void)argc;
    const char *slash = strrchr(argv[0], '/');
    snprintf(nvlm_bin, sizeof nvlm_bin, "%.*s/../nvlm", slash ? (int)(slash - argv[0]) : 1, slash ? argv[0] : ".");
    if (access(nvlm_bin, X_OK)) {
        CHECK(0, "no nvlm binary at %s", nvlm_bin);
        return check_done("test_mkdata");
    }
    char dir[] = "/tmp/nvlm_test_mkdata_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return check_done("test_mkdata");
    }
    char a[8192], path[4200];
    snprintf(a, sizeof a, "mkdata shapes --out %s/a --n 6 --seed 5", dir);
    CHECK(nvlm(a) == 0 && strstr(out, "6 pictures and 12 conversations"), "mkdata: %s", out);
    snprintf(path, sizeof path, "%s/a/shapes.jsonl", dir);
    size_t len = 0;
    char *jl = slurp(path, &len);
    CHECK(jl && count(jl, "\n") == 12 && count(jl, "What colour is the shape?") == 6 && count(jl, "What shape is it?") == 6,
          "jsonl: %s", jl ? jl : "(none)");
    int words = 0;
    const char *w[] = {"\"red\"", "\"green\"", "\"blue\"", "\"yellow\"", "\"black\"", "\"circle\"", "\"square\"", "\"triangle\""};
    for (int i = 0; jl && i < 8; i++) words += count(jl, w[i]);
    CHECK(words == 12, "one answer word per conversation: %d", words);
    /* every picture decodes, 64..1024 px per side */
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "%s/a/shapes_%05d.png", dir, i);
        nvlm_image img = {0};
        nvlm_err err = {0};
        int rc = nvlm_image_load(path, NULL, &img, &err);
        CHECK(rc == 0, "%s: %s", path, err.msg);
        if (!rc)
            CHECK(img.width >= 64 && img.width <= 1024 && img.height >= 64 && img.height <= 1024, "%s is %dx%d", path,
                  img.width, img.height);
        nvlm_image_free(&img);
    }
    /* the same seed, the same bytes */
    snprintf(a, sizeof a, "mkdata shapes --out %s/b --n 6 --seed 5", dir);
    CHECK(nvlm(a) == 0, "mkdata again: %s", out);
    for (int i = 0; i < 6; i++) {
        char p2[4200];
        snprintf(path, sizeof path, "%s/a/shapes_%05d.png", dir, i);
        snprintf(p2, sizeof p2, "%s/b/shapes_%05d.png", dir, i);
        size_t l1 = 0, l2 = 0;
        char *d1 = slurp(path, &l1);
        char *c1 = d1 ? malloc(l1) : NULL;
        if (c1) memcpy(c1, d1, l1);
        char *d2 = slurp(p2, &l2);
        CHECK(c1 && d2 && l1 == l2 && !memcmp(c1, d2, l1), "picture %d differs between two runs with one seed", i);
        free(c1);
    }
    /* fixed shape, colour and size */
    snprintf(a, sizeof a, "mkdata shapes --out %s/c --n 2 --seed 1 --shape square --colour black --width 100 --height 300 --prefix sq", dir);
    CHECK(nvlm(a) == 0, "fixed: %s", out);
    snprintf(path, sizeof path, "%s/c/sq.jsonl", dir);
    jl = slurp(path, &len);
    CHECK(jl && count(jl, "\"square\"") == 2 && count(jl, "\"black\"") == 2 && count(jl, "sq_00001.png") == 2, "fixed: %s",
          jl ? jl : "(none)");
    snprintf(path, sizeof path, "%s/c/sq_00000.png", dir);
    nvlm_image img = {0};
    nvlm_err err = {0};
    if (!nvlm_image_load(path, NULL, &img, &err)) {
        CHECK(img.width == 100 && img.height == 300, "fixed size %dx%d", img.width, img.height);
        nvlm_image_free(&img);
    } else CHECK(0, "%s: %s", path, err.msg);
    /* bad input: named, exit 2 */
    CHECK(nvlm("mkdata") == 2 && strstr(out, "shapes"), "no data set: %s", out);
    CHECK(nvlm("mkdata circles --out /tmp/x --n 1") == 2 && strstr(out, "the one there is: shapes"), "unknown set: %s", out);
    CHECK(nvlm("mkdata shapes --n 1") == 2 && strstr(out, "--out DIR and --n N are required"), "no --out: %s", out);
    CHECK(nvlm("mkdata shapes --out /tmp/x --n 0") == 2 && strstr(out, "--n needs an integer"), "--n 0: %s", out);
    CHECK(nvlm("mkdata shapes --out /tmp/x --n 1 --width 2000") == 2 && strstr(out, "--width needs an integer in [64, 1024]"), "--width: %s", out);
    CHECK(nvlm("mkdata shapes --out /tmp/x --n 1 --shape hexagon") == 2 && strstr(out, "circle, square or triangle"), "--shape: %s", out);
    CHECK(nvlm("mkdata shapes --out /tmp/x --n 1 --min-side 500 --max-side 100") == 2 && strstr(out, "larger than"), "sides: %s", out);
    CHECK(nvlm("mkdata shapes --out /tmp/x --n 1 --prefix a/b") == 2 && strstr(out, "plain file name"), "prefix: %s", out);
    CHECK(nvlm("mkdata shapes --out /nonexistent/dir/x --n 1") == 1 && strstr(out, "cannot create /nonexistent/dir/x"), "bad dir: %s", out);
    CHECK(nvlm("mkdata --help") == 0 && strstr(out, "What shape is it?"), "help: %s", out);
    snprintf(a, sizeof a, "rm -rf '%s'", dir);
    CHECK(system(a) == 0, "cleanup");
    return check_done("test_mkdata");
}
