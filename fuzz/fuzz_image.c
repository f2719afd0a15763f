/* fuzz_image - libFuzzer target for the image decoders. Built once per decoder with
 * -DFUZZ_FORMAT=IMG_PNG etc. (the input goes straight to that decoder, no sniffing), and
 * once without (nvlm_image_decode: sniffing + every decoder). A decoded image of modest
 * size also goes through the tiler, so the resize sees odd sizes too.
 * -DFUZZ_PNG_DIFF (fuzz_image_pngdiff) decodes every input as PNG both ways, fast path and
 * libpng only, and aborts unless both give the same status, message and pixels.
 * Build: fuzz/build.sh image    Run: build-fuzz/fuzz_image_png build-fuzz/corpus-image-png */
#include "nvlm.h"
#include "image/decode.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_PNG_DIFF
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    img_ctl fast, slow;
    memset(&fast, 0, sizeof fast);
    memset(&slow, 0, sizeof slow);
    fast.max_pixels = slow.max_pixels = 1u << 24;
    slow.png_libpng_only = 1;
    nvlm_image a, b;
    nvlm_err ea = {0, ""}, eb = {0, ""};
    int ra = img_decode_ctl(IMG_PNG, data, size, &fast, &a, &ea);
    int rb = img_decode_ctl(IMG_PNG, data, size, &slow, &b, &eb);
    if (ra != rb) abort();
    if (ra != NVLM_OK && strcmp(ea.msg, eb.msg)) abort();
    if (ra == NVLM_OK && (a.width != b.width || a.height != b.height ||
                          memcmp(a.rgb, b.rgb, (size_t)a.width * (size_t)a.height * 3)))
        abort();
    nvlm_image_free(&a);
    nvlm_image_free(&b);
    return 0;
}
#else

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nvlm_image img;
    nvlm_err err = {0, ""};
    const uint64_t max_pixels = 1u << 24; /* keep within libFuzzer's memory limit */
#ifdef FUZZ_FORMAT
    int rc = img_decode_as(FUZZ_FORMAT, data, size, max_pixels, &img, &err);
#else
    nvlm_image_limits lim = {max_pixels};
    int rc = nvlm_image_decode(data, size, &lim, &img, &err);
#endif
    if (rc != NVLM_OK) {
        if (img.rgb || !err.msg[0] || err.code != rc) abort(); /* a failure must be clean */
        return 0;
    }
    if (img.width <= 0 || img.height <= 0 || !img.rgb) abort();
#ifndef FUZZ_FORMAT
    /* the server counts memory by the header's size before decoding: when the probe calls
     * its size exact, the decoder must have made exactly that */
    uint64_t pw, ph;
    int exact;
    if (img_probe(data, size, &pw, &ph, &exact) == IMG_UNKNOWN) abort();
    if (exact && (pw != (uint64_t)img.width || ph != (uint64_t)img.height)) abort();
#endif
    volatile unsigned sum = 0;
    size_t n = (size_t)img.width * (size_t)img.height * 3;
    for (size_t i = 0; i < n; i += 61) sum += img.rgb[i];
    sum += img.rgb[n - 1];
    if ((uint64_t)img.width * (uint64_t)img.height <= 4096) {
        nvlm_tiles t;
        if (nvlm_image_tile(&img, 32, 1, 4, 1, &t, &err) == NVLM_OK) nvlm_tiles_free(&t);
    }
    nvlm_image_free(&img);
    return 0;
}
#endif
