/* The training loop: sample order, mixing, accumulation, optimizer, evaluation, logs and
 * checkpoints (docs/training.md). Everything that decides the result (data order, text
 * mixing draws) comes from the seed and the saved cursor, so a resumed run repeats the
 * uninterrupted one bit for bit. */
#include "train/trainer.h"
#include "core/err.h"
#include "dist/dist.h"
#include "core/file.h"
#include "kernels/qblock.h"
#include "model/safetensors_write.h"
#include "train/tdata.h"
#include "train/train.h"
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { SAVE_CHUNK = 1 << 20 }; /* elements converted per call when saving F16 / BF16 weights */

void nvlm_train_opts_default(nvlm_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->stage = 1;
    o->epochs = 1;
    o->batch = 1;
    o->grad_accum = 1;
    o->lr = 1e-4;
    o->weight_decay = 0.0;
    o->clip = 1.0;
    o->beta1 = 0.9, o->beta2 = 0.999, o->eps = 1e-8;
    o->cosine = 1;
    o->seed = 1;
}

/* ------------------------------------------------------------ deterministic order */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Permutation of [0, n) for (seed, epoch, stream). */
static void permutation(int *p, int n, uint64_t seed, int epoch, int stream) {
    uint64_t s = seed * 0x100000001B3ull ^ ((uint64_t)epoch << 20) ^ (uint64_t)stream;
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix(&s) % (uint64_t)(i + 1));
        int t = p[i];
        p[i] = p[j], p[j] = t;
    }
}

typedef struct cursor {
    uint64_t rng;         /* text-mixing draws */
    int epoch, pos;       /* main data */
    int tepoch, tpos;     /* text-only data */
    int64_t step;
} cursor;

typedef struct run {
    const nvlm_train_opts *o;
    nvlm_model *m;
    nvlm_tmodel *tm;
    nvlm_tdata *data, *text, *eval;
    int *perm, *tperm;
    int perm_epoch, tperm_epoch;
    cursor cur;
    nvlm_adamw opt;
    int64_t total;
    const char *src_dir;
    FILE *log;
    nvlm_train_cb cb;
    void *user;
} run;

/* The next sample: (dataset, index), advancing the cursor. */
static void next_sample(run *r, nvlm_tdata **d, int *idx) {
    cursor *c = &r->cur;
    int use_text = 0;
    if (r->text && r->o->text_ratio > 0)
        use_text = (double)(splitmix(&c->rng) >> 11) * (1.0 / 9007199254740992.0) < r->o->text_ratio;
    if (use_text) {
        if (r->tperm_epoch != c->tepoch) {
            permutation(r->tperm, r->text->n, r->o->seed, c->tepoch, 2);
            r->tperm_epoch = c->tepoch;
        }
        *d = r->text, *idx = r->tperm[c->tpos];
        if (++c->tpos == r->text->n) c->tpos = 0, c->tepoch++;
        return;
    }
    if (r->perm_epoch != c->epoch) {
        permutation(r->perm, r->data->n, r->o->seed, c->epoch, 1);
        r->perm_epoch = c->epoch;
    }
    *d = r->data, *idx = r->perm[c->pos];
    if (++c->pos == r->data->n) c->pos = 0, c->epoch++;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long peak_rss_mb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0 : ru.ru_maxrss / 1024;
}

/* ------------------------------------------------------------ checkpoints */

static int mkdir_p(const char *dir, nvlm_err *err) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0777) && errno != EEXIST) return nvlm_fail(err, NVLM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
            *p = '/';
        }
    if (mkdir(tmp, 0777) && errno != EEXIST) return nvlm_fail(err, NVLM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
    return NVLM_OK;
}

