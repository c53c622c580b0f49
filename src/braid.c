/* braid.c - the braid binary: dispatches to the subcommand table (main
 * thread). */
#include <stdio.h>
#include <string.h>

#include "build_config.h"
#include "cli.h"

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *help;
} commands[] = {
	{ "generate", cmd_generate, "sample a continuation of a prompt; prints one JSON object" },
	{ "tokenize", cmd_tokenize, "UTF-8 text on stdin to token ids (or --decode ids to text)" },
	{ "serve", cmd_serve, "run the daemon: REST, OpenAI-compatible API, websocket events, dashboard" },
	{ "solve", cmd_solve, "run a JSONL problem set; results JSONL and an accuracy report" },
	{ "ask", cmd_ask, "one question: its reasoning threads stream in the terminal, then the answer" },
	{ "bench", cmd_bench, "engine benchmarks: decode tokens/s and memory bandwidth" },
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void
usage(FILE *f)
{
	fprintf(f, "braid %s - a parallel-reasoning server\n\nusage: braid COMMAND [OPTIONS]\n\ncommands:\n",
		PACKAGE_VERSION);
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
	fprintf(f, "\n'braid COMMAND --help' describes a command's options.\n");
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("braid %s\n", PACKAGE_VERSION);
		return 0;
	}
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "braid: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
