#include "core/err.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *nvlm_status_name(int code) {
    switch (code) {
    case NVLM_OK: return "ok";
    case NVLM_E_INVALID_ARG: return "invalid argument";
    case NVLM_E_IO: return "I/O error";
    case NVLM_E_FORMAT: return "malformed input";
    case NVLM_E_UNSUPPORTED: return "unsupported";
    case NVLM_E_NOMEM: return "out of memory";
    case NVLM_E_LIMIT: return "limit exceeded";
    case NVLM_E_CANCELLED: return "cancelled";
    case NVLM_E_INTERNAL: return "internal error";
    case NVLM_E_NUMERIC: return "non-finite numbers";
    case NVLM_E_BUSY: return "busy";
    default: return "unknown error";
    }
}

int nvlm_fail(nvlm_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int nvlm_fail_prefix(nvlm_err *err, const char *fmt, ...) {
    if (!err) return NVLM_E_INTERNAL;
    char prefix[sizeof err->msg];
    char old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t n = strlen(prefix);
    memcpy(err->msg, prefix, n + 1);
    size_t room = sizeof err->msg - 1 - n;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = 0;
    return err->code;
}

void nvlm_err_clear(nvlm_err *err) {
    if (err) {
        err->code = 0;
        err->msg[0] = 0;
    }
}