/* model.safetensors in the source layout and dtypes (vision tensors copied as they are). */
static int save_model(run *r, const char *dir, const char *id, nvlm_err *err) {
    nvlm_stw *w;
    int rc = nvlm_stw_new(&w, err);
    if (rc) return rc;
    rc = nvlm_stw_set_meta(w, "nvlm_checkpoint", id, err);
    void **bufs = calloc((size_t)r->tm->n_p, sizeof *bufs);
    if (!bufs) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    size_t n = nvlm_st_count(r->m->st);
    for (size_t i = 0; i < n && !rc; i++) {
        const nvlm_tensor *t = nvlm_st_at(r->m->st, i);
        nvlm_tparam *p = nvlm_tmodel_find(r->tm, t->name);
        if (!p) {
            rc = nvlm_stw_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
            continue;
        }
        const void *data = p->w;
        if (p->dtype != NVLM_DT_F32) {
            uint16_t *b = malloc(sizeof(uint16_t) * p->n);
            if (!b) {
                rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory saving %s", p->name);
                break;
            }
            for (size_t k = 0; k < p->n; k += SAVE_CHUNK) /* nvlm_row_from_f32 counts in int */
                nvlm_row_from_f32(b + k, p->w + k, p->dtype, (int)(p->n - k < SAVE_CHUNK ? p->n - k : SAVE_CHUNK));
            bufs[p - r->tm->p] = b;
            data = b;
        }
        rc = nvlm_stw_add(w, t->name, p->dtype, t->ndim, t->shape, data, err);
    }
    if (!rc) rc = nvlm_stw_write_dir(w, dir, 1, err);
    nvlm_stw_free(w);
    for (int i = 0; bufs && i < r->tm->n_p; i++) free(bufs[i]);
    free(bufs);
    return rc;
}

/* trainer_state.safetensors: master weights and Adam moments of the trainable tensors. */
static int save_state(run *r, const char *dir, const char *id, nvlm_err *err) {
    nvlm_stw *w;
    int rc = nvlm_stw_new(&w, err);
    if (!rc) rc = nvlm_stw_set_meta(w, "nvlm_checkpoint", id, err);
    char name[200];
    for (int i = 0; i < r->tm->n_p && !rc; i++) {
        nvlm_tparam *p = &r->tm->p[i];
        if (!p->g) continue;
        rc = nvlm_stw_add(w, p->name, NVLM_DT_F32, p->ndim, p->shape, p->w, err);
        snprintf(name, sizeof name, "%s.exp_avg", p->name);
        if (!rc) rc = nvlm_stw_add(w, name, NVLM_DT_F32, p->ndim, p->shape, p->m, err);
        snprintf(name, sizeof name, "%s.exp_avg_sq", p->name);
        if (!rc) rc = nvlm_stw_add(w, name, NVLM_DT_F32, p->ndim, p->shape, p->v, err);
    }
    char *path = nvlm_path_join(dir, "trainer_state.safetensors");
    if (!rc && !path) rc = nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = nvlm_stw_write_file(w, path, err);
    free(path);
    nvlm_stw_free(w);
    if (rc) return rc;
    cJSON *j = cJSON_CreateObject();
    char u[32];
    snprintf(u, sizeof u, "%llu", (unsigned long long)r->cur.rng);
    cJSON_AddNumberToObject(j, "step", (double)r->cur.step);
    cJSON_AddNumberToObject(j, "adam_step", (double)r->opt.step);
    cJSON_AddStringToObject(j, "rng", u);
    cJSON_AddNumberToObject(j, "epoch", r->cur.epoch);
    cJSON_AddNumberToObject(j, "pos", r->cur.pos);
    cJSON_AddNumberToObject(j, "text_epoch", r->cur.tepoch);
    cJSON_AddNumberToObject(j, "text_pos", r->cur.tpos);
    cJSON_AddNumberToObject(j, "stage", r->o->stage);
    snprintf(u, sizeof u, "%llu", (unsigned long long)r->o->seed);
    cJSON_AddStringToObject(j, "seed", u);
    cJSON_AddStringToObject(j, "checkpoint", id);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    path = nvlm_path_join(dir, "trainer_state.json");
    rc = s && path ? nvlm_write_file_atomic(path, s, strlen(s), err) : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    free(s), free(path);
    return rc;
}

/* FNV-1a over the trainable weights and the data cursor: the save id is tied to what is
 * saved, and the same for the same state (a resumed run's files stay bit-identical). */
