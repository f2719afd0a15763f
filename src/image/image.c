/* image.c - nvlm_image_decode/load/free: format sniffing, limits, allocation. */
#include "image/decode.h"
#include "core/err.h"
#include "core/file.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>

img_format img_sniff(const uint8_t *d, size_t n) {
    if (n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8)) return IMG_PNG;
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return IMG_JPEG;
    if (n >= 6 && (!memcmp(d, "GIF87a", 6) || !memcmp(d, "GIF89a", 6))) return IMG_GIF;
    if (n >= 16 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4) &&
        (!memcmp(d + 12, "VP8 ", 4) || !memcmp(d + 12, "VP8L", 4) || !memcmp(d + 12, "VP8X", 4)))
        return IMG_WEBP;
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') return IMG_BMP;
    return IMG_UNKNOWN;
}

const char *img_format_name(img_format f) {
    switch (f) {
    case IMG_JPEG: return "JPEG";
    case IMG_PNG: return "PNG";
    case IMG_WEBP: return "WebP";
    case IMG_GIF: return "GIF";
    case IMG_BMP: return "BMP";
    default: return "unknown";
    }
}

int img_alloc(const char *fmt, uint64_t w, uint64_t h, uint64_t max_pixels, int zero,
              nvlm_image *out, nvlm_err *err) {
    memset(out, 0, sizeof *out);
    if (w == 0 || h == 0)
        return nvlm_fail(err, NVLM_E_FORMAT, "%s: zero-sized image (%llux%llu)", fmt,
                         (unsigned long long)w, (unsigned long long)h);
    if (w > INT_MAX || h > INT_MAX || w > UINT64_MAX / h || w * h > max_pixels)
        return nvlm_fail(err, NVLM_E_LIMIT,
                         "%s: image size %llux%llu exceeds the limit of %llu pixels "
                         "(decompression bomb guard)",
                         fmt, (unsigned long long)w, (unsigned long long)h,
                         (unsigned long long)max_pixels);
    uint64_t bytes = w * h * 3;
    if (bytes > SIZE_MAX) return nvlm_fail(err, NVLM_E_LIMIT, "%s: image too large", fmt);
    out->rgb = zero ? calloc((size_t)bytes, 1) : malloc((size_t)bytes);
    if (!out->rgb)
        return nvlm_fail(err, NVLM_E_NOMEM, "%s: out of memory for a %llux%llu image", fmt,
                         (unsigned long long)w, (unsigned long long)h);
    out->width = (int)w;
    out->height = (int)h;
    return NVLM_OK;
}

int img_decode_as(img_format f, const uint8_t *data, size_t len, uint64_t max_pixels,
                  nvlm_image *out, nvlm_err *err) {
    img_ctl ctl = {0};
    ctl.max_pixels = max_pixels;
    return img_decode_ctl(f, data, len, &ctl, out, err);
}

int img_decode_ctl(img_format f, const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err) {
    uint64_t max_pixels = ctl->max_pixels ? ctl->max_pixels : IMG_DEFAULT_MAX_PIXELS;
    ctl->max_pixels = max_pixels;
    ctl->png_fast_taken = 0;
    switch (f) {
    case IMG_JPEG: return img_decode_jpeg(data, len, ctl, out, err);
    case IMG_PNG: return img_decode_png(data, len, ctl, out, err);
    case IMG_WEBP: return img_decode_webp(data, len, max_pixels, out, err);
    case IMG_GIF: return img_decode_gif(data, len, max_pixels, out, err);
    case IMG_BMP: return img_decode_bmp(data, len, max_pixels, out, err);
    default: return nvlm_fail(err, NVLM_E_INTERNAL, "no decoder for format %d", (int)f);
    }
}

int img_decode_buf(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err) {
    memset(out, 0, sizeof *out);
    if (!data && len) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_decode: data is NULL");
    if (len == 0) return nvlm_fail(err, NVLM_E_FORMAT, "empty file: not an image");
    img_format f = img_sniff(data, len);
    if (f == IMG_UNKNOWN)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED,
                         "unknown image format (not JPEG, PNG, WebP, GIF or BMP)");
    int rc = img_decode_ctl(f, data, len, ctl, out, err);
    if (rc != NVLM_OK) nvlm_image_free(out); /* decoders leave it empty; be sure */
    return rc;
}

int nvlm_image_decode(const uint8_t *data, size_t len, const nvlm_image_limits *limits,
                      nvlm_image *out, nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_decode: out is NULL");
    img_ctl ctl;
    memset(&ctl, 0, sizeof ctl);
    ctl.max_pixels = limits ? limits->max_pixels : 0;
    return img_decode_buf(data, len, &ctl, out, err);
}

int nvlm_image_load(const char *path, const nvlm_image_limits *limits, nvlm_image *out,
                    nvlm_err *err) {
    if (!out) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_image_load: path is NULL");
    nvlm_mapped_file f;
    int rc = nvlm_map_file(path, &f, err);
    if (rc != NVLM_OK) return rc;
    rc = nvlm_image_decode(f.data, f.len, limits, out, err);
    nvlm_unmap_file(&f);
    if (rc != NVLM_OK) nvlm_fail_prefix(err, "%s: ", path);
    return rc;
}

void nvlm_image_free(nvlm_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}
