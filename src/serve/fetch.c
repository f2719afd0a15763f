/* Remote image URLs (opt-in: --allow-remote-images), fetched with libcurl: http and https only
 * (redirects too), a size limit checked while the bytes arrive, a total time limit, a redirect
 * limit, no proxy from the environment, and every address actually connected to vetted in the
 * open-socket callback, so a private or loopback address is refused also when a public name
 * resolves to it or a redirect leads there (unless --allow-private-image-hosts). */
#include "serve/serve_int.h"
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

typedef struct fetch_ctx {
    const serve_fetch_opts *o;
    nvlm_buf body;
    int too_big, refused, oom;
    char refused_ip[INET6_ADDRSTRLEN];
} fetch_ctx;

/* Loopback, private, link-local, shared (CGNAT), multicast, reserved and unspecified ranges. */
static int private_v4(const uint8_t a[4]) {
    return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
           (a[0] == 192 && a[1] == 168) || (a[0] == 100 && (a[1] & 0xc0) == 64) || (a[0] == 192 && a[1] == 0 && a[2] == 0) ||
           (a[0] == 198 && (a[1] & 0xfe) == 18) || a[0] >= 224;
}

int serve_private_address(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) return private_v4((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->sa_family != AF_INET6) return 1; /* unix sockets and the like: never */
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, zero[15] = {0};
    if (!memcmp(a, mapped, 12)) return private_v4(a + 12);
    if (!memcmp(a, zero, 15) && (a[15] == 0 || a[15] == 1)) return 1; /* :: and ::1 */
    return (a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || a[0] == 0xff || /* ULA, link-local, multicast */
           (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) ||                    /* documentation */
           (a[0] == 0 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b);                         /* NAT64 of v4 */
}

static curl_socket_t open_socket(void *user, curlsocktype purpose, struct curl_sockaddr *addr) {
    fetch_ctx *f = user;
    (void)purpose;
    if (!f->o->allow_private && serve_private_address(&addr->addr)) {
        const void *ip = addr->family == AF_INET ? (const void *)&((struct sockaddr_in *)&addr->addr)->sin_addr
                                                 : (const void *)&((struct sockaddr_in6 *)&addr->addr)->sin6_addr;
        if (!inet_ntop(addr->family, ip, f->refused_ip, sizeof f->refused_ip)) snprintf(f->refused_ip, sizeof f->refused_ip, "?");
        f->refused = 1;
        return CURL_SOCKET_BAD;
    }
    return socket(addr->family, addr->socktype, addr->protocol);
}

static size_t on_data(char *p, size_t size, size_t n, void *user) {
    fetch_ctx *f = user;
    size_t len = size * n;
    if (f->body.len + len > f->o->max_bytes) {
        f->too_big = 1;
        return 0; /* ends the transfer */
    }
    if (nvlm_buf_append(&f->body, p, len)) {
        f->oom = 1;
        return 0;
    }
    return len;
}

static void setup(CURL *c, const char *url, fetch_ctx *f) {
    const serve_fetch_opts *o = f->o;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, (long)o->max_redirects);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* no proxy from the environment: the vetted address is the host's */
    curl_easy_setopt(c, CURLOPT_USERAGENT, "nvlm-serve");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, f);
}

int serve_fetch_url(const char *url, const serve_fetch_opts *o, uint8_t **data, size_t *len, char *why, size_t why_len) {
    *data = NULL, *len = 0;
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8))
        return snprintf(why, why_len, "only http and https URLs are fetched"), -1;
    CURL *c = curl_easy_init();
    if (!c) return snprintf(why, why_len, "cannot start the HTTP client"), -2;
    fetch_ctx f = {.o = o};
    setup(c, url, &f);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    int ret = -1;
    if (f.oom) snprintf(why, why_len, "out of memory"), ret = -2;
    else if (f.refused)
        snprintf(why, why_len, "it leads to the private or loopback address %s (start the server with "
                 "--allow-private-image-hosts to allow it)", f.refused_ip);
    else if (f.too_big || rc == CURLE_FILESIZE_EXCEEDED) snprintf(why, why_len, "the image is over %zu bytes", o->max_bytes);
    else if (rc == CURLE_OPERATION_TIMEDOUT) snprintf(why, why_len, "no complete answer within %d ms", o->timeout_ms);
    else if (rc == CURLE_TOO_MANY_REDIRECTS) snprintf(why, why_len, "more than %d redirects", o->max_redirects);
    else if (rc == CURLE_UNSUPPORTED_PROTOCOL) snprintf(why, why_len, "a redirect to a scheme other than http(s)");
    else if (rc != CURLE_OK) snprintf(why, why_len, "%s", curl_easy_strerror(rc));
    else if (status != 200) snprintf(why, why_len, "the server answered HTTP %ld", status);
    else ret = 0;
    if (ret) {
        nvlm_buf_free(&f.body);
        return ret;
    }
    *data = (uint8_t *)f.body.data, *len = f.body.len;
    if (!*data && !(*data = malloc(1))) return snprintf(why, why_len, "out of memory"), -2;
    return 0;
}

int serve_fetch_global_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1; }
void serve_fetch_global_cleanup(void) { curl_global_cleanup(); }
