/* nvlm mkdata - synthetic training data that nvlm draws itself (no downloads), in the JSONL
 * format `nvlm train` reads. `shapes`: one filled circle, square or triangle of one colour
 * on a white background, 64..1024 px on either side, any aspect ratio, anywhere in the
 * picture, at least a quarter of the shorter side; each image is asked "What colour is the
 * shape?" and "What shape is it?", answered with one lowercase word. This is the demo
 * model's data (scripts/demo-train.sh, docs/demo.md).
 *
 * The draws vary what a question's answer must not depend on (size, aspect, position, exact
 * hue, anti-aliasing, triangle form and rotation, a slightly grey background) so that a
 * model trained on them answers pictures drawn by other programs too. */
#include "cli.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { N_SHAPES = 3, N_COLOURS = 5, MAX_VERTS = 4 };
static const char *const shape_names[N_SHAPES] = {"circle", "square", "triangle"};

/* Each colour's range of RGB values (inclusive), wide enough to cover the usual "pure"
 * values of drawing programs (green as 0,128,0 and as 0,255,0) and jitter around them. */
static const struct colour {
    const char *name;
    uint8_t lo[3], hi[3];
} colours[N_COLOURS] = {
    {"red", {190, 0, 0}, {255, 60, 60}},
    {"green", {0, 110, 0}, {60, 255, 80}},
    {"blue", {0, 0, 170}, {40, 90, 255}},
    {"yellow", {215, 195, 0}, {255, 255, 70}},
    {"black", {0, 0, 0}, {50, 50, 50}},
};

/* The two questions, asked of every image; answer k of image i is answers[k]. */
static const char *const questions[2] = {"What colour is the shape?", "What shape is it?"};

typedef struct rng {
    uint64_t s;
} rng;

