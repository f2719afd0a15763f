/* batch.c - tiles of several images in one go, on one or more threads.
 *
 * An image's tiling is cut into BANDS bands of output rows (tile_fill's parts); threads
 * claim bands in order from a shared counter, so the work spreads without any thread
 * waiting for a fixed share, and the bytes are the same whoever makes which band.
 * nvlm_images_load_tile also overlaps decoding and resizing: while the calling thread
 * decodes, a worker claims bands and resizes the rows the decoder has finished (the JPEG
 * and PNG decoders report rows as they go, img_ctl.rows_done); once the decode is done the
 * calling thread claims the bands that are left. */
#include "image/decode.h"
#include "image/tile.h"
#include "core/err.h"
#include "core/file.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BANDS 8

/* One image being tiled by one or more threads. */
typedef struct tile_work {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    nvlm_image img;  /* the source: known once `known` */
    int known;       /* img is set (the decoder has allocated it) */
    int rows;        /* source rows that are final */
    int abandoned;   /* the decode failed: the source goes away */
    int readers;     /* threads reading img.rgb now */
    int next_band;   /* the next band nobody has claimed */
    tile_plan plan;
    int planned;     /* plan and tiles are set (by the first thread to see img) */
    uint8_t *tiles;
    int rc;          /* first failure of any band */
    nvlm_err err;
} tile_work;

