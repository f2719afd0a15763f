/* AdamW with decoupled weight decay (PyTorch's torch.optim.AdamW, non-amsgrad), clipping by
 * global norm, and the learning-rate schedules. */
#include "train/train.h"
#include <math.h>

double nvlm_grad_norm(const nvlm_tmodel *tm) {
    double ss = 0;
    for (int i = 0; i < tm->n_p; i++) {
        const nvlm_tparam *p = &tm->p[i];
        if (!p->g) continue;
        for (size_t k = 0; k < p->n; k++) ss += (double)p->g[k] * p->g[k];
    }
    return sqrt(ss);
}

void nvlm_grad_scale(nvlm_tmodel *tm, float s) {
    for (int i = 0; i < tm->n_p; i++)
        if (tm->p[i].g)
            for (size_t k = 0; k < tm->p[i].n; k++) tm->p[i].g[k] *= s;
}

/* PyTorch's single-tensor AdamW: p *= 1 - lr wd; m, v updated; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). */
void nvlm_adamw_step(nvlm_tmodel *tm, nvlm_adamw *o, double lr) {
    o->step++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    for (int i = 0; i < tm->n_p; i++) {
        nvlm_tparam *p = &tm->p[i];
        if (!p->g) continue;
        float decay = p->decay ? (float)(1.0 - lr * o->weight_decay) : 1.0f;
        for (size_t k = 0; k < p->n; k++) {
            float g = p->g[k];
            p->w[k] *= decay;
            p->m[k] = p->m[k] * b1 + (1.0f - b1) * g; /* torch: m.lerp_(g, 1 - b1) */
            p->v[k] = p->v[k] * b2 + (1.0f - b2) * g * g;
            float denom = sqrtf(p->v[k]) / bc2_sqrt + eps;
            p->w[k] -= step_size * (p->m[k] / denom);
        }
    }
}

double nvlm_lr_at(double base, int64_t step, int64_t warmup, int64_t total, int cosine) {
    if (warmup > 0 && step < warmup) return base * (double)(step + 1) / (double)warmup;
    if (!cosine || total <= warmup) return base;
    double t = (double)(step - warmup) / (double)(total - warmup);
    if (t > 1) t = 1;
    const double floor = 0.1; /* decays to 10% of the peak */
    return base * (floor + (1 - floor) * 0.5 * (1 + cos(M_PI * t)));
}
