/* cli.c - option parsing and small helpers shared by the subcommands (main
 * thread). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build_config.h"
#include "cli.h"

void
cli_usage(FILE *f, const char *cmd, const char *synopsis,
	  const struct cli_opt *opts, int n_opts)
{
	fprintf(f, "usage: braid %s %s\n\noptions:\n", cmd, synopsis);
	for (int i = 0; i < n_opts; i++) {
		char left[64];
		if (opts[i].arg)
			snprintf(left, sizeof left, "--%s %s", opts[i].name, opts[i].arg);
		else
			snprintf(left, sizeof left, "--%s", opts[i].name);
		fprintf(f, "  %-24s %s\n", left, opts[i].help);
	}
	fprintf(f, "  %-24s %s\n", "--help", "show this help");
}

int
cli_parse(const char *cmd, const char *synopsis, const struct cli_opt *opts,
	  int n_opts, int argc, char **argv, struct cli_args *out)
{
	memset(out, 0, sizeof *out);
	if (n_opts > (int)(sizeof out->values / sizeof out->values[0]))
		return -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			cli_usage(stdout, cmd, synopsis, opts, n_opts);
			return 1;
		}
		if (!strcmp(a, "--")) {
			for (i++; i < argc; i++) {
				if (out->n_pos >= (int)(sizeof out->pos / sizeof out->pos[0]))
					goto too_many;
				out->pos[out->n_pos++] = argv[i];
			}
			break;
		}
		/* "-x" is "--x" for one-letter options (e.g. -n 16) */
		int short_opt = a[0] == '-' && a[1] && a[1] != '-' && !a[2] &&
				!(a[1] >= '0' && a[1] <= '9');
		if (!short_opt && (strncmp(a, "--", 2) != 0 || a[2] == 0)) {
			if (out->n_pos >= (int)(sizeof out->pos / sizeof out->pos[0]))
				goto too_many;
			out->pos[out->n_pos++] = a;
			continue;
		}
		const char *name = a + (short_opt ? 1 : 2);
		const char *eq = strchr(name, '=');
		size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
		int k = -1;
		for (int j = 0; j < n_opts; j++)
			if (strlen(opts[j].name) == nlen && !strncmp(opts[j].name, name, nlen))
				k = j;
		if (k < 0) {
			fprintf(stderr, "braid %s: unknown option '--%.*s' (see 'braid %s --help')\n",
				cmd, (int)nlen, name, cmd);
			return -1;
		}
		if (!opts[k].arg) {
			if (eq) {
				fprintf(stderr, "braid %s: option '--%s' takes no value\n", cmd, opts[k].name);
				return -1;
			}
			out->values[k] = "1";
		} else if (eq) {
			out->values[k] = eq + 1;
		} else {
			if (i + 1 >= argc) {
				fprintf(stderr, "braid %s: option '--%s' needs a value (%s)\n",
					cmd, opts[k].name, opts[k].arg);
				return -1;
			}
			out->values[k] = argv[++i];
		}
	}
	return 0;
too_many:
	fprintf(stderr, "braid %s: too many arguments\n", cmd);
	return -1;
}

const char *
cli_get(const struct cli_opt *opts, int n_opts, const struct cli_args *a, const char *name)
{
	for (int i = 0; i < n_opts; i++)
		if (!strcmp(opts[i].name, name))
			return a->values[i];
	return NULL;
}

int
cli_int(const char *opt, const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "braid: --%s wants an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

int
cli_double(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
		fprintf(stderr, "braid: --%s wants a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

int
cli_parse_device(const char *cmd, const char *s, enum eng_device *out)
{
	if (!s || !strcmp(s, "auto"))
		*out = ENG_DEVICE_AUTO;
	else if (!strcmp(s, "cpu"))
		*out = ENG_DEVICE_CPU;
	else if (!strcmp(s, "cuda"))
		*out = ENG_DEVICE_CUDA;
	else {
		fprintf(stderr, "braid %s: --device wants auto, cpu or cuda, got '%s'\n", cmd, s);
		return -1;
	}
	return 0;
}

const char *
cli_default_model(void)
{
	const char *env = getenv("BRAID_MODEL");
	if (env && *env)
		return env;
	return BRAID_DEFAULT_MODEL;
}

char *
cli_slurp(FILE *f, size_t *len)
{
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		return NULL;
	for (;;) {
		if (cap - n < 4097) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}
