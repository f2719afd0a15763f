/* finite.h - NaN/Inf checks: on the activations between LLM layers (so that a bad weight is
 * refused with the layer named instead of answering "!!!!") and over a checkpoint's tensors
 * (`nvlm info --check-weights`). Internal. */
#ifndef NVLM_MODEL_FINITE_H
#define NVLM_MODEL_FINITE_H
#include "model/safetensors.h"
#include "nvlm.h"
#include <stddef.h>

/* 1 when every one of the n floats is finite. A bit test that vectorises; costs one read of
 * the row block, nothing next to the matrix products that produced it. */
int nvlm_all_finite(const float *x, size_t n);

/* The error for activations gone non-finite; `where` names the layer ("decoder layer 3 of 24"). */
int nvlm_fail_nonfinite(nvlm_err *err, const char *where);

/* Index of the first NaN/Inf element of a F32/F16/BF16 tensor (for Q8_0/Q4: the first weight
 * of the first block whose f16 scale or minimum is NaN/Inf), or -1 when all are finite. */
int64_t nvlm_tensor_first_nonfinite(const nvlm_tensor *t);
#endif
