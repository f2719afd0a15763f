/* The trainer sees NVLM-D, -X and -H conversations exactly as inference does: for a sample
 * with 6+1-tile images (one image, then two images over two turns), the training ids up to
 * the answer are chat()'s prompt ids, the labels cover the answer and its <|im_end|>, the
 * decoder image rows / cross-attention memory have the sizes of docs/spec.md §12, and the
 * trainer's loss at the first answer token equals -log softmax of chat()'s last-prompt
 * logits (projector, memory with H's tag embeddings, masks, gates: the same forward). */
#include "check.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "train/tdata.h"
#include <math.h>
#include <unistd.h>

static char dir[] = "/tmp/nvlm_train_xh_XXXXXX";

/* A BMP image of a gradient with a coloured block that depends on seed. */
static void write_bmp(const char *path, int W, int H, int seed) {
    uint8_t *px = malloc((size_t)W * H * 3);
    if (!px) return;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int in = x > W / 3 && x < W / 2 && y > H / 4 && y < H / 2;
            uint8_t *p = px + ((size_t)y * W + x) * 3;
            p[0] = (uint8_t)((x + y + 40 * seed) & 255);
            p[1] = (uint8_t)(in ? 200 : y * 255 / H);
            p[2] = (uint8_t)(in ? 30 * seed : x * 255 / W);
        }
    check_write_bmp24(path, W, H, px);
    free(px);
}

/* -log softmax(logits)[id] in double. */
static double nll(const float *l, int V, int id) {
    double mx = l[0], s = 0;
    for (int i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < V; i++) s += exp(l[i] - mx);
    return mx + log(s) - l[id];
}

/* Sample `line` of data.jsonl against chat(): images, history (q0, a0), question q. */
static void check_sample(nvlm_model *m, nvlm_tdata *d, int line, int n_images, const char *q0, const char *a0,
                         const char *q) {
    const char *arch = nvlm_arch_name(m->cfg.arch);
    nvlm_err err = {0};
    int rc = nvlm_tdata_prepare(d, m, line, 6, &err);
    CHECK(rc == 0, "%s prepare: %s", arch, err.msg);
    if (rc) return;
    const nvlm_tsample *s = &d->s[line];
    nvlm_chat *c = NULL;
    rc = nvlm_chat_new(m, &c, &err);
    nvlm_chat_set_max_tiles(c, 6);
    char path[600];
    for (int i = 0; i < n_images && !rc; i++) {
        snprintf(path, sizeof path, "%s/img%d.bmp", dir, i);
        rc = nvlm_chat_add_image_file(c, path, &err);
    }
    if (!rc && q0) rc = nvlm_chat_add_history(c, q0, a0, &err);
    nvlm_sampling sp;
    nvlm_sampling_default(&sp);
    sp.max_new_tokens = 1;
    nvlm_answer ans = {0};
    if (!rc) rc = nvlm_chat_ask(c, q, &sp, NULL, NULL, &ans, &err);
    CHECK(rc == 0, "%s chat: %s", arch, err.msg);
    if (rc) return nvlm_chat_free(c);
    /* the prompt is the training ids up to the (last) answer, which is supervised */
    int np = (int)ans.n_prompt, same = np < s->n;
    for (int t = 0; same && t < np; t++) same = ans.prompt_ids[t] == s->ids[t];
    CHECK(same, "%s: training ids differ from chat()'s prompt (%d prompt ids, %d training ids)", arch, np, s->n);
    int sup = 0, first_sup = -1;
    for (int t = 0; t < s->n; t++)
        if (s->labels[t] != -100) sup++, first_sup = first_sup < 0 ? t : first_sup;
    CHECK(s->labels[s->n - 1] == m->id_im_end && s->ids[s->n - 1] == m->id_im_end, "%s: <|im_end|> supervised", arch);
    CHECK(same && s->labels[np] == s->ids[np] && s->labels[np - 1] == -100, "%s: the answer starts supervised", arch);
    /* decoder image rows and memory (tokens per tile T, tiles N_i) */
    const int T = nvlm_cfg_tokens_per_tile(&m->cfg);
    int ctx = 0, tiles = 0;
    for (int t = 0; t < s->n; t++) ctx += s->ids[t] == m->id_img_context;
    for (int i = 0; i < s->n_images; i++) tiles += s->num_patches[i];
    CHECK(s->n_images == n_images && s->num_patches[0] == 7, "%s: 6+1 tiles (got %d)", arch, s->num_patches[0]);
    if (m->cfg.arch == NVLM_ARCH_D) CHECK(ctx == tiles * T && s->n_mem == 0, "D: %d image rows", ctx);
    if (m->cfg.arch == NVLM_ARCH_X) CHECK(ctx == 0 && s->n_mem == tiles * T, "X: %d image rows, memory %d", ctx, s->n_mem);
    if (m->cfg.arch == NVLM_ARCH_H) {
        int tags = 0;
        for (int r = 0; r < s->n_mem; r++) tags += s->mem_src[r] < 0;
        CHECK(ctx == n_images * T && s->n_ctx == ctx, "H: %d thumbnail rows", ctx);
        CHECK(s->n_mem - tags == (tiles - n_images) * T && tags >= tiles - n_images, "H: memory %d rows, %d tag rows",
              s->n_mem, tags);
    }
    if (s->n_mem) { /* nothing before the first image reads memory; the answer reads all of it */
        CHECK(s->mem_hi[0] == 0 && s->mem_lo[np] == 0 && s->mem_hi[np] == s->n_mem, "%s: memory ranges", arch);
    }
    /* the trainer's loss at the first answer token == chat()'s logits */
    nvlm_train_select sel = {2, NULL, 0};
    nvlm_tmodel *tm = NULL;
    rc = nvlm_tmodel_new(m, &sel, &tm, &err);
    CHECK(rc == 0, "%s tmodel: %s", arch, err.msg);
    if (!rc) {
        nvlm_tseq seq;
        nvlm_tdata_seq(d, line, &seq);
        int32_t *one = malloc(sizeof(int32_t) * (size_t)s->n);
        for (int t = 0; t < s->n; t++) one[t] = t == np ? s->labels[t] : -100;
        seq.labels = one;
        nvlm_tresult r = {0};
        rc = nvlm_train_seq(tm, &seq, 0, 1.0, &r, &err);
        double want = nll(ans.last_logits, m->cfg.llm.vocab_size, s->ids[np]);
        CHECK(rc == 0 && r.count == 1 && fabs(r.loss_sum - want) <= 1e-3 * (1 + fabs(want)),
              "%s: trainer loss %.6f, chat() logits give %.6f (%s)", arch, r.loss_sum, want, err.msg);
        printf("%s: %d training ids, %d supervised, memory %d rows, loss at the answer %.6f (chat %.6f)\n", arch,
               s->n, sup, s->n_mem, r.loss_sum, want);
        free(one);
    }
    nvlm_tmodel_free(tm);
    nvlm_answer_free(&ans);
    nvlm_chat_free(c);
}

