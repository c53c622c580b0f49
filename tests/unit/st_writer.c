/* st_writer.c - write safetensors files for the unit tests (test thread). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st_writer.h"

struct stw_tensor {
	char name[256];
	char dtype[16];
	int ndim;
	int64_t shape[8];
	void *data;
	size_t nbytes;
};

struct stw {
	struct stw_tensor *t;
	size_t n;
};

stw *
stw_new(void)
{
	return calloc(1, sizeof(stw));
}

void
stw_free(stw *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		free(w->t[i].data);
	free(w->t);
	free(w);
}

int
stw_add(stw *w, const char *name, const char *dtype, int ndim,
	const int64_t *shape, const void *data, size_t nbytes)
{
	if (ndim < 0 || ndim > 8 || strlen(name) >= 256 || strlen(dtype) >= 16)
		return -1;
	struct stw_tensor *nt = realloc(w->t, (w->n + 1) * sizeof *nt);
	if (!nt)
		return -1;
	w->t = nt;
	struct stw_tensor *t = &w->t[w->n];
	memset(t, 0, sizeof *t);
	snprintf(t->name, sizeof t->name, "%s", name);
	snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
	t->ndim = ndim;
	for (int i = 0; i < ndim; i++)
		t->shape[i] = shape[i];
	t->data = malloc(nbytes ? nbytes : 1);
	if (!t->data)
		return -1;
	if (nbytes)
		memcpy(t->data, data, nbytes);
	t->nbytes = nbytes;
	w->n++;
	return 0;
}

/* Append printf output to a growing string. */
static int
append(char **s, size_t *len, size_t *cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int
append(char **s, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if (*len + (size_t)n + 1 > *cap) {
		size_t nc = (*len + (size_t)n + 1) * 2;
		char *ns = realloc(*s, nc);
		if (!ns)
			return -1;
		*s = ns;
		*cap = nc;
	}
	va_start(ap, fmt);
	vsnprintf(*s + *len, *cap - *len, fmt, ap);
	va_end(ap);
	*len += (size_t)n;
	return 0;
}

int
stw_write(const stw *w, const char *path, size_t align, const char *metadata)
{
	char *h = NULL;
	size_t len = 0, cap = 0, off = 0;
	int rc = -1;
	FILE *f = NULL;

	if (append(&h, &len, &cap, "{") < 0)
		goto out;
	if (metadata && append(&h, &len, &cap, "\"__metadata__\":%s", metadata) < 0)
		goto out;
	for (size_t i = 0; i < w->n; i++) {
		const struct stw_tensor *t = &w->t[i];
		if (append(&h, &len, &cap, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
			   (i || metadata) ? "," : "", t->name, t->dtype) < 0)
			goto out;
		for (int d = 0; d < t->ndim; d++)
			if (append(&h, &len, &cap, "%s%lld", d ? "," : "",
				   (long long)t->shape[d]) < 0)
				goto out;
		if (append(&h, &len, &cap, "],\"data_offsets\":[%zu,%zu]}", off,
			   off + t->nbytes) < 0)
			goto out;
		off += t->nbytes;
	}
	if (append(&h, &len, &cap, "}") < 0)
		goto out;
	if (align < 1)
		align = 1;
	while ((8 + len) % align != 0)
		if (append(&h, &len, &cap, " ") < 0)
			goto out;

	f = fopen(path, "wb");
	if (!f)
		goto out;
	unsigned char n8[8];
	for (int i = 0; i < 8; i++)
		n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
	if (fwrite(n8, 1, 8, f) != 8 || fwrite(h, 1, len, f) != len)
		goto out;
	for (size_t i = 0; i < w->n; i++)
		if (w->t[i].nbytes &&
		    fwrite(w->t[i].data, 1, w->t[i].nbytes, f) != w->t[i].nbytes)
			goto out;
	rc = 0;
out:
	if (f && fclose(f) != 0)
		rc = -1;
	free(h);
	return rc;
}

int
stw_write_raw(const char *path, uint64_t declared_len, const char *header,
	      const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	unsigned char n8[8];
	for (int i = 0; i < 8; i++)
		n8[i] = (unsigned char)(declared_len >> (8 * i));
	size_t hl = strlen(header);
	int rc = 0;
	if (fwrite(n8, 1, 8, f) != 8 || fwrite(header, 1, hl, f) != hl ||
	    (n && fwrite(data, 1, n, f) != n))
		rc = -1;
	if (fclose(f) != 0)
		rc = -1;
	return rc;
}
