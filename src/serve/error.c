/* OpenAI-shaped errors: the status decides the type, as the OpenAI API reports them. */
#include "serve/serve_int.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *type_of(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 503: return "server_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

int serve_fail(serve_error *e, int status, const char *code, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type_of(status);
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}