/* splitmix64: tiny, good enough, and the same numbers everywhere. */
static uint64_t next_u64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(rng *r) { return (double)(next_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
static int below(rng *r, int n) { return (int)(uniform(r) * n); }
static int between(rng *r, int lo, int hi) { return lo + below(r, hi - lo + 1); }

typedef struct shape_opts {
    int n;
    uint64_t seed;
    int min_side, max_side;
    int width, height;  /* > 0: fixed */
    int shape, colour;  /* >= 0: fixed */
    const char *out_dir, *prefix;
} shape_opts;

/* One drawn picture: pixels and what is in it. */
typedef struct picture {
    int w, h, shape, colour;
    uint8_t *rgb;
} picture;

/* A convex polygon (vertices in the order of positive signed area) or a circle. */
typedef struct figure {
    int n_verts;             /* 0: circle */
    double vx[MAX_VERTS], vy[MAX_VERTS];
    double cx, cy, r;
} figure;

/* Signed distance in pixels from (x, y) to the figure's edge, negative inside (exact for the
 * circle; for a polygon the largest distance to an edge's line, exact near the edges). */
static double signed_dist(const figure *f, double x, double y) {
    if (!f->n_verts) return hypot(x - f->cx, y - f->cy) - f->r;
    double d = -1e30;
    for (int i = 0; i < f->n_verts; i++) {
        int j = (i + 1) % f->n_verts;
        double ex = f->vx[j] - f->vx[i], ey = f->vy[j] - f->vy[i], len = hypot(ex, ey);
        double e = ((x - f->vx[i]) * ey - (y - f->vy[i]) * ex) / len; /* > 0: outside this edge */
        if (e > d) d = e;
    }
    return d;
}

/* The unit outline of a shape (before scaling), rotated by angle: a square, or one of three
 * triangle forms (equilateral, tall isosceles, right-angled). */
static void outline(rng *r, int shape, figure *f) {
    static const double tri[3][6] = {
        {0, 0.866, 0.5, 0, 1, 0.866}, {0, 1, 0.5, 0, 1, 1}, {0, 1, 0, 0, 1, 1},
    };
    static const double sq[8] = {0, 0, 0, 1, 1, 1, 1, 0};
    const double *v = shape == 1 ? sq : tri[below(r, 3)];
    f->n_verts = shape == 1 ? 4 : 3;
    /* squares upright; triangles mostly upright (as drawing programs draw them), some pointing
     * down or sideways, a few turned at random */
    double a = 0, u = uniform(r);
    if (shape == 2) a = u < 0.7 ? 0 : u < 0.8 ? M_PI : u < 0.9 ? M_PI / 2 * (below(r, 2) ? 1 : -1) : uniform(r) * 2 * M_PI;
    double c = cos(a), s = sin(a);
    for (int i = 0; i < f->n_verts; i++) {
        double x = v[2 * i] - 0.5, y = v[2 * i + 1] - 0.5;
        f->vx[i] = c * x - s * y, f->vy[i] = s * x + c * y;
    }
    /* the order signed_dist expects (inside = negative on every edge): a positive signed area */
    double area = 0;
    for (int i = 0; i < f->n_verts; i++) {
        int j = (i + 1) % f->n_verts;
        area += f->vx[i] * f->vy[j] - f->vx[j] * f->vy[i];
    }
    if (area < 0)
        for (int i = 0, j = f->n_verts - 1; i < j; i++, j--) {
            double tx = f->vx[i], ty = f->vy[i];
            f->vx[i] = f->vx[j], f->vy[i] = f->vy[j], f->vx[j] = tx, f->vy[j] = ty;
        }
}

/* Places the figure: its larger bounding-box side is size px, at a random spot inside w x h. */
static void place(rng *r, figure *f, double size, int w, int h) {
    if (!f->n_verts) {
        f->r = size / 2;
        f->cx = f->r + uniform(r) * (w - size), f->cy = f->r + uniform(r) * (h - size);
        return;
    }
    double x0 = 1e9, x1 = -1e9, y0 = 1e9, y1 = -1e9;
    for (int i = 0; i < f->n_verts; i++) {
        x0 = fmin(x0, f->vx[i]), x1 = fmax(x1, f->vx[i]), y0 = fmin(y0, f->vy[i]), y1 = fmax(y1, f->vy[i]);
    }
    double k = size / fmax(x1 - x0, y1 - y0), bw = k * (x1 - x0), bh = k * (y1 - y0);
    double ox = uniform(r) * (w - bw), oy = uniform(r) * (h - bh);
    for (int i = 0; i < f->n_verts; i++) f->vx[i] = ox + k * (f->vx[i] - x0), f->vy[i] = oy + k * (f->vy[i] - y0);
}

/* The pixels [x0, x1) x [y0, y1) that can be touched by the figure, clipped to the picture. */
static void figure_box(const figure *f, int w, int h, int *x0, int *x1, int *y0, int *y1) {
    double a = f->n_verts ? 1e30 : f->cx - f->r, b = f->n_verts ? -1e30 : f->cx + f->r;
    double c = f->n_verts ? 1e30 : f->cy - f->r, d = f->n_verts ? -1e30 : f->cy + f->r;
    for (int i = 0; i < f->n_verts; i++)
        a = fmin(a, f->vx[i]), b = fmax(b, f->vx[i]), c = fmin(c, f->vy[i]), d = fmax(d, f->vy[i]);
    *x0 = (int)fmax(0, floor(a) - 2), *x1 = (int)fmin(w, ceil(b) + 2);
    *y0 = (int)fmax(0, floor(c) - 2), *y1 = (int)fmin(h, ceil(d) + 2);
}

/* Side lengths: log-uniform, so small and large pictures and every aspect ratio are common. */
static int side(rng *r, const shape_opts *o) {
    return (int)lround(exp(log(o->min_side) + uniform(r) * (log(o->max_side) - log(o->min_side))));
}

static int draw(rng *r, const shape_opts *o, picture *p) {
    p->w = o->width > 0 ? o->width : side(r, o);
    p->h = o->height > 0 ? o->height : side(r, o);
    p->shape = o->shape >= 0 ? o->shape : below(r, N_SHAPES);
    p->colour = o->colour >= 0 ? o->colour : below(r, N_COLOURS);
    p->rgb = malloc((size_t)p->w * p->h * 3);
    if (!p->rgb) return -1;
    const struct colour *c = &colours[p->colour];
    uint8_t ink[3], bg = uniform(r) < 0.7 ? 255 : (uint8_t)between(r, 235, 255);
    int grey = between(r, c->lo[0], c->hi[0]);
    for (int k = 0; k < 3; k++) ink[k] = p->colour == 4 ? (uint8_t)grey : (uint8_t)between(r, c->lo[k], c->hi[k]);
    int smooth = uniform(r) < 0.5; /* anti-aliased edges or hard ones */
    int shorter = p->w < p->h ? p->w : p->h;
    double size = shorter * (0.25 + 0.75 * uniform(r));
    if (size < shorter / 4.0) size = shorter / 4.0;
    figure f = {0};
    if (p->shape) outline(r, p->shape, &f);
    place(r, &f, size, p->w, p->h);
    memset(p->rgb, bg, (size_t)p->w * p->h * 3);
    /* only the figure's box (and a pixel around it for the soft edge) differs from the background */
    int x0, x1, y0, y1;
    figure_box(&f, p->w, p->h, &x0, &x1, &y0, &y1);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            double d = signed_dist(&f, x + 0.5, y + 0.5);
            double a = smooth ? fmin(1, fmax(0, 0.5 - d)) : d <= 0;
            uint8_t *px = p->rgb + ((size_t)y * p->w + x) * 3;
            for (int k = 0; k < 3; k++) px[k] = (uint8_t)lround(bg + a * (ink[k] - bg));
        }
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: nvlm mkdata shapes --out DIR --n N [options]\n\n"
            "Draws N pictures of one filled circle, square or triangle (red, green, blue, yellow or\n"
            "black) on white, and writes DIR/PREFIX_00000.png ... and DIR/PREFIX.jsonl: two training\n"
            "conversations per picture, \"What colour is the shape?\" and \"What shape is it?\",\n"
            "answered with one lowercase word (the format `nvlm train` reads). The same seed gives\n"
            "the same bytes.\n\n"
            "  --out DIR            output folder (created if missing)\n"
            "  --n N                pictures (1..1000000)\n"
            "  --seed N             random seed (default 1)\n"
            "  --prefix NAME        file names (default shapes)\n"
            "  --min-side N         smallest picture side in px (default 64)\n"
            "  --max-side N         largest picture side in px (default 1024)\n"
            "  --width N --height N fixed picture size\n"
            "  --shape NAME         only circles, squares or triangles\n"
            "  --colour NAME        only one colour\n");
}

