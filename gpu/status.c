/* status.c - error strings for enum eng_status (any thread). */
#include <stdarg.h>
#include <stdio.h>

#include "status.h"

static const struct {
	int code;
	const char *text;
} status_table[] = {
	{ ENG_OK, "ok" },
	{ ENG_DONE, "done" },
	{ ENG_ERR_NOMEM, "out of memory" },
	{ ENG_ERR_IO, "input/output error" },
	{ ENG_ERR_FORMAT, "malformed file" },
	{ ENG_ERR_UNSUPPORTED, "unsupported" },
	{ ENG_ERR_INVALID, "invalid argument" },
	{ ENG_ERR_NO_KV, "KV cache full" },
	{ ENG_ERR_NOT_FOUND, "not found" },
	{ ENG_ERR_DEVICE, "GPU error" },
	{ ENG_ERR_RANGE, "out of range" },
};

const char *
eng_strerror(int status)
{
	for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
		if (status_table[i].code == status)
			return status_table[i].text;
	return "unknown error";
}

int
eng_seterr(char *err, size_t errlen, int status, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}
