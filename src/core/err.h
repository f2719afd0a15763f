/* err.h - filling an nvlm_err. Internal. */
#ifndef NVLM_CORE_ERR_H
#define NVLM_CORE_ERR_H
#include "nvlm.h"

/* Sets err (if non-NULL) to code and the printf-formatted message; returns code, so
 * error paths read `return nvlm_fail(err, NVLM_E_FORMAT, "%s: bad header", path);`. */
int nvlm_fail(nvlm_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with more context ("loading X: " + old message). */
int nvlm_fail_prefix(nvlm_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void nvlm_err_clear(nvlm_err *err);
#endif
