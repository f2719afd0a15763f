/* The trainer against tests/data/reference/train_cases.jsonl (PyTorch reference): prompt ids
 * and labels from the conversation format, loss, the gradient of every trainable tensor in
 * stage 1 and stage 2, and the parameters after one AdamW step (README.models.md, pass
 * criterion 6). */
#include "check.h"
#include "core/file.h"
#include "model/model.h"
#include "train/tdata.h"
#include "train/train.h"
#include <cJSON.h>
#include <limits.h>
#include <math.h>

static float *read_f32(const char *rel, size_t n) {
    char *data;
    size_t len;
    nvlm_err err = {0};
    if (nvlm_read_file(shared_path(rel), 0, &data, &len, &err) || len != n * 4) {
        fprintf(stderr, "cannot read %s (%s)\n", rel, err.msg);
        return NULL;
    }
    return (float *)data; /* malloc'ed, suitably aligned */
}

/* The batch as conversation JSONL (absolute image paths), loaded through tdata. */
static nvlm_tdata *batch_data(cJSON *batch) {
    char path[] = "/tmp/nvlm_train_ref_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "w");
    cJSON *ex;
    cJSON_ArrayForEach(ex, batch) {
        cJSON *o = cJSON_CreateObject(), *imgs = cJSON_CreateArray(), *conv = cJSON_CreateArray(), *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(ex, "images")) {
            char rel[1024], abs[PATH_MAX];
            snprintf(rel, sizeof rel, "reference/%s", p->valuestring);
            if (!realpath(shared_path(rel), abs)) snprintf(abs, sizeof abs, "%s", rel);
            cJSON_AddItemToArray(imgs, cJSON_CreateString(abs));
        }
        cJSON_AddItemToObject(o, "image", imgs);
        cJSON *h = cJSON_CreateObject(), *g = cJSON_CreateObject();
        cJSON_AddStringToObject(h, "from", "human");
        cJSON_AddStringToObject(h, "value", cJSON_GetObjectItem(ex, "question")->valuestring);
        cJSON_AddStringToObject(g, "from", "gpt");
        cJSON_AddStringToObject(g, "value", cJSON_GetObjectItem(ex, "answer")->valuestring);
        cJSON_AddItemToArray(conv, h);
        cJSON_AddItemToArray(conv, g);
        cJSON_AddItemToObject(o, "conversations", conv);
        char *s = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
    fclose(f);
    nvlm_tdata *d = NULL;
    nvlm_err err = {0};
    if (nvlm_tdata_load(path, &d, &err)) fprintf(stderr, "tdata: %s\n", err.msg);
    remove(path);
    return d;
}

/* Prepared once for all runs: the frozen ViT runs once per image. */
static nvlm_tdata *g_data;

