/* status.h - the one error enum shared by every gpu/ module (any thread). */
#ifndef BRAID_STATUS_H
#define BRAID_STATUS_H

#include <stddef.h>

/* Functions return 0 (ENG_OK), a positive non-error outcome, or a negative
 * error from this enum.  Constructors return NULL and fill an error string. */
enum eng_status {
	ENG_OK = 0,
	ENG_DONE = 1,               /* non-error: nothing left to do          */

	ENG_ERR_NOMEM = -1,         /* host allocation failed                 */
	ENG_ERR_IO = -2,            /* open/read/mmap failed                  */
	ENG_ERR_FORMAT = -3,        /* a file is malformed or truncated       */
	ENG_ERR_UNSUPPORTED = -4,   /* valid but not supported (arch, dtype)  */
	ENG_ERR_INVALID = -5,       /* bad argument from the caller           */
	ENG_ERR_NO_KV = -6,         /* the KV cache has no free block left    */
	ENG_ERR_NOT_FOUND = -7,     /* no such tensor, sequence, token        */
	ENG_ERR_DEVICE = -8,        /* a GPU call failed                      */
	ENG_ERR_RANGE = -9,         /* past the context or a fixed capacity   */
};

/* Static string for a status code; never NULL. */
const char *eng_strerror(int status);

/* Size of the error buffers that constructors fill ("file: problem"). */
#define ENG_ERRLEN 512

/* printf into err (if non-NULL) and return status; for one-line failures. */
int eng_seterr(char *err, size_t errlen, int status, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
