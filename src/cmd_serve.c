/* cmd_serve.c - braid serve: the daemon.  The main thread wires the bus, the
 * store, the scheduler (engine thread) and the server (lws thread), then
 * waits for SIGINT/SIGTERM and shuts them down in reverse order. */
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "cli.h"
#include "job.h"
#include "sched.h"
#include "server.h"
#include "store.h"

static const struct cli_opt opts[] = {
	{ "model", "DIR", "model directory (default: the embedded model)" },
	CLI_OPT_DEVICE,
	CLI_OPT_KV_MB,
	{ "host", "H", "address to bind (default 127.0.0.1; others need --api-key)" },
	{ "port", "P", "port (default 8080; 0 = any free port)" },
	{ "db", "FILE", "SQLite job store (default braid.db)" },
	{ "api-key", "K", "require 'Authorization: Bearer K' on every route but /healthz" },
	{ "web-root", "DIR", "static files served at / (default: the tree's web/)" },
	{ "threads", "N", "CPU threads for the engine (default: all cores)" },
	{ "max-running", "N", "jobs decoding at once (default 32)" },
	{ "max-queue", "N", "jobs waiting before 429 (default 256)" },
	{ "max-body", "BYTES", "request body cap (default 1048576)" },
	{ "ws-queue", "N", "events queued per websocket client before it gets a gap (default 4096)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
static const char synopsis[] =
	"[--model DIR] [--device auto|cpu|cuda] [--host H] [--port P] [--db FILE] [--api-key K]";

#define OPT(name) cli_get(opts, N_OPTS, &a, name)

int
cmd_serve(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("serve", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	if (a.n_pos > 0) {
		fprintf(stderr, "braid serve: unexpected argument '%s'\n", a.pos[0]);
		return 2;
	}
	struct eng_params ep = eng_default_params();
	struct sched_params sp = sched_default_params();
	struct srv_params vp = srv_default_params();
	long port = vp.port, threads = 0, max_running = sp.max_running, max_queue = sp.max_queue;
	long max_body = (long)vp.max_body, ws_queue = (long)vp.ws_queue;
	if ((OPT("port") && cli_int("port", OPT("port"), 0, 65535, &port)) ||
	    (OPT("threads") && cli_int("threads", OPT("threads"), 0, 1024, &threads)) ||
	    (OPT("max-running") && cli_int("max-running", OPT("max-running"), 1, 4096, &max_running)) ||
	    (OPT("max-queue") && cli_int("max-queue", OPT("max-queue"), 1, 1000000, &max_queue)) ||
	    (OPT("max-body") && cli_int("max-body", OPT("max-body"), 1024, 1L << 30, &max_body)) ||
	    (OPT("ws-queue") && cli_int("ws-queue", OPT("ws-queue"), 1, 1L << 24, &ws_queue)) ||
	    cli_parse_device("serve", OPT("device"), &ep.device) || cli_parse_kv("serve", OPT("kv-mb"), &ep.kv_bytes))
		return 2;
	ep.model_dir = OPT("model") ? OPT("model") : cli_default_model();
	ep.n_threads = (int)threads;
	sp.max_running = (int)max_running;
	sp.max_queue = (int)max_queue;
	vp.port = (int)port;
	vp.max_body = (size_t)max_body;
	vp.ws_queue = (size_t)ws_queue;
	if (OPT("host"))
		vp.host = OPT("host");
	if (OPT("api-key"))
		vp.api_key = OPT("api-key");
	else if (getenv("BRAID_API_KEY") && *getenv("BRAID_API_KEY"))
		vp.api_key = getenv("BRAID_API_KEY");
	if (OPT("web-root"))
		vp.web_root = OPT("web-root");
	char model_name[PATH_MAX];
	snprintf(model_name, sizeof model_name, "%s", ep.model_dir);
	size_t ml = strlen(model_name);
	while (ml > 1 && model_name[ml - 1] == '/')
		model_name[--ml] = 0;
	vp.model_name = basename(model_name);
	const char *db = OPT("db") ? OPT("db") : "braid.db";

	/* SIGINT/SIGTERM are taken by sigwait below: block them before any
	 * thread starts so every thread inherits the mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	char err[512] = "";
	int rc = 1;
	bus *b = NULL;
	store *st = NULL;
	sched *s = NULL;
	srv *v = NULL;
	struct job_req *reqs = NULL;
	int n_reqs = 0;

	b = bus_create();
	if (!b) {
		fprintf(stderr, "braid serve: out of memory\n");
		goto out;
	}
	st = store_open(db, b, err, sizeof err);
	if (!st) {
		fprintf(stderr, "braid serve: %s\n", err);
		goto out;
	}
	if (store_recover(st, &reqs, &n_reqs) < 0) {
		fprintf(stderr, "braid serve: %s: cannot recover unfinished jobs\n", db);
		goto out;
	}
	s = sched_create(&ep, b, &sp, err, sizeof err);
	if (!s) {
		fprintf(stderr, "braid serve: %s\n", err);
		goto out;
	}
	for (int i = 0; i < n_reqs; i++) {
		if (sched_submit(s, &reqs[i], err, sizeof err) < 0)
			fprintf(stderr, "braid serve: job %s not resumed: %s\n", reqs[i].id, err);
	}
	v = srv_start(&vp, s, b, st, err, sizeof err);
	if (!v) {
		fprintf(stderr, "braid serve: %s\n", err);
		goto out;
	}
	printf("braid: serving %s on http://%s%s%s:%d/ (db %s%s)\n", vp.model_name,
	       strchr(vp.host, ':') ? "[" : "", vp.host, strchr(vp.host, ':') ? "]" : "", srv_port(v), db,
	       n_reqs ? ", resumed queued jobs" : "");
	fflush(stdout);

	int sig = 0;
	sigwait(&sigs, &sig);
	fprintf(stderr, "braid serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
	rc = 0;
out:
	srv_stop(v);
	sched_destroy(s);
	store_close(st);
	bus_destroy(b);
	for (int i = 0; i < n_reqs; i++)
		job_req_free(&reqs[i]);
	free(reqs);
	return rc;
}
