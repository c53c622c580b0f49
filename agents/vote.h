/* vote.h - answer votes shared by the strategies (vote_): answers grouped by
 * ans_equal in the order they are added, weights summed per group, the
 * heaviest group wins and a tie goes to the group added first.  Pure CPU
 * code; engine thread. */
#ifndef BRAID_VOTE_H
#define BRAID_VOTE_H

#include <jansson.h>

typedef struct vote_tally vote_tally;

/* An empty tally for up to cap answers; NULL when out of memory.  vote_free
 * accepts NULL. */
vote_tally *vote_new(int cap);
void vote_free(vote_tally *v);

/* Count answer (borrowed: it must outlive the tally; NULL is not counted)
 * with weight w, reported by voter id.  Add in report order: the first
 * answer of a group names it.  Past cap answers are ignored (assert). */
void vote_add(vote_tally *v, const char *answer, double w, int id);

/* The result: *votes (may be NULL) a new object {answer: weight} with the
 * groups' first answers as keys, weights as integers unless real; *best_id
 * (may be NULL) the id of the winner's first answer, or -1 with no votes;
 * *share (may be NULL) the winner's part of the total weight (1 when the
 * total is 0, 0 with no votes).  0, or ENG_ERR_NOMEM (nothing returned). */
int vote_result(const vote_tally *v, int real, json_t **votes, int *best_id, double *share);

/* The votes of a lone answer: a new object {answer: 1}, {} when answer is
 * NULL; NULL when out of memory. */
json_t *vote_single(const char *answer);

#endif
