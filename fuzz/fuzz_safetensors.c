/* libFuzzer target: the safetensors header parser and validator (nvlm_st_parse_buffer).
 * Whatever the bytes, parsing must either fail cleanly or give tensors whose every byte
 * lies inside the buffer (touched below, so ASan catches any span that escapes). */
#include "model/safetensors.h"
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    nvlm_st *st = NULL;
    nvlm_err err;
    if (nvlm_st_parse_buffer(data, len, "fuzz", &st, &err) != 0) {
        /* the message must be a terminated string */
        return strlen(err.msg) < sizeof err.msg ? 0 : 1;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < nvlm_st_count(st); i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        const uint8_t *p = t->data;
        if (t->nbytes) sink ^= p[0] ^ p[t->nbytes - 1];
        if (nvlm_st_find(st, t->name) != t) __builtin_trap();
        int64_t shape[NVLM_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (nvlm_st_expect(st, t->name, t->ndim, shape, NULL, &err) != 0) __builtin_trap();
    }
    (void)sink;
    nvlm_st_close(st);
    return 0;
}