static uint64_t weights_hash(const run *r) {
    uint64_t h = 0xcbf29ce484222325ull ^ r->cur.rng;
    for (int i = 0; i < r->tm->n_p; i++) {
        const nvlm_tparam *p = &r->tm->p[i];
        if (!p->g) continue;
        const uint8_t *b = (const uint8_t *)p->w;
        size_t n = p->n * sizeof(float), k = 0;
        for (; k + 8 <= n; k += 8) { /* a word at a time: a save's cost stays the writing */
            uint64_t w;
            memcpy(&w, b + k, 8);
            h = (h ^ w) * 0x100000001b3ull;
        }
        for (; k < n; k++) h = (h ^ b[k]) * 0x100000001b3ull;
    }
    return h;
}

/* The files of one save; in OUT each is a symlink to .current/NAME. */
static const char *const SAVE_FILES[] = {"model.safetensors", "trainer_state.safetensors", "trainer_state.json"};
#define CURRENT ".current"      /* symlink to the folder of the current save */
#define SAVE_PREFIX ".ckpt-"    /* a save's folder: .ckpt-stepN[.K] */

static int fsync_dir(const char *dir, nvlm_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return nvlm_fail(err, NVLM_E_IO, "cannot open %s: %s", dir, strerror(errno));
    int bad = fsync(fd) != 0;
    close(fd);
    return bad ? nvlm_fail(err, NVLM_E_IO, "cannot sync %s: %s", dir, strerror(errno)) : NVLM_OK;
}

/* Removes a save's folder (its files are plain files written by the trainer). */
static void remove_save(const char *dir, const char *name) {
    char sub[PATH_MAX], p[PATH_MAX];
    if (snprintf(sub, sizeof sub, "%s/%s", dir, name) >= (int)sizeof sub) return;
    DIR *d = opendir(sub);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && snprintf(p, sizeof p, "%s/%s", sub, e->d_name) < (int)sizeof p)
            unlink(p);
    closedir(d);
    rmdir(sub);
}

/* The name .current points to ("" when none). */
static void current_save(const char *dir, char *name, size_t cap) {
    char link[PATH_MAX];
    name[0] = 0;
    if (snprintf(link, sizeof link, "%s/" CURRENT, dir) >= (int)sizeof link) return;
    ssize_t n = readlink(link, name, cap - 1);
    name[n > 0 ? n : 0] = 0;
}

/* Removes the save folders that are not current: what a killed or failed save left. */
static void remove_stale_saves(const char *dir, const char *current) {
    DIR *d = opendir(dir);
    if (!d) return;
    char names[16][NAME_MAX + 1];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 16)
        if (!strncmp(e->d_name, SAVE_PREFIX, strlen(SAVE_PREFIX)) && strcmp(e->d_name, current))
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) remove_save(dir, names[i]);
}

/* Points PATH at TARGET with a symlink, atomically (a new link renamed over PATH). */
static int link_atomically(const char *target, const char *path, nvlm_err *err) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-link", path) >= (int)sizeof tmp)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "path too long: %s", path);
    unlink(tmp);
    if (symlink(target, tmp)) return nvlm_fail(err, NVLM_E_IO, "cannot create the link %s: %s", tmp, strerror(errno));
    if (rename(tmp, path)) {
        int rc = nvlm_fail(err, NVLM_E_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return rc;
    }
    return NVLM_OK;
}

/* Makes save folder NAME current: one rename of the .current link; then OUT's files are made
 * links into .current (already so after the first save) and OUT synced. */
static int commit_save(const char *dir, const char *name, int *committed, nvlm_err *err) {
    char path[PATH_MAX], target[PATH_MAX], have[PATH_MAX];
    int rc = snprintf(path, sizeof path, "%s/" CURRENT, dir) < (int)sizeof path
                 ? link_atomically(name, path, err)
                 : nvlm_fail(err, NVLM_E_INVALID_ARG, "output folder name too long: %s", dir);
    *committed = !rc;
    for (size_t i = 0; !rc && i < sizeof SAVE_FILES / sizeof *SAVE_FILES; i++) {
        snprintf(target, sizeof target, CURRENT "/%s", SAVE_FILES[i]);
        if (snprintf(path, sizeof path, "%s/%s", dir, SAVE_FILES[i]) >= (int)sizeof path)
            rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "output folder name too long: %s", dir);
        ssize_t n = rc ? -1 : readlink(path, have, sizeof have - 1);
        if (!rc && (n < 0 || (have[n] = 0, strcmp(have, target)))) rc = link_atomically(target, path, err);
    }
    /* a sharded index left from the source would shadow model.safetensors */
    if (!rc && snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) < (int)sizeof path) unlink(path);
    if (!rc) rc = fsync_dir(dir, err);
    return rc;
}

