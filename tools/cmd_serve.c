/* nvlm serve - an OpenAI-compatible HTTP server (POST /v1/chat/completions with images,
 * GET /v1/models, /health, /metrics). The server itself is src/serve; this is its flags,
 * model loading and the signal handling for a graceful stop. */
#include "cli_model.h"
#include "dist/serve_dist.h"
#include "serve/serve.h"
#include <libgen.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(FILE *f) {
    fprintf(f, "usage: nvlm serve --model DIR [options]\n\n"
               "OpenAI-compatible server: POST /v1/chat/completions (text and data: URL images, streaming),\n"
               "GET /v1/models, /health, /metrics. See docs/server.md. Under mpirun -np N the model is split over\n"
               "the N ranks: rank 0 serves HTTP, the others follow its engine steps (docs/distributed.md).\n\n"
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
               "      --allow-remote-images     fetch http(s) image URLs (10 s, --max-image-bytes, 3 redirects;\n"
               "                                private and loopback addresses refused)\n"
               "      --allow-private-image-hosts  with it: also from private and loopback addresses\n"
               "      --max-image-memory MIB decoded images and tiles of all requests at once (default:\n"
               "                             1/8 of the machine's memory, at most 448 MiB); a request\n"
               "                             that can never fit gets 413, one that finds no room in time 429\n"
               "      --timeout S            seconds for a request's header and body to arrive (default 60)\n"
               "      --max-connections N    open connections (default 2048)\n"
               "      --max-connections-per-ip N  (default 1024); at a limit the oldest connection still\n"
               "                             sending its request is dropped to make room\n"
               "      --http-threads N       HTTP poll threads (default 4)\n"
               "      --shutdown-timeout S   on SIGTERM/SIGINT, seconds the answers in flight may finish\n"
               "                             (default 10); the rest end with finish_reason \"cancelled\".\n"
               "                             A second signal exits at once\n"
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
        {"--max-images", 1, 1024}, {"--max-image-memory", 1, 1L << 30}, {"--timeout", 1, 86400},
        {"--max-connections", 1, 1 << 20}, {"--max-connections-per-ip", 1, 1 << 20}, {"--http-threads", 1, 256},
        {"--shutdown-timeout", 0, 86400}};
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
        case 7: so->max_images = (int)n; break;
        case 8: so->max_image_memory = (uint64_t)n << 20; break;
        case 9: so->timeout = (int)n; break;
        case 10: so->max_connections = (int)n; break;
        case 11: so->max_connections_per_ip = (int)n; break;
        case 12: so->http_threads = (int)n; break;
        default: so->shutdown_timeout = (int)n; break;
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
    if (!strcmp(a, "--allow-remote-images")) return so->allow_remote_images = 1;
    if (!strcmp(a, "--allow-private-image-hosts")) return so->allow_private_image_hosts = 1;
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

/* Every connection is a descriptor: the soft limit (often 1024) up to the hard one. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= rl.rlim_max) return;
    rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
}

int cmd_serve(int argc, char **argv) {
    cli_model_opts o;
    cli_model_opts_init(&o);
    nvlm_serve_options so;
    nvlm_serve_options_default(&so);
    so.port = 8080;
    so.shutdown_timeout = 10;
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
    raise_fd_limit();
    /* Buffers from 1 MiB up (decoded images, tiles) come from mmap and go back to the system
     * when freed, instead of staying in the allocator's per-thread arenas: the process's
     * size then follows the image memory budget. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    nvlm_model *m = NULL;
    int rc = cli_load_model("serve", &o, &m);
    if (rc) return rc;
    nvlm_err err = {0};
    if (nvlm_dist_rank(cli_dist()) > 0) { /* mpirun: rank 0 serves HTTP, this rank follows its steps */
        rc = serve_dist_follow_main(m, &so, &err);
        nvlm_model_free(m);
        return rc ? cli_report("serve", &err) : 0;
    }
    nvlm_server *srv = NULL;
    if (nvlm_server_start(m, &so, &srv, &err)) {
        nvlm_model_free(m);
        return cli_report("serve", &err);
    }
    fprintf(stderr, "nvlm serve: model '%s' on http://%s:%d (parallel %d%s)%s\n", so.model_id,
            so.host ? so.host : "127.0.0.1", nvlm_server_port(srv), so.parallel ? so.parallel : 8,
            nvlm_dist_size(cli_dist()) > 1 ? ", tensor parallel over the MPI job's ranks" : "",
            so.api_key && *so.api_key ? ", API key required" : "");
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "nvlm serve: %s, stopping: no new requests; answers in flight get %d s to finish "
                    "(a second signal exits at once)\n", sig == SIGINT ? "SIGINT" : "SIGTERM", so.shutdown_timeout);
    /* a second signal takes its default action (ends the process) on this thread */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    nvlm_server_stop(srv);
    fprintf(stderr, "nvlm serve: stopped\n");
    nvlm_model_free(m);
    return 0;
}
