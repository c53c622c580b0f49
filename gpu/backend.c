/* backend.c - what every backend checks of a forward batch before running it
 * (engine thread). */
#include "backend.h"
#include "status.h"

int
backend_check_batch(const struct fwd_batch *b, int vocab, int block_tokens, int n_blocks, int max_rows)
{
	if (b->n_rows <= 0 || (max_rows > 0 && b->n_rows > max_rows) || b->n_seqs <= 0 || b->n_logits < 0 ||
	    b->n_logits > b->n_rows || !b->tokens || !b->pos || !b->row_seq || !b->block_tables ||
	    (b->n_logits > 0 && !b->logit_rows))
		return ENG_ERR_INVALID;
	for (int r = 0; r < b->n_rows; r++) {
		if (b->tokens[r] < 0 || b->tokens[r] >= vocab || b->pos[r] < 0 || b->row_seq[r] < 0 ||
		    b->row_seq[r] >= b->n_seqs)
			return ENG_ERR_INVALID;
		/* Rows of one sequence are consecutive and in position order. */
		if (r > 0 && b->row_seq[r] == b->row_seq[r - 1] && b->pos[r] <= b->pos[r - 1])
			return ENG_ERR_INVALID;
		if (r > 0 && b->row_seq[r] != b->row_seq[r - 1])
			for (int k = 0; k < r; k++)
				if (b->row_seq[k] == b->row_seq[r])
					return ENG_ERR_INVALID;
		/* Every block this row reads or writes must exist.  Checking the
		 * table once per sequence, at its last row, is enough. */
		if (r + 1 == b->n_rows || b->row_seq[r + 1] != b->row_seq[r]) {
			const int32_t *t = b->block_tables[b->row_seq[r]];
			if (!t)
				return ENG_ERR_INVALID;
			for (int32_t i = 0; i <= b->pos[r] / block_tokens; i++)
				if (t[i] < 0 || t[i] >= n_blocks)
					return ENG_ERR_INVALID;
		}
	}
	for (int i = 0; i < b->n_logits; i++)
		if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n_rows ||
		    (i > 0 && b->logit_rows[i] <= b->logit_rows[i - 1]))
			return ENG_ERR_INVALID;
	return 0;
}