/* A save becomes current by one atomic rename, and only once it is whole: its three files
 * (the weights, trainer_state.safetensors, trainer_state.json) are written, flushed and
 * fsync'ed in a new folder OUT/.ckpt-stepN, that folder is synced, and then the link
 * OUT/.current is renamed to point at it. OUT/model.safetensors and the trainer state files
 * are links through .current, so loaders see the old save or the new one, never a mix. A
 * full disk, an error or a kill before that rename leaves the previous save current and
 * untouched (the unfinished folder is removed, now or by the next save). All three files
 * also carry the save's id, so a folder mixed by hand is refused by nvlm run and --resume.
 * Under mpirun, rank 0 writes; the others wait for its result (and fail with it). */
static int save_checkpoint(run *r, nvlm_err *err) {
    if (nvlm_dist_rank(r->o->dist) > 0) return nvlm_dist_agree(r->o->dist, NVLM_OK, err);
    const char *dir = r->o->out_dir;
    char id[64], name[96], sub[PATH_MAX], old[NAME_MAX + 1];
    snprintf(id, sizeof id, "step%lld-%016llx", (long long)r->cur.step, (unsigned long long)weights_hash(r));
    int rc = mkdir_p(dir, err);
    if (!rc && !nvlm_same_dir(r->src_dir, dir)) rc = nvlm_copy_side_files(r->src_dir, dir, err);
    current_save(dir, old, sizeof old);
    if (!rc) remove_stale_saves(dir, old);
    /* a new folder, never the current one (a Ctrl-C save may repeat the last step) */
    for (int k = 0; !rc; k++) {
        snprintf(name, sizeof name, SAVE_PREFIX "step%lld%s%.0d", (long long)r->cur.step, k ? "." : "", k);
        if (snprintf(sub, sizeof sub, "%s/%s", dir, name) >= (int)sizeof sub)
            rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "output folder name too long: %s", dir);
        else if (!mkdir(sub, 0777)) break;
        else if (errno != EEXIST || k > 99) rc = nvlm_fail(err, NVLM_E_IO, "cannot create %s: %s", sub, strerror(errno));
    }
    int made = !rc, committed = 0;
    if (!rc) rc = save_model(r, sub, id, err);
    if (!rc) rc = save_state(r, sub, id, err);
    if (!rc) rc = fsync_dir(sub, err);
    if (!rc) rc = commit_save(dir, name, &committed, err);
    if (committed && old[0] && strcmp(old, name)) remove_save(dir, old);
    if (!committed && made) remove_save(dir, name);
    if (rc) nvlm_fail_prefix(err, committed ? "saving a checkpoint in %s: " : "saving a checkpoint in %s (the previous save stays current): ", dir);
    return nvlm_dist_agree(r->o->dist, rc, err);
}

