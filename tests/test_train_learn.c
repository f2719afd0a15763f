/* End-to-end learning test: a synthetic VQA set (a coloured square or bar at some position on
 * a grey background; questions about its colour and its side), random tiny NVLM-D, NVLM-X
 * and NVLM-H made here, stage 1 (projector; + cross-attention blocks for X/H) then stage 2
 * (+ the LLM, text-only samples mixed in), and held-out images answered far above chance.
 * Also: a run resumed from a mid-run checkpoint ends bit-identical to the uninterrupted one.
 * X and H see 112x56 images cut into 2 tiles + thumbnail, so H's memory (tag embeddings +
 * tiles) is not empty. Under AddressSanitizer X/H run a few steps only (the accuracy bar is
 * checked in the plain build): the suite runs on 2 cores. */
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


static uint64_t rs = 99;
static int rnd(int n) {
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rs >> 33) % (uint64_t)n);
}

/* Writes n samples (two questions each image alternately) to a JSONL file; images W x 56
 * (W = 56 or 112), named with prefix. */
static void make_set(const char *dir, const char *name, int n, int first, int W, const char *prefix) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    const int S = 56;
    uint8_t px[112 * 56 * 3];
    for (int i = 0; i < n; i++) {
        int c = rnd(4), side = rnd(2), w = 10 + rnd(12) * W / S, h = 10 + rnd(30);
        int x0 = side ? W / 2 + rnd(W / 2 - w) : rnd(W / 2 - w), y0 = rnd(S - h);
        for (int k = 0; k < W * S; k++) px[3 * k] = px[3 * k + 1] = px[3 * k + 2] = (uint8_t)(110 + rnd(30));
        for (int y = y0; y < y0 + h; y++)
            for (int x = x0; x < x0 + w; x++) memcpy(px + ((size_t)y * W + x) * 3, rgb[c], 3);
        char img[64];
        snprintf(img, sizeof img, "%s%04d.bmp", prefix, first + i);
        snprintf(path, sizeof path, "%s/%s", dir, img);
        check_write_bmp24(path, W, S, px);
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

#if defined(__SANITIZE_ADDRESS__)
enum { SANITIZED = 1 };
#else
enum { SANITIZED = 0 };
#endif

/* The same with the ViT trained too (--trainable names vision tensors): its master weights and
 * moments are saved, a resumed run ends bit-identical, and the engine loads what was saved. */
static void resume_with_vit(const nvlm_train_opts *base, const char *name) {
    nvlm_err err = {0};
    nvlm_train_opts a = *base, b;
    a.trainable = "vision_model.*,mlp1.*,language_model.*", a.out_dir = at("va"), a.eval_data = at("eval.jsonl");
    a.eval_every = 4;
    int rc = nvlm_train_run(&a, NULL, NULL, &err);
    CHECK(rc == 0, "%s with the ViT: %s", name, err.msg);
    b = a, b.steps = 3, b.out_dir = at("vb");
    if (!rc) rc = nvlm_train_run(&b, NULL, NULL, &err);
    b.steps = a.steps, b.resume_dir = at("vb"), b.out_dir = at("vc");
    if (!rc) rc = nvlm_train_run(&b, NULL, NULL, &err);
    CHECK(rc == 0, "%s with the ViT, resumed: %s", name, err.msg);
    CHECK(same_file(at("va/model.safetensors"), at("vc/model.safetensors")), "%s resumed ViT weights differ", name);
    CHECK(!same_file(at("va/model.safetensors"), at("ra/model.safetensors")), "%s the ViT run changed nothing", name);
    nvlm_model *m = NULL;
    nvlm_load_options lo = {.n_threads = 1};
    rc = nvlm_model_load(at("va"), &lo, &m, &err);
    CHECK(rc == 0, "%s: the engine loads the trained ViT: %s", name, err.msg);
    nvlm_model_free(m);
}

/* Stage 1 then stage 2 on a random tiny model of arch; resume checked when `resume`. */
static void learn(nvlm_arch arch, int resume) {
    const char *name = nvlm_arch_name(arch);
    char base[32], s1[32], s2[32], ra[32], rb[32], rcd[32];
    snprintf(base, sizeof base, "base%d", arch), snprintf(s1, sizeof s1, "s1_%d", arch);
    snprintf(s2, sizeof s2, "s2_%d", arch), snprintf(ra, sizeof ra, "ra%d", arch);
    snprintf(rb, sizeof rb, "rb%d", arch), snprintf(rcd, sizeof rcd, "rc%d", arch);
    const int D = arch == NVLM_ARCH_D, quick = !D && SANITIZED;
    nvlm_mkmodel_opts mo;
    nvlm_mkmodel_defaults(&mo);
    mo.arch = arch;
    mo.tokenizer_dir = shared_path("reference/tiny-tokenizer");
    mo.seed = 11, mo.image_size = 56, mo.patch_size = 14;
    mo.vit_hidden = 16, mo.vit_layers = 1, mo.vit_heads = 2, mo.vit_dummy_heads = 0, mo.vit_intermediate = 32;
    mo.llm_hidden = 32, mo.llm_layers = 2, mo.llm_heads = 4, mo.llm_kv_heads = 2, mo.llm_intermediate = 64;
    /* X reads the tiles through its tags: a block before layer 0 leaves two self-attention layers
     * to carry them to the answer; H has the thumbnail in the decoder and takes its block later */
    if (!D) mo.n_xattn = 1, mo.xattn_layers[0] = arch == NVLM_ARCH_X ? 0 : 1;
    mo.dtype = NVLM_MK_MIXED;
    nvlm_err err = {0};
    int rc = nvlm_mkmodel(&mo, at(base), NULL, &err);
    CHECK(rc == 0, "%s mkmodel: %s", name, err.msg);
    if (rc) return;

    /* stage 1: the projector (and X/H's cross-attention) aligns image features to the frozen LLM */
    nvlm_train_opts o;
    nvlm_train_opts_default(&o);
    o.model_dir = at(base), o.out_dir = at(s1);
    o.data = at(D ? "train.jsonl" : "wtrain.jsonl"), o.eval_data = at(D ? "eval.jsonl" : "weval.jsonl");
    o.stage = 1, o.steps = quick ? 4 : D ? 30 : 50, o.batch = 8, o.lr = 1e-2, o.warmup = 3, o.threads = 2;
    o.max_tiles = D ? 1 : 2, o.seed = 3;
    seen r1 = {0};
    rc = nvlm_train_run(&o, cb, &r1, &err);
    CHECK(rc == 0, "%s stage 1: %s", name, err.msg);
    CHECK(r1.last_loss < r1.first_loss, "%s stage 1 loss %.3f -> %.3f", name, r1.first_loss, r1.last_loss);
    printf("%s stage 1: loss %.3f -> %.3f, held-out exact match %.2f\n", name, r1.first_loss, r1.last_loss,
           r1.eval_acc);

    /* stage 2: + the LLM, text-only samples mixed in */
    nvlm_train_opts o2 = o;
    o2.model_dir = at(s1), o2.out_dir = at(s2), o2.stage = 2, o2.steps = quick ? 4 : D ? 80 : 100, o2.lr = 3e-3;
    o2.text_data = at("text.jsonl"), o2.text_ratio = 0.2, o2.weight_decay = 0.01;
    seen r2 = {0};
    rc = rc ? rc : nvlm_train_run(&o2, cb, &r2, &err);
    CHECK(rc == 0, "%s stage 2: %s", name, err.msg);
    printf("%s stage 2: loss %.3f -> %.3f, held-out exact match %.2f (chance 0.375)%s\n", name, r2.first_loss,
           r2.last_loss, r2.eval_acc, quick ? " [few steps under ASan]" : "");
    if (quick) CHECK(r2.last_loss < r1.first_loss, "%s loss %.3f -> %.3f", name, r1.first_loss, r2.last_loss);
    else CHECK(r2.eval_acc >= 0.8, "%s held-out exact match %.2f after stage 2", name, r2.eval_acc);
    if (!resume || quick || rc) return;

    /* resume: 3 steps, then on to 8 from that checkpoint == 8 in one go */
    nvlm_train_opts a = o2;
    a.eval_data = NULL, a.steps = quick ? 4 : 8, a.out_dir = at(ra), a.cosine = 0;
    rc = nvlm_train_run(&a, NULL, NULL, &err);
    CHECK(rc == 0, "%s uninterrupted: %s", name, err.msg);
    nvlm_train_opts b = a;
    b.steps = quick ? 2 : 3, b.out_dir = at(rb);
    rc = nvlm_train_run(&b, NULL, NULL, &err);
    CHECK(rc == 0, "%s first part: %s", name, err.msg);
    b.steps = a.steps, b.resume_dir = at(rb), b.out_dir = at(rcd);
    rc = nvlm_train_run(&b, NULL, NULL, &err);
    CHECK(rc == 0, "%s resumed: %s", name, err.msg);
    char f1[64], f2[64];
    snprintf(f1, sizeof f1, "%s/model.safetensors", ra), snprintf(f2, sizeof f2, "%s/model.safetensors", rcd);
    CHECK(same_file(at(f1), at(f2)), "%s resumed weights differ", name);
    snprintf(f1, sizeof f1, "%s/trainer_state.safetensors", ra), snprintf(f2, sizeof f2, "%s/trainer_state.safetensors", rcd);
    CHECK(same_file(at(f1), at(f2)), "%s resumed state differs", name);
    if (D) resume_with_vit(&a, name);
}

int main(void) {
    if (!mkdtemp(dir)) return check_done("test_train_learn");
    make_set(dir, "train.jsonl", 192, 0, 56, "img");
    make_set(dir, "eval.jsonl", 40, 1000, 56, "img");
    make_set(dir, "wtrain.jsonl", 192, 0, 112, "wide");
    make_set(dir, "weval.jsonl", 40, 1000, 112, "wide");
    FILE *f = fopen(at("text.jsonl"), "w");
    const char *tq[] = {"Say hello.", "Count to three.", "Name a fruit.", "What is up?"};
    const char *ta[] = {"hello", "one two three", "apple", "the sky"};
    for (int i = 0; i < 4; i++)
        fprintf(f, "{\"conversations\": [{\"from\": \"human\", \"value\": \"%s\"}, {\"from\": \"gpt\", \"value\": \"%s\"}]}\n",
                tq[i], ta[i]);
    fclose(f);
    learn(NVLM_ARCH_D, 1);
    learn(NVLM_ARCH_X, 0);
    learn(NVLM_ARCH_H, 1);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_train_learn");
}
