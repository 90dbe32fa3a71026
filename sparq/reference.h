/*
 * reference.h — the double-precision oracle of SparQ (SPARQ.md, steps 1-7), written
 * separately and simply (sorts, plain loops) and used only by tests. Backends are
 * checked against it; it is never on a serving path.
 *
 * Rules shared with every backend, stated here because SPARQ.md leaves them open:
 * - component choice i1: the r largest Σ_h |q_h,i|, ties to the lower index;
 * - τ_h = sqrt(d · Σ_{i∈i1}|q_h,i| / Σ_i|q_h,i|); when Σ_{i∈i1}|q_h,i| = 0 the
 *   approximate logits of head h are all 0 whatever τ is, and τ_h := sqrt(d);
 * - the local window is the current token S-1 (if visible) plus the l most recent
 *   visible positions before it; the remaining k - |window| rows are the largest
 *   group-summed logits Σ_h z_h among the other visible positions, ties to the lower
 *   position; so min(k, visible) rows are selected in all;
 * - when every visible position is selected, α_h := 1 (the result is exact dense
 *   attention) and no scoring is needed;
 * - blend off: α_h := 1; v̄ is the mean of V over the visible positions.
 */
#ifndef SPARQ_REFERENCE_H
#define SPARQ_REFERENCE_H

#include <stdbool.h>
#include <stdint.h>

struct sparq_ref_input {
	uint32_t d, g, S;
	const double *K;           /* [S][d] keys, already converted from storage */
	/* [S][d] optional: the keys steps 1-3 and 5 score with (logits, selection, α) —
	 * a compressed key slice's values, e.g. s_j · q_jc of quant.h — while the exact
	 * step still uses K. NULL: K. Components come from q alone, so they do not change. */
	const double *K_score;
	const double *V;           /* [S][d] values */
	const double *q;           /* [g][d] queries */
	const uint64_t *exclude;   /* [ceil(S/64)] bit j set: j masked; NULL = none */
	uint32_t r, k, l;
	bool blend;
	/* Optional overrides so a test can continue from a backend's tie-broken choice. */
	const uint32_t *force_comp;  /* [r] components to use instead of i1 */
	const uint32_t *force_sel;   /* [n_force_sel] positions to use instead of i2 */
	uint32_t n_force_sel;
};

struct sparq_ref_output {
	double *y;          /* [g][d] */
	double *alpha;      /* [g] */
	uint32_t *comp;     /* [r], ascending (optional) */
	uint32_t *sel;      /* [k], ascending (optional) */
	uint32_t n_sel;
	double *zsum;       /* [S] group-summed approximate logits, -inf where masked (optional) */
	double *comp_score; /* [d] Σ_h |q_h,i| (optional) */
};

/* Returns 0, or -EINVAL for r = 0, r > d, k = 0, l >= k, or no visible position. */
int sparq_ref_attend(const struct sparq_ref_input *in, struct sparq_ref_output *out);

#endif
