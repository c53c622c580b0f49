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

/* agents/deepconf.c */
int deepconf_init(const struct job_req *req, void **state, char *err, size_t errlen);
void deepconf_destroy(void *state);
int deepconf_start(void *state, const struct strat_api *api);
int deepconf_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r);
int deepconf_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
			 const char *finish_reason);
int deepconf_idle(void *state, const struct strat_api *api);

/* agents/prune.c */
int prune_init(const struct job_req *req, void **state, char *err, size_t errlen);
void prune_destroy(void *state);
int prune_start(void *state, const struct strat_api *api);
int prune_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r);
int prune_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		      const char *finish_reason);
int prune_idle(void *state, const struct strat_api *api);

/* agents/team.c */
int team_init(const struct job_req *req, void **state, char *err, size_t errlen);
void team_destroy(void *state);
int team_start(void *state, const struct strat_api *api);
int team_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r);
int team_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		     const char *finish_reason);
int team_idle(void *state, const struct strat_api *api);

/* agents/parathink.c */
int parathink_init(const struct job_req *req, void **state, char *err, size_t errlen);
void parathink_destroy(void *state);
int parathink_start(void *state, const struct strat_api *api);
int parathink_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
			  const char *finish_reason);
int parathink_idle(void *state, const struct strat_api *api);

/* agents/pdr.c */
int pdr_init(const struct job_req *req, void **state, char *err, size_t errlen);
void pdr_destroy(void *state);
int pdr_start(void *state, const struct strat_api *api);
int pdr_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		    const char *finish_reason);
int pdr_idle(void *state, const struct strat_api *api);

/* agents/multiverse.c */
int multiverse_init(const struct job_req *req, void **state, char *err, size_t errlen);
void multiverse_destroy(void *state);
int multiverse_start(void *state, const struct strat_api *api);
int multiverse_token(void *state, const struct strat_api *api, int thread,
		     const struct samp_result *r);
int multiverse_thread_done(void *state, const struct strat_api *api, int thread,
			   const char *answer, const char *finish_reason);
int multiverse_idle(void *state, const struct strat_api *api);

#endif
