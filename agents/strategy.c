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
	{
		.name = "deepconf",
		.help = "DeepConf (Fu et al. 2025): traces scored by token confidence (mean of -top-20 "
			"logprobs) over a sliding window; offline keeps the most confident eta% and votes "
			"weighted by confidence; online sets a threshold from warm-up traces, prunes traces "
			"whose window confidence falls below it, and stops at consensus",
		.params_help = "mode (\"online\" | \"offline\", default \"online\")\n"
			       "eta (number in (0, 100], default 90): percent of traces kept (offline); "
			       "online threshold at the (100 - eta)th percentile of the warm-up\n"
			       "window (integer in [1, 4096], default 32): tokens per group confidence\n"
			       "warmup (integer in [1, n], default ceil(n / 4)): online warm-up traces, never "
			       "pruned\n"
			       "consensus (number in (0, 1], default 0.9): online stops once the leading "
			       "answer holds this share of the confidence-weighted votes\n"
			       "detail (bool, default false): the final merge event lists every token's "
			       "confidence per trace",
		.top_logprobs = SAMP_MAX_TOP,
		.init = deepconf_init,
		.destroy = deepconf_destroy,
		.start = deepconf_start,
		.token = deepconf_token,
		.thread_done = deepconf_thread_done,
		.idle = deepconf_idle,
	},
	{
		.name = "prune",
		.help = "redundancy pruning (DeepPrune-style): every few tokens the live traces are "
			"clustered by answer-so-far and n-gram similarity, one per cluster goes on, "
			"the freed slots get new samples; cluster-weighted majority vote",
		.params_help = "width (int, default ceil(n/2)): threads decoding at once; n is the "
			       "total number of traces\n"
			       "budget (int 1..n, default n): total traces spawned\n"
			       "every (int >= 1, default 32): compare when the youngest live thread "
			       "has a multiple of this many tokens\n"
			       "ngram (int 1..16, default 3): word n-gram length\n"
			       "threshold (number in (0,1], default 0.8): Jaccard similarity of the "
			       "n-gram sets at or above which two traces are redundant\n"
			       "measure (\"both\" | \"ngram\" | \"answer\", default both): n-gram "
			       "similarity and equal answer-so-far, either alone",
		.top_logprobs = 0,
		.init = prune_init,
		.destroy = prune_destroy,
		.start = prune_start,
		.token = prune_token,
		.thread_done = prune_thread_done,
		.idle = prune_idle,
	},
	{
		.name = "team",
		.help = "agent teams from agents/teams/*.json: per team and round, solvers answer and "
			"checkers accept or reject the solver's steps (a rejection is re-solved); the "
			"teams' answers are voted or aggregated up a tree",
		.params_help = "team (string or object, default \"solver-checker\"): a team file's name "
			       "(agents/teams/NAME.json) or an inline team (schema in "
			       "agents/teams/README.md)\n"
			       "teams (int 1-32): overrides the file's number of teams\n"
			       "max_rounds (int 1-10): overrides the file's rounds per team",
		.init = team_init,
		.destroy = team_destroy,
		.start = team_start,
		.token = team_token,
		.thread_done = team_thread_done,
		.idle = team_idle,
	},
	{
		.name = "parathink",
		.help = "ParaThinker-style: n-1 independent paths, then one summary thread whose prompt "
			"restates the question with what the paths agree on; the summary's answer is the job's",
		.params_help = "paths (int in [1, n-1], default n-1): independent paths; the summary is "
			       "the n-th thread\n"
			       "workspace_tokens (int in [16, 8192], default 512): bytes (an upper bound "
			       "on tokens) of what the summary is given\n"
			       "format (\"auto\"|\"known\"|\"text\", default auto): \"known\" gives the "
			       "summary a braid-arith Known: block of the steps most paths agree on, "
			       "\"text\" the paths' answers and last lines; auto picks known for "
			       "braid-arith questions (Compute E)",
		.init = parathink_init,
		.destroy = parathink_destroy,
		.start = parathink_start,
		.token = NULL,
		.thread_done = parathink_thread_done,
		.idle = parathink_idle,
	},
	{
		.name = "pdr",
		.help = "Parallel-Distill-Refine: rounds of parallel drafts, each round distilled into "
			"a bounded workspace that the next round's drafts start from; the last round's "
			"majority is the answer",
		.params_help = "rounds (int in [1, 16], default 2): draft rounds\n"
			       "drafts (int >= 1, default n / rounds): drafts per round; rounds * drafts "
			       "<= n\n"
			       "workspace_tokens (int in [16, 8192], default 256): workspace bytes (an "
			       "upper bound on its tokens)\n"
			       "format (\"auto\"|\"known\"|\"text\", default auto): \"known\": the "
			       "workspace is a braid-arith Known: block of the steps most drafts agree on; "
			       "\"text\": the drafts' answers with their counts; auto picks known for "
			       "braid-arith questions (Compute E)",
		.init = pdr_init,
		.destroy = pdr_destroy,
		.start = pdr_start,
		.token = NULL,
		.thread_done = pdr_thread_done,
		.idle = pdr_idle,
	},
	{
		.name = "multiverse",
		.help = "Multiverse map/process/reduce in the model's <Parallel> format: one thread "
			"writes the <Goal>, one <Path> per <Outline> is forked from its cache and decoded "
			"in the same batch, path 1's thread gathers the others and writes the "
			"<Conclusion>; n is the thread budget",
		.params_help = "max_paths (int 2-64, default 4): fork a block only when it has at most "
			       "this many outlines (else the model writes it sequentially)\n"
			       "max_depth (int 0-8, default 1): nesting of forked blocks; 0 never forks",
		.init = multiverse_init,
		.destroy = multiverse_destroy,
		.start = multiverse_start,
		.token = multiverse_token,
		.thread_done = multiverse_thread_done,
		.idle = multiverse_idle,
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
