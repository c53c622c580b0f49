/* cli.c - option parsing and small helpers shared by the subcommands (main
 * thread). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build_config.h"
#include "cli.h"
#include "client.h"
#include "job.h"
#include "strategy.h"

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

int
cli_parse_kv(const char *cmd, const char *mb, size_t *kv_bytes)
{
	long v;
	if (!mb)
		return 0;
	(void)cmd;
	if (cli_int("kv-mb", mb, 1, 16L << 20, &v))
		return -1;
	*kv_bytes = (size_t)v << 20;
	return 0;
}

int
cli_job_opts(const char *cmd, const struct cli_opt *opts, int n_opts, const struct cli_args *a,
	     struct job_req *req, struct cl_params *cp)
{
#define JOPT(name) cli_get(opts, n_opts, a, name)
	long n = req->n, max_tokens = req->max_tokens, seed = 0, threads = 0;
	double temperature = req->sampling.temperature, top_p = req->sampling.top_p;
	if ((JOPT("n") && cli_int("n", JOPT("n"), 1, 4096, &n)) ||
	    (JOPT("max-tokens") && cli_int("max-tokens", JOPT("max-tokens"), 1, 1 << 20, &max_tokens)) ||
	    (JOPT("seed") && cli_int("seed", JOPT("seed"), 0, 0x7fffffffffffffffL, &seed)) ||
	    (JOPT("threads") && cli_int("threads", JOPT("threads"), 0, 1024, &threads)) ||
	    (JOPT("temperature") && cli_double("temperature", JOPT("temperature"), 0, 100, &temperature)) ||
	    (JOPT("top-p") && cli_double("top-p", JOPT("top-p"), 1e-9, 1, &top_p)) ||
	    cli_parse_device(cmd, JOPT("device"), &cp->engine.device) ||
	    cli_parse_kv(cmd, JOPT("kv-mb"), &cp->engine.kv_bytes))
		return -1;
	const char *strategy = JOPT("strategy") ? JOPT("strategy") : "sc";
	if (!strat_find(strategy)) {
		fprintf(stderr, "braid %s: unknown strategy '%s' (known:", cmd, strategy);
		for (const struct strategy *st = strat_table; st->name; st++)
			fprintf(stderr, " %s", st->name);
		fprintf(stderr, ")\n");
		return -1;
	}
	snprintf(req->strategy, sizeof req->strategy, "%s", strategy);
	req->n = (int)n;
	req->max_tokens = (int)max_tokens;
	req->sampling.temperature = (float)temperature;
	req->sampling.top_p = (float)top_p;
	req->sampling.seed = (uint64_t)seed;
	cp->server = JOPT("server");
	cp->api_key = JOPT("api-key") ? JOPT("api-key") : getenv("BRAID_API_KEY");
	cp->engine.model_dir = JOPT("model") ? JOPT("model") : cli_default_model();
	cp->engine.n_threads = (int)threads;
	return 0;
#undef JOPT
}

double
cli_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

volatile sig_atomic_t cli_interrupted;

static void
on_signal(int sig)
{
	if (cli_interrupted)
		_exit(128 + sig);       /* a second Ctrl-C: leave now */
	cli_interrupted = sig;
}

void
cli_catch_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}
