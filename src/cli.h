/* cli.h - the braid subcommands and their shared option parser (main
 * thread).  Every subcommand is a row of a table; --help is generated. */
#ifndef BRAID_CLI_H
#define BRAID_CLI_H

#include <signal.h>
#include <stdio.h>

#include "engine.h"

struct job_req;
struct cl_params;

/* One option of a subcommand.  Options are "--name VALUE" or "--name=VALUE";
 * flags (arg == NULL) take no value. */
struct cli_opt {
	const char *name;      /* without the leading "--"                   */
	const char *arg;       /* metavariable shown in help, NULL for flags  */
	const char *help;
};

/* Parsed options: values[i] is the value of opts[i] (NULL if not given;
 * "1" for a given flag); positional arguments in order. */
struct cli_args {
	const char *values[32];
	const char *pos[16];
	int n_pos;
};

/* Parse argv (after the subcommand name) against opts[n_opts].  Unknown
 * options, missing values and too many positionals print a clear error to
 * stderr and return -1; "--help" prints help and returns 1. */
int cli_parse(const char *cmd, const char *synopsis, const struct cli_opt *opts,
	      int n_opts, int argc, char **argv, struct cli_args *out);

/* Print "usage: braid CMD SYNOPSIS" and the option table. */
void cli_usage(FILE *f, const char *cmd, const char *synopsis,
	       const struct cli_opt *opts, int n_opts);

/* Value lookup by option name (NULL when absent). */
const char *cli_get(const struct cli_opt *opts, int n_opts,
		    const struct cli_args *a, const char *name);

/* Strict number parsing for option values; print an error naming the
 * option and return -1 on bad input. */
int cli_int(const char *opt, const char *s, long lo, long hi, long *out);
int cli_double(const char *opt, const char *s, double lo, double hi, double *out);

/* The directory of the embedded default model (BRAID_MODEL env, else the
 * models/ folder of the source tree this binary was built from). */
const char *cli_default_model(void);

/* Seconds on the monotonic clock. */
double cli_now(void);

/* The signal number of the first SIGINT or SIGTERM once cli_catch_signals
 * ran (0 before); a second one exits at once with 128 + its number.
 * cli_catch_signals also ignores SIGPIPE. */
extern volatile sig_atomic_t cli_interrupted;
void cli_catch_signals(void);

/* Read a whole stream into a malloc'd NUL-terminated buffer. */
char *cli_slurp(FILE *f, size_t *len);

/* Subcommands: int cmd_x(int argc, char **argv), argv[0] = "x". */
/* --device value to enum eng_device (NULL = auto); -1 and a message on error. */
int cli_parse_device(const char *cmd, const char *s, enum eng_device *out);

/* --kv-mb MB (NULL = keep *kv_bytes): the KV cache size in MiB, 1 .. 16 TiB.
 * Prints the error and returns -1 when bad. */
int cli_parse_kv(const char *cmd, const char *mb, size_t *kv_bytes);

/* The option-table entries of those two, for every command that takes them. */
#define CLI_OPT_DEVICE { "device", "D", "auto, cpu or cuda (default auto)" }
#define CLI_OPT_KV_MB                                                                                \
	{ "kv-mb", "MB",                                                                            \
	  "KV cache size in MiB (default: GPU 90% of the memory left free; CPU 1 GiB, at most a quarter " \
	  "of RAM)" }

/* The job options the job-running subcommands share, those of opts that
 * are given: --strategy (default "sc", must name a strategy), -n,
 * --max-tokens, --temperature, --top-p, --seed into req (initialised by
 * job_req_init); --device, --threads, --model (default the embedded
 * model), --server, --api-key (default $BRAID_API_KEY) into cp (from
 * cl_default_params; it borrows a's strings).  0, or -1 after printing
 * "braid CMD: problem" to stderr. */
int cli_job_opts(const char *cmd, const struct cli_opt *opts, int n_opts,
		 const struct cli_args *a, struct job_req *req, struct cl_params *cp);

int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_solve(int argc, char **argv);
int cmd_ask(int argc, char **argv);

#endif
