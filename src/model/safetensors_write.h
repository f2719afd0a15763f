/* safetensors_write.h - writing safetensors checkpoints (mkmodel, the trainer, quantize).
 *
 * Collect tensors (borrowed data, or a fill callback that produces the bytes at write
 * time so that a checkpoint larger than memory can be generated), then write one file or
 * a folder (model.safetensors, or N shards + model.safetensors.index.json).
 *
 * The files follow the format exactly as Hugging Face's safetensors library reads it:
 * header keys sorted, "__metadata__": {"format": "pt"}, header padded with spaces to a
 * multiple of 8 bytes, data spans contiguous (no gaps: the Rust reader refuses them).
 * Spans are laid out so that every tensor whose size is a multiple of 8 bytes starts at
 * an 8-byte aligned offset (they come first) and every other tensor at least at a multiple
 * of its element size. Every file is written to a temporary name, flushed, then renamed:
 * a crash never leaves a half-written checkpoint under the final name. Internal. */
#ifndef NVLM_MODEL_SAFETENSORS_WRITE_H
#define NVLM_MODEL_SAFETENSORS_WRITE_H
#include "model/safetensors.h"
#include <stdio.h>

typedef struct nvlm_stw nvlm_stw;

/* Produces the nbytes bytes of tensor `name` (already in dtype dt, little-endian) in dst. */
typedef int (*nvlm_stw_fill_fn)(void *user, const char *name, nvlm_dtype dt, void *dst,
                                uint64_t nbytes, nvlm_err *err);

int nvlm_stw_new(nvlm_stw **out, nvlm_err *err);
void nvlm_stw_free(nvlm_stw *w);

/* Adds a tensor whose bytes (dt, little-endian, row-major) are at data. The pointer is
 * borrowed: it must stay valid until the last write call. dt: F32, F16 or BF16. */
int nvlm_stw_add(nvlm_stw *w, const char *name, nvlm_dtype dt, int ndim, const int64_t *shape,
                 const void *data, nvlm_err *err);
/* Adds a tensor whose bytes fill(user, ...) produces while writing. */
int nvlm_stw_add_fill(nvlm_stw *w, const char *name, nvlm_dtype dt, int ndim,
                      const int64_t *shape, nvlm_stw_fill_fn fill, void *user, nvlm_err *err);

/* Adds "key": "value" to every file's __metadata__ (key: [a-z0-9_]; value without quotes,
 * backslashes or control characters). */
int nvlm_stw_set_meta(nvlm_stw *w, const char *key, const char *value, nvlm_err *err);
size_t nvlm_stw_count(const nvlm_stw *w);
uint64_t nvlm_stw_total_bytes(const nvlm_stw *w);

/* Writes every tensor into one safetensors file at path (atomically). */
int nvlm_stw_write_file(const nvlm_stw *w, const char *path, nvlm_err *err);

/* Writes into folder dir: n_shards <= 1 gives dir/model.safetensors (and removes a stale
 * model.safetensors.index.json, which loaders would prefer); n_shards > 1 gives
 * model-0000k-of-0000N.safetensors (tensors in name order, cut by cumulative size) plus
 * model.safetensors.index.json, written last (and removes a stale model.safetensors). */
int nvlm_stw_write_dir(const nvlm_stw *w, const char *dir, int n_shards, nvlm_err *err);

/* Writes bytes to path atomically (temporary file, fsync, rename). */
int nvlm_write_file_atomic(const char *path, const void *data, size_t len, nvlm_err *err);

/* A file written atomically piece by piece: nvlm_atomic_open gives f on a temporary name
 * beside path; nvlm_atomic_close(ok) flushes, syncs and renames it over path (ok) or removes
 * it (!ok, or any error), so path holds either its old bytes or all the new ones. A reader
 * that has the old file mapped keeps its pages. */
typedef struct nvlm_atomic_file {
    FILE *f;
    char *tmp;
    const char *path;
} nvlm_atomic_file;
int nvlm_atomic_open(nvlm_atomic_file *a, const char *path, nvlm_err *err);
int nvlm_atomic_close(nvlm_atomic_file *a, int ok, nvlm_err *err);

/* Copies each file of names[0..n) that from_dir has into to_dir, atomically. */
int nvlm_copy_files(const char *from_dir, const char *to_dir, const char *const *names, size_t n, nvlm_err *err);
/* The files of a checkpoint folder beside its weights (config.json, the tokenizer's files,
 * generation and preprocessor configs): each one from_dir has is copied into to_dir
 * atomically. */
int nvlm_copy_side_files(const char *from_dir, const char *to_dir, nvlm_err *err);
/* 1 when paths a and b name the same existing folder (symbolic links, "..", trailing
 * slashes resolved). */
int nvlm_same_dir(const char *a, const char *b);
#endif
