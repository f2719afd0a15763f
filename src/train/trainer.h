/* trainer.h - the training loop behind `nvlm train`: data order, text-only mixing, gradient
 * accumulation, clipping, schedule, evaluation, checkpoints in the released layout plus the
 * optimizer state and data position for a bit-identical --resume. Internal. */
#ifndef NVLM_TRAIN_TRAINER_H
#define NVLM_TRAIN_TRAINER_H
#include "nvlm.h"
#include <signal.h>
#include <stdint.h>

typedef struct nvlm_train_opts {
    const char *model_dir;      /* ignored when resume_dir is set */
    const char *data, *out_dir;
    const char *text_data;      /* text-only samples mixed in with probability text_ratio */
    double text_ratio;
    const char *eval_data;
    int eval_every;             /* 0: only at the end */
    const char *resume_dir;
    const char *trainable;      /* NULL: the stage's default set */
    const char *log_path;       /* NULL: <out_dir>/train_log.jsonl */
    int stage;
    int64_t steps;              /* > 0: exactly this many optimizer steps */
    int epochs;                 /* used when steps == 0 (default 1) */
    int batch, grad_accum;
    double lr, weight_decay, clip, beta1, beta2, eps;
    int64_t warmup;
    int cosine;
    int decay_all;              /* weight decay on norms and biases too (PyTorch default on a plain list) */
    uint64_t seed;
    int save_every;             /* 0: only at the end */
    int threads;
    int max_tiles;              /* 0: the config's max_dynamic_patch */
    int recompute;              /* activation recomputation */
    int compute;                /* NVLM_COMPUTE_*: the forward's matrix products (the frozen ViT included; a trained one is f32) */
    volatile sig_atomic_t *stop;/* set (e.g. by SIGINT): save and return NVLM_E_CANCELLED */
    nvlm_dist *dist;            /* data parallel over a job of N ranks (docs/distributed.md): each
                                   step's samples dealt round-robin, gradients summed before AdamW;
                                   rank 0 saves and logs. NULL: one process */
} nvlm_train_opts;

void nvlm_train_opts_default(nvlm_train_opts *o);

typedef struct nvlm_train_report {
    int64_t step, total_steps;
    int epoch;
    double loss, lr, grad_norm, tokens_per_s, elapsed_s, eta_s;
    int eval;                   /* 1: an evaluation line (eval_loss, eval_acc valid) */
    double eval_loss, eval_acc;
    const char *event;          /* NULL, or "saved" / "resumed" / "interrupted" with path */
    const char *path;
    long peak_rss_mb;
    double step_s;              /* wall time of this step alone (not evaluation or saving) */
    int samples;                /* sequences in the step (batch x grad-accum) */
} nvlm_train_report;

typedef void (*nvlm_train_cb)(void *user, const nvlm_train_report *r);

int nvlm_train_run(const nvlm_train_opts *o, nvlm_train_cb cb, void *user, nvlm_err *err);
#endif