static int load_state(run *r, const char *dir, nvlm_err *err) {
    char *jpath = nvlm_path_join(dir, "trainer_state.json"), *spath = nvlm_path_join(dir, "trainer_state.safetensors");
    char *text = NULL;
    size_t len;
    nvlm_mapped_file mf = {0};
    nvlm_st *st = NULL;
    cJSON *j = NULL;
    int rc = jpath && spath ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    if (!rc) rc = nvlm_read_file(jpath, 0, &text, &len, err);
    if (!rc && !(j = cJSON_Parse(text))) rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: not JSON", jpath);
    if (!rc) {
        cJSON *step = cJSON_GetObjectItem(j, "step"), *as = cJSON_GetObjectItem(j, "adam_step");
        cJSON *rng = cJSON_GetObjectItem(j, "rng"), *ep = cJSON_GetObjectItem(j, "epoch"), *pos = cJSON_GetObjectItem(j, "pos");
        cJSON *te = cJSON_GetObjectItem(j, "text_epoch"), *tp = cJSON_GetObjectItem(j, "text_pos");
        if (!cJSON_IsNumber(step) || !cJSON_IsNumber(as) || !cJSON_IsString(rng) || !cJSON_IsNumber(ep) ||
            !cJSON_IsNumber(pos) || !cJSON_IsNumber(te) || !cJSON_IsNumber(tp))
            rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: missing or bad fields", jpath);
        else {
            r->cur.step = (int64_t)step->valuedouble;
            r->opt.step = (int64_t)as->valuedouble;
            r->cur.rng = strtoull(rng->valuestring, NULL, 10);
            r->cur.epoch = ep->valueint, r->cur.pos = pos->valueint;
            r->cur.tepoch = te->valueint, r->cur.tpos = tp->valueint;
            if (r->cur.pos < 0 || r->cur.pos >= r->data->n || r->cur.tpos < 0 || (r->text && r->cur.tpos >= r->text->n))
                rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: data position past the data (was the data changed?)", jpath);
        }
    }
    if (!rc) rc = nvlm_map_file(spath, &mf, err);
    if (!rc) rc = nvlm_st_parse_buffer(mf.data, mf.len, spath, &st, err);
    char name[200];
    for (int i = 0; i < r->tm->n_p && !rc; i++) {
        nvlm_tparam *p = &r->tm->p[i];
        if (!p->g) continue;
        float *dst[3] = {p->w, p->m, p->v};
        const char *suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};
        for (int k = 0; k < 3 && !rc; k++) {
            snprintf(name, sizeof name, "%s%s", p->name, suffix[k]);
            const nvlm_tensor *t = nvlm_st_find(st, name);
            if (!t || t->dtype != NVLM_DT_F32 || (size_t)t->numel != p->n)
                rc = nvlm_fail(err, NVLM_E_FORMAT, "%s: no float32 %s of %zu values (trainable set changed?)", spath,
                               name, p->n);
            else memcpy(dst[k], t->data, sizeof(float) * p->n);
        }
    }
    nvlm_st_close(st);
    nvlm_unmap_file(&mf);
    cJSON_Delete(j);
    free(text), free(jpath), free(spath);
    return rc;
}

/* ------------------------------------------------------------ steps */

static int prepare(run *r, nvlm_tdata *d, int i, nvlm_err *err) {
    return nvlm_tdata_prepare(d, r->m, i, r->o->max_tiles, err);
}

/* One sample through nvlm_train_seq. With a trained ViT (tm->n_v), its features are computed
 * from the cached tiles now, and the gradient of the features goes back through it. */
static int run_seq(run *r, nvlm_tdata *d, int i, int backward, double norm, nvlm_tresult *res, nvlm_err *err) {
    nvlm_tseq q;
    nvlm_tdata_seq(d, i, &q);
    if (!r->tm->n_v || !q.n_img) return nvlm_train_seq(r->tm, &q, backward, norm, res, err);
    const nvlm_tsample *s = &d->s[i];
    const size_t width = (size_t)4 * r->m->cfg.vision.hidden_size;
    float *z = malloc(sizeof(float) * (size_t)q.n_img * width);
    float *dz = backward ? calloc((size_t)q.n_img * width, sizeof(float)) : NULL;
    nvlm_tvit_acts *acts = NULL;
    int rc = z && (dz || !backward) ? NVLM_OK : nvlm_fail(err, NVLM_E_NOMEM, "out of memory for image features");
    if (!rc) rc = nvlm_tvit_forward(r->tm, s->px, s->n_tiles, z, &acts, err);
    q.img = z, q.dimg = dz;
    if (!rc) rc = nvlm_train_seq(r->tm, &q, backward, norm, res, err);
    if (!rc && backward) rc = nvlm_tvit_backward(r->tm, acts, dz, err);
    nvlm_tvit_acts_free(acts);
    free(z), free(dz);
    return rc;
}

