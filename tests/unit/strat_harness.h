/* strat_harness.h - run one job through a real scheduler and bus on a real
 * model and collect its events: the common ground of the strategy tests. */
#ifndef BRAID_STRAT_HARNESS_H
#define BRAID_STRAT_HARNESS_H

#include <jansson.h>

struct sh_run {
	json_t *events;      /* every event of the job, in order (array)      */
	json_t *final;       /* the job.done or job.failed event (borrowed)    */
	int kv_peak_used;    /* most KV blocks in use while it ran            */
	int kv_idle_used;    /* KV blocks in use after it finished            */
	double wall_s;
};

/* The embedded model (models/braid-arith of the source tree). */
const char *sh_model(void);

/* Submit the request body (a JSON object text, as POST /v1/jobs takes) on
 * a fresh scheduler over model_dir, wait up to timeout_s for the job to end.
 * 0 on success (the job ended, done or failed); -1 with a message on stderr
 * when it could not run or timed out. */
int sh_run_job(const char *model_dir, const char *body, int timeout_s, struct sh_run *out);
void sh_run_free(struct sh_run *r);

/* Events of a type ("thread.pruned", ...), optionally of one thread (-1 = any). */
int sh_count(const json_t *events, const char *type, int thread);
/* The i-th event of a type (borrowed), or NULL. */
const json_t *sh_nth(const json_t *events, const char *type, int i);
/* The first event of a type of thread (>= 0; borrowed), or NULL. */
const json_t *sh_find(const json_t *events, const char *type, int thread);
/* -1 when every spawned thread ended exactly once (done or pruned), else
 * the first thread that did not. */
int sh_unended(const json_t *events);

#endif
