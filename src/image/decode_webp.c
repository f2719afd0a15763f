/* decode_webp.c - WebP through libwebp's WebPAnimDecoder, the path Pillow 9.4 takes for every
 * WebP file (still or animated): RGBA output with default options (fancy upsampling), the
 * first frame composited on the canvas as libwebp does, alpha then dropped. A file the demuxer
 * refuses (truncated, malformed) is an error, as Pillow's "could not create decoder object". */
#include "image/decode.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>
#include <webp/demux.h>

int img_decode_webp(const uint8_t *data, size_t len, uint64_t max_pixels, nvlm_image *out,
                    nvlm_err *err) {
    memset(out, 0, sizeof *out);
    /* size check first: the animation decoder allocates its canvas when created */
    WebPBitstreamFeatures feat;
    if (WebPGetFeatures(data, len, &feat) != VP8_STATUS_OK)
        return nvlm_fail(err, NVLM_E_FORMAT, "WebP: corrupt or truncated header");
    if (feat.width <= 0 || feat.height <= 0)
        return nvlm_fail(err, NVLM_E_FORMAT, "WebP: zero-sized image");
    if ((uint64_t)feat.width * (uint64_t)feat.height > max_pixels)
        return img_alloc("WebP", (uint64_t)feat.width, (uint64_t)feat.height, max_pixels, 0, out,
                         err);

    WebPAnimDecoderOptions opt;
    if (!WebPAnimDecoderOptionsInit(&opt))
        return nvlm_fail(err, NVLM_E_INTERNAL, "WebP: libwebp version mismatch");
    opt.color_mode = MODE_RGBA;
    opt.use_threads = 0;
    WebPData wd = {data, len};
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&wd, &opt);
    if (!dec)
        return nvlm_fail(err, NVLM_E_FORMAT,
                         "WebP: could not create decoder object (truncated or corrupt file)");
    WebPAnimInfo info;
    uint8_t *frame = NULL;
    int ts = 0;
    int rc = NVLM_OK;
    if (!WebPAnimDecoderGetInfo(dec, &info)) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "WebP: cannot read the canvas size");
    } else if ((rc = img_alloc("WebP", info.canvas_width, info.canvas_height, max_pixels, 0, out,
                               err)) != NVLM_OK) {
        /* error set */
    } else if (!WebPAnimDecoderGetNext(dec, &frame, &ts) || !frame) {
        rc = nvlm_fail(err, NVLM_E_FORMAT, "WebP: cannot decode the first frame (corrupt data)");
        nvlm_image_free(out);
    } else {
        size_t n = (size_t)out->width * (size_t)out->height;
        uint8_t *dst = out->rgb;
        for (size_t i = 0; i < n; i++, dst += 3, frame += 4) {
            dst[0] = frame[0];
            dst[1] = frame[1];
            dst[2] = frame[2];
        }
    }
    WebPAnimDecoderDelete(dec);
    return rc;
}
