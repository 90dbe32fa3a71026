/*
 * test_conformance.c — every backend against the double-precision reference
 * (STYLE.md §2). Usage: test_conformance cpu|cpu-portable|cuda [quick] [int8].
 *
 * Random inputs sweep d ∈ {64,128,256}, S from 1 to 65536, g ∈ {1,4}, r ∈ {1,d/8,d},
 * k ∈ {1,128,S/16,≥S}, fp16 and bf16, three mask modes and three blend modes, two
 * KV heads per batched call. A backend must select exactly the reference's rows;
 * where fp32 and double disagree on a near-tie (component sums or group logits
 * within rounding), the test checks that it is a near-tie, counts it, and carries on
 * from the backend's choice so that the outputs are still compared exactly.
 *
 * Every other case keeps its records in a heap store carved from one region (the
 * CUDA backend then gathers them zero-copy from the registered region), the others
 * in the plain heap store (the CUDA backend's staged path). `quick` keeps the short
 * contexts and one case in eight, for runs under compute-sanitizer. `int8` opens the
 * backend with int8 key slices (backend.h) and gives the reference the same keys to
 * score with (K_score, built by quant.h's quantizer): the selection must then match
 * as tightly as with native slices, while the exact step still uses K. A failing
 * check prints the case it was in, so one log is enough to reproduce it.
 */
#include <errno.h>
#include <float.h>
#include <string.h>

#include "backend-impl.h"
#include "helpers.h"
#include "quant.h"
#include "reference.h"

/* The opened backend's own description (device, pool, fallbacks for CUDA). */
static const char *be_detail(const struct sparq_backend *be)
{
	return be->detail;
}

#define N_ITEMS 2  /* KV heads per batched call */
/* room for the largest case's records, per chunk size: 2 × 65536 × 1 KiB, and less */
#define REGION_BYTES (512ull << 20)

/* The case being run, printed when a check fails (T_CHECK exits). */
static char current_case[256];
/* The key-slice format the backend was opened with (main). */
static enum sparq_slice_format key_slice;

static void report_case(void)
{
	if (current_case[0])
		fprintf(stderr, "  while running: %s\n", current_case);
}

struct tcase {
	uint32_t d, S, g, r, k;
	enum sparq_dtype dt;
	int mask;            /* 0 none, 1 padding prefix + random, 2 as 1 and S-1 masked */
	enum sparq_blend blend;
	uint64_t seed;
};

struct totals {
	unsigned cases, items, dense, comp_ties, sel_ties;
	double max_y_err, max_alpha_err;  /* y error relative to max|V| */
};

struct item_data {
	uint16_t *k, *v;     /* [S][d] stored */
	double *kd, *vd;     /* [S][d] as the reference sees them */
	double *ksd;         /* [S][d] the int8 slice's values s_j · q_jc; NULL: native */
	float *q;            /* [g][d] */
	double *qd;
	double vmax;
};

