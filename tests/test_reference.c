/*
 * test_reference.c — checks the SparQ oracle (sparq/reference.c) on its own, on cases
 * small enough to recompute here by brute force: dense softmax attention, exact logits,
 * tie rules, masking, blend on and off, τ, forced choices and argument errors. Every backend is later judged
 * against the oracle, so the oracle must first be judged against arithmetic.
 *
 * Exit 0 on pass, 1 on any failure (each failure is printed).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

#define MAX_D 16
#define MAX_S 64
#define MAX_G 4

static int n_fail;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond)) {                                                  \
			fprintf(stderr, "FAIL %s:%d: ", __func__, __LINE__);     \
			fprintf(stderr, __VA_ARGS__);                           \
			fputc('\n', stderr);                                    \
			n_fail++;                                               \
		}                                                               \
	} while (0)

/* Fixed-seed generator so failures reproduce; the values only need to be varied. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static void fill(double *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] = rnd();
}

static bool masked(const uint64_t *exclude, uint32_t j)
{
	return exclude && ((exclude[j >> 6] >> (j & 63)) & 1);
}

/* Softmax attention of one query over the rows with use[j] set, written out longhand. */
static void attend_rows(uint32_t d, uint32_t S, const double *K, const double *V,
			const double *q, const bool *use, double *y)
{
	double logit[MAX_S], m = -INFINITY, sum = 0.0;

	for (uint32_t j = 0; j < S; j++) {
		double dot = 0.0;

		if (!use[j])
			continue;
		for (uint32_t i = 0; i < d; i++)
			dot += q[i] * K[j * d + i];
		logit[j] = dot / sqrt((double)d);
		if (logit[j] > m)
			m = logit[j];
	}
	for (uint32_t j = 0; j < S; j++)
		if (use[j])
			sum += exp(logit[j] - m);
	for (uint32_t i = 0; i < d; i++) {
		y[i] = 0.0;
		for (uint32_t j = 0; j < S; j++)
			if (use[j])
				y[i] += exp(logit[j] - m) / sum * V[j * d + i];
	}
}

static double max_abs_diff(const double *a, const double *b, size_t n)
{
	double m = 0.0;

	for (size_t i = 0; i < n; i++)
		if (fabs(a[i] - b[i]) > m)
			m = fabs(a[i] - b[i]);
	return m;
}

/* Everything one call needs, with all optional outputs wired up. */
struct call {
	struct sparq_ref_input in;
	struct sparq_ref_output out;
	double y[MAX_G * MAX_D], alpha[MAX_G], zsum[MAX_S], comp_score[MAX_D];
	uint32_t comp[MAX_D], sel[MAX_S];
};

static void call_init(struct call *c, uint32_t d, uint32_t g, uint32_t S, const double *K,
		      const double *V, const double *q, uint32_t r, uint32_t k, uint32_t l)
{
	memset(c, 0, sizeof(*c));
	c->in = (struct sparq_ref_input){ .d = d, .g = g, .S = S, .K = K, .V = V, .q = q,
					  .r = r, .k = k, .l = l, .blend = true };
	c->out = (struct sparq_ref_output){ .y = c->y, .alpha = c->alpha, .comp = c->comp,
					    .sel = c->sel, .zsum = c->zsum,
					    .comp_score = c->comp_score };
}

/* (1) One position: the only weight is exp(0)/exp(0) = 1, so y is V[0] bit for bit. */
static void test_single_position(void)
{
	double K[8], V[8], q[2 * 8];
	struct call c;
	int ret;

	fill(K, 8);
	fill(V, 8);
	fill(q, 16);
	call_init(&c, 8, 2, 1, K, V, q, 3, 4, 1);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 1 && c.sel[0] == 0, "n_sel %u sel[0] %u", c.out.n_sel, c.sel[0]);
	for (uint32_t h = 0; h < 2; h++) {
		CHECK(c.alpha[h] == 1.0, "alpha[%u] %.17g", h, c.alpha[h]);
		for (uint32_t i = 0; i < 8; i++)
			CHECK(c.y[h * 8 + i] == V[i], "y[%u][%u] %.17g != %.17g", h, i,
			      c.y[h * 8 + i], V[i]);
	}
}

