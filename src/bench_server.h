/* bench_server.h - braid bench --server-path (bsrv_): the engine alone, then
 * the same load as N concurrent sc jobs through the scheduler, then through
 * an in-process server with websocket clients.  Runs on the main thread,
 * which starts the scheduler, server and client threads it needs. */
#ifndef BRAID_BENCH_SERVER_H
#define BRAID_BENCH_SERVER_H

#include "engine.h"

#define BSRV_MAX_LIST 16

struct bsrv_params {
	const char *model_dir;          /* model to load (needs tokenizer.json)   */
	enum eng_device device;
	size_t kv_bytes;                /* KV cache size; 0 = the engine's default */
	int n_threads;                  /* CPU threads; 0 = every core            */
	int jobs[BSRV_MAX_LIST];        /* N values: concurrent sc jobs           */
	int n_jobs;
	int per_job[BSRV_MAX_LIST];     /* n values: threads per job              */
	int n_per_job;
	int steps;                      /* G: tokens per thread (engine steps)    */
	int clients;                    /* websocket clients; 0 = skip the server */
	const char *json_path;          /* also write JSON here, or NULL          */
};

/* Run every (N, n) row, print a markdown table on stdout (progress on
 * stderr) and write the JSON.  0 ok, 1 on failure (stderr says why). */
int bsrv_run(const struct bsrv_params *p);

#endif
