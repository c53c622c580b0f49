/* vote.c - answer votes shared by the strategies (see vote.h).  Pure CPU
 * code; the engine thread runs it. */
#include <assert.h>
#include <stdlib.h>

#include "answer.h"
#include "status.h"
#include "vote.h"

struct vote_group {
	const char *answer;   /* the group's first answer (borrowed) */
	int id;               /* its voter                           */
	double w;             /* summed weight                       */
};

struct vote_tally {
	int cap, n;
	double total;
	struct vote_group *g;   /* (cap) */
};

vote_tally *
vote_new(int cap)
{
	vote_tally *v = calloc(1, sizeof *v);
	if (!v || !(v->g = calloc((size_t)(cap > 0 ? cap : 1), sizeof *v->g))) {
		free(v);
		return NULL;
	}
	v->cap = cap;
	return v;
}

void
vote_free(vote_tally *v)
{
	if (!v)
		return;
	free(v->g);
	free(v);
}

void
vote_add(vote_tally *v, const char *answer, double w, int id)
{
	if (!answer)
		return;
	int g;
	for (g = 0; g < v->n && !ans_equal(v->g[g].answer, answer); g++)
		;
	if (g == v->n) {
		assert(v->n < v->cap);
		if (v->n == v->cap)
			return;
		v->g[v->n++] = (struct vote_group){ .answer = answer, .id = id };
	}
	v->g[g].w += w;
	v->total += w;
}

int
vote_result(const vote_tally *v, int real, json_t **votes, int *best_id, double *share)
{
	json_t *o = NULL;
	int best = -1;
	if (votes && !(o = json_object()))
		goto fail;
	for (int g = 0; g < v->n; g++) {
		if (best < 0 || v->g[g].w > v->g[best].w)
			best = g;
		if (o && json_object_set_new(o, v->g[g].answer,
					     real ? json_real(v->g[g].w)
						  : json_integer((json_int_t)v->g[g].w)))
			goto fail;
	}
	if (votes)
		*votes = o;
	if (best_id)
		*best_id = best >= 0 ? v->g[best].id : -1;
	if (share)
		*share = best < 0 ? 0 : v->total > 0 ? v->g[best].w / v->total : 1.0;
	return 0;
fail:
	json_decref(o);
	return ENG_ERR_NOMEM;
}

json_t *
vote_single(const char *answer)
{
	json_t *o = json_object();
	if (o && answer && json_object_set_new(o, answer, json_integer(1))) {
		json_decref(o);
		return NULL;
	}
	return o;
}
