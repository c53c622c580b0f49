/* testutil.c - shared helpers for the cmocka unit tests. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static const char *
under(const char *env, const char *fallback, const char *rel)
{
	static char buf[4096];
	const char *root = getenv(env);
	snprintf(buf, sizeof buf, "%s/%s", root ? root : fallback, rel);
	return buf;
}

const char *
tu_data(const char *rel)
{
	return under("BRAID_TEST_DATA", "tests/data", rel);
}

const char *
tu_refgen(const char *rel)
{
	return under("BRAID_REF_GEN", "tests/ref-gen", rel);
}

char *
tu_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t cap = 0, n = 0;
	for (;;) {
		if (n + 65536 + 1 > cap) {
			cap = (n + 65536 + 1) * 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		size_t r = fread(buf + n, 1, 65536, f);
		n += r;
		if (r == 0)
			break;
	}
	fclose(f);
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

int
tu_write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	int rc = fwrite(data, 1, len, f) == len ? 0 : -1;
	if (fclose(f) != 0)
		rc = -1;
	return rc;
}

int
tu_copy_file(const char *from, const char *to)
{
	size_t len;
	char *buf = tu_read_file(from, &len);
	if (!buf)
		return -1;
	int rc = tu_write_file(to, buf, len);
	free(buf);
	return rc;
}

char *
tu_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	if (!base)
		base = "/tmp";
	size_t n = strlen(base) + 32;
	char *path = malloc(n);
	if (!path)
		return NULL;
	snprintf(path, n, "%s/braid-test-XXXXXX", base);
	if (!mkdtemp(path)) {
		free(path);
		return NULL;
	}
	return path;
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void
tu_rmtree(const char *path)
{
	if (path)
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int
tu_dirfx_setup(void **state, const char *name)
{
	struct tu_dirfx *fx = calloc(1, sizeof *fx);
	if (!fx)
		return -1;
	fx->dir = tu_tmpdir();
	if (!fx->dir) {
		free(fx);
		return -1;
	}
	snprintf(fx->path, sizeof fx->path, "%s/%s", fx->dir, name);
	*state = fx;
	return 0;
}

int
tu_dirfx_teardown(void **state)
{
	struct tu_dirfx *fx = *state;
	tu_rmtree(fx->dir);
	free(fx->dir);
	free(fx);
	return 0;
}
