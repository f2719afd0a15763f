/* nvlm plot: loss curves of one or several `nvlm train` JSONL logs on one SVG chart
 * (training loss solid, eval loss dashed, one colour per log) and, when the logs have
 * evaluations, their exact-match accuracy on a second chart beside it. A log given as
 * LABEL=FILE is named LABEL in the legend. */
#include "cli.h"
#include "core/file.h"
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct series {
    double *x, *y;
    int n, cap;
} series;

static int fopen_ok(const char *path) {
    FILE *f = nvlm_fopen_regular(path, NULL);
    if (f) fclose(f);
    return f != NULL;
}

static int push(series *s, double x, double y) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, sizeof *nx * (size_t)cap);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, sizeof *ny * (size_t)cap);
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x, s->y[s->n++] = y;
    return 0;
}

static int read_log(const char *path, series *train, series *eval, series *acc) {
    FILE *f = nvlm_fopen_regular(path, NULL);
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (getline(&line, &cap, f) > 0 && !rc) {
        cJSON *j = cJSON_Parse(line);
        cJSON *st = cJSON_GetObjectItem(j, "step"), *l = cJSON_GetObjectItem(j, "loss"), *e = cJSON_GetObjectItem(j, "eval_loss");
        cJSON *a = cJSON_GetObjectItem(j, "eval_acc");
        if (cJSON_IsNumber(st) && cJSON_IsNumber(a)) rc = push(acc, st->valuedouble, a->valuedouble);
        if (cJSON_IsNumber(st) && cJSON_IsNumber(l)) rc = push(train, st->valuedouble, l->valuedouble);
        if (cJSON_IsNumber(st) && cJSON_IsNumber(e)) rc = push(eval, st->valuedouble, e->valuedouble);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return rc;
}

enum { PANEL_W = 460 };

static void polyline(FILE *o, const series *s, const char *colour, int dashed, double px, double x0, double x1,
                     double y0, double y1) {
    if (!s->n) return;
    fprintf(o, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", colour,
            dashed ? " stroke-dasharray=\"5,3\"" : "");
    for (int i = 0; i < s->n; i++)
        fprintf(o, "%.1f,%.1f ", px + (s->x[i] - x0) / (x1 - x0) * PANEL_W, 330 - (s->y[i] - y0) / (y1 - y0) * 300);
    fprintf(o, "\"/>\n");
}

/* Frame, tick labels and title of a chart whose left edge is at px. */
static void panel(FILE *o, double px, double x0, double x1, double y0, double y1, const char *title) {
    fprintf(o, "<rect x=\"%.0f\" y=\"30\" width=\"%d\" height=\"300\" fill=\"none\" stroke=\"#888\"/>\n", px, PANEL_W);
    for (int t = 0; t <= 4; t++) {
        double yv = y0 + (y1 - y0) * t / 4, xv = x0 + (x1 - x0) * t / 4;
        fprintf(o, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", px - 5, 334 - 75.0 * t, yv);
        fprintf(o, "<text x=\"%.1f\" y=\"348\" text-anchor=\"middle\">%.0f</text>\n", px + PANEL_W / 4.0 * t, xv);
    }
    fprintf(o, "<text x=\"%.0f\" y=\"370\" text-anchor=\"middle\">step</text>\n"
               "<text x=\"%.0f\" y=\"20\" text-anchor=\"middle\">%s</text>\n", px + PANEL_W / 2.0,
            px + PANEL_W / 2.0, title);
}

int cmd_plot(int argc, char **argv) {
    const char *out = NULL;
    int n_logs = 0;
    const char **logs = calloc((size_t)argc, sizeof *logs);
    if (!logs) return 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: nvlm plot [LABEL=]LOG.jsonl... [-o FILE.svg]\nLoss curves of train logs (eval loss dashed) "
                   "and, when they have evaluations, exact-match accuracy beside them.\n");
            free(logs);
            return 0;
        }
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
            if (i + 1 >= argc) {
                free(logs);
                return cli_usage_error("plot", "%s needs a file", argv[i]);
            }
            out = argv[++i];
        } else logs[n_logs++] = argv[i];
    }
    if (!n_logs) {
        free(logs);
        return cli_usage_error("plot", "give at least one log (nvlm plot --help)");
    }
    series *tr = calloc((size_t)n_logs, sizeof *tr), *ev = calloc((size_t)n_logs, sizeof *ev);
    series *ac = calloc((size_t)n_logs, sizeof *ac);
    const char **label = calloc((size_t)n_logs, sizeof *label);
    int rc = tr && ev && ac && label ? 0 : 1;
    int any_acc = 0;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < n_logs && !rc; k++) {
        const char *eq = strchr(logs[k], '=');
        if (eq && !fopen_ok(logs[k])) label[k] = strndup(logs[k], (size_t)(eq - logs[k])), logs[k] = eq + 1;
        else label[k] = strdup(logs[k]);
        if (!label[k]) {
            rc = 1;
            break;
        }
        if (read_log(logs[k], &tr[k], &ev[k], &ac[k])) {
            fprintf(stderr, "nvlm plot: cannot read %s\n", logs[k]);
            rc = 1;
            break;
        }
        series *both[2] = {&tr[k], &ev[k]};
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < both[b]->n; i++) {
                x0 = fmin(x0, both[b]->x[i]), x1 = fmax(x1, both[b]->x[i]);
                y0 = fmin(y0, both[b]->y[i]), y1 = fmax(y1, both[b]->y[i]);
            }
        any_acc |= ac[k].n > 0;
    }
    if (!rc && !(x1 >= x0)) {
        fprintf(stderr, "nvlm plot: no loss values in the logs\n");
        rc = 1;
    }
    FILE *o = stdout;
    if (!rc && out && !(o = fopen(out, "w"))) {
        fprintf(stderr, "nvlm plot: cannot write %s\n", out);
        rc = 1;
    }
    if (!rc) {
        if (x1 == x0) x1 = x0 + 1;
        if (y1 == y0) y1 = y0 + 1;
        static const char *colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"};
        const double lx = any_acc ? 60 + PANEL_W + 80 + PANEL_W + 12 : 60 + PANEL_W + 12; /* legend */
        fprintf(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"380\" font-family=\"sans-serif\" "
                   "font-size=\"12\">\n<rect width=\"%.0f\" height=\"380\" fill=\"white\"/>\n", lx + 180, lx + 180);
        panel(o, 60, x0, x1, y0, y1, "loss (solid: train, dashed: eval)");
        if (any_acc) panel(o, 60 + PANEL_W + 80, x0, x1, 0, 1, "eval exact-match accuracy");
        for (int k = 0; k < n_logs; k++) {
            const char *c = colours[k % 6];
            polyline(o, &tr[k], c, 0, 60, x0, x1, y0, y1);
            polyline(o, &ev[k], c, 1, 60, x0, x1, y0, y1);
            if (any_acc) polyline(o, &ac[k], c, 0, 60 + PANEL_W + 80, x0, x1, 0, 1);
            fprintf(o, "<rect x=\"%.0f\" y=\"%d\" width=\"14\" height=\"3\" fill=\"%s\"/>", lx, 40 + 18 * k, c);
            fprintf(o, "<text x=\"%.0f\" y=\"%d\">", lx + 20, 45 + 18 * k);
            for (const char *p = label[k]; *p; p++) /* escape the name for XML */
                if (*p == '<') fputs("&lt;", o);
                else if (*p == '&') fputs("&amp;", o);
                else fputc(*p, o);
            fprintf(o, "</text>\n");
        }
        fprintf(o, "</svg>\n");
        if (o != stdout) fclose(o);
    }
    for (int k = 0; tr && ev && ac && k < n_logs; k++)
        free(tr[k].x), free(tr[k].y), free(ev[k].x), free(ev[k].y), free(ac[k].x), free(ac[k].y);
    for (int k = 0; label && k < n_logs; k++) free((char *)label[k]);
    free(label), free(tr), free(ev), free(ac), free(logs);
    return rc;
}
