/*
 * reference.c — the test oracle of SparQ (SPARQ.md steps 1-7, tie rules in reference.h).
 *
 * Simple and separate by design: double precision, plain loops and qsort, nothing shared
 * with the backends, so a bug there cannot hide by being copied here. It computes every
 * intermediate (components, logits, softmax mass) even where a backend may skip them,
 * because tests compare those too. Cost is O(S log S + S·d·g), which is enough for the
 * sizes the tests use (S up to 65536, d up to 256).
 */
#include "reference.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A value with its index, so one qsort gives "largest first, ties to the lower index". */
struct keyed {
	double key;
	uint32_t idx;
};

static int keyed_cmp_desc(const void *pa, const void *pb)
{
	const struct keyed *a = pa, *b = pb;

	if (a->key > b->key)
		return -1;
	if (a->key < b->key)
		return 1;
	return (a->idx > b->idx) - (a->idx < b->idx);
}

static int u32_cmp_asc(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	return (a > b) - (a < b);
}

static bool is_masked(const uint64_t *exclude, uint32_t j)
{
	return exclude && ((exclude[j >> 6] >> (j & 63)) & 1);
}

/*
 * Returns 0, or -EINVAL for bad shapes or parameters (r = 0, r > d, k = 0, l >= k,
 * d/g/S = 0, missing buffers), a forced component or position that is out of range,
 * repeated, or (for positions) masked, more than k forced positions, or no visible
 * position; -ENOMEM when scratch cannot be allocated.
 */
