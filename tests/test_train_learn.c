/* End-to-end learning test: a synthetic VQA set (a coloured square or bar at some position on
 * a grey background; questions about its colour and its side), a random tiny NVLM-D made
 * here, stage 1 (projector only) then stage 2 (projector + LLM, text-only samples mixed in),
 * and held-out images answered far above chance. Also: the checkpoint reloads, and a run
 * resumed from a mid-run checkpoint ends bit-identical to the uninterrupted one. */
#include "check.h"
#include "core/file.h"
#include "model/mkmodel.h"
#include "train/trainer.h"
#include <math.h>
#include <stdint.h>
#include <unistd.h>

static const char *colours[] = {"red", "green", "blue", "yellow"};
static const uint8_t rgb[4][3] = {{220, 30, 30}, {30, 200, 40}, {40, 60, 230}, {230, 220, 30}};
static const char *sides[] = {"left", "right"};

/* 24-bit BMP (bottom-up rows padded to 4 bytes). */
static int write_bmp(const char *path, int W, int H, const uint8_t *px) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int row = (W * 3 + 3) & ~3;
    uint32_t size = 54 + (uint32_t)row * H;
    uint8_t h[54] = {'B', 'M'};
    memcpy(h + 2, &size, 4);
    h[10] = 54, h[14] = 40;
    memcpy(h + 18, &W, 4);
    memcpy(h + 22, &H, 4);
    h[26] = 1, h[28] = 24;
    fwrite(h, 1, 54, f);
    uint8_t pad[3] = {0};
    for (int y = H - 1; y >= 0; y--) {
        for (int x = 0; x < W; x++) {
            const uint8_t *p = px + ((size_t)y * W + x) * 3;
            uint8_t bgr[3] = {p[2], p[1], p[0]};
            fwrite(bgr, 1, 3, f);
        }
        fwrite(pad, 1, (size_t)(row - W * 3), f);
    }
    return fclose(f);
}

static uint64_t rs = 99;
static int rnd(int n) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rs >> 33) % (uint64_t)n);
}

/* Writes n samples (two questions each image alternately) to a JSONL file. */
static void make_set(const char *dir, const char *name, int n, int first) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    const int S = 56;
    uint8_t px[56 * 56 * 3];
    for (int i = 0; i < n; i++) {
        int c = rnd(4), side = rnd(2), w = 10 + rnd(12), h = 10 + rnd(30);
        int x0 = side ? S / 2 + rnd(S / 2 - w) : rnd(S / 2 - w), y0 = rnd(S - h);
        for (int k = 0; k < S * S; k++) px[3 * k] = px[3 * k + 1] = px[3 * k + 2] = (uint8_t)(110 + rnd(30));
        for (int y = y0; y < y0 + h; y++)
            for (int x = x0; x < x0 + w; x++) memcpy(px + ((size_t)y * S + x) * 3, rgb[c], 3);
        char img[64];
        snprintf(img, sizeof img, "img%04d.bmp", first + i);
        snprintf(path, sizeof path, "%s/%s", dir, img);
        write_bmp(path, S, S, px);
        if (i % 2 == 0)
            fprintf(f, "{\"image\": \"%s\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nWhat colour is "
                       "the shape?\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n", img, colours[c]);
        else
            fprintf(f, "{\"image\": \"%s\", \"conversations\": [{\"from\": \"human\", \"value\": \"Which side is the "
                       "shape on?\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n", img, sides[side]);
    }
    fclose(f);
}

typedef struct seen {
    double eval_acc, first_loss, last_loss;
    int n;
} seen;
static void cb(void *user, const nvlm_train_report *r) {
    seen *s = user;
    if (r->eval) s->eval_acc = r->eval_acc;
    else if (!r->event) {
        if (!s->n++) s->first_loss = r->loss;
        s->last_loss = r->loss;
    }
}