static void run_case(nvlm_model *m, cJSON *c, int recompute) {
    const char *id = cJSON_GetObjectItem(c, "id")->valuestring;
    int stage = id[5] - '0';
    nvlm_err err = {0};
    nvlm_train_select sel = {stage, NULL, 1};
    nvlm_tmodel *tm = NULL;
    int rc = nvlm_tmodel_new(m, &sel, &tm, &err);
    CHECK(rc == 0, "%s: %s", id, err.msg);
    if (rc) return;
    tm->recompute = recompute;
    cJSON *batch = cJSON_GetObjectItem(c, "batch");
    if (!g_data) g_data = batch_data(batch);
    nvlm_tdata *d = g_data;
    CHECK(d != NULL, "%s: batch data", id);
    if (!d) return nvlm_tmodel_free(tm);
    int total = 0;
    for (int i = 0; i < d->n; i++) {
        cJSON *ex = cJSON_GetArrayItem(batch, i), *v;
        rc = nvlm_tdata_prepare(d, m, i, cJSON_GetObjectItem(ex, "max_num")->valueint, &err);
        CHECK(rc == 0, "%s: prepare %d: %s", id, i, err.msg);
        if (rc) goto out;
        const nvlm_tsample *s = &d->s[i];
        int n = cJSON_GetArraySize(cJSON_GetObjectItem(ex, "input_ids")), same = n == s->n, k = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(ex, "input_ids")) same = same && s->ids[k++] == v->valueint;
        CHECK(same, "%s: example %d prompt ids differ (%d vs %d tokens)", id, i, s->n, n);
        k = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(ex, "labels")) same = same && s->labels[k++] == v->valueint;
        CHECK(same, "%s: example %d labels differ", id, i);
        nvlm_tseq q;
        nvlm_tdata_seq(d, i, &q);
        total += nvlm_tseq_supervised(&q);
    }
    double loss = 0;
    for (int i = 0; i < d->n; i++) {
        nvlm_tseq q;
        nvlm_tdata_seq(d, i, &q);
        nvlm_tresult r = {0};
        rc = nvlm_train_seq(tm, &q, 1, total, &r, &err);
        CHECK(rc == 0, "%s: train_seq: %s", id, err.msg);
        loss += r.loss_sum;
    }
    loss /= total;
    double ref_loss = cJSON_GetObjectItem(c, "loss")->valuedouble;
    CHECK(fabs(loss - ref_loss) <= 1e-4, "%s: loss %.7f vs %.7f", id, loss, ref_loss);
    /* gradients */
    cJSON *grads = cJSON_GetObjectItem(c, "grads"), *g;
    int n_ref = 0;
    cJSON_ArrayForEach(g, grads) {
        n_ref++;
        nvlm_tparam *p = nvlm_tmodel_find(tm, g->string);
        CHECK(p && p->g, "%s: %s should be trainable", id, g->string);
        if (!p || !p->g) continue;
        char rel[512];
        snprintf(rel, sizeof rel, "reference/%s", cJSON_GetObjectItem(g, "path")->valuestring);
        float *ref = read_f32(rel, p->n);
        CHECK(ref != NULL, "%s", rel);
        if (!ref) continue;
        double mx = 0;
        for (size_t k = 0; k < p->n; k++) mx = fmax(mx, fabs((double)p->g[k] - ref[k]));
        CHECK(mx <= 5e-5, "%s: grad %s max abs diff %.3g", id, g->string, mx);
        free(ref);
    }
    size_t n_train = 0;
    for (int i = 0; i < tm->n_p; i++) n_train += tm->p[i].trainable;
    CHECK((size_t)n_ref == n_train, "%s: %zu trainable tensors, reference has %d", id, n_train, n_ref);
    /* one AdamW step */
    cJSON *o = cJSON_GetObjectItem(c, "optimizer");
    nvlm_adamw opt = {cJSON_GetObjectItem(o, "lr")->valuedouble,
                      cJSON_GetArrayItem(cJSON_GetObjectItem(o, "betas"), 0)->valuedouble,
                      cJSON_GetArrayItem(cJSON_GetObjectItem(o, "betas"), 1)->valuedouble,
                      cJSON_GetObjectItem(o, "eps")->valuedouble, cJSON_GetObjectItem(o, "weight_decay")->valuedouble, 0};
    float **before = calloc((size_t)tm->n_p, sizeof *before);
    for (int i = 0; i < tm->n_p; i++) {
        before[i] = malloc(sizeof(float) * tm->p[i].n);
        memcpy(before[i], tm->p[i].w, sizeof(float) * tm->p[i].n);
    }
    nvlm_adamw_step(tm, &opt, opt.lr);
    cJSON *after = cJSON_GetObjectItem(c, "params_after_step");
    cJSON_ArrayForEach(g, after) {
        nvlm_tparam *p = nvlm_tmodel_find(tm, g->string);
        if (!p || !p->g) continue;
        char rel[512], relg[512];
        snprintf(rel, sizeof rel, "reference/%s", cJSON_GetObjectItem(g, "path")->valuestring);
        snprintf(relg, sizeof relg, "reference/%s",
                 cJSON_GetObjectItem(cJSON_GetObjectItem(grads, g->string), "path")->valuestring);
        float *ref = read_f32(rel, p->n), *rg = read_f32(relg, p->n);
        CHECK(ref && rg, "%s", rel);
        if (!ref || !rg) {
            free(ref), free(rg);
            continue;
        }
        double mx = 0, mx0 = 0;
        const float *b = before[p - tm->p];
        for (size_t k = 0; k < p->n; k++) {
            if (fabsf(rg[k]) >= 1e-5f) mx = fmax(mx, fabs((double)p->w[k] - ref[k]));
            if (rg[k] == 0.0f) mx0 = fmax(mx0, fabs((double)p->w[k] - b[k] * (1.0f - (float)(opt.lr * opt.weight_decay))));
        }
        CHECK(mx <= 5e-5, "%s: param %s after AdamW max abs diff %.3g", id, g->string, mx);
        CHECK(mx0 <= 1e-7, "%s: param %s zero-grad elements off p(1-lr wd) by %.3g", id, g->string, mx0);
        free(ref), free(rg);
    }
    for (int i = 0; i < tm->n_p; i++) free(before[i]);
    free(before);
    printf("%s%s: loss %.6f (ref %.6f)\n", id, recompute ? " (recompute)" : "", loss, ref_loss);
out:
    nvlm_tmodel_free(tm);
}

int main(void) {
    char *text;
    size_t len;
    nvlm_err err = {0};
    int rc = nvlm_read_file(shared_path("reference/train_cases.jsonl"), 0, &text, &len, &err);
    CHECK(rc == 0, "%s", err.msg);
    if (rc) return check_done("test_train_ref");
    nvlm_model *m = NULL;
    nvlm_load_options lo = {.n_threads = 2};
    rc = nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), &lo, &m, &err);
    CHECK(rc == 0, "%s", err.msg);
    int k = 0;
    for (char *p = text; rc == 0 && p && *p; k++) {
        char *e = strchr(p, '\n');
        if (e) *e = 0;
        cJSON *c = cJSON_Parse(p);
        CHECK(c != NULL, "case line %d", k + 1);
        if (c) {
            run_case(m, c, 0);
            if (k == 1) run_case(m, c, 1); /* stage 2 again with activation recomputation */
        }
        cJSON_Delete(c);
        p = e ? e + 1 : NULL;
    }
    CHECK(k == 2, "%d cases", k);
    nvlm_tdata_free(g_data);
    nvlm_model_free(m);
    free(text);
    return check_done("test_train_ref");
}