static void work_init(tile_work *w) {
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

static void work_destroy(tile_work *w) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

/* img_ctl.rows_done: the decoder's progress. On -1 it waits for the readers to leave. */
static void on_rows(void *user, const nvlm_image *img, int rows) {
    tile_work *w = user;
    pthread_mutex_lock(&w->mu);
    if (rows == 0) {
        w->img = *img; /* by value: the decoder's struct is its own local */
        w->known = 1;
    } else if (rows > 0) {
        w->rows = rows;
    } else {
        w->abandoned = 1;
        pthread_cond_broadcast(&w->cv);
        while (w->readers > 0) pthread_cond_wait(&w->cv, &w->mu);
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* rs_opts.wait_rows: blocks until the decoder has finished that many rows. */
static int wait_rows(void *user, int rows) {
    tile_work *w = user;
    pthread_mutex_lock(&w->mu);
    while (w->rows < rows && !w->abandoned) pthread_cond_wait(&w->cv, &w->mu);
    int stop = w->abandoned;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

/* Claims and makes bands until none is left (or one failed). Called with w->mu held and
 * the source known; returns with it held. */
static void run_bands(tile_work *w, const nvlm_tile_opts *o) {
    if (!w->planned) {
        w->planned = 1;
        w->rc = tile_plan_make(w->img.width, w->img.height, o->tile_size, o->min_num, o->max_num,
                               !o->no_thumbnail, &w->plan, &w->err);
        if (w->rc == NVLM_OK) {
            size_t tb = (size_t)o->tile_size * (size_t)o->tile_size * 3;
            w->tiles = malloc(tb * (size_t)w->plan.n);
            if (!w->tiles)
                w->rc = nvlm_fail(&w->err, NVLM_E_NOMEM, "out of memory for %d tiles", w->plan.n);
        }
    }
    w->readers++;
    while (w->rc == NVLM_OK && !w->abandoned && w->next_band < BANDS) {
        int band = w->next_band++;
        nvlm_image src = w->img;
        pthread_mutex_unlock(&w->mu);
        nvlm_err e = {0, ""};
        int rc = tile_fill(src.rgb, src.width, src.height, &w->plan, w->tiles, band, BANDS,
                           wait_rows, w, &e);
        pthread_mutex_lock(&w->mu);
        if (rc != NVLM_OK && w->rc == NVLM_OK) {
            w->rc = rc;
            w->err = e;
        }
    }
    w->readers--;
    pthread_cond_broadcast(&w->cv);
}

typedef struct worker_arg {
    tile_work *w;
    const nvlm_tile_opts *o;
} worker_arg;

/* A helper thread: waits for the source, then makes bands. */
static void *worker_main(void *p) {
    worker_arg *a = p;
    tile_work *w = a->w;
    pthread_mutex_lock(&w->mu);
    while (!w->known && !w->abandoned) pthread_cond_wait(&w->cv, &w->mu);
    if (w->known && !w->abandoned) run_bands(w, a->o);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Starts up to n-1 helpers; returns how many started (none is not an error: the calling
 * thread then does all the bands). */
static int start_helpers(pthread_t *tid, worker_arg *a, int n) {
    int k = 0;
    for (; k < n - 1; k++)
        if (pthread_create(&tid[k], NULL, worker_main, a) != 0) break;
    return k;
}

static void join_helpers(pthread_t *tid, int k) {
    for (int i = 0; i < k; i++) pthread_join(tid[i], NULL);
}

static nvlm_tile_opts fill_defaults(const nvlm_tile_opts *opts) {
    nvlm_tile_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts;
    if (o.tile_size == 0) o.tile_size = 448;
    if (o.min_num == 0) o.min_num = 1;
    if (o.max_num == 0) o.max_num = 6;
    if (o.threads < 1) o.threads = 1;
    if (o.threads > 64) o.threads = 64;
    return o;
}

/* Tiles one image (decoded already when path is NULL, else decoded here). On success the
 * tiles are in *tiles and the plan in *plan. */
static int tile_one(const nvlm_image *img, const char *path, const nvlm_tile_opts *o,
                    tile_plan *plan, uint8_t **tiles, nvlm_err *err) {
    tile_work w;
    work_init(&w);
    worker_arg a = {&w, o};
    pthread_t tid[64];
    int rc = NVLM_OK, nh = 0;
    nvlm_image own = {0, 0, NULL};
    if (img) { /* the whole source is there */
        if (!img->rgb || img->width <= 0 || img->height <= 0) {
            work_destroy(&w);
            return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_tile: empty image");
        }
        w.img = *img;
        w.known = 1;
        w.rows = img->height;
    }
    nh = start_helpers(tid, &a, o->threads);
    if (!img) {
        nvlm_mapped_file f;
        rc = nvlm_map_file(path, &f, err);
        if (rc == NVLM_OK) {
            img_ctl ctl;
            memset(&ctl, 0, sizeof ctl);
            ctl.max_pixels = o->limits.max_pixels;
            if (nh > 0) { /* someone resizes while this thread decodes */
                ctl.rows_done = on_rows;
                ctl.user = &w;
            }
            rc = img_decode_buf(f.data, f.len, &ctl, &own, err);
            nvlm_unmap_file(&f);
        }
        if (rc != NVLM_OK) nvlm_fail_prefix(err, "%s: ", path);
        pthread_mutex_lock(&w.mu);
        if (rc == NVLM_OK) {
            w.img = own;
            w.known = 1;
            w.rows = own.height;
        } else {
            w.abandoned = 1;
        }
        pthread_cond_broadcast(&w.cv);
        pthread_mutex_unlock(&w.mu);
    }
    if (rc == NVLM_OK) {
        pthread_mutex_lock(&w.mu);
        run_bands(&w, o);
        pthread_mutex_unlock(&w.mu);
    }
    join_helpers(tid, nh);
    if (rc == NVLM_OK && w.rc != NVLM_OK) {
        rc = w.rc;
        *err = w.err;
        if (path) nvlm_fail_prefix(err, "%s: ", path);
    }
    if (rc == NVLM_OK) {
        *plan = w.plan;
        *tiles = w.tiles;
    } else {
        free(w.tiles);
    }
    nvlm_image_free(&own);
    work_destroy(&w);
    return rc;
}

void nvlm_tile_batch_free(nvlm_tile_batch *b) {
    if (!b) return;
    free(b->images);
    free(b->first_tile);
    free(b->rgb);
    memset(b, 0, sizeof *b);
}

/* The common driver: image i is imgs[i] or the file paths[i]. */
static int tile_all(const nvlm_image *imgs, const char *const *paths, int n,
                    const nvlm_tile_opts *opts, nvlm_tile_batch *out, nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_tile: out is NULL");
    memset(out, 0, sizeof *out);
    if (n <= 0 || (!imgs && !paths))
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_tile: no images");
    nvlm_tile_opts o = fill_defaults(opts);
    tile_plan *plans = calloc((size_t)n, sizeof *plans);
    uint8_t **tiles = calloc((size_t)n, sizeof *tiles);
    out->images = calloc((size_t)n, sizeof *out->images);
    out->first_tile = calloc((size_t)n, sizeof *out->first_tile);
    int rc = NVLM_OK;
    if (!plans || !tiles || !out->images || !out->first_tile)
        rc = nvlm_fail(err, NVLM_E_NOMEM, "nvlm_images_tile: out of memory");
    for (int i = 0; i < n && rc == NVLM_OK; i++) {
        if (paths && !paths[i]) {
            rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_load_tile: path %d is NULL", i);
            break;
        }
        rc = tile_one(imgs ? &imgs[i] : NULL, paths ? paths[i] : NULL, &o, &plans[i], &tiles[i], err);
        if (rc == NVLM_OK && out->total_tiles > 0x7fffffff - plans[i].n)
            rc = nvlm_fail(err, NVLM_E_LIMIT, "nvlm_images_tile: too many tiles");
        if (rc == NVLM_OK) {
            out->first_tile[i] = out->total_tiles;
            out->total_tiles += plans[i].n;
        }
    }
    size_t tb = (size_t)o.tile_size * (size_t)o.tile_size * 3;
    if (rc == NVLM_OK) {
        if (n == 1) { /* one image: its buffer is the batch's */
            out->rgb = tiles[0];
            tiles[0] = NULL;
        } else if (!(out->rgb = malloc(tb * (size_t)out->total_tiles))) {
            rc = nvlm_fail(err, NVLM_E_NOMEM, "nvlm_images_tile: out of memory for %d tiles",
                           out->total_tiles);
        }
    }
    for (int i = 0; i < n && rc == NVLM_OK; i++) {
        uint8_t *dst = out->rgb + tb * (size_t)out->first_tile[i];
        if (tiles[i]) memcpy(dst, tiles[i], tb * (size_t)plans[i].n);
        nvlm_tiles *t = &out->images[i];
        t->cols = plans[i].cols;
        t->rows = plans[i].rows;
        t->num_tiles = plans[i].n;
        t->thumbnail = plans[i].thumb;
        t->size = o.tile_size;
        t->rgb = dst;
    }
    for (int i = 0; i < n && tiles; i++) free(tiles[i]);
    free(tiles);
    free(plans);
    if (rc != NVLM_OK) {
        nvlm_tile_batch_free(out);
        return rc;
    }
    out->n_images = n;
    out->size = o.tile_size;
    return NVLM_OK;
}

int nvlm_images_tile(const nvlm_image *imgs, int n_images, const nvlm_tile_opts *opts,
                     nvlm_tile_batch *out, nvlm_err *err) {
    if (!imgs) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_tile: imgs is NULL");
    return tile_all(imgs, NULL, n_images, opts, out, err);
}

int nvlm_images_load_tile(const char *const *paths, int n_images, const nvlm_tile_opts *opts,
                          nvlm_tile_batch *out, nvlm_err *err) {
    if (!paths) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_images_load_tile: paths is NULL");
    return tile_all(NULL, paths, n_images, opts, out, err);
}
