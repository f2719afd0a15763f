/* The kernel table (dispatch.h): every op at every level, read by the dispatch and by
 * `nvlm info --cpu`. */
#include "kernels/dispatch.h"
#include "core/err.h"
#include "kernels/cpu.h"
#include "kernels/simd.h"
#include "kernels/simd512.h"
#include "kernels/gemv_vnni.h"
#include "kernels/simd_neon.h"

#ifdef NVLM_HAVE_AVX2_KERNELS
_Static_assert(NVLM_GEN_TOKENS == NVLM_GEMV_MAX, "generation ops are what the AVX2 kernels stream");
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
_Static_assert(NVLM_GEN_TOKENS == NVLM_GEMV_NEON_MAX, "generation ops are what the NEON kernels stream");
#endif

/* The AVX-512 products say -1 when out of memory; the table's functions word the error. */
#ifdef NVLM_HAVE_AVX512_KERNELS
static int nomem(nvlm_err *err) {
    return nvlm_fail(err, NVLM_E_NOMEM, "out of memory: the scratch of a matrix product (AVX-512 kernels) could not be had; "
                     "free memory or run fewer tokens at once");
}
static int mm_gemm_avx512(nvlm_pool *p, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *b,
                          nvlm_err *err) {
    return nvlm_gemm_avx512(p, y, x, n_tok, w, b) ? nomem(err) : NVLM_OK;
}
static int mm_multi_avx512(nvlm_pool *p, int n_w, float *const *y, const float *x, int n_tok, const nvlm_wmat *const *w,
                           const float *const *b, nvlm_err *err) {
    return nvlm_gemm_multi_avx512(p, n_w, y, x, n_tok, w, b) ? nomem(err) : NVLM_OK;
}
static int mm_gemv_avx512(nvlm_pool *p, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *b,
                          nvlm_err *err) {
    return nvlm_gemv_avx512(p, y, x, n_tok, w, b) ? nomem(err) : NVLM_OK;
}
#endif
#ifdef NVLM_HAVE_VNNI_KERNELS
/* Q8_0/Q4/Q4_0 generation at the VNNI levels, int8 activations: every output nvlm_vec_dot_q's bits,
 * packed or not, so a model gives the same values whether its matrices were packed (one process)
 * or not (a tensor-parallel rank's slice, a shape that cannot be packed). NVLM_WL_Q16 (kernels/
 * ops.h) runs the vpdpbusd product in place; a row-major matrix the slower exact kernels
 * (gemv_vnni.c for up to 3 tokens, else a per-call packing). NVLM_QACT=f32: float x, as at AVX2. */
static int mm_gen_vnni(nvlm_pool *p, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *b,
                       nvlm_err *err) {
    if (!nvlm_pool_int8_act_for(p, w->dtype)) {
        if (w->layout == NVLM_WL_ROWS) return nvlm_gemv_avx2(p, y, x, n_tok, w, b, err);
        return nvlm_fail(err, NVLM_E_INVALID_ARG,
                         "a %s matrix packed for int8 activations cannot take float ones (NVLM_QACT=f32 set after it was "
                         "packed); load the model again", nvlm_dtype_name(w->dtype));
    }
    int rc = w->layout == NVLM_WL_ROWS && n_tok <= NVLM_VNNI_GEMV_MAX ? nvlm_gemv_vnni(p, y, x, n_tok, w, b)
                                                                       : nvlm_gemm_vnni(p, y, x, n_tok, w, b);
    return rc ? nomem(err) : NVLM_OK;
}
#endif
static void attention_scalar(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                             size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                             size_t out_stride, float *scratch) {
    for (int i = 0; i < n_q; i++) {
        int len = causal_pos0 < 0 ? n_keys : causal_pos0 + i + 1;
        if (len > n_keys) len = n_keys;
        nvlm_attend(q + (size_t)i * q_stride, k, k_stride, v, v_stride, len, d, scale, scratch,
                    out + (size_t)i * out_stride);
    }
}
static size_t attention_scratch_scalar(int n_q, int n_keys, int d) {
    (void)n_q, (void)d;
    return (size_t)(n_keys > 0 ? n_keys : 1);
}
#ifdef NVLM_HAVE_NEON_KERNELS
/* Generation rows take any number of tokens (a batch of generating sequences), 3 at a time:
 * each token's values are those it has alone. */