static void fill_item(const struct tcase *tc, struct t_rng *rng, struct item_data *it)
{
	uint32_t S = tc->S, d = tc->d;
	double chs[256], qs[256];

	/* per-channel scales make some components matter more, as in real keys */
	for (uint32_t c = 0; c < d; c++) {
		chs[c] = exp(0.5 * t_normal(rng));
		qs[c] = 1.5 * exp(0.7 * t_normal(rng));
	}
	it->k = t_alloc((size_t)S * d * 2);
	it->v = t_alloc((size_t)S * d * 2);
	it->kd = t_alloc((size_t)S * d * sizeof(double));
	it->vd = t_alloc((size_t)S * d * sizeof(double));
	it->q = t_alloc((size_t)tc->g * d * sizeof(float));
	it->qd = t_alloc((size_t)tc->g * d * sizeof(double));
	it->vmax = 0;
	for (size_t i = 0; i < (size_t)S * d; i++) {
		it->k[i] = t_to_dtype((float)(t_normal(rng) * chs[i % d]), tc->dt);
		it->v[i] = t_to_dtype((float)t_normal(rng), tc->dt);
		it->kd[i] = t_from_dtype(it->k[i], tc->dt);
		it->vd[i] = t_from_dtype(it->v[i], tc->dt);
		it->vmax = fmax(it->vmax, fabs(it->vd[i]));
	}
	for (size_t i = 0; i < (size_t)tc->g * d; i++) {
		it->q[i] = (float)(t_normal(rng) * qs[i % d]);
		it->qd[i] = it->q[i];
	}
	it->ksd = NULL;
	if (key_slice == SPARQ_SLICE_INT8) {
		int8_t *q8 = t_alloc((size_t)S * d);
		float *sc = t_alloc((size_t)S * sizeof(float));

		it->ksd = t_alloc((size_t)S * d * sizeof(double));
		sparq_quant_rows(it->k, S, d, tc->dt, q8, 1, d, sc);
		for (size_t i = 0; i < (size_t)S * d; i++)
			it->ksd[i] = (double)sc[i / d] * q8[i];
		free(q8);
		free(sc);
	}
}

static void free_item(struct item_data *it)
{
	free(it->k);
	free(it->v);
	free(it->kd);
	free(it->ksd);
	free(it->vd);
	free(it->q);
	free(it->qd);
}

static uint64_t *make_mask(const struct tcase *tc, struct t_rng *rng)
{
	uint32_t S = tc->S;
	uint64_t *m;

	if (tc->mask == 0)
		return NULL;
	m = t_alloc(((S + 63) / 64) * sizeof(uint64_t));
	for (uint32_t j = 0; j < S; j++) {
		bool pad = j < S / 20;
		if (pad || t_uniform(rng) < 0.1)
			m[j / 64] |= UINT64_C(1) << (j % 64);
	}
	if (tc->mask == 2)
		m[(S - 1) / 64] |= UINT64_C(1) << ((S - 1) % 64);
	else
		m[(S - 1) / 64] &= ~(UINT64_C(1) << ((S - 1) % 64));
	/* at least one visible position */
	bool any = false;
	for (uint32_t j = 0; j < S; j++)
		any |= !((m[j / 64] >> (j % 64)) & 1);
	if (!any)
		m[0] &= ~UINT64_C(1);
	return m;
}

