/* safetensors.h - zero-copy access to a Hugging Face safetensors checkpoint, single file
 * (model.safetensors) or sharded (model.safetensors.index.json + shards). Every file is
 * memory-mapped and its header validated (length, JSON, dtype, shape x dtype == span,
 * spans inside the file and non-overlapping). Internal. */
#ifndef NVLM_MODEL_SAFETENSORS_H
#define NVLM_MODEL_SAFETENSORS_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

typedef enum nvlm_dtype {
    NVLM_DT_F32 = 0,
    NVLM_DT_F16 = 1,
    NVLM_DT_BF16 = 2,
    NVLM_DT_Q8_0 = 3,  /* reserved for quantized weights (docs/quantization.md) */
    NVLM_DT_Q4 = 4,
    NVLM_DT_Q4_0 = 5,
    NVLM_DT_COUNT          /* formats: kernels/dtype.h's table has one row for each */
} nvlm_dtype;

/* From the traits table (kernels/dtype.c): the safetensors name ("?" for no format); bytes per
 * element for F32/F16/BF16, 0 for block formats. */
const char *nvlm_dtype_name(nvlm_dtype t);
size_t nvlm_dtype_size(nvlm_dtype t);

#define NVLM_MAX_DIMS 8

typedef struct nvlm_tensor {
    const char *name;
    nvlm_dtype dtype;
    int ndim;
    int64_t shape[NVLM_MAX_DIMS];
    int64_t numel;
    const void *data;   /* inside the mapping; aligned only as the file aligns it */
    uint64_t nbytes;
    const char *file;   /* the file it lives in (for error messages) */
} nvlm_tensor;

typedef struct nvlm_st nvlm_st;

/* Opens <dir>/model.safetensors.index.json if present (every shard it names), else
 * <dir>/model.safetensors. */
int nvlm_st_open(const char *dir, nvlm_st **out, nvlm_err *err);
void nvlm_st_close(nvlm_st *st);

size_t nvlm_st_count(const nvlm_st *st);
/* The "nvlm_checkpoint" id a training save stamps into __metadata__ (NULL when absent): the
 * weights and the trainer state of one save carry the same id. */
const char *nvlm_st_checkpoint(const nvlm_st *st);
const nvlm_tensor *nvlm_st_at(const nvlm_st *st, size_t i);
/* NULL when absent. */
const nvlm_tensor *nvlm_st_find(const nvlm_st *st, const char *name);

/* Looks up a tensor that must exist with exactly this shape (ndim values); the error names
 * the tensor, the file and the expected vs found shape. */
int nvlm_st_expect(const nvlm_st *st, const char *name, int ndim, const int64_t *shape,
                   const nvlm_tensor **out, nvlm_err *err);
/* ---- additions (safetensors.c) ---- */

/* Parses one safetensors image held in memory (not copied: data must outlive the result);
 * `origin` names it in errors. Same validation as nvlm_st_open. Used by the fuzzer and by
 * tools that already hold the bytes. */
int nvlm_st_parse_buffer(const uint8_t *data, size_t len, const char *origin, nvlm_st **out,
                         nvlm_err *err);

/* Files behind the checkpoint (1 for model.safetensors, the shards otherwise). */
size_t nvlm_st_file_count(const nvlm_st *st);
const char *nvlm_st_file_path(const nvlm_st *st, size_t i);
/* Sum of the tensors' byte spans. */
uint64_t nvlm_st_total_bytes(const nvlm_st *st);

/* For changes in place that keep the bytes' size (packed layouts, model/quant.c): on = 1 makes
 * every read-in arena (below) writable, each as a whole; on = 0 seals them again. Whole arenas,
 * because changing the protection of part of one splits its mapping (and any huge page across
 * the cut). 0, or -1 when mprotect refused (nothing to undo then). */
int nvlm_st_arenas_writable(nvlm_st *st, int on);
/* 1 when [p, p + n) lies inside one of st's read-in arenas. */
int nvlm_st_in_arena(const nvlm_st *st, const void *p, size_t n);

/* Moves every tensor's data from the file mappings into the process's own memory: one
 * read-only anonymous arena per file (on huge pages where the system allows), each tensor
 * read with pread at a 64-byte boundary, by up to n_threads threads (<= 0: one per online CPU;
 * at most 8) that take 8 MiB pieces in turn; the file mappings are then dropped. Tensor
 * pointers change (call before binding them). Why: generation streams the weights, and
 * measured here it runs up to ~10% faster from anonymous memory than from page-cache pages
 * (docs/performance.md); several readers copy and zero pages faster than one. progress (may
 * be NULL) is called on the calling thread with bytes done / total, after each piece it read
 * and once at the end of each file, and cancels by returning non-zero. On failure st is still
 * valid (the files not yet moved stay mapped). Files already in memory are left as they are. */
typedef int (*nvlm_st_progress)(void *user, uint64_t done, uint64_t total);
int nvlm_st_read_into_memory(nvlm_st *st, int n_threads, nvlm_st_progress progress, void *user, nvlm_err *err);
/* The same, but the tensors for which keep(keep_user, name) returns 1 stay in their file's
 * mapping (that file's mapping is then kept); progress counts the bytes read. For tensors
 * read once per use, where page-cache pages serve as well and anonymous pages would cost
 * their zeroing at load (docs/performance.md "bf16 compute"). keep NULL: every tensor read. */
typedef int (*nvlm_st_keep_mapped)(void *user, const char *name);
int nvlm_st_read_some_into_memory(nvlm_st *st, int n_threads, nvlm_st_keep_mapped keep, void *keep_user,
                                  nvlm_st_progress progress, void *user, nvlm_err *err);

/* Copies n bytes at byte off of tensor t into dst, with pread from its file (not through the
 * mapping: the pages stay out of the process) or from memory when already read. What a
 * tensor-parallel rank uses to read only its rows; errors name the tensor and the file. */
int nvlm_st_read_span(const nvlm_st *st, const nvlm_tensor *t, uint64_t off, uint64_t n, void *dst, nvlm_err *err);

/* What model.safetensors.index.json says, without opening the shards (works on a folder
 * that holds only config.json + index, like the 72B reference). */
typedef struct nvlm_st_index_info {
    size_t n_tensors;      /* weight_map entries */
    size_t n_files;        /* distinct shard names */
    size_t n_present;      /* of those, files that exist in the folder */
    int64_t total_size;    /* metadata.total_size, -1 when absent */
} nvlm_st_index_info;
int nvlm_st_index_summary(const char *dir, nvlm_st_index_info *out, nvlm_err *err);

/* Upper bound on a header (the safetensors reference implementation uses 100 MB). */
#define NVLM_ST_MAX_HEADER (100u * 1000u * 1000u)
#endif