static int lookup(const char *v, const char *const *names, size_t stride, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(v, *(const char *const *)((const char *)names + i * stride))) return i;
    return -1;
}

static int parse(int argc, char **argv, shape_opts *o) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        }
        if (!v) return cli_usage_error("mkdata", "%s needs a value", a);
        i++;
        if (!strcmp(a, "--out")) o->out_dir = v;
        else if (!strcmp(a, "--prefix")) o->prefix = v;
#define INT(flag, field, lo, hi)                                                                    \
    else if (!strcmp(a, flag)) {                                                                    \
        if (cli_parse_int(v, lo, hi, &n)) return cli_usage_error("mkdata", "%s needs an integer in [%ld, %ld]", a, (long)(lo), (long)(hi)); \
        o->field = n;                                                                               \
    }
        INT("--n", n, 1, 1000000) INT("--seed", seed, 0, 0x7fffffffffffffffL) INT("--min-side", min_side, 64, 1024)
        INT("--max-side", max_side, 64, 1024) INT("--width", width, 64, 1024) INT("--height", height, 64, 1024)
#undef INT
        else if (!strcmp(a, "--shape")) {
            if ((o->shape = lookup(v, shape_names, sizeof *shape_names, N_SHAPES)) < 0)
                return cli_usage_error("mkdata", "--shape is circle, square or triangle");
        } else if (!strcmp(a, "--colour") || !strcmp(a, "--color")) {
            if ((o->colour = lookup(v, &colours[0].name, sizeof *colours, N_COLOURS)) < 0)
                return cli_usage_error("mkdata", "--colour is red, green, blue, yellow or black");
        } else return cli_usage_error("mkdata", "unknown option %s", a);
    }
    if (!o->out_dir || !o->n) return cli_usage_error("mkdata", "--out DIR and --n N are required");
    if (o->min_side > o->max_side) return cli_usage_error("mkdata", "--min-side is larger than --max-side");
    if (strchr(o->prefix, '/') || strchr(o->prefix, '"') || strchr(o->prefix, '\\') || !*o->prefix)
        return cli_usage_error("mkdata", "--prefix is a plain file name (no '/', '\"' or '\\')");
    return 0;
}

/* Prints "nvlm mkdata: <message>" on stderr; returns 1 (the exit status). */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("nvlm mkdata: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int make_shapes(const shape_opts *o) {
    if (mkdir(o->out_dir, 0777) && errno != EEXIST) return fail("cannot create %s: %s", o->out_dir, strerror(errno));
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.jsonl", o->out_dir, o->prefix);
    FILE *jl = fopen(path, "w");
    if (!jl) return fail("cannot write %s: %s", path, strerror(errno));
    rng r = {o->seed * 0x2545f4914f6cdd1dull + 1};
    int rc = 0;
    for (int i = 0; i < o->n && !rc; i++) {
        picture p = {0};
        char name[600];
        snprintf(name, sizeof name, "%s_%05d.png", o->prefix, i);
        snprintf(path, sizeof path, "%s/%s", o->out_dir, name);
        if (draw(&r, o, &p)) rc = fail("out of memory for a %dx%d picture", p.w, p.h);
        else if (cli_write_png(path, p.rgb, p.w, p.h)) rc = fail("cannot write %s", path);
        free(p.rgb);
        const char *answers[2] = {colours[p.colour].name, shape_names[p.shape]};
        for (int k = 0; k < 2 && !rc; k++)
            fprintf(jl, "{\"image\": \"%s\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\n%s\"}, "
                        "{\"from\": \"gpt\", \"value\": \"%s\"}]}\n", name, questions[k], answers[k]);
    }
    if (fclose(jl) && !rc) rc = fail("cannot write %s/%s.jsonl", o->out_dir, o->prefix);
    if (!rc) fprintf(stderr, "nvlm mkdata: %d pictures and %d conversations in %s/%s.jsonl\n", o->n, 2 * o->n, o->out_dir, o->prefix);
    return rc;
}

int cmd_mkdata(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "shapes"))
        return cli_usage_error("mkdata", "the data set is the first argument; the one there is: shapes");
    shape_opts o = {.seed = 1, .min_side = 64, .max_side = 1024, .shape = -1, .colour = -1, .prefix = "shapes"};
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    return make_shapes(&o);
}
