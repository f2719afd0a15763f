/* quant.h - block-quantized weights (docs/quantization.md): quantize a loaded model's matrices
 * in memory (nvlm_load_options.weights), or write a quantized copy of a model folder that the
 * engine loads directly (nvlm quantize). Matrices whose rows do not divide into 32-value
 * blocks keep their stored format and are reported. Internal. */
#ifndef NVLM_MODEL_QUANT_H
#define NVLM_MODEL_QUANT_H
#include "model/model.h"

typedef struct nvlm_quant_report {
    int n_quantized, n_kept;
    char kept[4096];             /* "name [rows x cols]; ..." of the matrices left as stored */
    uint64_t bytes_before, bytes_after; /* of the matrices considered */
} nvlm_quant_report;

/* The quantized formats' names, one table: "q8_0" (also "q8"), "q4" (also "q4_1", its layout)
 * and "q4_0", any case. nvlm_quant_parse: 0 and *out set on success, -1 for another name;
 * nvlm_quant_weights: the NVLM_WEIGHTS_* value of the name (-1 when none); NVLM_QUANT_NAMES for
 * help texts and errors. */
#define NVLM_QUANT_NAMES "q8_0, q4 or q4_0"
int nvlm_quant_parse(const char *s, nvlm_dtype *out);
int nvlm_quant_weights(const char *s);
/* The name of an NVLM_WEIGHTS_* value ("as stored" for NVLM_WEIGHTS_STORED). */
const char *nvlm_quant_weights_name(int weights);

/* The format a matrix gets when `to` is requested: the 4-bit formats keep the token embedding,
 * lm_head and the vision side (ViT, projector) at Q8_0 for quality; everything else gets `to`. */
nvlm_dtype nvlm_quant_target(const char *tensor_name, nvlm_dtype to);

/* Replaces every matrix of m by a quantized copy owned by m. rep may be NULL. */
int nvlm_quantize_model(nvlm_model *m, nvlm_dtype to, nvlm_quant_report *rep, nvlm_err *err);

/* Packs the LLM's row-major matrices (its layers', and an untied lm_head) into the layouts the
 * pool's kernel level reads fastest in generation (kernels/wpack.h): Q8_0/Q4/Q4_0 into NVLM_WL_Q16 at
 * the VNNI levels always; F32/F16/BF16 into NVLM_WL_P8 at the AVX-512 levels only for `streams`
 * <= 1 sequences generating at once (several tokens read it slower than row-major). Same values;
 * the row-major bytes are released. Called when an engine is created (after any
 * nvlm_model_quantize); a matrix already packed is left alone. */
int nvlm_model_pack(nvlm_model *m, int streams, nvlm_err *err);

/* Writes out_dir: config.json and tokenizer files copied, model.safetensors with every 2-D
 * matrix in Q8_0/Q4/Q4_0 (dtype strings "Q8_0"/"Q4_1"/"Q4_0", shape [rows, cols]) and the rest as stored. */
int nvlm_quantize_folder(const char *in_dir, const char *out_dir, nvlm_dtype to,
                         nvlm_quant_report *rep, nvlm_err *err);
#endif
