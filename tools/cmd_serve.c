/* nvlm serve - an OpenAI-compatible HTTP server (POST /v1/chat/completions with images,
 * GET /v1/models, /health, /metrics). The server itself is src/serve; this is its flags,
 * model loading and the signal handling for a graceful stop. */
#include "cli_model.h"
#include "serve/serve.h"
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm serve --model DIR [options]\n\n"
               "OpenAI-compatible server: POST /v1/chat/completions (text and data: URL images, streaming),\n"
               "GET /v1/models, /health, /metrics. See docs/server.md.\n\n"
               "server options:\n"
               "      --host ADDR            address to listen on (default 127.0.0.1)\n"
               "      --port N               port (default 8080; 0 = any free port)\n"
               "      --api-key KEY          require 'Authorization: Bearer KEY' on /v1/* (also $NVLM_API_KEY)\n"
               "      --parallel N           requests generating at once, batched in one step (default 8)\n"
               "      --kv-size N[M]         KV cache bound: N positions, or N MiB with M; a request that\n"
               "                             cannot fit gets HTTP 503 (default: ctx x parallel positions)\n"
               "      --queue N              requests waiting for a slot before 503 (default 256)\n"
               "      --ctx N                context length (default: the config's max_position_embeddings)\n"
               "      --model-id ID          id reported by /v1/models (default: the model folder's name)\n"
               "      --strict-model         answer 404 to requests naming another model id\n"
               "      --max-body BYTES       request body limit (default 64 MiB)\n"
               "      --max-image-bytes N    one encoded image (default 20 MiB)\n"
               "      --max-image-pixels N   one decoded image (default 33554432)\n"
               "      --max-images N         images per request (default 16)\n"
               "      --allow-local-images DIR  accept file:// URLs and paths of files under DIR\n"
               "  -q, --quiet                no loading progress\n"
               "  (the sampling options below are the defaults of requests that do not set them)\n\n%s",
            cli_model_flags_help());
}

/* The last path component of dir, without trailing slashes. */
static const char *folder_name(const char *dir, char *buf, size_t n) {
    snprintf(buf, n, "%s", dir);
    size_t l = strlen(buf);
    while (l > 1 && buf[l - 1] == '/') buf[--l] = 0;
    return basename(buf);
}

static int parse_server_flag(nvlm_serve_options *so, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    long n;
    static const struct { const char *name; long lo, hi; } nums[] = {
        {"--port", 0, 65535}, {"--parallel", 1, 1024}, {"--queue", 1, 1 << 20}, {"--ctx", 1, 1 << 30},
        {"--max-body", 1024, 1L << 40}, {"--max-image-bytes", 1, 1L << 40}, {"--max-image-pixels", 1, 1L << 40},
        {"--max-images", 1, 1024}};
    for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
        if (strcmp(a, nums[k].name)) continue;
        if (*i + 1 >= argc || cli_parse_int(argv[*i + 1], nums[k].lo, nums[k].hi, &n))
            return cli_usage_error("serve", "%s needs a number in %ld..%ld", a, nums[k].lo, nums[k].hi), -1;
        ++*i;
        switch (k) {
        case 0: so->port = (int)n; break;
        case 1: so->parallel = (int)n; break;
        case 2: so->max_queue = (int)n; break;
        case 3: so->ctx = (int)n; break;
        case 4: so->max_body = (size_t)n; break;
        case 5: so->max_image_bytes = (size_t)n; break;
        case 6: so->max_image_pixels = (uint64_t)n; break;
        default: so->max_images = (int)n; break;
        }
        return 1;
    }
    const char **str = !strcmp(a, "--host") ? &so->host : !strcmp(a, "--api-key") ? &so->api_key
                     : !strcmp(a, "--model-id") ? &so->model_id
                     : !strcmp(a, "--allow-local-images") ? &so->local_image_dir : NULL;
    if (str) {
        if (*i + 1 >= argc) return cli_usage_error("serve", "%s needs a value", a), -1;
        *str = argv[++*i];
        return 1;
    }
    if (!strcmp(a, "--strict-model")) return so->strict_model = 1;
    if (!strcmp(a, "--kv-size")) { /* positions, or MiB with an M / MiB suffix */
        const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
        char *end = NULL;
        unsigned long long n = v ? strtoull(v, &end, 10) : 0;
        int mib = end && (!strcmp(end, "M") || !strcmp(end, "MiB"));
        if (!v || end == v || !n || n > (1ull << 40) || (*end && !mib))
            return cli_usage_error("serve", "--kv-size needs a number of positions, or of MiB with M (e.g. 8192 or 512M)"), -1;
        ++*i;
        if (mib) so->kv_mib = (size_t)n, so->kv_tokens = 0;
        else so->kv_tokens = (size_t)n, so->kv_mib = 0;
        return 1;
    }
    return 0;
}

int cmd_serve(int argc, char **argv) {
    cli_model_opts o;
    cli_model_opts_init(&o);
    nvlm_serve_options so;
    nvlm_serve_options_default(&so);
    so.port = 8080;
    so.api_key = getenv("NVLM_API_KEY");
    for (int i = 1; i < argc; i++) {
        int t = cli_model_flag("serve", &o, argc, argv, &i);
        if (!t) t = parse_server_flag(&so, argc, argv, &i);
        if (t < 0) return 2;
        if (t) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) {
            o.quiet = 1;
            continue;
        }
        return cli_usage_error("serve", "unknown or incomplete option '%s'", argv[i]);
    }
    if (o.n_stop) fprintf(stderr, "nvlm serve: --stop is per request ('stop'); ignored here\n");
    char name[4096];
    if (!so.model_id && o.model_dir) so.model_id = folder_name(o.model_dir, name, sizeof name);
    so.defaults = o.sampling;
    so.defaults.stop = NULL;
    so.max_tiles = o.max_num;
    if (o.system_set) so.default_system = o.system;
    /* Signals go to sigwait below, never to the server's threads (they inherit this mask). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    nvlm_model *m = NULL;
    int rc = cli_load_model("serve", &o, &m);
    if (rc) return rc;
    nvlm_err err = {0};
    nvlm_server *srv = NULL;
    if (nvlm_server_start(m, &so, &srv, &err)) {
        nvlm_model_free(m);
        return cli_report("serve", &err);
    }
    fprintf(stderr, "nvlm serve: model '%s' on http://%s:%d (parallel %d)%s\n", so.model_id,
            so.host ? so.host : "127.0.0.1", nvlm_server_port(srv), so.parallel ? so.parallel : 8,
            so.api_key && *so.api_key ? ", API key required" : "");
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "nvlm serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    nvlm_server_stop(srv);
    nvlm_model_free(m);
    return 0;
}
