/* st_writer.h - write safetensors files for the unit tests: a builder for
 * well-formed files and a raw writer for corrupt ones. */
#ifndef BRAID_ST_WRITER_H
#define BRAID_ST_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct stw stw;

stw *stw_new(void);
void stw_free(stw *w);

/* Queue a tensor; data (nbytes) is copied.  dtype is the header string
 * ("F32", "BF16", ...); ndim may be 0 (scalar).  0 on success. */
int stw_add(stw *w, const char *name, const char *dtype, int ndim,
	    const int64_t *shape, const void *data, size_t nbytes);

/* Write the queued tensors, back to back in the order added, after a header
 * padded with spaces so the data starts at a multiple of align (1 = no
 * padding).  metadata is a JSON object text for "__metadata__" or NULL.
 * 0 on success. */
int stw_write(const stw *w, const char *path, size_t align, const char *metadata);

/* Write a file whose first 8 bytes say declared_len, followed by header
 * (strlen) and n bytes of data.  0 on success. */
int stw_write_raw(const char *path, uint64_t declared_len, const char *header,
		  const void *data, size_t n);

#endif