static int evaluate(run *r, double *loss, double *acc, nvlm_err *err) {
    double sum = 0;
    long count = 0, exact = 0;
    for (int i = 0; i < r->eval->n; i++) {
        int rc = prepare(r, r->eval, i, err);
        nvlm_tresult res = {0};
        if (!rc) rc = run_seq(r, r->eval, i, 0, 1.0, &res, err);
        if (rc) return rc;
        sum += res.loss_sum;
        count += res.count;
        exact += res.count > 0 && res.correct == res.count;
    }
    *loss = count ? sum / count : 0;
    *acc = (double)exact / r->eval->n;
    return NVLM_OK;
}

static void emit(run *r, nvlm_train_report *rep) {
    const int ranks = nvlm_dist_size(r->o->dist);
    rep->peak_rss_mb = peak_rss_mb();
    if (r->log) {
        if (rep->event)
            fprintf(r->log, "{\"step\": %lld, \"event\": \"%s\", \"ranks\": %d}\n", (long long)rep->step, rep->event, ranks);
        else if (rep->eval)
            fprintf(r->log, "{\"step\": %lld, \"eval_loss\": %.6f, \"eval_acc\": %.4f, \"ranks\": %d}\n", (long long)rep->step,
                    rep->eval_loss, rep->eval_acc, ranks);
        else
            fprintf(r->log,
                    "{\"step\": %lld, \"epoch\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.4g, "
                    "\"tokens_per_s\": %.1f, \"samples_per_s\": %.3f, \"step_s\": %.4f, \"elapsed_s\": %.2f, "
                    "\"peak_rss_mb\": %ld, \"ranks\": %d}\n",
                    (long long)rep->step, rep->epoch, rep->loss, rep->lr, rep->grad_norm, rep->tokens_per_s,
                    rep->samples / fmax(rep->step_s, 1e-9), rep->step_s, rep->elapsed_s, rep->peak_rss_mb, ranks);
        fflush(r->log);
    }
    if (r->cb) r->cb(r->user, rep);
}

/* Data parallel: every rank draws the whole global batch (so the cursor, and a --resume, do not
 * depend on the number of ranks) and works on samples k = rank, rank + N, ...; the supervised
 * token count, loss and gradients are then summed over the ranks. */
static int train_step(run *r, double *loss, double *gnorm, double *lr, long *tokens, nvlm_err *err) {
    const int n = r->o->batch * r->o->grad_accum, P = nvlm_dist_size(r->o->dist), me = nvlm_dist_rank(r->o->dist);
    nvlm_tdata **ds = malloc(sizeof *ds * (size_t)n);
    int *idx = malloc(sizeof *idx * (size_t)n);
    if (!ds || !idx) {
        free(ds), free(idx);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    }
    int rc = NVLM_OK;
    long total = 0;
    for (int k = 0; k < n && !rc; k++) {
        next_sample(r, &ds[k], &idx[k]);
        if (k % P != me) continue;
        rc = prepare(r, ds[k], idx[k], err);
        if (!rc) {
            nvlm_tseq q;
            nvlm_tdata_seq(ds[k], idx[k], &q);
            total += nvlm_tseq_supervised(&q);
        }
    }
    rc = nvlm_dist_agree(r->o->dist, rc, err); /* a sample one rank could not read stops them all */
    double all = (double)total;
    if (!rc) nvlm_dist_sum_f64(r->o->dist, &all, 1);
    total = (long)all;
    /* the loss is the mean over every supervised token of the step (all micro-batches) */
    double sum = 0;
    *tokens = 0;
    nvlm_tmodel_zero_grad(r->tm);
    for (int k = 0; k < n && !rc && total > 0; k++) {
        if (k % P != me) continue;
        nvlm_tseq q;
        nvlm_tdata_seq(ds[k], idx[k], &q);
        nvlm_tresult res = {0};
        rc = run_seq(r, ds[k], idx[k], 1, (double)total, &res, err);
        sum += res.loss_sum;
        *tokens += q.n;
    }
    free(ds), free(idx);
    if ((rc = nvlm_dist_agree(r->o->dist, rc, err))) return rc;
    if (P > 1) {
        double s2[2] = {sum, (double)*tokens};
        nvlm_dist_sum_f64(r->o->dist, s2, 2);
        sum = s2[0], *tokens = (long)s2[1];
        for (int i = 0; i < r->tm->n_p; i++)
            if (r->tm->p[i].g) nvlm_dist_sum_f32(r->o->dist, r->tm->p[i].g, r->tm->p[i].n);
    }
    *loss = total ? sum / total : 0;
    *gnorm = nvlm_grad_norm(r->tm);
    if (r->o->clip > 0 && *gnorm > r->o->clip) nvlm_grad_scale(r->tm, (float)(r->o->clip / (*gnorm + 1e-6)));
    *lr = nvlm_lr_at(r->o->lr, r->cur.step, r->o->warmup, r->total, r->o->cosine);
    if (total > 0) nvlm_adamw_step(r->tm, &r->opt, *lr);
    r->cur.step++;
    return NVLM_OK;
}