int main(void) {
    if (!mkdtemp(dir)) return check_done("test_train_xh");
    char path[600];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/img%d.bmp", dir, i);
        write_bmp(path, 168, 112, i + 1); /* 3x2 tiles of 56 + thumbnail */
    }
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"image\": \"img0.bmp\", \"conversations\": [{\"from\": \"human\", \"value\": \"What colour is the "
               "block?\"}, {\"from\": \"gpt\", \"value\": \"green\"}]}\n");
    fprintf(f, "{\"image\": [\"img0.bmp\", \"img1.bmp\"], \"conversations\": [{\"from\": \"human\", \"value\": "
               "\"Image-1: <image>\\nImage-2: <image>\\nWhich is brighter?\"}, {\"from\": \"gpt\", \"value\": \"the "
               "second\"}, {\"from\": \"human\", \"value\": \"Where is the block?\"}, {\"from\": \"gpt\", \"value\": "
               "\"top left of the middle\"}]}\n");
    fclose(f);
    nvlm_err err = {0};
    for (int a = 0; a < 3; a++) {
        char mdir[600];
        snprintf(mdir, sizeof mdir, "%s/model%d", dir, a);
        nvlm_mkmodel_opts o;
        nvlm_mkmodel_defaults(&o);
        o.tokenizer_dir = shared_path("reference/tiny-tokenizer");
        o.seed = 7, o.image_size = 56, o.patch_size = 14, o.dtype = NVLM_MK_F32;
        o.vit_hidden = 16, o.vit_layers = 1, o.vit_heads = 2, o.vit_dummy_heads = 0, o.vit_intermediate = 24;
        o.llm_hidden = 24, o.llm_layers = 2, o.llm_heads = 4, o.llm_kv_heads = 2, o.llm_intermediate = 40;
        o.arch = a == 0 ? NVLM_ARCH_D : a == 1 ? NVLM_ARCH_X : NVLM_ARCH_H;
        if (a) o.n_xattn = 2, o.xattn_layers[0] = 0, o.xattn_layers[1] = 1;
        int rc = nvlm_mkmodel(&o, mdir, NULL, &err);
        CHECK(rc == 0, "mkmodel: %s", err.msg);
        nvlm_model *m = NULL;
        nvlm_load_options lo = {.n_threads = 1};
        if (!rc) rc = nvlm_model_load(mdir, &lo, &m, &err);
        CHECK(rc == 0, "load: %s", err.msg);
        nvlm_tdata *d = NULL;
        if (!rc) rc = nvlm_tdata_load(path, &d, &err);
        CHECK(rc == 0, "data: %s", err.msg);
        if (!rc) {
            check_sample(m, d, 0, 1, NULL, NULL, "What colour is the block?");
            check_sample(m, d, 1, 2, "Image-1: <image>\nImage-2: <image>\nWhich is brighter?", "the second",
                         "Where is the block?");
        }
        nvlm_tdata_free(d);
        nvlm_model_free(m);
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_train_xh");
}