int sparq_ref_attend(const struct sparq_ref_input *in, struct sparq_ref_output *out)
{
	struct keyed *ranked = NULL;   /* [max(d, S)] components, then candidate rows */
	uint32_t *comp = NULL;         /* [r] components used, ascending */
	bool *flag = NULL;             /* [max(d, S)] membership: components, then selection */
	uint32_t *sel = NULL;          /* [k] selected positions, ascending */
	double *score = NULL;          /* [d] Σ_h |q_h,i| */
	double *tau = NULL;            /* [g] */
	double *z = NULL;              /* [g][S] approximate logits, -inf where masked */
	double *zsum = NULL;           /* [S] Σ_h z_h */
	double *w = NULL;              /* [k] exact logits, then weights */
	double *vbar = NULL;           /* [d] mean of V over visible positions */
	uint32_t d, g, S, r, k, l, n_vis, n_sel = 0;
	int ret = -EINVAL;

	if (!in || !out || !in->K || !in->V || !in->q || !out->y || !out->alpha)
		return -EINVAL;
	d = in->d;
	g = in->g;
	S = in->S;
	r = in->r;
	k = in->k;
	l = in->l;
	if (d == 0 || g == 0 || S == 0 || r == 0 || r > d || k == 0 || l >= k)
		return -EINVAL;
	if (in->force_sel && (in->n_force_sel == 0 || in->n_force_sel > k))
		return -EINVAL;

	n_vis = 0;
	for (uint32_t j = 0; j < S; j++)
		n_vis += !is_masked(in->exclude, j);
	if (n_vis == 0)
		return -EINVAL;

	{
		size_t n_big = d > S ? d : S;

		ret = -ENOMEM;
		ranked = malloc(n_big * sizeof(*ranked));
		flag = malloc(n_big * sizeof(*flag));
		comp = malloc((size_t)r * sizeof(*comp));
		sel = malloc((size_t)k * sizeof(*sel));
		score = malloc((size_t)d * sizeof(*score));
		tau = malloc((size_t)g * sizeof(*tau));
		z = malloc((size_t)g * S * sizeof(*z));
		zsum = malloc((size_t)S * sizeof(*zsum));
		w = malloc((size_t)k * sizeof(*w));
		vbar = malloc((size_t)d * sizeof(*vbar));
		if (!ranked || !flag || !comp || !sel || !score || !tau || !z || !zsum || !w ||
		    !vbar)
			goto out;
		ret = -EINVAL;
	}

	/* Step 1: components shared by the group. */
	for (uint32_t i = 0; i < d; i++) {
		score[i] = 0.0;
		for (uint32_t h = 0; h < g; h++)
			score[i] += fabs(in->q[(size_t)h * d + i]);
	}
	if (in->force_comp) {
		/* Taken as given, but a repeat would count a channel twice in τ and z. */
		memset(flag, 0, (size_t)d * sizeof(*flag));
		for (uint32_t c = 0; c < r; c++) {
			uint32_t i = in->force_comp[c];

			if (i >= d || flag[i])
				goto out;
			flag[i] = true;
			comp[c] = i;
		}
	} else {
		for (uint32_t i = 0; i < d; i++) {
			ranked[i].key = score[i];
			ranked[i].idx = i;
		}
		qsort(ranked, d, sizeof(*ranked), keyed_cmp_desc);
		for (uint32_t c = 0; c < r; c++)
			comp[c] = ranked[c].idx;
	}
	qsort(comp, r, sizeof(*comp), u32_cmp_asc);

	/* Step 2: per-head temperature; an all-zero slice makes z_h = 0 whatever τ is. */
	for (uint32_t h = 0; h < g; h++) {
		const double *qh = in->q + (size_t)h * d;
		double num = 0.0, den = 0.0;

		for (uint32_t c = 0; c < r; c++)
			num += fabs(qh[comp[c]]);
		for (uint32_t i = 0; i < d; i++)
			den += fabs(qh[i]);
		tau[h] = num == 0.0 ? sqrt((double)d) : sqrt((double)d * num / den);
	}

	/* Step 3: approximate logits over the r chosen channels, and their group sum. */
	for (uint32_t j = 0; j < S; j++) {
		bool masked = is_masked(in->exclude, j);
		/* the scoring keys: the backend's key slice as numbers (K_score) or K */
		const double *kj = (in->K_score ? in->K_score : in->K) + (size_t)j * d;

		zsum[j] = masked ? -INFINITY : 0.0;
		for (uint32_t h = 0; h < g; h++) {
			const double *qh = in->q + (size_t)h * d;
			double acc = 0.0;

			if (!masked) {
				for (uint32_t c = 0; c < r; c++)
					acc += (qh[comp[c]] / tau[h]) * kj[comp[c]];
				zsum[j] += acc;
			}
			z[(size_t)h * S + j] = masked ? -INFINITY : acc;
		}
	}

	/* Step 4: selection, kept as membership flags so the ascending list falls out. */
	memset(flag, 0, (size_t)S * sizeof(*flag));
	if (in->force_sel) {
		for (uint32_t t = 0; t < in->n_force_sel; t++) {
			uint32_t j = in->force_sel[t];

			if (j >= S || is_masked(in->exclude, j) || flag[j])
				goto out;
			flag[j] = true;
		}
	} else if (n_vis <= k) {
		for (uint32_t j = 0; j < S; j++)
			flag[j] = !is_masked(in->exclude, j);
	} else {
		uint32_t taken = 0, n_cand = 0;

		/* The window is an explicit union: current token, then l visible before it. */
		if (!is_masked(in->exclude, S - 1)) {
			flag[S - 1] = true;
			taken++;
		}
		for (uint32_t j = S - 1, n_local = 0; j-- > 0 && n_local < l;) {
			if (is_masked(in->exclude, j))
				continue;
			flag[j] = true;
			taken++;
			n_local++;
		}
		/* n_vis > k >= taken, so there are always enough candidates to fill k. */
		for (uint32_t j = 0; j < S; j++) {
			if (flag[j] || is_masked(in->exclude, j))
				continue;
			ranked[n_cand].key = zsum[j];
			ranked[n_cand].idx = j;
			n_cand++;
		}
		qsort(ranked, n_cand, sizeof(*ranked), keyed_cmp_desc);
		for (uint32_t t = 0; taken < k; t++, taken++)
			flag[ranked[t].idx] = true;
	}
	for (uint32_t j = 0; j < S; j++)
		if (flag[j])
			sel[n_sel++] = j;

	/* v̄ over every visible position, selected or not (SPARQ.md pitfalls). */
	for (uint32_t i = 0; i < d; i++)
		vbar[i] = 0.0;
	for (uint32_t j = 0; j < S; j++) {
		if (is_masked(in->exclude, j))
			continue;
		for (uint32_t i = 0; i < d; i++)
			vbar[i] += in->V[(size_t)j * d + i];
	}
	for (uint32_t i = 0; i < d; i++)
		vbar[i] /= (double)n_vis;

	for (uint32_t h = 0; h < g; h++) {
		const double *qh = in->q + (size_t)h * d;
		const double *zh = z + (size_t)h * S;
		double *yh = out->y + (size_t)h * d;
		double alpha, zmax = -INFINITY, wmax = -INFINITY, wsum = 0.0;

		/* Step 5: softmax mass of the selection under ŝ_h = softmax(z_h). */
		for (uint32_t j = 0; j < S; j++)
			if (zh[j] > zmax)
				zmax = zh[j];
		{
			double all = 0.0, covered = 0.0;

			for (uint32_t j = 0; j < S; j++) {
				double e;

				if (is_masked(in->exclude, j))
					continue;
				e = exp(zh[j] - zmax);
				all += e;
				if (flag[j])
					covered += e;
			}
			alpha = covered / all;
		}
		/* Exactly 1, not a rounded sum, so the dense case has no v̄ term at all. */
		if (n_sel == n_vis || !in->blend)
			alpha = 1.0;
		out->alpha[h] = alpha;

		/* Step 6: exact softmax attention over the selected rows. */
		for (uint32_t t = 0; t < n_sel; t++) {
			const double *kj = in->K + (size_t)sel[t] * d;
			double dot = 0.0;

			for (uint32_t i = 0; i < d; i++)
				dot += qh[i] * kj[i];
			w[t] = dot / sqrt((double)d);
			if (w[t] > wmax)
				wmax = w[t];
		}
		for (uint32_t t = 0; t < n_sel; t++) {
			w[t] = exp(w[t] - wmax);
			wsum += w[t];
		}
		for (uint32_t i = 0; i < d; i++) {
			double top = 0.0;

			for (uint32_t t = 0; t < n_sel; t++)
				top += (w[t] / wsum) * in->V[(size_t)sel[t] * d + i];
			/* Step 7: blend toward the mean for the mass the selection missed. */
			yh[i] = alpha * top + (1.0 - alpha) * vbar[i];
		}
	}

	out->n_sel = n_sel;
	if (out->sel)
		memcpy(out->sel, sel, (size_t)n_sel * sizeof(*sel));
	if (out->comp)
		memcpy(out->comp, comp, (size_t)r * sizeof(*comp));
	if (out->zsum)
		memcpy(out->zsum, zsum, (size_t)S * sizeof(*zsum));
	if (out->comp_score)
		memcpy(out->comp_score, score, (size_t)d * sizeof(*score));
	ret = 0;
out:
	free(vbar);
	free(w);
	free(zsum);
	free(z);
	free(tau);
	free(score);
	free(sel);
	free(comp);
	free(flag);
	free(ranked);
	return ret;
}