static int check_opts(const nvlm_train_opts *o, nvlm_err *err) {
    if (!o->data || !o->out_dir || (!o->model_dir && !o->resume_dir))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "a model, data and an output folder are required");
    if (o->stage != 1 && o->stage != 2) return nvlm_fail(err, NVLM_E_INVALID_ARG, "stage must be 1 or 2");
    if (o->batch < 1 || o->grad_accum < 1) return nvlm_fail(err, NVLM_E_INVALID_ARG, "batch and grad-accum must be >= 1");
    if (o->steps < 0 || (o->steps == 0 && o->epochs < 1))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "give a positive number of steps or epochs");
    if (!(o->lr > 0) || o->weight_decay < 0 || o->clip < 0 || o->text_ratio < 0 || o->text_ratio >= 1)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "lr must be > 0, weight decay and clip >= 0, text ratio in [0, 1)");
    if (o->text_ratio > 0 && !o->text_data)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "--text-ratio needs --text-data");
    return NVLM_OK;
}

static void run_free(run *r) {
    nvlm_tmodel_free(r->tm);
    nvlm_tdata_free(r->data), nvlm_tdata_free(r->text), nvlm_tdata_free(r->eval);
    free(r->perm), free(r->tperm);
    if (r->log) fclose(r->log);
    nvlm_model_free(r->m);
}

static int setup(run *r, const nvlm_train_opts *o, nvlm_err *err) {
    r->src_dir = o->resume_dir ? o->resume_dir : o->model_dir;
    nvlm_load_options lo = {.n_threads = o->threads, .compute = o->compute};
    int rc = nvlm_model_load(r->src_dir, &lo, &r->m, err);
    nvlm_train_select sel = {o->stage, o->trainable, o->decay_all};
    if (!rc) rc = nvlm_tmodel_new(r->m, &sel, &r->tm, err);
    if (!rc) r->tm->recompute = o->recompute;
    if (!rc) rc = nvlm_tdata_load(o->data, &r->data, err);
    if (!rc && o->text_data) rc = nvlm_tdata_load(o->text_data, &r->text, err);
    if (!rc && o->eval_data) rc = nvlm_tdata_load(o->eval_data, &r->eval, err);
    if (rc) return rc;
    r->data->pixels = r->tm->n_v > 0; /* a trained ViT runs on the cached tiles every step */
    if (r->text) r->text->pixels = r->data->pixels;
    if (r->eval) r->eval->pixels = r->data->pixels;
    r->perm = malloc(sizeof(int) * (size_t)r->data->n);
    r->tperm = r->text ? malloc(sizeof(int) * (size_t)r->text->n) : NULL;
    if (!r->perm || (r->text && !r->tperm)) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    r->perm_epoch = r->tperm_epoch = -1;
    r->cur.rng = o->seed ^ 0x5DEECE66Dull;
    r->opt = (nvlm_adamw){o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, 0};
    int per_step = o->batch * o->grad_accum;
    double main_per_step = per_step * (r->text ? 1.0 - o->text_ratio : 1.0);
    r->total = o->steps > 0 ? o->steps : (int64_t)ceil((double)o->epochs * r->data->n / main_per_step);
    if (o->resume_dir && (rc = load_state(r, o->resume_dir, err))) return rc;
    if (nvlm_dist_rank(o->dist) > 0) return NVLM_OK; /* rank 0 writes the log and the checkpoints */
    if ((rc = mkdir_p(o->out_dir, err))) return rc;
    char *lp = o->log_path ? strdup(o->log_path) : nvlm_path_join(o->out_dir, "train_log.jsonl");
    if (!lp) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    r->log = fopen(lp, o->resume_dir ? "a" : "w");
    rc = r->log ? NVLM_OK : nvlm_fail(err, NVLM_E_IO, "cannot write %s: %s", lp, strerror(errno));
    free(lp);
    return rc;
}

