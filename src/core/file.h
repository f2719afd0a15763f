/* file.h - reading and mapping files with errors that name the path. Internal. */
#ifndef NVLM_CORE_FILE_H
#define NVLM_CORE_FILE_H
#include "nvlm.h"
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

/* Opens path read-only for a regular file only: the open is O_NONBLOCK (a FIFO or a device
 * cannot hang it), fstat then requires a regular file (else an error naming the path and
 * what it is: FIFO, character device, directory, ...), and O_NONBLOCK is cleared again.
 * *fd receives the descriptor (O_CLOEXEC; -1 on failure), size (may be NULL) the file's
 * size. Every file nvlm reads by name goes through here. */
int nvlm_open_regular(const char *path, int *fd, uint64_t *size, nvlm_err *err);
/* nvlm_open_regular as a stdio stream for reading (NULL with err set on failure). */
FILE *nvlm_fopen_regular(const char *path, nvlm_err *err);
/* What a stat mode is, in words ("a FIFO", "a directory", ...). */
const char *nvlm_file_kind(unsigned mode);

/* Reads a whole file into a malloc'ed buffer with a NUL byte after the data (not counted
 * in *len). max_len bounds the size (0: no bound beyond memory). */
int nvlm_read_file(const char *path, size_t max_len, char **data, size_t *len, nvlm_err *err);

/* A read-only memory mapping of a whole file. */
typedef struct nvlm_mapped_file {
    const uint8_t *data;
    size_t len;
} nvlm_mapped_file;

int nvlm_map_file(const char *path, nvlm_mapped_file *out, nvlm_err *err);
/* Frees a mapping of either kind (file or anonymous). */
void nvlm_unmap_file(nvlm_mapped_file *f);

/* A private anonymous mapping of len bytes (2 MiB-aligned, and advised onto huge pages from
 * 2 MiB up where the system allows: at once from 4 GiB, else when sealed; file.c says why),
 * zero-filled and writable through *mem until nvlm_seal_anon; freed by nvlm_unmap_file.
 * `what` names it in the out-of-memory error. */
int nvlm_map_anon(size_t len, nvlm_mapped_file *out, uint8_t **mem, const char *what, nvlm_err *err);
/* malloc for a weight matrix: from 2 MiB up, aligned to and advised onto huge pages as
 * nvlm_map_anon's mapping is. Freed by free(). */
void *nvlm_alloc_weights(size_t len);
/* Makes an anonymous mapping read-only (stray writes then fault, as on a file mapping) and
 * advises it onto huge pages. */
void nvlm_seal_anon(nvlm_mapped_file *f);
/* Reads exactly len bytes at offset off of the open file fd into buf (retrying short reads);
 * path names the file in errors. */
int nvlm_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *path, nvlm_err *err);

/* MemAvailable of /proc/meminfo in bytes (memory the kernel can give without swapping,
 * counting reclaimable page cache), or 0 when unknown. */
uint64_t nvlm_mem_available(void);

/* "dir/name" in a malloc'ed string (NULL on allocation failure). */
char *nvlm_path_join(const char *dir, const char *name);
/* 1 if path names an existing regular file. */
int nvlm_file_exists(const char *path);
#endif
