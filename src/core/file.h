/* file.h - reading and mapping files with errors that name the path. Internal. */
#ifndef NVLM_CORE_FILE_H
#define NVLM_CORE_FILE_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

/* Reads a whole file into a malloc'ed buffer with a NUL byte after the data (not counted
 * in *len). max_len bounds the size (0: no bound beyond memory). */
int nvlm_read_file(const char *path, size_t max_len, char **data, size_t *len, nvlm_err *err);

/* A read-only memory mapping of a whole file. */
typedef struct nvlm_mapped_file {
    const uint8_t *data;
    size_t len;
} nvlm_mapped_file;

int nvlm_map_file(const char *path, nvlm_mapped_file *out, nvlm_err *err);
void nvlm_unmap_file(nvlm_mapped_file *f);

/* "dir/name" in a malloc'ed string (NULL on allocation failure). */
char *nvlm_path_join(const char *dir, const char *name);
/* 1 if path names an existing regular file. */
int nvlm_file_exists(const char *path);
#endif