int nvlm_train_run(const nvlm_train_opts *o, nvlm_train_cb cb, void *user, nvlm_err *err) {
    int rc = check_opts(o, err);
    if (rc) return rc;
    run r = {0};
    r.o = o, r.cb = cb, r.user = user;
    rc = setup(&r, o, err);
    rc = nvlm_dist_agree(o->dist, rc, err);
    double t0 = now_s(), t_last = t0;
    int64_t first = r.cur.step;
    if (!rc && o->resume_dir) {
        nvlm_train_report rep = {.step = r.cur.step, .total_steps = r.total, .event = "resumed", .path = o->resume_dir};
        emit(&r, &rep);
    }
    int done = 0;
    while (!rc && !done) {
        if (o->steps > 0 ? r.cur.step >= o->steps : r.cur.epoch >= o->epochs) break;
        if (nvlm_dist_any(o->dist, o->stop && *o->stop)) {
            rc = save_checkpoint(&r, err);
            nvlm_train_report rep = {.step = r.cur.step, .total_steps = r.total, .event = "interrupted", .path = o->out_dir};
            if (!rc) emit(&r, &rep);
            if (!rc) rc = nvlm_fail(err, NVLM_E_CANCELLED, "interrupted at step %lld; checkpoint saved in %s",
                                    (long long)r.cur.step, o->out_dir);
            break;
        }
        double loss = 0, gnorm = 0, lr = 0;
        long tokens = 0;
        int n_samples = o->batch * o->grad_accum;
        rc = train_step(&r, &loss, &gnorm, &lr, &tokens, err);
        if (rc) break;
        double t = now_s();
        nvlm_train_report rep = {.step = r.cur.step, .total_steps = r.total, .epoch = r.cur.epoch, .loss = loss,
                                 .lr = lr, .grad_norm = gnorm, .tokens_per_s = tokens / fmax(t - t_last, 1e-9),
                                 .elapsed_s = t - t0, .step_s = t - t_last, .samples = n_samples};
        rep.eta_s = (t - t0) / (double)(r.cur.step - first) * (double)(r.total - r.cur.step);
        t_last = t;
        emit(&r, &rep);
        int last = o->steps > 0 ? r.cur.step >= o->steps : r.cur.epoch >= o->epochs;
        if (r.eval && ((o->eval_every > 0 && r.cur.step % o->eval_every == 0) || last)) {
            nvlm_train_report ev = {.step = r.cur.step, .total_steps = r.total, .eval = 1};
            rc = evaluate(&r, &ev.eval_loss, &ev.eval_acc, err);
            if (!rc) emit(&r, &ev);
        }
        if (!rc && o->save_every > 0 && r.cur.step % o->save_every == 0 && !last) {
            rc = save_checkpoint(&r, err);
            nvlm_train_report sv = {.step = r.cur.step, .total_steps = r.total, .event = "saved", .path = o->out_dir};
            if (!rc) emit(&r, &sv);
        }
        done = last;
        t_last = now_s(); /* evaluation and saving are not part of the next step's time */
    }
    if (!rc) {
        rc = save_checkpoint(&r, err);
        nvlm_train_report sv = {.step = r.cur.step, .total_steps = r.total, .event = "saved", .path = o->out_dir};
        if (!rc) emit(&r, &sv);
    }
    run_free(&r);
    return rc;
}
