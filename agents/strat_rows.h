/* strat_rows.h - the hooks of each built-in strategy, for the table in
 * strategy.c (private to agents/; one block per strategy file).  Engine
 * thread, except *_init, which runs on the submitting thread. */
#ifndef BRAID_STRAT_ROWS_H
#define BRAID_STRAT_ROWS_H

#include "strategy.h"

/* agents/single.c */
int single_init(const struct job_req *req, void **state, char *err, size_t errlen);
void single_destroy(void *state);
int single_start(void *state, const struct strat_api *api);
int single_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		       const char *finish_reason);
int single_idle(void *state, const struct strat_api *api);

/* agents/sc.c */
int sc_init(const struct job_req *req, void **state, char *err, size_t errlen);
void sc_destroy(void *state);
int sc_start(void *state, const struct strat_api *api);
int sc_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r);
int sc_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		   const char *finish_reason);
int sc_idle(void *state, const struct strat_api *api);

#endif