static int gemv_neon_any(nvlm_pool *p, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *b,
                         nvlm_err *err) {
    for (int t = 0; t < n_tok; t += NVLM_GEMV_NEON_MAX) {
        int n = n_tok - t < NVLM_GEMV_NEON_MAX ? n_tok - t : NVLM_GEMV_NEON_MAX;
        int rc = nvlm_gemv_neon(p, y + (size_t)t * w->rows, x + (size_t)t * w->cols, n, w, b, err);
        if (rc) return rc;
    }
    return NVLM_OK;
}
#endif
static void row_to_f32_scalar(float *dst, const void *src, nvlm_dtype t, int n) { nvlm_row_to_f32(dst, src, t, n); }

#define MM(op_, level_, name_, fn_, multi_) {.op = (op_), .level = (level_), .name = (name_), .matmul = (fn_), .matmul_multi = (multi_)}
#define ATT(op_, level_, name_, fn_, scratch_) \
    {.op = (op_), .level = (level_), .name = (name_), .attention = (fn_), .attention_scratch = (scratch_)}
#define GELU(level_, name_, fn_) {.op = NVLM_OP_GELU, .level = (level_), .name = (name_), .gelu = (fn_)}
#define SILU(level_, name_, fn_) {.op = NVLM_OP_SILU_MUL, .level = (level_), .name = (name_), .silu_mul = (fn_)}
#define CONV(level_, name_, fn_) {.op = NVLM_OP_CONVERT, .level = (level_), .name = (name_), .row_to_f32 = (fn_)}

/* Per op, rows in increasing level: the last row a level includes wins. */
static const nvlm_kernel table[] = {
    MM(NVLM_OP_PREFILL_F32, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_PREFILL_F16, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_PREFILL_BF16, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_PREFILL_Q8_0, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_PREFILL_Q4, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_PREFILL_Q4_0, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_F32, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_F16, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_BF16, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_Q8_0, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_Q4, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    MM(NVLM_OP_GEN_Q4_0, NVLM_CPU_SCALAR, "matmul_scalar (row blocks, nvlm_dot)", nvlm_matmul_scalar, NULL),
    ATT(NVLM_OP_ATTENTION, NVLM_CPU_SCALAR, "nvlm_attend per query", attention_scalar, attention_scratch_scalar),
    ATT(NVLM_OP_ATTENTION_GEN, NVLM_CPU_SCALAR, "nvlm_attend per query", attention_scalar, attention_scratch_scalar),
    GELU(NVLM_CPU_SCALAR, "nvlm_gelu (erff)", nvlm_gelu),
    SILU(NVLM_CPU_SCALAR, "nvlm_silu_mul (expf)", nvlm_silu_mul),
    CONV(NVLM_CPU_SCALAR, "nvlm_row_to_f32", row_to_f32_scalar),
#ifdef NVLM_HAVE_AVX2_KERNELS
    MM(NVLM_OP_PREFILL_F32, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, packed)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_PREFILL_F16, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, packed; vcvtph2ps)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_PREFILL_BF16, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, packed; bf16 shift)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_PREFILL_Q8_0, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, blocks to f32)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_PREFILL_Q4, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, blocks to f32)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_PREFILL_Q4_0, NVLM_CPU_AVX2, "gemm_avx2 (6x16 ymm, blocks to f32)", nvlm_gemm_avx2, nvlm_gemm_multi_avx2),
    MM(NVLM_OP_GEN_F32, NVLM_CPU_AVX2, "gemv_avx2 (ymm rows)", nvlm_gemv_avx2, NULL),
    MM(NVLM_OP_GEN_F16, NVLM_CPU_AVX2, "gemv_avx2 (ymm rows; vcvtph2ps)", nvlm_gemv_avx2, NULL),
    MM(NVLM_OP_GEN_BF16, NVLM_CPU_AVX2, "gemv_avx2 (ymm rows; bf16 shift)", nvlm_gemv_avx2, NULL),
    MM(NVLM_OP_GEN_Q8_0, NVLM_CPU_AVX2, "gemv_avx2 (int8 x, vpmaddubsw; NVLM_QACT=f32: float x)", nvlm_gemv_avx2, NULL),
    MM(NVLM_OP_GEN_Q4, NVLM_CPU_AVX2, "gemv_avx2 (int8 x, vpmaddubsw; NVLM_QACT=f32: float x)", nvlm_gemv_avx2, NULL),
    MM(NVLM_OP_GEN_Q4_0, NVLM_CPU_AVX2, "gemv_avx2 (int8 x, vpmaddubsw; NVLM_QACT=f32: float x)", nvlm_gemv_avx2, NULL),
    ATT(NVLM_OP_ATTENTION, NVLM_CPU_AVX2, "attention_avx2 (QK^T, softmax, PV on the 6x16 kernel)", nvlm_attention_avx2,
        nvlm_attention_scratch_avx2),
    ATT(NVLM_OP_ATTENTION_GEN, NVLM_CPU_AVX2, "attend_direct avx2 (K, V read in place)", nvlm_attention_avx2,
        nvlm_attention_scratch_avx2),
    GELU(NVLM_CPU_AVX2, "gelu_avx2 (rational erf)", nvlm_gelu_avx2),
    SILU(NVLM_CPU_AVX2, "silu_mul_avx2 (Cephes exp)", nvlm_silu_mul_avx2),
    CONV(NVLM_CPU_AVX2, "row_to_f32_avx2", nvlm_row_to_f32_avx2),