static char dir[] = "/tmp/nvlm_train_learn_XXXXXX";
static char *at(const char *name) {
    static char buf[32][600];
    static int k;
    k = (k + 1) % 32; /* every path used stays valid: fewer than 32 are made */
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int same_file(const char *a, const char *b) {
    char *da, *db;
    size_t la, lb;
    nvlm_err e = {0};
    if (nvlm_read_file(a, 0, &da, &la, &e)) return 0;
    if (nvlm_read_file(b, 0, &db, &lb, &e)) return free(da), 0;
    int same = la == lb && !memcmp(da, db, la);
    free(da), free(db);
    return same;
}

int main(void) {
    if (!mkdtemp(dir)) return check_done("test_train_learn");
    make_set(dir, "train.jsonl", 192, 0);
    make_set(dir, "eval.jsonl", 40, 1000);
    FILE *f = fopen(at("text.jsonl"), "w");
    const char *tq[] = {"Say hello.", "Count to three.", "Name a fruit.", "What is up?"};
    const char *ta[] = {"hello", "one two three", "apple", "the sky"};
    for (int i = 0; i < 4; i++)
        fprintf(f, "{\"conversations\": [{\"from\": \"human\", \"value\": \"%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n",
                tq[i], ta[i]);
    fclose(f);

    nvlm_mkmodel_opts mo;
    nvlm_mkmodel_defaults(&mo);
    mo.tokenizer_dir = shared_path("reference/tiny-tokenizer");
    mo.seed = 11, mo.image_size = 56, mo.patch_size = 14;
    mo.vit_hidden = 16, mo.vit_layers = 1, mo.vit_heads = 2, mo.vit_dummy_heads = 0, mo.vit_intermediate = 32;
    mo.llm_hidden = 32, mo.llm_layers = 2, mo.llm_heads = 4, mo.llm_kv_heads = 2, mo.llm_intermediate = 64;
    mo.dtype = NVLM_MK_MIXED;
    nvlm_err err = {0};
    int rc = nvlm_mkmodel(&mo, at("base"), NULL, &err);
    CHECK(rc == 0, "mkmodel: %s", err.msg);
    if (rc) return check_done("test_train_learn");

    /* stage 1: the projector aligns image features to the frozen random LLM */
    nvlm_train_opts o;
    nvlm_train_opts_default(&o);
    o.model_dir = at("base"), o.data = at("train.jsonl"), o.eval_data = at("eval.jsonl"), o.out_dir = at("s1");
    o.stage = 1, o.steps = 30, o.batch = 8, o.lr = 1e-2, o.warmup = 3, o.threads = 2, o.max_tiles = 1, o.seed = 3;
    seen s1 = {0};
    rc = nvlm_train_run(&o, cb, &s1, &err);
    CHECK(rc == 0, "stage 1: %s", err.msg);
    CHECK(s1.last_loss < s1.first_loss, "stage 1 loss %.3f -> %.3f", s1.first_loss, s1.last_loss);
    printf("stage 1: loss %.3f -> %.3f, held-out exact match %.2f\n", s1.first_loss, s1.last_loss, s1.eval_acc);

    /* stage 2: projector + LLM, text-only samples mixed in */
    nvlm_train_opts o2 = o;
    o2.model_dir = at("s1"), o2.out_dir = at("s2"), o2.stage = 2, o2.steps = 80, o2.lr = 3e-3;
    o2.text_data = at("text.jsonl"), o2.text_ratio = 0.2, o2.weight_decay = 0.01;
    seen s2 = {0};
    rc = rc ? rc : nvlm_train_run(&o2, cb, &s2, &err);
    CHECK(rc == 0, "stage 2: %s", err.msg);
    printf("stage 2: loss %.3f -> %.3f, held-out exact match %.2f (chance 0.375)\n", s2.first_loss, s2.last_loss,
           s2.eval_acc);
    CHECK(s2.eval_acc >= 0.8, "held-out exact match %.2f after stage 2", s2.eval_acc);

    /* resume: 3 steps, then on to 8 from that checkpoint == 8 in one go */
    nvlm_train_opts a = o2;
    a.eval_data = NULL, a.steps = 8, a.out_dir = at("ra"), a.cosine = 0;
    rc = nvlm_train_run(&a, NULL, NULL, &err);
    CHECK(rc == 0, "uninterrupted: %s", err.msg);
    nvlm_train_opts b = a;
    b.steps = 3, b.out_dir = at("rb");
    rc = nvlm_train_run(&b, NULL, NULL, &err);
    CHECK(rc == 0, "first part: %s", err.msg);
    b.steps = 8, b.resume_dir = at("rb"), b.out_dir = at("rc");
    rc = nvlm_train_run(&b, NULL, NULL, &err);
    CHECK(rc == 0, "resumed: %s", err.msg);
    CHECK(same_file(at("ra/model.safetensors"), at("rc/model.safetensors")), "resumed weights differ");
    CHECK(same_file(at("ra/trainer_state.safetensors"), at("rc/trainer_state.safetensors")), "resumed state differs");

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_train_learn");
}
