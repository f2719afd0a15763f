/* model.h - a loaded NVLM model: config, mapped weights bound to the layers that use them,
 * tokenizer and thread pool. One structure serves NVLM-D, -X and -H; the differences are the
 * optional cross-attention blocks and how prompts are laid out (src/generate). Internal. */
#ifndef NVLM_MODEL_MODEL_H
#define NVLM_MODEL_MODEL_H
#include "kernels/ops.h"
#include "kernels/pool.h"
#include "core/file.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "nvlm.h"

typedef struct vit_layer {
    const float *norm1, *norm2;      /* [C] */
    const float *q_norm, *k_norm;    /* [E] */
    const float *proj_bias;          /* [C] */
    const float *ls1, *ls2;          /* [C] */
    const float *fc1_bias, *fc2_bias;
    nvlm_wmat qkv;                   /* [3E, C] */
    nvlm_wmat proj;                  /* [C, E] */
    nvlm_wmat fc1, fc2;              /* [I_v, C], [C, I_v] */
} vit_layer;

typedef struct llm_layer {
    const float *input_norm, *post_norm;  /* [h] */
    const float *bq, *bk, *bv;            /* [n_h d], [n_kv d], [n_kv d] */
    nvlm_wmat wq, wk, wv, wo;
    nvlm_wmat gate, up, down;
} llm_layer;

/* NVLM-X/H gated cross-attention block (docs/spec.md §12). */
typedef struct xattn_block {
    const float *input_norm, *post_norm;  /* [h] */
    const float *q_norm, *k_norm;         /* [d] */
    float attn_gate, mlp_gate;            /* tanh already applied */
    nvlm_wmat wq, wk, wv, wo;
    nvlm_wmat gate, up, down;
} xattn_block;

struct nvlm_model {
    nvlm_config cfg;
    nvlm_st *st;
    int weights_read;                /* the tensors were read into memory (else mapped) */
    nvlm_tokenizer *tok;
    nvlm_pool *pool;

    /* InternViT */
    int vit_dummy_heads;             /* D_v, derived from the qkv shape */
    int vit_width;                   /* E = (H_v + D_v) * d_v */
    nvlm_wmat patch;                 /* [C, 3 p p] */
    const float *patch_bias;         /* [C] */
    const float *cls;                /* [C] */
    const float *pos;                /* [(P+1), C] */
    vit_layer *vit;

    /* projector mlp1: LayerNorm then projector_depth Linear layers with GELU between */
    const float *proj_ln_w, *proj_ln_b;
    nvlm_wmat *proj;                 /* [projector_depth] */

    /* Qwen2 */
    nvlm_wmat embed;                 /* [V, h] */
    llm_layer *llm;
    const float *final_norm;
    nvlm_wmat lm_head;
    xattn_block *xattn;              /* [cfg.num_xattn], NULL for NVLM-D */

    int kv_f16;                      /* NVLM_KV_F16: chats keep keys/values in F16 */

    /* special ids from the checkpoint's own tokenizer */
    int32_t id_im_start, id_im_end, id_img_context;

    /* tensor parallel (src/dist): this rank's rows of every matrix, in one arena */
    nvlm_mapped_file slices;
    uint8_t *slice_mem;
    size_t slice_used;

    /* buffers made at load (float32 copies of small vectors, quantized matrices), freed with the model */
    void **owned;
    int n_owned, cap_owned;
};

/* Hands a malloc'ed buffer to the model, which frees it with itself; -1 (buffer not taken) when
 * out of memory. */
int nvlm_model_own(nvlm_model *m, void *p);
/* Frees a buffer the model owns now (a tensor-parallel slice replaced by its quantized copy);
 * 0 when p is not one of them (it lies in the slice arena). */
int nvlm_model_release(nvlm_model *m, const void *p);
/* How nvlm_model_load brings `need` bytes of weights in, with `avail` bytes of MemAvailable
 * (0: unknown): NVLM_IO_READ or NVLM_IO_MMAP for io = NVLM_IO_AUTO (read under 3/4 of avail),
 * io itself otherwise; a negative status when io is not an NVLM_IO_* value, or when reading
 * was asked for and the weights exceed avail (an error now, not the OOM killer later). */
int nvlm_weights_io_choice(int io, uint64_t need, uint64_t avail, nvlm_err *err);

/* Runs InternViT + pixel shuffle + projector on n_tiles normalised tiles
 * ([n_tiles, 3, S, S] float32) and writes [n_tiles, 256, h] to out. */
int nvlm_encode_tiles(nvlm_model *m, const float *pixels, int n_tiles, float *out, nvlm_err *err);
/* The ViT alone: [n_tiles, P, C] patch features (class token dropped). */
int nvlm_vit_forward(nvlm_model *m, const float *pixels, int n_tiles, float *out, nvlm_err *err);
/* Pixel shuffle v2 of one tile's [G*G, C] features into [(G/2)^2, 4C]. */
void nvlm_pixel_shuffle(const float *in, int grid, int channels, float *out);
/* mlp1 on n rows of [4C] -> [n, h]. */
int nvlm_projector(nvlm_model *m, const float *in, int n, float *out, nvlm_err *err);
#endif