#endif
#ifdef NVLM_HAVE_AVX512_KERNELS
    /* the bits of the AVX2 rows above (simd512.h), faster */
    MM(NVLM_OP_PREFILL_F32, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, packed)", mm_gemm_avx512, mm_multi_avx512),
    MM(NVLM_OP_PREFILL_F16, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, packed; vcvtph2ps)", mm_gemm_avx512,
       mm_multi_avx512),
    MM(NVLM_OP_PREFILL_BF16, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, packed; bf16 shift)", mm_gemm_avx512,
       mm_multi_avx512),
    MM(NVLM_OP_PREFILL_Q8_0, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, blocks to f32)", mm_gemm_avx512,
       mm_multi_avx512),
    MM(NVLM_OP_PREFILL_Q4, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, blocks to f32)", mm_gemm_avx512,
       mm_multi_avx512),
    MM(NVLM_OP_PREFILL_Q4_0, NVLM_CPU_AVX512, "gemm_avx512 (14x32 zmm, blocks to f32)", mm_gemm_avx512,
       mm_multi_avx512),
    MM(NVLM_OP_GEN_F32, NVLM_CPU_AVX512, "gemv_avx512 (one stream: rows packed 8 x 16; batches: 8 tokens a pass)", mm_gemv_avx512, NULL),
    MM(NVLM_OP_GEN_F16, NVLM_CPU_AVX512, "gemv_avx512 (one stream: rows packed 8 x 16; vcvtph2ps; batches: 8 tokens a pass)", mm_gemv_avx512, NULL),
    MM(NVLM_OP_GEN_BF16, NVLM_CPU_AVX512, "gemv_avx512 (one stream: rows packed 8 x 16; bf16 shift; batches: 8 tokens a pass)", mm_gemv_avx512, NULL),