/* (2) k = S and r = d: plain dense softmax attention, recomputed here. */
static void test_dense_tiny(void)
{
	enum { d = 8, S = 4 };
	double K[S * d], V[S * d], q[d], want[d];
	bool all[S] = { true, true, true, true };
	struct call c;
	int ret;

	fill(K, S * d);
	fill(V, S * d);
	fill(q, d);
	attend_rows(d, S, K, V, q, all, want);
	call_init(&c, d, 1, S, K, V, q, d, S, 1);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == S, "n_sel %u", c.out.n_sel);
	for (uint32_t j = 0; j < c.out.n_sel; j++)
		CHECK(c.sel[j] == j, "sel[%u] = %u", j, c.sel[j]);
	CHECK(c.alpha[0] == 1.0, "alpha %.17g", c.alpha[0]);
	CHECK(max_abs_diff(c.y, want, d) < 1e-12, "y off by %g", max_abs_diff(c.y, want, d));
}

/*
 * (3) r = d keeps all the mass, so τ = √d and z_h is the exact logit; zsum is their
 * sum over the group, comp is 0..d-1 and comp_score is Σ_h |q_h,i|.
 */
static void test_full_rank_logits(void)
{
	enum { d = 16, S = 24, g = 3 };
	double K[S * d], V[S * d], q[g * d];
	struct call c;
	int ret;

	fill(K, S * d);
	fill(V, S * d);
	fill(q, g * d);
	call_init(&c, d, g, S, K, V, q, d, 6, 2);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	for (uint32_t j = 0; j < S; j++) {
		double want = 0.0;

		for (uint32_t h = 0; h < g; h++) {
			double dot = 0.0;

			for (uint32_t i = 0; i < d; i++)
				dot += q[h * d + i] * K[j * d + i];
			want += dot / sqrt((double)d);
		}
		CHECK(fabs(c.zsum[j] - want) < 1e-12, "zsum[%u] %.17g want %.17g", j, c.zsum[j],
		      want);
	}
	for (uint32_t i = 0; i < d; i++) {
		double want = 0.0;

		for (uint32_t h = 0; h < g; h++)
			want += fabs(q[h * d + i]);
		CHECK(c.comp[i] == i, "comp[%u] = %u", i, c.comp[i]);
		CHECK(fabs(c.comp_score[i] - want) < 1e-15, "comp_score[%u]", i);
	}
}

/* (4) Ties: equal keys tie every logit, equal |q| ties every component; lowest wins. */
static void test_ties(void)
{
	enum { d = 8, S = 10 };
	double K[S * d], V[S * d], q[d];
	uint64_t exclude[1];
	struct call c;
	int ret;

	for (uint32_t j = 0; j < S; j++)
		for (uint32_t i = 0; i < d; i++)
			K[j * d + i] = 0.25 * (double)(i + 1);
	fill(V, S * d);
	for (uint32_t i = 0; i < d; i++)
		q[i] = (i & 1) ? -0.5 : 0.5;

	/* Window is just S-1; the one free row goes to position 0. */
	call_init(&c, d, 1, S, K, V, q, 3, 2, 0);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 2 && c.sel[0] == 0 && c.sel[1] == S - 1,
	      "n_sel %u sel {%u, %u}, want {0, %u}", c.out.n_sel, c.sel[0], c.sel[1], S - 1);
	CHECK(c.comp[0] == 0 && c.comp[1] == 1 && c.comp[2] == 2, "comp {%u, %u, %u}",
	      c.comp[0], c.comp[1], c.comp[2]);
	/* Two of ten equally likely rows selected. */
	CHECK(fabs(c.alpha[0] - 0.2) < 1e-15, "alpha %.17g want 0.2", c.alpha[0]);

	/* Window {9, 8, 7} plus the lowest other row. */
	call_init(&c, d, 1, S, K, V, q, 3, 4, 2);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 4 && c.sel[0] == 0 && c.sel[1] == 7 && c.sel[2] == 8 &&
	      c.sel[3] == 9, "sel {%u, %u, %u, %u}, want {0, 7, 8, 9}", c.sel[0], c.sel[1],
	      c.sel[2], c.sel[3]);

	/* Masked 0 and 8: the window skips 8 to reach 6, the free row skips 0 to reach 1. */
	exclude[0] = (1ull << 0) | (1ull << 8);
	c.in.exclude = exclude;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 4 && c.sel[0] == 1 && c.sel[1] == 6 && c.sel[2] == 7 &&
	      c.sel[3] == 9, "sel {%u, %u, %u, %u}, want {1, 6, 7, 9}", c.sel[0], c.sel[1],
	      c.sel[2], c.sel[3]);
}

