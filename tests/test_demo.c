/* The shipped demo model (demo/model, trained by scripts/demo-train.sh on `nvlm mkdata shapes`)
 * looks at pictures: it answers held-out ones, drawn here by a generator of its own (not the
 * training one: pure colours, hard edges, BMP files, sides drawn uniformly instead of
 * log-uniformly, upright shapes only), through the real pipeline (decode, dynamic tiles, ViT,
 * projector, LLM, greedy generation). Checked: the checkpoint is the released layout with the
 * bundled tokenizer; every answer is one of the task's lowercase words; the colour and the shape
 * are each exact at least 90% of the time, and both together too: the bar (the shipped
 * model: 40/40 and 39/40 here; on 400 pictures 98.5% and 95.5%; docs/demo.md, "Status").
 * NVLM_DEMO_MODEL=DIR and NVLM_DEMO_N=N ask another checkpoint, about N pictures. */
#include "check.h"
#include "nvlm.h"
#include <math.h>

static const char *const shape_names[3] = {"circle", "square", "triangle"};
static const struct {
    const char *name;
    uint8_t rgb[3];
} colours[5] = {{"red", {255, 0, 0}}, {"green", {0, 128, 0}}, {"blue", {0, 0, 255}},
                {"yellow", {255, 255, 0}}, {"black", {0, 0, 0}}};

static uint64_t rs = 20261207;
static int rnd(int n) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rs >> 33) % (uint64_t)n);
}

/* 1 when pixel centre (x, y) is inside shape s of side d at (x0, y0). */
static int inside(int s, double x, double y, double x0, double y0, double d) {
    double u = (x - x0) / d, v = (y - y0) / d; /* 0..1 across the bounding box */
    if (u < 0 || u > 1 || v < 0 || v > 1) return 0;
    if (s == 0) return (u - 0.5) * (u - 0.5) + (v - 0.5) * (v - 0.5) <= 0.25;
    if (s == 1) return 1;
    return fabs(u - 0.5) <= v / 2; /* apex at the top middle, base at the bottom */
}

/* Draws picture i as a BMP into dir; its shape and colour are returned. */
static int draw(const char *path, int *shape, int *colour, int *wp, int *hp) {
    int w = *wp = 64 + rnd(961), h = *hp = 64 + rnd(961), shorter = w < h ? w : h;
    int d = shorter / 4 + rnd(shorter - shorter / 4 + 1);
    int x0 = rnd(w - d + 1), y0 = rnd(h - d + 1);
    *shape = rnd(3), *colour = rnd(5);
    uint8_t *px = malloc((size_t)w * h * 3);
    if (!px) return -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = px + ((size_t)y * w + x) * 3;
            if (inside(*shape, x + 0.5, y + 0.5, x0, y0, d)) memcpy(p, colours[*colour].rgb, 3);
            else memset(p, 255, 3);
        }
    int rc = check_write_bmp24(path, w, h, px);
    free(px);
    return rc;
}

/* Greedy answer to one question about one image, in a fresh conversation (as `nvlm run`). */
static char *answer(nvlm_model *m, const char *image, const char *question) {
    nvlm_chat *c = NULL;
    nvlm_err err = {0};
    nvlm_sampling s;
    nvlm_sampling_default(&s);
    s.max_new_tokens = 8;
    nvlm_answer a = {0};
    char *out = NULL;
    if (!nvlm_chat_new(m, &c, &err) && !nvlm_chat_add_image_file(c, image, &err) &&
        !nvlm_chat_ask(c, question, &s, NULL, NULL, &a, &err))
        out = strdup(a.response);
    CHECK(out, "%s: %s", image, err.msg);
    nvlm_answer_free(&a);
    nvlm_chat_free(c);
    return out;
}

int main(int argc, char **argv) {
    /* the repository root: this program is BUILD/tests/test_demo */
    char root[2048], model_dir[2100], path[2200];
    const char *slash = strrchr(argv[0], '/');
    snprintf(root, sizeof root, "%.*s/../..", slash ? (int)(slash - argv[0]) : 1, slash ? argv[0] : ".");
    (void)argc;
    snprintf(model_dir, sizeof model_dir, "%s/demo/model", root);
    /* NVLM_DEMO_MODEL / NVLM_DEMO_N: another checkpoint, more pictures (docs/demo.md's figures) */
    if (getenv("NVLM_DEMO_MODEL")) snprintf(model_dir, sizeof model_dir, "%s", getenv("NVLM_DEMO_MODEL"));
    const int n_env = getenv("NVLM_DEMO_N") ? atoi(getenv("NVLM_DEMO_N")) : 0;
    const int n = n_env > 0 ? n_env : 40; /* 40: a few seconds, under ASan too */
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", model_dir, files[i]);
        CHECK(!access(path, R_OK), "the demo checkpoint lacks %s (scripts/demo-train.sh writes it)", path);
    }
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    nvlm_load_options lo = {.n_threads = 2};
    int rc = nvlm_model_load(model_dir, &lo, &m, &err);
    CHECK(rc == 0, "load %s: %s", model_dir, err.msg);
    if (rc) return check_done("test_demo");
    CHECK(!strcmp(nvlm_model_arch(m), "NVLM_D"), "demo model is %s, not NVLM_D", nvlm_model_arch(m));

    char dir[] = "/tmp/nvlm_test_demo_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp %s", dir);
        return check_done("test_demo");
    }
    int right[2] = {0, 0}, in_vocabulary = 0;
    for (int i = 0; i < n; i++) {
        int shape, colour, w, h;
        snprintf(path, sizeof path, "%s/%02d.bmp", dir, i);
        if (draw(path, &shape, &colour, &w, &h)) {
            CHECK(0, "cannot write %s", path);
            continue;
        }
        const char *want[2] = {colours[colour].name, shape_names[shape]};
        const char *q[2] = {"What colour is the shape?", "What shape is it?"};
        for (int k = 0; k < 2; k++) {
            char *got = answer(m, path, q[k]);
            if (got && !strcmp(got, want[k])) right[k]++;
            else if (got && !getenv("NVLM_DEMO_QUIET")) printf("  %s (%dx%d) %s -> %s (want %s)\n", path, w, h, q[k], got, want[k]);
            for (int v = 0; got && v < (k ? 3 : 5); v++) in_vocabulary += !strcmp(got, k ? shape_names[v] : colours[v].name);
            free(got);
        }
        unlink(path);
    }
    rmdir(dir);
    printf("demo model on %d held-out pictures: colour %d/%d, shape %d/%d (chance 1/3)\n", n, right[0], n, right[1], n);
    CHECK(in_vocabulary == 2 * n, "%d of %d answers are one of the task's words", in_vocabulary, 2 * n);
    CHECK(right[0] >= 0.9 * n, "exact colours %d of %d (< 90%%)", right[0], n);
    CHECK(right[1] >= 0.9 * n, "exact shapes %d of %d (< 90%%)", right[1], n);
    CHECK(right[0] + right[1] >= 0.9 * 2 * n, "exact answers %d of %d (< 90%%)", right[0] + right[1], 2 * n);
    nvlm_model_free(m);
    return check_done("test_demo");
}
