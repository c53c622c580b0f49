/* strategy.c - the table of reasoning strategies (strat_): one row per
 * strategy, looked up by name.  Read-only; any thread. */
#include <string.h>

#include "strat_rows.h"
#include "strategy.h"

const struct strategy strat_table[] = {
	{
		.name = "single",
		.help = "one reasoning thread; its extracted answer is the job's",
		.params_help = "(none)",
		.init = single_init,
		.destroy = single_destroy,
		.start = single_start,
		.token = NULL,
		.thread_done = single_thread_done,
		.idle = single_idle,
	},
	{
		.name = "sc",
		.help = "self-consistency: n threads forked from the prompt's cache, majority vote "
			"over their normalised answers",
		.params_help = "weighted (bool, default false): weight each vote by the thread's "
			       "confidence, exp(mean token logprob)",
		.init = sc_init,
		.destroy = sc_destroy,
		.start = sc_start,
		.token = sc_token,
		.thread_done = sc_thread_done,
		.idle = sc_idle,
	},
	{ .name = NULL },
};

const struct strategy *
strat_find(const char *name)
{
	if (!name)
		return NULL;
	for (const struct strategy *s = strat_table; s->name; s++)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}