/* (5) Masking: never selected, -inf logits, and dense over visible rows when k covers them. */
static void test_masking(void)
{
	enum { d = 8, S = 40, g = 2 };
	double K[S * d], V[S * d], q[g * d], want[d];
	uint64_t exclude[1] = { 0 };
	bool vis[S];
	uint32_t n_vis = 0;
	struct call c;
	int ret;

	fill(K, S * d);
	fill(V, S * d);
	fill(q, g * d);
	/* Mask a scatter of positions, the current token included, so the window lacks it. */
	for (uint32_t j = 0; j < S; j++)
		if (j % 3 == 1 || j == S - 1)
			exclude[0] |= 1ull << j;
	for (uint32_t j = 0; j < S; j++) {
		vis[j] = !masked(exclude, j);
		n_vis += vis[j];
	}

	call_init(&c, d, g, S, K, V, q, 3, 8, 3);
	c.in.exclude = exclude;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 8, "n_sel %u", c.out.n_sel);
	for (uint32_t t = 0; t < c.out.n_sel; t++) {
		CHECK(vis[c.sel[t]], "masked position %u selected", c.sel[t]);
		CHECK(t == 0 || c.sel[t] > c.sel[t - 1], "sel not ascending at %u", t);
	}
	/* Last three visible before S-1 = 39 (itself masked): 38, 36, 35. */
	CHECK(c.sel[5] == 35 && c.sel[6] == 36 && c.sel[7] == 38, "window {%u, %u, %u}",
	      c.sel[5], c.sel[6], c.sel[7]);
	for (uint32_t j = 0; j < S; j++)
		CHECK(vis[j] ? isfinite(c.zsum[j]) : (isinf(c.zsum[j]) && c.zsum[j] < 0),
		      "zsum[%u] = %g (visible %d)", j, c.zsum[j], vis[j]);
	/* v̄ averages the visible rows only, selected or not. */
	{
		double vbar[d] = { 0 }, top[d];
		bool use[S] = { false };

		for (uint32_t t = 0; t < c.out.n_sel; t++)
			use[c.sel[t]] = true;
		for (uint32_t j = 0; j < S; j++)
			for (uint32_t i = 0; i < d && vis[j]; i++)
				vbar[i] += V[j * d + i] / n_vis;
		for (uint32_t h = 0; h < g; h++) {
			double a = c.alpha[h];

			CHECK(a > 0.0 && a < 1.0, "alpha[%u] %.17g", h, a);
			attend_rows(d, S, K, V, q + h * d, use, top);
			for (uint32_t i = 0; i < d; i++)
				CHECK(fabs(c.y[h * d + i] - (a * top[i] + (1.0 - a) * vbar[i])) < 1e-12,
				      "head %u blended y[%u] wrong", h, i);
		}
	}

	/* k covers every visible row: exact dense attention over the visible rows only. */
	call_init(&c, d, g, S, K, V, q, 3, n_vis + 5, 3);
	c.in.exclude = exclude;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == n_vis, "n_sel %u want %u", c.out.n_sel, n_vis);
	for (uint32_t t = 0; t < c.out.n_sel; t++)
		CHECK(vis[c.sel[t]], "masked position %u selected", c.sel[t]);
	for (uint32_t h = 0; h < g; h++) {
		attend_rows(d, S, K, V, q + h * d, vis, want);
		CHECK(c.alpha[h] == 1.0, "alpha[%u] %.17g", h, c.alpha[h]);
		CHECK(max_abs_diff(c.y + h * d, want, d) < 1e-12, "head %u y off by %g", h,
		      max_abs_diff(c.y + h * d, want, d));
	}
}

/*
 * (6) Blend: on, α is the ŝ mass of the selection and y mixes in v̄; off, α = 1 and y is
 * the exact attention over the selected rows alone.
 */
