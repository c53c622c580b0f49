/* testutil.h - shared helpers for the cmocka unit tests. */
#ifndef BRAID_TESTUTIL_H
#define BRAID_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* $BRAID_TEST_DATA/rel (tests/data of the source tree); static buffer. */
const char *tu_data(const char *rel);

/* $BRAID_REF_GEN/rel: reference data the build generates (tests/ref-gen of
 * the build tree: the reference logits from tools/ref_logits.py); static
 * buffer. */
const char *tu_refgen(const char *rel);

/* Read a whole file (malloc'd, NUL-terminated), or NULL. */
char *tu_read_file(const char *path, size_t *len);

/* Write len bytes to path; 0 on success. */
int tu_write_file(const char *path, const void *data, size_t len);

/* A fresh private directory under $TMPDIR (malloc'd path); removed with
 * tu_rmtree. */
char *tu_tmpdir(void);
void tu_rmtree(const char *path);

/* A cmocka fixture: a fresh directory (tu_tmpdir), the path of one file in
 * it and a buffer for the error messages of the calls under test. */
struct tu_dirfx {
	char *dir;
	char path[1024];
	char err[ENG_ERRLEN];
};

/* Setup: *state = a new tu_dirfx whose path is dir/name; 0, or -1. */
int tu_dirfx_setup(void **state, const char *name);

/* Teardown: removes the directory, frees the fixture; 0. */
int tu_dirfx_teardown(void **state);

/* Copy a file. 0 on success. */
int tu_copy_file(const char *from, const char *to);

#endif