static bool excluded(const uint64_t *m, uint32_t j)
{
	return m && ((m[j / 64] >> (j % 64)) & 1);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static bool contains(const uint32_t *sorted, uint32_t n, uint32_t v)
{
	return bsearch(&v, sorted, n, sizeof(v), cmp_u32) != NULL;
}

static void check_item(const struct tcase *tc, const struct item_data *dat,
		       const uint64_t *mask, const struct sparq_attend_item *it,
		       struct totals *tot)
{
	uint32_t S = tc->S, d = tc->d, g = tc->g, r = it->used.r, k = it->used.k;
	uint32_t n_vis = 0;
	struct sparq_ref_input in = {
		.d = d, .g = g, .S = S, .K = dat->kd, .V = dat->vd, .q = dat->qd,
		.K_score = dat->ksd,
		.exclude = mask, .r = r, .k = k, .l = it->used.l, .blend = it->used.blend,
	};
	uint32_t *rcomp = t_alloc(r * sizeof(uint32_t)), *rsel = t_alloc(k * sizeof(uint32_t));
	double *zsum = t_alloc(S * sizeof(double)), *cscore = t_alloc(d * sizeof(double));
	double *y = t_alloc((size_t)g * d * sizeof(double)), *alpha = t_alloc(g * sizeof(double));
	struct sparq_ref_output out = { .y = y, .alpha = alpha, .comp = rcomp, .sel = rsel,
					.zsum = zsum, .comp_score = cscore };
	int ret;

	for (uint32_t j = 0; j < S; j++)
		n_vis += !excluded(mask, j);
	bool dense = n_vis <= k;

	ret = sparq_ref_attend(&in, &out);
	T_CHECK(ret == 0, "reference failed %d", ret);
	T_CHECK(it->n_sel == out.n_sel, "selected %u rows, reference %u (S=%u k=%u vis=%u)",
		it->n_sel, out.n_sel, S, k, n_vis);

	if (!dense && memcmp(it->comp, rcomp, r * sizeof(uint32_t)) != 0) {
		/* the r-th largest component score; every backend choice must reach it */
		double thr = INFINITY;
		for (uint32_t i = 0; i < r; i++)
			thr = fmin(thr, cscore[rcomp[i]]);
		for (uint32_t i = 0; i < r; i++)
			T_CHECK(cscore[it->comp[i]] >= thr * (1 - 1e-6),
				"component %u chosen (score %.9g) below the r-th %.9g: not a tie",
				it->comp[i], cscore[it->comp[i]], thr);
		tot->comp_ties++;
		in.force_comp = it->comp;
		ret = sparq_ref_attend(&in, &out);
		T_CHECK(ret == 0, "reference (forced components) failed %d", ret);
	}

	uint32_t diff = 0;
	for (uint32_t i = 0; i < it->n_sel; i++) {
		T_CHECK(it->sel[i] < S && !excluded(mask, it->sel[i]),
			"selected position %u is masked or out of range", it->sel[i]);
		T_CHECK(i == 0 || it->sel[i] > it->sel[i - 1], "selection not ascending");
		diff += !contains(rsel, out.n_sel, it->sel[i]);
	}
	if (diff) {
		double zmax = 0, hi = -INFINITY, lo = INFINITY;
		for (uint32_t j = 0; j < S; j++)
			if (isfinite(zsum[j]))
				zmax = fmax(zmax, fabs(zsum[j]));
		for (uint32_t i = 0; i < it->n_sel; i++)
			if (!contains(rsel, out.n_sel, it->sel[i]))
				lo = fmin(lo, zsum[it->sel[i]]);
		for (uint32_t i = 0; i < out.n_sel; i++)
			if (!contains(it->sel, it->n_sel, rsel[i]))
				hi = fmax(hi, zsum[rsel[i]]);
		/* equal in double means equal key entries, hence equal in fp32 too: an exact
		 * tie must go to the lower position, only a near-tie may differ */
		T_CHECK(hi > lo, "exact tie at %.9g broken toward the higher position", hi);
		T_CHECK(hi - lo <= 3e-5 * (1 + zmax),
			"selection differs beyond a tie: reference keeps %.9g, backend %.9g (S=%u d=%u g=%u r=%u k=%u)",
			hi, lo, S, d, g, r, k);
		T_CHECK(diff <= 4, "%u rows differ: too many for near-ties", diff);
		tot->sel_ties += diff;
		in.force_sel = it->sel;
		in.n_force_sel = it->n_sel;
		ret = sparq_ref_attend(&in, &out);
		T_CHECK(ret == 0, "reference (forced selection) failed %d", ret);
	}

	bool blended = false;
	for (uint32_t h = 0; h < g; h++) {
		double ea = fabs(it->alpha[h] - alpha[h]);
		if (dense || !it->used.blend)
			T_CHECK(it->alpha[h] == 1.0f, "alpha %.9g must be exactly 1 here", it->alpha[h]);
		T_CHECK(ea <= 5e-5, "alpha %.9g vs reference %.9g", it->alpha[h], alpha[h]);
		tot->max_alpha_err = fmax(tot->max_alpha_err, ea);
		blended |= alpha[h] < 1.0;
	}
	double tol = (blended ? 1e-4 : 2e-5) * dat->vmax;
	for (uint32_t i = 0; i < g * d; i++) {
		double e = fabs(it->y[i] - y[i]);
		T_CHECK(e <= tol, "y[%u] = %.9g vs reference %.9g (S=%u d=%u g=%u r=%u k=%u %s mask %d)",
			i, it->y[i], y[i], S, d, g, r, k, sparq_dtype_name(tc->dt), tc->mask);
		tot->max_y_err = fmax(tot->max_y_err, e / dat->vmax);
	}
	tot->items++;
	tot->dense += dense;
	free(rcomp);
	free(rsel);
	free(zsum);
	free(cscore);
	free(y);
	free(alpha);
}

static void run_case(struct sparq_backend *be, struct sparq_store *st, const struct tcase *tc,
		     struct totals *tot)
{
	struct t_rng rng = { tc->seed };
	struct item_data dat[N_ITEMS];
	struct sparq_stream *s[N_ITEMS];
	struct sparq_attend_item items[N_ITEMS];
	uint64_t *mask = make_mask(tc, &rng);
	const char *why = NULL;
	int ret;

	snprintf(current_case, sizeof(current_case),
		 "case seed %llu: S=%u d=%u g=%u r=%u k=%u %s mask %d blend %d, %s store",
		 (unsigned long long)tc->seed, tc->S, tc->d, tc->g, tc->r, tc->k,
		 sparq_dtype_name(tc->dt), tc->mask, (int)tc->blend, st->ops->name);

	memset(items, 0, sizeof(items));
	for (int i = 0; i < N_ITEMS; i++) {
		fill_item(tc, &rng, &dat[i]);
		ret = sparq_stream_create(be, st, tc->d, tc->dt, &s[i], &why);
		T_CHECK(ret == 0, "stream create: %d %s", ret, why);
		/* appends of uneven sizes exercise slice growth and block boundaries */
		for (uint32_t pos = 0; pos < tc->S;) {
			uint32_t n = 1 + (uint32_t)(t_next(&rng) % (pos < 300 ? 37 : 9000));
			if (n > tc->S - pos)
				n = tc->S - pos;
			ret = sparq_stream_append(s[i], n, dat[i].k + (size_t)pos * tc->d,
						  dat[i].v + (size_t)pos * tc->d, &why);
			T_CHECK(ret == 0, "append: %d %s", ret, why);
			pos += n;
		}
		items[i] = (struct sparq_attend_item){
			.stream = s[i], .g = tc->g, .q = dat[i].q, .exclude = mask,
			.params = { .r = tc->r, .k = tc->k, .l = -1, .blend = tc->blend },
			.y = t_alloc((size_t)tc->g * tc->d * sizeof(float)),
			.alpha = t_alloc(tc->g * sizeof(float)),
			.sel = t_alloc(tc->k * sizeof(uint32_t)), .sel_cap = tc->k,
			.comp = t_alloc(tc->r * sizeof(uint32_t)),
		};
	}
	struct sparq_attend_batch b = { .items = items, .n = N_ITEMS };
	ret = sparq_backend_attend(be, &b);
	T_CHECK(ret == 0, "attend: %d (%s) item %d", ret, b.why ? b.why : "", b.bad_item);
	for (int i = 0; i < N_ITEMS; i++) {
		check_item(tc, &dat[i], mask, &items[i], tot);
		free(items[i].y);
		free(items[i].alpha);
		free(items[i].sel);
		free(items[i].comp);
		sparq_stream_destroy(s[i]);
		free_item(&dat[i]);
	}
	free(mask);
	tot->cases++;
}

int main(int argc, char **argv)
{
	const char *which = argc > 1 ? argv[1] : "cpu";
	bool quick = false;
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct sparq_backend *be;
	struct sparq_store *st, *st_region;
	struct totals tot = { 0 };
	int ret;
	static const uint32_t small_S[] = { 1, 2, 5, 63, 64, 65, 200, 1000, 4097 };
	static const uint32_t big_S[] = { 16384, 65536 };
	static const uint32_t dims[] = { 64, 128, 256 };
	static const uint32_t groups[] = { 1, 4 };
	uint64_t seed = 1;

	for (int a = 2; a < argc; a++) {
		if (strcmp(argv[a], "quick") == 0) {
			quick = true;
		} else if (strcmp(argv[a], "int8") == 0) {
			key_slice = SPARQ_SLICE_INT8;
		} else {
			fprintf(stderr, "usage: %s cpu|cpu-portable|cuda [quick] [int8]\n", argv[0]);
			return T_EXIT_FAIL;
		}
	}
	cfg.key_slice = key_slice;
	if (strcmp(which, "cpu-portable") == 0) {
		cfg.cpu_portable = true;
		which = "cpu";
	}
	ret = sparq_backend_open(which, &cfg, &be);
	if (ret) {
		struct sparq_backend_info info[4];
		int n = sparq_backend_list(info, 4);
		for (int i = 0; i < n && i < 4; i++)
			if (strcmp(info[i].name, which) == 0)
				printf("SKIP: backend %s not available (%s): %s\n", which,
				       strerror(-ret), info[i].detail);
		return T_EXIT_SKIP;
	}
	printf("backend %s: %s\n", sparq_backend_name(be), be_detail(be));
	fflush(stdout);
	atexit(report_case);
	T_CHECK(sparq_store_heap_create(256, 0, &st) == 0, "heap store");
	T_CHECK(sparq_store_heap_create_region(256, REGION_BYTES, &st_region) == 0,
		"heap store with a region");

	for (unsigned si = 0; si < sizeof(small_S) / sizeof(small_S[0]) + 2; si++) {
		bool big = si >= sizeof(small_S) / sizeof(small_S[0]);
		uint32_t S = big ? big_S[si - 9] : small_S[si];
		unsigned variant = 0;

		if (quick && big)
			break;
		for (unsigned di = 0; di < 3; di++)
			for (unsigned gi = 0; gi < 2; gi++)
				for (unsigned ri = 0; ri < 3; ri++)
					for (unsigned ki = 0; ki < 4; ki++)
						for (unsigned ti = 0; ti < 2; ti++, variant++) {
		uint32_t d = dims[di];
		uint32_t r = ri == 0 ? 1 : ri == 1 ? d / 8 : d;
		uint32_t k = ki == 0 ? 1 : ki == 1 ? 128 : ki == 2 ? (S / 16 ? S / 16 : 1) : S + 3;
		struct tcase tc = {
			.d = d, .S = S, .g = groups[gi], .r = r, .k = k,
			.dt = ti ? SPARQ_DTYPE_BF16 : SPARQ_DTYPE_F16,
			.mask = (int)(variant % 3), .blend = (enum sparq_blend)((variant / 3) % 3),
			.seed = seed++,
		};
		/* the long contexts take every (d, g, k) but one r and one dtype each */
		if (big && (ri != (di + gi + ki) % 3 || ti != (di + ki) % 2))
			continue;
		if (quick && (variant + variant / 16) % 8 != 0) /* both dtypes */
			continue;
		run_case(be, tc.seed % 2 ? st_region : st, &tc, &tot);
						}
		/* progress, so a run cut short by a time limit still shows how far it got */
		printf("  S=%u done: %u cases so far, near-ties %u/%u\n", S, tot.cases,
		       tot.comp_ties, tot.sel_ties);
		fflush(stdout);
	}
	printf("conformance %s %s slice (%s): %u cases, %u items (%u dense), near-ties: %u component "
	       "choices, %u rows; max |y - ref| = %.3g·max|V|, max |alpha - ref| = %.3g\n",
	       argc > 1 ? argv[1] : "cpu", sparq_slice_format_name(key_slice),
	       sparq_backend_name(be), tot.cases, tot.items, tot.dense,
	       tot.comp_ties, tot.sel_ties, tot.max_y_err, tot.max_alpha_err);
	current_case[0] = 0;
	printf("backend %s after the run: %s\n", sparq_backend_name(be), be_detail(be));
	/* the backend first: it may hold the region registered */
	sparq_backend_close(be);
	sparq_store_destroy(st);
	sparq_store_destroy(st_region);
	return T_EXIT_PASS;
}