static void test_blend(void)
{
	enum { d = 8, S = 30 };
	double K[S * d], V[S * d], q[d], top[d], vbar[d] = { 0 }, zmax = -INFINITY;
	double all = 0.0, covered = 0.0, alpha;
	bool use[S] = { false };
	struct call c;
	int ret;

	fill(K, S * d);
	fill(V, S * d);
	fill(q, d);
	call_init(&c, d, 1, S, K, V, q, 4, 6, 2);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	for (uint32_t t = 0; t < c.out.n_sel; t++)
		use[c.sel[t]] = true;
	/* g = 1, so zsum is z itself. */
	for (uint32_t j = 0; j < S; j++)
		if (c.zsum[j] > zmax)
			zmax = c.zsum[j];
	for (uint32_t j = 0; j < S; j++) {
		all += exp(c.zsum[j] - zmax);
		if (use[j])
			covered += exp(c.zsum[j] - zmax);
	}
	alpha = covered / all;
	CHECK(fabs(c.alpha[0] - alpha) < 1e-12, "alpha %.17g want %.17g", c.alpha[0], alpha);
	attend_rows(d, S, K, V, q, use, top);
	for (uint32_t j = 0; j < S; j++)
		for (uint32_t i = 0; i < d; i++)
			vbar[i] += V[j * d + i] / S;
	for (uint32_t i = 0; i < d; i++) {
		double want = alpha * top[i] + (1.0 - alpha) * vbar[i];

		CHECK(fabs(c.y[i] - want) < 1e-12, "blend y[%u] %.17g want %.17g", i, c.y[i],
		      want);
	}

	c.in.blend = false;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.alpha[0] == 1.0, "blend off: alpha %.17g", c.alpha[0]);
	CHECK(max_abs_diff(c.y, top, d) < 1e-12, "blend off: y off by %g",
	      max_abs_diff(c.y, top, d));
}

/*
 * (8) τ with r < d: z uses the r largest |q_i| scaled by 1/τ, τ = sqrt(d·kept/total).
 * Forcing components with q = 0 there gives z = 0 (τ := √d, not 0/0), and forcing rows
 * gives exact attention over exactly those rows.
 */
static void test_tau_and_overrides(void)
{
	enum { d = 8, S = 12, r = 3 };
	double K[S * d], V[S * d], q[d] = { 0.1, -2.0, 0.3, 1.5, -0.05, 0.7, -1.0, 0.2 };
	uint32_t zero_comp[r] = { 6, 4, 7 }, force_sel[3] = { 9, 2, 5 };
	double kept = 2.0 + 1.5 + 1.0, total = 0.0, tau, top[d];
	bool use[S] = { false };
	struct call c;
	int ret;

	fill(K, S * d);
	fill(V, S * d);
	for (uint32_t i = 0; i < d; i++)
		total += fabs(q[i]);
	tau = sqrt(d * kept / total);
	call_init(&c, d, 1, S, K, V, q, r, 4, 1);
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.comp[0] == 1 && c.comp[1] == 3 && c.comp[2] == 6, "comp {%u, %u, %u}",
	      c.comp[0], c.comp[1], c.comp[2]);
	for (uint32_t j = 0; j < S; j++) {
		double want = (q[1] * K[j * d + 1] + q[3] * K[j * d + 3] + q[6] * K[j * d + 6]) /
			      tau;

		CHECK(fabs(c.zsum[j] - want) < 1e-12, "zsum[%u] %.17g want %.17g", j, c.zsum[j],
		      want);
	}

	q[4] = q[6] = q[7] = 0.0;
	c.in.force_comp = zero_comp;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.comp[0] == 4 && c.comp[1] == 6 && c.comp[2] == 7, "forced comp {%u, %u, %u}",
	      c.comp[0], c.comp[1], c.comp[2]);
	for (uint32_t j = 0; j < S; j++)
		CHECK(c.zsum[j] == 0.0, "zero slice: zsum[%u] = %g", j, c.zsum[j]);
	CHECK(c.out.n_sel == 4 && c.sel[0] == 0 && c.sel[1] == 1 && c.sel[2] == 10 &&
	      c.sel[3] == 11, "zero slice: sel {%u, %u, %u, %u}", c.sel[0], c.sel[1],
	      c.sel[2], c.sel[3]);
	CHECK(fabs(c.alpha[0] - 4.0 / S) < 1e-15, "zero slice: alpha %.17g", c.alpha[0]);

	c.in.force_comp = NULL;
	c.in.blend = false;
	c.in.force_sel = force_sel;
	c.in.n_force_sel = 3;
	ret = sparq_ref_attend(&c.in, &c.out);
	CHECK(ret == 0, "ret %d", ret);
	CHECK(c.out.n_sel == 3 && c.sel[0] == 2 && c.sel[1] == 5 && c.sel[2] == 9,
	      "forced sel {%u, %u, %u}", c.sel[0], c.sel[1], c.sel[2]);
	use[2] = use[5] = use[9] = true;
	attend_rows(d, S, K, V, q, use, top);
	CHECK(max_abs_diff(c.y, top, d) < 1e-12, "forced sel: y off by %g",
	      max_abs_diff(c.y, top, d));
}