#endif
#ifdef NVLM_HAVE_VNNI_KERNELS
    MM(NVLM_OP_GEN_Q8_0, NVLM_CPU_AVX512_VNNI, "gemm_vnni (rows packed 16 a panel, int8 x, vpdpbusd; row-major: gemv_vnni)", mm_gen_vnni, NULL),
    MM(NVLM_OP_GEN_Q4, NVLM_CPU_AVX512_VNNI, "gemm_vnni (rows packed 16 a panel, int8 x, vpdpbusd; row-major: gemv_vnni)", mm_gen_vnni, NULL),
    MM(NVLM_OP_GEN_Q4_0, NVLM_CPU_AVX512_VNNI, "gemm_vnni (rows packed 16 a panel, int8 x, vpdpbusd; row-major: gemv_vnni)", mm_gen_vnni, NULL),
    ATT(NVLM_OP_ATTENTION, NVLM_CPU_AVX512, "attention_avx512 (QK^T, softmax, PV on the 14x32 kernel)",
        nvlm_attention_avx512, nvlm_attention_scratch_avx512),
    GELU(NVLM_CPU_AVX512, "gelu_avx512 (rational erf)", nvlm_gelu_avx512),
    SILU(NVLM_CPU_AVX512, "silu_mul_avx512 (Cephes exp)", nvlm_silu_mul_avx512),
    CONV(NVLM_CPU_AVX512, "row_to_f32_avx512", nvlm_row_to_f32_avx512),
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    MM(NVLM_OP_PREFILL_F32, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_PREFILL_F16, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_PREFILL_BF16, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_PREFILL_Q8_0, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_PREFILL_Q4, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_PREFILL_Q4_0, NVLM_CPU_NEON, "gemm_neon (8x12, packed)", nvlm_gemm_neon, NULL),
    MM(NVLM_OP_GEN_F32, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    MM(NVLM_OP_GEN_F16, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    MM(NVLM_OP_GEN_BF16, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    MM(NVLM_OP_GEN_Q8_0, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    MM(NVLM_OP_GEN_Q4, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    MM(NVLM_OP_GEN_Q4_0, NVLM_CPU_NEON, "gemv_neon (3 tokens a pass)", gemv_neon_any, NULL),
    ATT(NVLM_OP_ATTENTION, NVLM_CPU_NEON, "attention_neon", nvlm_attention_neon, nvlm_attention_scratch_neon),
    ATT(NVLM_OP_ATTENTION_GEN, NVLM_CPU_NEON, "attention_neon", nvlm_attention_neon, nvlm_attention_scratch_neon),
    GELU(NVLM_CPU_NEON, "gelu_neon", nvlm_gelu_neon),
    SILU(NVLM_CPU_NEON, "silu_mul_neon", nvlm_silu_mul_neon),
    CONV(NVLM_CPU_NEON, "row_to_f32_neon", nvlm_row_to_f32_neon),
#endif
};

const nvlm_kernel *nvlm_kernel_for(nvlm_op op, int level) {
    const nvlm_kernel *best = &table[0];
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].op == op && nvlm_cpu_at_least(level, table[i].level)) best = &table[i];
    return best;
}

nvlm_op nvlm_product_op(nvlm_dtype dt, int gen) {
    return (nvlm_op)((gen ? NVLM_OP_GEN_F32 : NVLM_OP_PREFILL_F32) + (int)dt);
}

nvlm_op nvlm_matmul_op(nvlm_dtype dt, int n_tok) { return nvlm_product_op(dt, n_tok <= NVLM_GEN_TOKENS); }

const char *nvlm_op_name(nvlm_op op) {
    static const char *const names[NVLM_OP_COUNT] = {
        [NVLM_OP_PREFILL_F32] = "matmul F32 prefill",   [NVLM_OP_PREFILL_F16] = "matmul F16 prefill",
        [NVLM_OP_PREFILL_BF16] = "matmul BF16 prefill", [NVLM_OP_PREFILL_Q8_0] = "matmul Q8_0 prefill",
        [NVLM_OP_PREFILL_Q4] = "matmul Q4 prefill",     [NVLM_OP_PREFILL_Q4_0] = "matmul Q4_0 prefill",
        [NVLM_OP_GEN_F32] = "matmul F32 generation",
        [NVLM_OP_GEN_F16] = "matmul F16 generation",    [NVLM_OP_GEN_BF16] = "matmul BF16 generation",
        [NVLM_OP_GEN_Q8_0] = "matmul Q8_0 generation",  [NVLM_OP_GEN_Q4] = "matmul Q4 generation",
        [NVLM_OP_GEN_Q4_0] = "matmul Q4_0 generation",
        [NVLM_OP_ATTENTION] = "attention prefill/ViT",  [NVLM_OP_ATTENTION_GEN] = "attention generation",
        [NVLM_OP_GELU] = "GELU",                        [NVLM_OP_SILU_MUL] = "SiLU x up",
        [NVLM_OP_CONVERT] = "F16/BF16/Q -> F32 rows",
    };
    return op < NVLM_OP_COUNT && names[op] ? names[op] : "?";
}
