/* client.h - the job client of braid solve and braid ask (cl_): submit jobs
 * and read their events, either through an in-process scheduler (bus +
 * sched, the engine on its own thread) or through a running daemon's REST
 * API with libcurl (POST /v1/jobs, then each job's SSE event stream).  The
 * caller sees the same JSON events both ways.  One thread (the caller's)
 * uses a client; the in-process engine runs on the scheduler's thread. */
#ifndef BRAID_CLIENT_H
#define BRAID_CLIENT_H

#include <stddef.h>

#include <jansson.h>

#include "engine.h"
#include "job.h"

typedef struct cl cl;

struct cl_params {
	const char *server;         /* daemon base URL ("http://127.0.0.1:8080"),
				       or NULL: run an engine in-process        */
	const char *api_key;        /* Bearer token for the daemon, or NULL      */
	struct eng_params engine;   /* in-process only: the engine to load       */
	int deltas;                 /* 1: deliver thread.delta events too; 0:
				       drop them (solve needs only the ends)    */
};

struct cl_params cl_default_params(void);

/* In-process: loads the model (slow); remote: checks GET /healthz.  NULL
 * and err filled ("URL: problem", "MODEL: problem") on failure. */
cl *cl_create(const struct cl_params *p, char *err, size_t errlen);

/* Cancels nothing: jobs still running in-process fail with "shutdown";
 * remote jobs go on in the daemon.  NULL is fine. */
void cl_destroy(cl *c);

/* How many jobs to keep in flight by default: the in-process scheduler's
 * max_running; 32 (the daemon's default) for a remote one. */
int cl_max_running(const cl *c);

/* Queue a job.  On success the client owns req's contents (req is reset
 * but req->id holds the job's id), and the job's events will come out of
 * cl_next.  ENG_ERR_RANGE: the queue is full, try again after a job ends;
 * ENG_ERR_INVALID: the request was refused (err says why, e.g. unknown
 * strategy); other errors: the daemon is unreachable (err says why).  On
 * failure req is untouched (the caller frees it). */
int cl_submit(cl *c, struct job_req *req, char *err, size_t errlen);

/* The next event of a job submitted here, as a JSON object {type, job, seq,
 * ts, thread?, payload...} (new reference: the caller owns it), or NULL
 * when none came within timeout_ms.  A remote stream that breaks before its
 * job ends yields a job.failed {"reason": "..."} made here. */
json_t *cl_next(cl *c, int timeout_ms);

/* Ask for a job to be cancelled; its job.failed event follows through
 * cl_next.  ENG_ERR_NOT_FOUND when it already ended. */
int cl_cancel(cl *c, const char *job_id);

/* Jobs submitted whose job.done/job.failed has not come out of cl_next. */
int cl_in_flight(const cl *c);

#endif