/* (7) Argument errors. */
static void test_einval(void)
{
	enum { d = 8, S = 4 };
	double K[S * d] = { 0 }, V[S * d] = { 0 }, q[d] = { 0 };
	uint64_t all_masked[1] = { 0xf };
	struct call c;
	struct {
		const char *what;
		uint32_t d, g, S, r, k, l;
		const uint64_t *exclude;
	} cases[] = {
		{ "r = 0", d, 1, S, 0, 2, 0, NULL },
		{ "r > d", d, 1, S, d + 1, 2, 0, NULL },
		{ "k = 0", d, 1, S, 2, 0, 0, NULL },
		{ "l = k", d, 1, S, 2, 2, 2, NULL },
		{ "l > k", d, 1, S, 2, 2, 3, NULL },
		{ "d = 0", 0, 1, S, 2, 2, 0, NULL },
		{ "g = 0", d, 0, S, 2, 2, 0, NULL },
		{ "S = 0", d, 1, 0, 2, 2, 0, NULL },
		{ "all masked", d, 1, S, 2, 2, 0, all_masked },
	};

	for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
		int ret;

		call_init(&c, cases[t].d, cases[t].g, cases[t].S, K, V, q, cases[t].r,
			  cases[t].k, cases[t].l);
		c.in.exclude = cases[t].exclude;
		ret = sparq_ref_attend(&c.in, &c.out);
		CHECK(ret == -EINVAL, "%s: ret %d, want -EINVAL", cases[t].what, ret);
	}
	/* Overrides the oracle can check cheaply: out of range, repeated, masked, too many. */
	{
		uint32_t bad_comp[2] = { 1, 1 }, far_comp[2] = { 0, d }, sel_far[1] = { S };
		uint32_t sel_rep[2] = { 1, 1 }, sel_many[3] = { 0, 1, 2 }, sel_masked[1] = { 0 };
		uint64_t mask0[1] = { 1 };

		call_init(&c, d, 1, S, K, V, q, 2, 2, 1);
		c.in.force_comp = bad_comp;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "repeated force_comp");
		c.in.force_comp = far_comp;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "force_comp >= d");
		c.in.force_comp = NULL;
		c.in.force_sel = sel_far;
		c.in.n_force_sel = 1;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "force_sel >= S");
		c.in.force_sel = sel_rep;
		c.in.n_force_sel = 2;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "repeated force_sel");
		c.in.force_sel = sel_many;
		c.in.n_force_sel = 3;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "more than k force_sel");
		c.in.force_sel = sel_masked;
		c.in.n_force_sel = 1;
		c.in.exclude = mask0;
		CHECK(sparq_ref_attend(&c.in, &c.out) == -EINVAL, "masked force_sel");
	}
	/* The same call with valid arguments succeeds, so the cases above test one thing each. */
	call_init(&c, d, 1, S, K, V, q, 2, 2, 1);
	CHECK(sparq_ref_attend(&c.in, &c.out) == 0, "valid control call failed");
}

int main(void)
{
	test_single_position();
	test_dense_tiny();
	test_full_rank_logits();
	test_ties();
	test_masking();
	test_blend();
	test_tau_and_overrides();
	test_einval();
	if (n_fail) {
		fprintf(stderr, "test_reference: %d check(s) failed\n", n_fail);
		return 1;
	}
	printf("test_reference: ok\n");
	return 0;
}
