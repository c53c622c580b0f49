/* distil.h - distilling finished reasoning traces into a small workspace
 * (dst_), shared by the "parathink" and "pdr" strategies: the intermediate
 * results the traces agree on, as a braid-arith "Known:" block, and the
 * restated prompt that carries it.  Pure CPU code; engine thread. */
#ifndef BRAID_DISTIL_H
#define BRAID_DISTIL_H

#include <stddef.h>

#include <jansson.h>

typedef struct dst dst;

/* An empty tally; NULL when out of memory.  dst_free accepts NULL. */
dst *dst_new(void);
void dst_free(dst *d);

/* Count one finished trace: every step "a OP b = ... = c" it writes (OP one
 * of + - *, a chain of " = " rewrites allowed, the last one an integer,
 * optionally followed by " (known)") is a fact "a OP b=c"; a trace votes
 * once for each distinct fact it holds.  NULL text counts as a trace with
 * no facts.  0, or ENG_ERR_NOMEM. */
int dst_add_trace(dst *d, const char *text);

/* Traces counted so far. */
int dst_traces(const dst *d);

/* The workspace: each left-hand side whose most-voted value has a strict
 * majority of the traces (votes * 2 > traces) and no tie with another
 * value, best first (more votes, then products, then the order first
 * seen), as lines "Known: a*b=c\n", kept while the block stays within
 * cap_bytes (bytes bound a byte-level tokenizer's tokens from above).
 * *block is malloc'd ("" when nothing qualifies); *facts (may be NULL) a
 * new array of {"fact": "a*b=c", "votes": k} for the kept lines.
 * 0, or ENG_ERR_NOMEM (then nothing is returned). */
int dst_workspace(const dst *d, size_t cap_bytes, char **block, json_t **facts);

/* 1 if q is a braid-arith question: optional "Known: ..." lines, then
 * "Compute E" or "Parallel: Compute E" with E made of digits, + - *,
 * parentheses and spaces. */
int dst_is_arith(const char *q);

/* The user turn that restates question q with block (lines "Known: ...\n",
 * may be ""): for a braid-arith question, q's own Known lines, then the
 * lines of block that q does not already hold, then "Compute E" (a
 * "Parallel: " prefix is dropped: Known prompts are sequential); for any
 * other question, block then q.  malloc'd, or NULL when out of memory. */
char *dst_known_prompt(const char *q, const char *block);

/* The question of a request: question if set, else the content of the last
 * "user" message of messages (an OpenAI array).  Borrowed from the
 * arguments, or NULL when there is none. */
const char *dst_request_question(const char *question, const json_t *messages);

/* Majority vote over n answers (answers[i] NULL when thread i gave none;
 * order[i] its report order, 1 first, 0 not reported): answers are grouped
 * by ans_equal, the largest group wins, a tie goes to the group reached
 * first.  *votes is a new object {answer: count} (its keys are the groups'
 * first answers); *best the index of the winner's first answer, or -1.
 * 0, or ENG_ERR_NOMEM. */
int dst_vote(char *const *answers, const int *order, int n, json_t **votes, int *best);

/* A copy of the last max_bytes bytes of s (fewer to start on a UTF-8
 * character), malloc'd; NULL when out of memory. */
char *dst_tail(const char *s, size_t max_bytes);

#endif
