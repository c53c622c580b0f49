/* store.h - the job store in SQLite, WAL mode (store_).  One writer thread
 * (started by store_open) applies every event from an unbounded bus
 * subscription in batched transactions: jobs, threads (text accumulated
 * from thread.delta), answers, votes, timings, and the event trace.  Reads
 * use their own connection and may come from any thread.
 *
 * Schema (version in PRAGMA user_version):
 *   jobs(id PRIMARY KEY, created_ms, started_ms, finished_ms, status
 *        ('queued'|'running'|'done'|'failed'), request JSON, answer, votes
 *        JSON, tokens, prompt_tokens, ms, error)
 *   threads(job, idx, parent, status, text, answer, tokens, finish_reason,
 *           PRIMARY KEY(job, idx))
 *   events(job, seq, ts, type, json, PRIMARY KEY(job, seq)) */
#ifndef BRAID_STORE_H
#define BRAID_STORE_H

#include <stddef.h>

#include <jansson.h>

#include "bus.h"
#include "job.h"

typedef struct store store;

/* Open or create the database at path, start the writer thread subscribed
 * to b.  NULL and err ("PATH: problem") on failure (not a database, newer
 * schema, read-only...). */
store *store_open(const char *path, bus *b, char *err, size_t errlen);

/* Drain what the writer has queued, stop it, close.  NULL is fine. */
void store_close(store *st);

/* Wait until every event published before this call is written. */
int store_sync(store *st);

/* A job as JSON: {id, status, created_ms, started_ms, finished_ms, request,
 * answer, votes, tokens, prompt_tokens, ms, error, threads: [{thread,
 * parent, status, text, answer, tokens, finish_reason}]}.  New reference in
 * *out; ENG_ERR_NOT_FOUND if unknown. */
int store_job_get(store *st, const char *id, json_t **out);

/* Jobs newest first, without threads: at most limit, optionally only one
 * status (NULL = all).  New reference in *out (an array). */
int store_job_list(store *st, int limit, const char *status, json_t **out);

/* The job's events with seq > after_seq, in order, as an array of event
 * objects (the same JSON that was published). */
int store_events(store *st, const char *id, long long after_seq, json_t **out);

/* At startup, before the scheduler runs: jobs left 'queued' are returned
 * (their requests, to resubmit; *reqs malloc'd, each entry to job_req_free)
 * and jobs left 'running' are marked failed with reason "interrupted: the
 * daemon stopped while the job ran" (a job.failed row in the trace). */
int store_recover(store *st, struct job_req **reqs, int *n_reqs);

#endif
