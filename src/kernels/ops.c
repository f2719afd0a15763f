/* Scalar reference kernels: norms, activations, softmax, dot products. */
#include "kernels/ops.h"
#include <math.h>

float nvlm_dot(const float *a, const float *b, int n) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    for (int k = 0; i < n; i++, k++) s[k] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

void nvlm_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

float nvlm_rms_scale(const float *x, int n, float eps) {
    /* double for the statistic: closer to the reference than a float chain. Each square is exact
     * in double; eight chains instead of one (a chain of 1024 dependent adds was 2% of a ViT
     * forward), summed in a fixed order, so every level still gets the same bits. */
    double s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)x[i + k] * x[i + k];
    for (int k = 0; i < n; i++, k++) s[k] += (double)x[i] * x[i];
    double ss = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    return 1.0f / sqrtf((float)(ss / n) + eps);
}

void nvlm_rmsnorm(float *out, const float *x, const float *w, int n, int n_stat, float eps) {
    float scale = nvlm_rms_scale(x, n_stat, eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void nvlm_layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= n;
    float m = (float)mean, scale = 1.0f / sqrtf((float)var + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - m) * scale * w[i] + b[i];
}

void nvlm_gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void nvlm_silu_mul(float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

void nvlm_softmax(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    if (mx == -INFINITY) {
        for (int i = 0; i < n; i++) x[i] = 0;
        return;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

int nvlm_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}
