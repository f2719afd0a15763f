/* Remote image URLs (--allow-remote-images) from a local HTTP server (libmicrohttpd on
 * 127.0.0.1): the fetched image gives the same answer as its data: URL; redirects followed up to
 * the limit; oversize, slow, 404, loops, non-http schemes and private addresses (also by name,
 * "localhost") each a 400 naming the URL and the reason; off by default. */
#include "check.h"
#include "test_serve_util.h"
#include <microhttpd.h>
#include <netinet/in.h>

static char *png;
static size_t png_len;
static int img_port;

static enum MHD_Result serve_file(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_size, (void)con_cls;
    struct MHD_Response *r = NULL;
    int status = 200;
    char loc[128];
    if (!strcmp(url, "/img.png")) {
        r = MHD_create_response_from_buffer(png_len, png, MHD_RESPMEM_PERSISTENT);
    } else if (!strncmp(url, "/hop", 4)) { /* /hopN -> /hop(N-1) ... /hop0 -> /img.png */
        int n = atoi(url + 4);
        if (n > 0) snprintf(loc, sizeof loc, "/hop%d", n - 1);
        else snprintf(loc, sizeof loc, "/img.png");
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", loc);
        status = 302;
    } else if (!strcmp(url, "/loop")) {
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", "/loop");
        status = 302;
    } else if (!strcmp(url, "/to-file")) {
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", "file:///etc/passwd");
        status = 302;
    } else if (!strcmp(url, "/big")) {
        static char big[3 << 20];
        r = MHD_create_response_from_buffer(sizeof big, big, MHD_RESPMEM_PERSISTENT);
    } else if (!strcmp(url, "/slow")) {
        usleep(1500 * 1000);
        r = MHD_create_response_from_buffer(png_len, png, MHD_RESPMEM_PERSISTENT);
    } else {
        r = MHD_create_response_from_buffer(9, "not found", MHD_RESPMEM_PERSISTENT);
        status = 404;
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static char *request_body(const char *url) {
    char *b = malloc(strlen(url) + 256);
    sprintf(b, "{\"max_tokens\":6,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}},"
               "{\"type\":\"text\",\"text\":\"What is it?\"}]}]}", url);
    return b;
}

/* POSTs an image URL; the answer's content (malloc'ed) or NULL, the error message into msg. */
static char *ask_url(int port, const char *url, int *status, char *msg, size_t msg_len) {
    char *body = request_body(url);
    resp r;
    *status = 0;
    msg[0] = 0;
    char *content = NULL;
    if (!http(port, "POST", "/v1/chat/completions", NULL, body, &r)) {
        *status = r.status;
        cJSON *j = cJSON_Parse(r.body);
        const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message"), "content");
        const cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
        if (cJSON_IsString(c)) content = strdup(c->valuestring);
        if (cJSON_IsString(m)) snprintf(msg, msg_len, "%s", m->valuestring);
        cJSON_Delete(j);
        resp_free(&r);
    }
    free(body);
    return content;
}

static void expect_refused(int port, const char *url, const char *reason) {
    int st;
    char msg[1200];
    char *content = ask_url(port, url, &st, msg, sizeof msg);
    CHECK(st == 400 && strstr(msg, url) && strstr(msg, reason), "%s: status %d, '%s' (want '%s')", url, st, msg, reason);
    free(content);
    CHECK(healthy(port), "healthy after %s", url);
}

int main(void) {
    png = slurp(shared_path("reference/images/skimage_astronaut.png"), &png_len);
    if (!png) {
        CHECK(0, "no test image");
        return check_done("test_serve_remote");
    }
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
                                            serve_file, NULL, MHD_OPTION_END);
    const union MHD_DaemonInfo *di = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    img_port = di ? di->port : 0;
    nvlm_model *m = NULL;
    nvlm_err err = {0};
    CHECK(img_port > 0, "image server");
    if (!img_port || nvlm_model_load(shared_path("reference/models/tiny-nvlm-d"), NULL, &m, &err)) {
        CHECK(0, "setup: %s", err.msg);
        return check_done("test_serve_remote");
    }
    nvlm_serve_options o;
    nvlm_serve_options_default(&o);
    o.model_id = "tiny-nvlm-d";
    o.max_image_bytes = 2u << 20;
    nvlm_server *off = NULL, *pub = NULL, *priv = NULL;
    CHECK(!nvlm_server_start(m, &o, &off, &err), "start: %s", err.msg);
    o.allow_remote_images = 1;
    o.remote_timeout_ms = 700;
    CHECK(!nvlm_server_start(m, &o, &pub, &err), "start: %s", err.msg);
    o.allow_private_image_hosts = 1;
    CHECK(!nvlm_server_start(m, &o, &priv, &err), "start: %s", err.msg);
    if (off && pub && priv) {
        int p_off = nvlm_server_port(off), p_pub = nvlm_server_port(pub), p_priv = nvlm_server_port(priv);
        char url[256], msg[1200];
        int st;
        /* the same answer as the data: URL */
        char *du = data_url("reference/images/skimage_astronaut.png");
        char *want = ask_url(p_priv, du, &st, msg, sizeof msg);
        CHECK(st == 200 && want, "data: URL answer: %d %s", st, msg);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/img.png", img_port);
        char *got = ask_url(p_priv, url, &st, msg, sizeof msg);
        CHECK(st == 200 && got && want && !strcmp(got, want), "remote image: %d '%s' vs '%s' %s", st, got ? got : "",
              want ? want : "", msg);
        free(got);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/hop2", img_port); /* 3 redirects: the limit */
        got = ask_url(p_priv, url, &st, msg, sizeof msg);
        CHECK(st == 200 && got && want && !strcmp(got, want), "3 redirects: %d %s", st, msg);
        free(got);
        free(want);
        free(du);
        snprintf(url, sizeof url, "http://127.0.0.1:%d/hop3", img_port);
        expect_refused(p_priv, url, "more than 3 redirects");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/loop", img_port);
        expect_refused(p_priv, url, "redirects");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/to-file", img_port);
        expect_refused(p_priv, url, "scheme");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/big", img_port);
        expect_refused(p_priv, url, "over 2097152 bytes");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/slow", img_port);
        expect_refused(p_priv, url, "within 700 ms");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/missing", img_port);
        expect_refused(p_priv, url, "HTTP 404");
        snprintf(url, sizeof url, "http://127.0.0.1:1/img.png"); /* nothing listens */
        expect_refused(p_priv, url, "onnect");
        /* private addresses refused without --allow-private-image-hosts, by address and by name */
        snprintf(url, sizeof url, "http://127.0.0.1:%d/img.png", img_port);
        expect_refused(p_pub, url, "private or loopback address 127.0.0.1");
        snprintf(url, sizeof url, "http://localhost:%d/img.png", img_port);
        expect_refused(p_pub, url, "--allow-private-image-hosts");
        snprintf(url, sizeof url, "http://[::1]:%d/img.png", img_port);
        expect_refused(p_pub, url, "::1");
        snprintf(url, sizeof url, "http://127.0.0.1:%d/img.png", img_port);
        char *c = ask_url(p_off, url, &st, msg, sizeof msg);
        CHECK(st == 400 && strstr(msg, "--allow-remote-images"), "off by default: %d %s", st, msg);
        free(c);
        expect_refused(p_priv, "ftp://127.0.0.1/x.png", "only data:");
        expect_refused(p_priv, "gopher://127.0.0.1/x.png", "only data:");
    }
    /* the address rules themselves */
    static const struct { const char *ip; int priv; } addrs[] = {
        {"127.0.0.1", 1}, {"10.1.2.3", 1}, {"172.16.0.1", 1}, {"172.32.0.1", 0}, {"192.168.1.1", 1}, {"169.254.169.254", 1},
        {"100.64.0.1", 1}, {"0.0.0.0", 1}, {"224.0.0.1", 1}, {"8.8.8.8", 0}, {"93.184.216.34", 0},
        {"::1", 1}, {"::", 1}, {"fd00::1", 1}, {"fe80::1", 1}, {"::ffff:127.0.0.1", 1}, {"::ffff:8.8.8.8", 0},
        {"2606:4700::1111", 0}, {"ff02::1", 1}};
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++) {
        struct sockaddr_storage ss = {0};
        if (strchr(addrs[i].ip, ':')) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            a->sin6_family = AF_INET6;
            inet_pton(AF_INET6, addrs[i].ip, &a->sin6_addr);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            a->sin_family = AF_INET;
            inet_pton(AF_INET, addrs[i].ip, &a->sin_addr);
        }
        CHECK(serve_private_address((struct sockaddr *)&ss) == addrs[i].priv, "%s private %d", addrs[i].ip, addrs[i].priv);
    }
    nvlm_server_stop(off);
    nvlm_server_stop(pub);
    nvlm_server_stop(priv);
    MHD_stop_daemon(d);
    nvlm_model_free(m);
    free(png);
    return check_done("test_serve_remote");
}
