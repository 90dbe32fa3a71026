/*
 * test_cuda.c — what only the CUDA backend has, checked on a device (exit 77 without
 * one): streams that do not fit in the GPU budget are served by the CPU backend,
 * including one moved there mid-stream, and say so in the detail and stats; the
 * zero-copy gather (records in a registered region) and the staged one (plain heap)
 * give bit-identical results; decode appends one position at a time across slice
 * page boundaries; select mode matches full mode; fp32 logit overflow is -ERANGE
 * naming the item; the v2 kernels (SPARQ_CUDA_KERNELS=v2) select exactly the rows of
 * the v1 kernels (the default) and agree on y within fp32 reordering, on shapes that span
 * several select chunks and exact-step blocks, all-tied keys, dense items and both
 * fetch paths; the row cache serves a repeated selection from GPU memory (one row per
 * cache slot, the same y bit for bit), survives a decode append, and is off with
 * SPARQ_CUDA_ROWCACHE=0; one stream twice in a call stays right. Results are checked against the double-precision reference.
 * CUDA failures (synthetic, cuda_fault_every): a call whose GPU part fails is served by
 * the internal CPU backend bit for bit as the CPU backend serves the same streams, and
 * counted; a sticky one degrades the backend for good (calls, appends, new streams),
 * logged once; a validation error stays an error.
 * int8 key slices (issue 5): the budget fallback (int8 pages copied to the CPU slice as
 * they are), both fetch paths, the two kernel generations and the CUDA-failure
 * fallback run again with int8 slices, checked against the reference scoring with the
 * same quantized keys (quant.h).
 * CUDA graphs (SPARQ_CUDA_GRAPHS=1, v2): a decode loop whose call shape keeps changing
 * gives bit for bit the results of the same kernels launched one by one, and replays
 * the captured graph while the shape stays.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend-impl.h"
#include "helpers.h"
#include "quant.h"
#include "reference.h"

/* The key-slice format of the backends under test (main runs the checks in both). */
static enum sparq_slice_format key_slice;

struct data {
	uint32_t S, d, g;
	enum sparq_dtype dt;
	uint16_t *k, *v;
	double *kd, *vd, *qd, vmax;
	double *ksd;   /* int8 slices: the keys as they score, s_j · q_jc; else NULL */
	float *q;
};

static void make_data(struct data *x, uint32_t S, uint32_t d, uint32_t g, enum sparq_dtype dt,
		      uint64_t seed, float kscale)
{
	struct t_rng rng = { seed };

	*x = (struct data){ .S = S, .d = d, .g = g, .dt = dt };
	x->k = t_alloc((size_t)S * d * 2);
	x->v = t_alloc((size_t)S * d * 2);
	x->kd = t_alloc((size_t)S * d * sizeof(double));
	x->vd = t_alloc((size_t)S * d * sizeof(double));
	x->q = t_alloc((size_t)g * d * sizeof(float));
	x->qd = t_alloc((size_t)g * d * sizeof(double));
	for (size_t i = 0; i < (size_t)S * d; i++) {
		/* kscale > 1 asks for keys near the top of bf16 that overflow fp32 logits */
		x->k[i] = t_to_dtype(kscale > 1.0f ? kscale * (float)(0.5 + t_uniform(&rng))
						   : (float)t_normal(&rng) * kscale, dt);
		x->v[i] = t_to_dtype((float)t_normal(&rng), dt);
		x->kd[i] = t_from_dtype(x->k[i], dt);
		x->vd[i] = t_from_dtype(x->v[i], dt);
		x->vmax = fmax(x->vmax, fabs(x->vd[i]));
	}
	for (size_t i = 0; i < (size_t)g * d; i++) {
		x->q[i] = (float)(t_normal(&rng) * (1.0 + (i % 7)));
		if (kscale > 1.0f)
			x->q[i] = fabsf(x->q[i]) + 1.0f; /* no cancellation: Σ q·K ≥ 64·1e38/τ */
		x->qd[i] = x->q[i];
	}
	if (key_slice == SPARQ_SLICE_INT8) {
		int8_t *q8 = t_alloc((size_t)S * d);
		float *sc = t_alloc((size_t)S * sizeof(float));

		x->ksd = t_alloc((size_t)S * d * sizeof(double));
		sparq_quant_rows(x->k, S, d, dt, q8, 1, d, sc);
		for (size_t i = 0; i < (size_t)S * d; i++)
			x->ksd[i] = (double)sc[i / d] * q8[i];
		free(q8);
		free(sc);
	}
}

static void free_data(struct data *x)
{
	free(x->k);
	free(x->v);
	free(x->kd);
	free(x->ksd);
	free(x->vd);
	free(x->q);
	free(x->qd);
}

/* Appends positions [from, upto) of x in pieces of `step` (1 = decode appends). */
static void append_range(struct sparq_stream *s, const struct data *x, uint32_t from,
			 uint32_t upto, uint32_t step)
{
	const char *why = NULL;
	int ret;

	for (uint32_t pos = from; pos < upto;) {
		uint32_t n = step < upto - pos ? step : upto - pos;
		ret = sparq_stream_append(s, n, x->k + (size_t)pos * x->d, x->v + (size_t)pos * x->d,
					  &why);
		T_CHECK(ret == 0, "append at %u: %d %s", pos, ret, why);
		pos += n;
	}
}

/* Appends x in pieces of `step` positions (1 = decode appends) after a prefill. */
static struct sparq_stream *stream_of(struct sparq_backend *be, struct sparq_store *st,
				      const struct data *x, uint32_t prefill, uint32_t step)
{
	struct sparq_stream *s;
	const char *why = NULL;
	int ret = sparq_stream_create(be, st, x->d, x->dt, &s, &why);

	T_CHECK(ret == 0, "stream create: %d %s", ret, why);
	for (uint32_t pos = 0; pos < x->S;) {
		uint32_t n = pos < prefill ? prefill - pos : step;
		if (n > x->S - pos)
			n = x->S - pos;
		ret = sparq_stream_append(s, n, x->k + (size_t)pos * x->d, x->v + (size_t)pos * x->d,
					  &why);
		T_CHECK(ret == 0, "append at %u: %d %s", pos, ret, why);
		pos += n;
	}
	return s;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* The item against the reference: selection equal up to counted near-ties, y and α close. */
static void check_ref(const char *what, const struct data *x, const uint64_t *mask,
		      const struct sparq_attend_item *it)
{
	uint32_t k = it->used.k;
	uint32_t *rsel = t_alloc(k * sizeof(uint32_t));
	double *y = t_alloc((size_t)x->g * x->d * sizeof(double)), *alpha = t_alloc(x->g * 8);
	double *zsum = t_alloc(x->S * sizeof(double));
	struct sparq_ref_input in = {
		.d = x->d, .g = x->g, .S = x->S, .K = x->kd, .K_score = x->ksd, .V = x->vd,
		.q = x->qd, .exclude = mask, .r = it->used.r, .k = k, .l = it->used.l, .blend = it->used.blend,
	};
	struct sparq_ref_output out = { .y = y, .alpha = alpha, .sel = rsel, .zsum = zsum };
	uint32_t diff = 0;

	T_CHECK(sparq_ref_attend(&in, &out) == 0, "%s: reference", what);
	T_CHECK(it->n_sel == out.n_sel, "%s: %u rows selected, reference %u", what, it->n_sel,
		out.n_sel);
	for (uint32_t i = 0; i < it->n_sel; i++) {
		T_CHECK(i == 0 || it->sel[i] > it->sel[i - 1], "%s: selection not ascending", what);
		if (!bsearch(&it->sel[i], rsel, out.n_sel, sizeof(uint32_t), cmp_u32)) {
			diff++;
			T_CHECK(it->sel[i] < x->S && isfinite(zsum[it->sel[i]]),
				"%s: position %u selected but masked", what, it->sel[i]);
		}
	}
	T_CHECK(diff <= 4, "%s: %u rows differ from the reference", what, diff);
	if (diff) {
		printf("%s: %u near-tie rows\n", what, diff);
		in.force_sel = it->sel;
		in.n_force_sel = it->n_sel;
		T_CHECK(sparq_ref_attend(&in, &out) == 0, "%s: reference (forced)", what);
	}
	for (uint32_t h = 0; h < x->g; h++)
		T_CHECK(fabs(it->alpha[h] - alpha[h]) <= 5e-5, "%s: alpha[%u] %.9g vs %.9g", what, h,
			it->alpha[h], alpha[h]);
	for (uint32_t i = 0; i < x->g * x->d; i++)
		T_CHECK(fabs(it->y[i] - y[i]) <= 1e-4 * x->vmax, "%s: y[%u] %.9g vs %.9g", what, i,
			it->y[i], y[i]);
	free(rsel);
	free(y);
	free(alpha);
	free(zsum);
}

static struct sparq_attend_item item_for(struct sparq_stream *s, const struct data *x,
					 const uint64_t *mask, uint32_t r, uint32_t k,
					 enum sparq_blend blend)
{
	return (struct sparq_attend_item){
		.stream = s, .g = x->g, .q = x->q, .exclude = mask,
		.params = { .r = r, .k = k, .l = -1, .blend = blend },
		.y = t_alloc((size_t)x->g * x->d * sizeof(float)),
		.alpha = t_alloc(x->g * sizeof(float)),
		.sel = t_alloc(k * sizeof(uint32_t)), .sel_cap = k,
	};
}

static void free_item(struct sparq_attend_item *it)
{
	free(it->y);
	free(it->alpha);
	free(it->sel);
}

/*
 * Three streams, room on the GPU for three pages: one fits, one moves, one never fits.
 * An int8 page holds 7936 positions at d = 128 where a native one holds 4096: the
 * streams are u = 2 times longer then, to fill the same pages.
 */
static void test_budget_fallback(const struct sparq_backend_config *base)
{
	struct sparq_backend_config cfg = *base;
	struct sparq_backend *be;
	struct sparq_store *st;
	struct data a, b, c;
	struct sparq_stream *sa, *sb, *sc;
	uint64_t mask[188] = { 0 };
	char want[64];
	const uint32_t u = key_slice == SPARQ_SLICE_INT8 ? 2 : 1;

	cfg.gpu_budget_bytes = 3ull << 20; /* three 1 MiB pages: 12288 positions at d = 128 */
	T_CHECK(sparq_backend_open("cuda", &cfg, &be) == 0, "open with a small budget");
	T_CHECK(sparq_store_heap_create(256, 0, &st) == 0, "store");
	make_data(&a, 6000 * u, 128, 1, SPARQ_DTYPE_F16, 11, 1.0f);
	make_data(&b, 6000 * u, 128, 4, SPARQ_DTYPE_BF16, 12, 1.0f);
	make_data(&c, 700, 128, 1, SPARQ_DTYPE_F16, 13, 1.0f);
	sa = stream_of(be, st, &a, 6000 * u, 6000 * u);  /* pages 1-2 */
	const char *why = NULL;
	T_CHECK(sparq_stream_create(be, st, b.d, b.dt, &sb, &why) == 0, "create b");
	append_range(sb, &b, 0, 3000 * u, 3000 * u);     /* page 3: the pool is full */
	sc = stream_of(be, st, &c, 100, 100);            /* no page left at all */
	printf("budget: %s\n", be->detail);
	T_CHECK(strstr(be->detail, "1 of 3 streams on CPU"), "detail '%s' should count 1 of 3",
		be->detail);
	append_range(sb, &b, 3000 * u, 6000 * u, 1000);  /* needs a 4th page: moves to the CPU */
	printf("budget: %s\n", be->detail);
	T_CHECK(strstr(be->detail, "2 of 3 streams on CPU"), "detail '%s' should count 2 of 3",
		be->detail);
	T_CHECK((key_slice == SPARQ_SLICE_INT8) == (strstr(be->detail, "int8 key slice") != NULL),
		"detail '%s' should name the key-slice format", be->detail);
	for (uint32_t j = 0; j < 6000 * u; j += 7)
		mask[j / 64] |= UINT64_C(1) << (j % 64);
	mask[(6000 * u - 1) / 64] &= ~(UINT64_C(1) << ((6000 * u - 1) % 64));

	struct sparq_attend_item it[3] = {
		item_for(sa, &a, NULL, 16, 256, SPARQ_BLEND_ON),
		item_for(sb, &b, mask, 32, 300, SPARQ_BLEND_AUTO),
		item_for(sc, &c, NULL, 8, 128, SPARQ_BLEND_ON),
	};
	struct sparq_attend_batch bt = { .items = it, .n = 3 };
	int ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == 0, "attend: %d %s (item %d)", ret, bt.why ? bt.why : "", bt.bad_item);
	T_CHECK(bt.stats.cpu_items == 2, "%u items on the CPU, want 2", bt.stats.cpu_items);
	check_ref("budget: GPU stream", &a, NULL, &it[0]);
	check_ref("budget: moved stream", &b, mask, &it[1]);
	check_ref("budget: CPU stream", &c, NULL, &it[2]);

	sparq_stream_destroy(sb);
	snprintf(want, sizeof(want), "1 of 2 streams on CPU");
	T_CHECK(strstr(be->detail, want), "after close: '%s'", be->detail);
	for (int i = 0; i < 3; i++)
		free_item(&it[i]);
	sparq_stream_destroy(sa);
	sparq_stream_destroy(sc);
	sparq_backend_close(be);
	sparq_store_destroy(st);
	free_data(&a);
	free_data(&b);
	free_data(&c);
}

/*
 * The same stream in a region store (zero-copy) and in a plain one (staged), built
 * with decode appends across page boundaries (2048 positions per page at d = 256):
 * identical bits out of both paths, and select mode agrees with full mode.
 */
static void test_paths(const struct sparq_backend_config *cfg)
{
	struct sparq_backend *be;
	struct sparq_store *plain, *region;
	struct data x;

	T_CHECK(sparq_backend_open("cuda", cfg, &be) == 0, "open");
	T_CHECK(sparq_store_heap_create(64, 0, &plain) == 0, "plain store");
	T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &region) == 0, "region store");
	make_data(&x, 4200, 256, 4, SPARQ_DTYPE_F16, 21, 1.0f);
	struct sparq_stream *s1 = stream_of(be, plain, &x, 2040, 1);
	struct sparq_stream *s2 = stream_of(be, region, &x, 2040, 1);

	for (int blend = 0; blend < 3; blend++) {
		struct sparq_attend_item it[2] = {
			item_for(s1, &x, NULL, 32, 300, (enum sparq_blend)blend),
			item_for(s2, &x, NULL, 32, 300, (enum sparq_blend)blend),
		};
		struct sparq_attend_batch bt = { .items = it, .n = 2 };
		int ret = sparq_backend_attend(be, &bt);
		T_CHECK(ret == 0, "attend: %d %s", ret, bt.why ? bt.why : "");
		T_CHECK(bt.stats.cpu_items == 0, "items fell back");
		check_ref("paths: staged", &x, NULL, &it[0]);
		T_CHECK(it[0].n_sel == it[1].n_sel &&
			memcmp(it[0].sel, it[1].sel, it[0].n_sel * 4) == 0 &&
			memcmp(it[0].alpha, it[1].alpha, x.g * 4) == 0 &&
			memcmp(it[0].y, it[1].y, (size_t)x.g * x.d * 4) == 0,
			"zero-copy and staged paths differ (blend %d)", blend);

		/* select mode: the same rows and alpha, y left alone */
		struct sparq_attend_item sit = item_for(s2, &x, NULL, 32, 300, (enum sparq_blend)blend);
		memset(sit.y, 0x7f, (size_t)x.g * x.d * 4);
		struct sparq_attend_batch sb = { .items = &sit, .n = 1, .mode = SPARQ_ATTEND_SELECT };
		ret = sparq_backend_attend(be, &sb);
		T_CHECK(ret == 0, "select: %d %s", ret, sb.why ? sb.why : "");
		T_CHECK(sit.n_sel == it[1].n_sel && memcmp(sit.sel, it[1].sel, sit.n_sel * 4) == 0 &&
			memcmp(sit.alpha, it[1].alpha, x.g * 4) == 0, "select mode differs");
		T_CHECK(((uint8_t *)sit.y)[0] == 0x7f, "select mode wrote y");
		T_CHECK(sb.stats.record_bytes == 0, "select mode fetched records");
		free_item(&sit);
		free_item(&it[0]);
		free_item(&it[1]);
	}
	printf("paths: %s\n", be->detail);
	sparq_stream_destroy(s1);
	sparq_stream_destroy(s2);
	sparq_backend_close(be);
	sparq_store_destroy(plain);
	sparq_store_destroy(region);
	free_data(&x);
}

/* bf16 keys near 3e38 overflow fp32 logits: -ERANGE naming the second item. */
static void test_overflow(const struct sparq_backend_config *cfg)
{
	struct sparq_backend *be;
	struct sparq_store *st;
	struct data ok, big;

	T_CHECK(sparq_backend_open("cuda", cfg, &be) == 0, "open");
	T_CHECK(sparq_store_heap_create(64, 0, &st) == 0, "store");
	make_data(&ok, 1000, 64, 1, SPARQ_DTYPE_BF16, 31, 1.0f);
	make_data(&big, 1000, 64, 1, SPARQ_DTYPE_BF16, 32, 1e38f);
	struct sparq_stream *s1 = stream_of(be, st, &ok, 1000, 1000);
	struct sparq_stream *s2 = stream_of(be, st, &big, 1000, 1000);
	struct sparq_attend_item it[2] = {
		item_for(s1, &ok, NULL, 64, 128, SPARQ_BLEND_ON),
		item_for(s2, &big, NULL, 64, 128, SPARQ_BLEND_ON),
	};
	struct sparq_attend_batch bt = { .items = it, .n = 2 };
	int ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == -ERANGE, "overflow gave %d (%s)", ret, bt.why ? bt.why : "");
	T_CHECK(bt.bad_item == 1, "bad_item %d, want 1", bt.bad_item);
	T_CHECK(bt.why && strstr(bt.why, "overflow"), "reason '%s'", bt.why ? bt.why : "");

	/* the backend is still usable afterwards */
	bt = (struct sparq_attend_batch){ .items = it, .n = 1 };
	ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == 0, "attend after an overflow: %d %s", ret, bt.why ? bt.why : "");
	check_ref("after overflow", &ok, NULL, &it[0]);
	free_item(&it[0]);
	free_item(&it[1]);
	sparq_stream_destroy(s1);
	sparq_stream_destroy(s2);
	sparq_backend_close(be);
	sparq_store_destroy(st);
	free_data(&ok);
	free_data(&big);
}

/* One shape for the v1/v2 comparison. */
struct gen_case {
	const char *name;
	uint32_t S, d, g, r, k;
	enum sparq_dtype dt;
	float kscale;       /* 0: every key 0, so every position ties */
	bool region;        /* zero-copy store, else staged */
	bool masked;
};

static void run_case(struct sparq_backend *be, struct sparq_store *st, const struct data *x,
		     const uint64_t *mask, const struct gen_case *c, struct sparq_attend_item *it,
		     struct sparq_attend_stats *stats)
{
	struct sparq_stream *s = stream_of(be, st, x, x->S - 37, 1);

	*it = item_for(s, x, mask, c->r, c->k, SPARQ_BLEND_ON);
	struct sparq_attend_batch bt = { .items = it, .n = 1 };
	int ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == 0, "%s: attend: %d %s", c->name, ret, bt.why ? bt.why : "");
	T_CHECK(bt.stats.cpu_items == 0, "%s: fell back to the CPU", c->name);
	*stats = bt.stats;
	sparq_stream_destroy(s);
}

static void test_generations(const struct sparq_backend_config *cfg)
{
	static const struct gen_case cases[] = {
		{ "gen: zero-copy, masked, 3 select chunks", 5000, 128, 4, 16, 1000,
		  SPARQ_DTYPE_F16, 1.0f, true, true },
		{ "gen: all keys tie", 4500, 64, 2, 8, 900, SPARQ_DTYPE_F16, 0.0f, true, false },
		{ "gen: staged bf16, g = 8", 9000, 64, 8, 8, 2000, SPARQ_DTYPE_BF16, 1.0f, false,
		  true },
		{ "gen: g = 32, d = 256", 3000, 256, 32, 32, 700, SPARQ_DTYPE_F16, 1.0f, true, false },
		{ "gen: dense", 300, 128, 4, 16, 512, SPARQ_DTYPE_F16, 1.0f, true, true },
	};
	struct sparq_backend *v1, *v2;

	T_CHECK(unsetenv("SPARQ_CUDA_KERNELS") == 0, "unsetenv");
	T_CHECK(sparq_backend_open("cuda", cfg, &v1) == 0, "open v1");
	T_CHECK(setenv("SPARQ_CUDA_KERNELS", "v2", 1) == 0, "setenv");
	T_CHECK(sparq_backend_open("cuda", cfg, &v2) == 0, "open v2");
	T_CHECK(unsetenv("SPARQ_CUDA_KERNELS") == 0, "unsetenv");
	T_CHECK(strstr(v1->detail, "kernels v1") && !strstr(v2->detail, "kernels v1"),
		"detail should name v1: '%s' / '%s'", v1->detail, v2->detail);
	for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
		const struct gen_case *c = &cases[ci];
		struct sparq_store *st1, *st2;  /* one each: a region is registered once */
		struct sparq_attend_item a, b;
		struct sparq_attend_stats s1, s2;
		uint64_t *mask = t_alloc((c->S + 63) / 64 * 8);
		struct data x;
		double worst = 0.0;

		memset(mask, 0, (c->S + 63) / 64 * 8);
		if (c->masked) {
			for (uint32_t j = 3; j < c->S - 1; j += 7)
				mask[j / 64] |= UINT64_C(1) << (j % 64);
		}
		if (c->region) {
			T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &st1) == 0, "store");
			T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &st2) == 0, "store");
		} else {
			T_CHECK(sparq_store_heap_create(64, 0, &st1) == 0, "store");
			T_CHECK(sparq_store_heap_create(64, 0, &st2) == 0, "store");
		}
		make_data(&x, c->S, c->d, c->g, c->dt, 40 + ci, c->kscale);
		run_case(v1, st1, &x, c->masked ? mask : NULL, c, &a, &s1);
		run_case(v2, st2, &x, c->masked ? mask : NULL, c, &b, &s2);
		check_ref(c->name, &x, c->masked ? mask : NULL, &b);
		T_CHECK(a.n_sel == b.n_sel && memcmp(a.sel, b.sel, a.n_sel * 4) == 0,
			"%s: v1 and v2 select different rows", c->name);
		T_CHECK(memcmp(a.alpha, b.alpha, x.g * 4) == 0, "%s: v1 and v2 alpha differ",
			c->name);
		for (uint32_t i = 0; i < x.g * x.d; i++)
			worst = fmax(worst, fabs((double)a.y[i] - b.y[i]));
		T_CHECK(worst <= 2e-5 * x.vmax, "%s: |y v1 - y v2| = %.3g (max|V| %.3g)", c->name,
			worst, x.vmax);
		T_CHECK(s1.record_bytes == s2.record_bytes, "%s: record bytes %llu vs %llu", c->name,
			(unsigned long long)s1.record_bytes, (unsigned long long)s2.record_bytes);
		printf("%s: %u rows, |y v1 - y v2| = %.3g·max|V|\n", c->name, b.n_sel,
		       worst / x.vmax);
		free_item(&a);
		free_item(&b);
		free(mask);
		free_data(&x);
		sparq_store_destroy(st1);
		sparq_store_destroy(st2);
	}
	sparq_backend_close(v1);
	sparq_backend_close(v2);
}

/* Distinct row-cache slots among a selection: how many rows a repeat finds cached. */
static uint32_t cache_slots_used(const uint32_t *sel, uint32_t n, uint32_t k)
{
	uint32_t slots = 256, used = 0;

	while (slots < k)
		slots *= 2;  /* as ensure_rc sizes it */
	uint8_t *seen = t_alloc(slots);
	memset(seen, 0, slots);
	for (uint32_t i = 0; i < n; i++) {
		used += !seen[sel[i] & (slots - 1)];
		seen[sel[i] & (slots - 1)] = 1;
	}
	free(seen);
	return used;
}

static void test_row_cache(const struct sparq_backend_config *cfg)
{
	struct sparq_backend *be, *off;
	struct sparq_store *st, *st_off;
	struct data x;
	const char *why = NULL;
	const uint32_t k = 1000, rec = 4 * 128;

	T_CHECK(sparq_backend_open("cuda", cfg, &be) == 0, "open");
	T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &st) == 0, "region store");
	make_data(&x, 6001, 128, 4, SPARQ_DTYPE_F16, 51, 1.0f);
	struct data x0 = x;
	x0.S = 6000;  /* the stream before its last append */
	struct sparq_stream *s;
	T_CHECK(sparq_stream_create(be, st, x.d, x.dt, &s, &why) == 0, "create: %s", why);
	append_range(s, &x, 0, 6000, 6000);

	struct sparq_attend_item a = item_for(s, &x0, NULL, 16, k, SPARQ_BLEND_ON);
	struct sparq_attend_item b = item_for(s, &x0, NULL, 16, k, SPARQ_BLEND_ON);
	struct sparq_attend_batch ba = { .items = &a, .n = 1 }, bb = { .items = &b, .n = 1 };
	int ret = sparq_backend_attend(be, &ba);
	T_CHECK(ret == 0, "first call: %d %s", ret, ba.why ? ba.why : "");
	T_CHECK(ba.stats.cache_rows == a.n_sel && ba.stats.cache_hits == 0,
		"first call: %llu rows looked up, %llu hits (want %u, 0)",
		(unsigned long long)ba.stats.cache_rows, (unsigned long long)ba.stats.cache_hits,
		a.n_sel);
	T_CHECK(ba.stats.record_bytes == (uint64_t)a.n_sel * rec, "first call read %llu bytes",
		(unsigned long long)ba.stats.record_bytes);
	check_ref("cache: first call", &x0, NULL, &a);
	ret = sparq_backend_attend(be, &bb);
	T_CHECK(ret == 0, "repeat: %d %s", ret, bb.why ? bb.why : "");
	const uint32_t want = cache_slots_used(a.sel, a.n_sel, k);
	T_CHECK(bb.stats.cache_hits == want, "repeat: %llu hits, want %u (one per slot)",
		(unsigned long long)bb.stats.cache_hits, want);
	T_CHECK(bb.stats.record_bytes == (uint64_t)(b.n_sel - want) * rec,
		"repeat read %llu bytes", (unsigned long long)bb.stats.record_bytes);
	T_CHECK(a.n_sel == b.n_sel && memcmp(a.sel, b.sel, a.n_sel * 4) == 0 &&
		memcmp(a.y, b.y, (size_t)x.g * x.d * 4) == 0,
		"a repeat served from the cache differs");
	printf("cache: repeat found %u of %u rows in the cache\n", want, b.n_sel);

	/* a decode step: one more position, the queries drift a little */
	append_range(s, &x, 6000, 6001, 1);
	for (uint32_t i = 0; i < x.g * x.d; i++) {
		x.q[i] *= 1.01f;
		x.qd[i] = x.q[i];
	}
	struct sparq_attend_item c = item_for(s, &x, NULL, 16, k, SPARQ_BLEND_ON);
	struct sparq_attend_batch bc = { .items = &c, .n = 1 };
	ret = sparq_backend_attend(be, &bc);
	T_CHECK(ret == 0, "after an append: %d %s", ret, bc.why ? bc.why : "");
	T_CHECK(bc.stats.cache_hits > 0 && bc.stats.cache_hits < c.n_sel,
		"after an append: %llu hits of %u", (unsigned long long)bc.stats.cache_hits,
		c.n_sel);
	check_ref("cache: after an append", &x, NULL, &c);
	printf("cache: next step found %llu of %u rows in the cache\n",
	       (unsigned long long)bc.stats.cache_hits, c.n_sel);

	/* one stream twice in a call (k and 2k): only the first item uses the cache */
	struct sparq_attend_item two[2] = {
		item_for(s, &x, NULL, 16, k, SPARQ_BLEND_ON),
		item_for(s, &x, NULL, 16, 2 * k, SPARQ_BLEND_ON),
	};
	struct sparq_attend_batch b2 = { .items = two, .n = 2 };
	for (int rep = 0; rep < 2; rep++) {
		memset(&b2.stats, 0, sizeof(b2.stats));
		ret = sparq_backend_attend(be, &b2);
		T_CHECK(ret == 0, "one stream twice: %d %s", ret, b2.why ? b2.why : "");
		T_CHECK(b2.stats.cache_rows == two[0].n_sel, "one stream twice: %llu rows looked up",
			(unsigned long long)b2.stats.cache_rows);
		check_ref("cache: one stream twice, k", &x, NULL, &two[0]);
		check_ref("cache: one stream twice, 2k", &x, NULL, &two[1]);
	}
	free_item(&two[0]);
	free_item(&two[1]);

	/* switched off: nothing looked up, the same rows */
	T_CHECK(setenv("SPARQ_CUDA_ROWCACHE", "0", 1) == 0, "setenv");
	T_CHECK(sparq_backend_open("cuda", cfg, &off) == 0, "open without a cache");
	T_CHECK(unsetenv("SPARQ_CUDA_ROWCACHE") == 0, "unsetenv");
	T_CHECK(strstr(off->detail, "no row cache"), "detail '%s'", off->detail);
	T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &st_off) == 0, "region store");
	struct sparq_stream *s2 = stream_of(off, st_off, &x, x.S, 1);
	struct sparq_attend_item e = item_for(s2, &x, NULL, 16, k, SPARQ_BLEND_ON);
	struct sparq_attend_batch be2 = { .items = &e, .n = 1 };
	for (int rep = 0; rep < 2; rep++) {
		ret = sparq_backend_attend(off, &be2);
		T_CHECK(ret == 0, "no cache: %d %s", ret, be2.why ? be2.why : "");
	}
	T_CHECK(be2.stats.cache_rows == 0 && be2.stats.cache_hits == 0,
		"no cache: %llu rows looked up", (unsigned long long)be2.stats.cache_rows);
	T_CHECK(e.n_sel == c.n_sel && memcmp(e.sel, c.sel, c.n_sel * 4) == 0 &&
		memcmp(e.y, c.y, (size_t)x.g * x.d * 4) == 0, "with and without the cache differ");

	free_item(&a);
	free_item(&b);
	free_item(&c);
	free_item(&e);
	sparq_stream_destroy(s);
	sparq_stream_destroy(s2);
	sparq_backend_close(be);
	sparq_backend_close(off);
	sparq_store_destroy(st);
	sparq_store_destroy(st_off);
	free_data(&x);
}

/* A ratio-1/8 item: k = S/16 grows with the stream, so the call's shape changes. */
static struct sparq_attend_item ratio_item(struct sparq_stream *s, const struct data *x,
					   const uint64_t *mask, uint32_t cap)
{
	return (struct sparq_attend_item){
		.stream = s, .g = x->g, .q = x->q, .exclude = mask,
		.params = { .ratio = 8.0f, .l = -1, .blend = SPARQ_BLEND_ON },
		.y = t_alloc((size_t)x->g * x->d * sizeof(float)),
		.alpha = t_alloc(x->g * sizeof(float)),
		.sel = t_alloc(cap * sizeof(uint32_t)), .sel_cap = cap,
	};
}

/*
 * SPARQ_CUDA_GRAPHS=1 (v2): a decode loop over zero-copy streams whose call shape keeps
 * changing (k grows with S, record runs and tiles are added, masks come and go, one
 * item or two, select mode now and then) gives bit for bit what the same kernels give
 * launched one by one; calls whose shape did not change replay the captured graph; a
 * staged call is never a graph. Every 16th step is also checked against the reference.
 */
static void test_graphs(const struct sparq_backend_config *cfg)
{
	struct sparq_backend *be[2];  /* launched one by one, graphs */
	struct sparq_store *st[2], *heap;
	struct sparq_stream *s[2][2];
	struct data x;
	const char *why = NULL;
	const uint32_t S0 = 4000, steps = 96, cap = 1024;
	uint32_t calls = 0, graph_calls = 0, replays = 0;
	uint64_t *mask = t_alloc((S0 + steps + 63) / 64 * 8);

	T_CHECK(setenv("SPARQ_CUDA_KERNELS", "v2", 1) == 0, "setenv");
	T_CHECK(sparq_backend_open("cuda", cfg, &be[0]) == 0, "open without graphs");
	T_CHECK(setenv("SPARQ_CUDA_GRAPHS", "1", 1) == 0, "setenv");
	T_CHECK(sparq_backend_open("cuda", cfg, &be[1]) == 0, "open with graphs");
	T_CHECK(unsetenv("SPARQ_CUDA_GRAPHS") == 0 && unsetenv("SPARQ_CUDA_KERNELS") == 0,
		"unsetenv");
	T_CHECK(!strstr(be[0]->detail, "graphs") && strstr(be[1]->detail, "graphs"),
		"detail should name graphs: '%s' / '%s'", be[0]->detail, be[1]->detail);
	make_data(&x, S0 + steps, 128, 4, SPARQ_DTYPE_F16, 71, 1.0f);
	memset(mask, 0, (S0 + steps + 63) / 64 * 8);
	for (uint32_t j = 5; j < S0 - 600; j += 11)
		mask[j / 64] |= UINT64_C(1) << (j % 64);
	for (int b = 0; b < 2; b++) {
		T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &st[b]) == 0, "store");
		for (int i = 0; i < 2; i++) {
			T_CHECK(sparq_stream_create(be[b], st[b], x.d, x.dt, &s[b][i], &why) == 0,
				"create: %s", why);
			append_range(s[b][i], &x, 0, S0, S0);
		}
	}
	for (uint32_t t = 0; t < steps; t++) {
		struct sparq_attend_item it[2][2];
		struct sparq_attend_batch bt[2];
		const uint64_t *m = t % 8 == 3 ? mask : NULL;
		const uint32_t n = t % 12 == 11 ? 2 : 1;
		const enum sparq_attend_mode mode =
			t % 24 == 23 ? SPARQ_ATTEND_SELECT : SPARQ_ATTEND_FULL;

		for (int b = 0; b < 2; b++) {
			for (int i = 0; i < 2; i++)
				append_range(s[b][i], &x, S0 + t, S0 + t + 1, 1);
			for (uint32_t i = 0; i < n; i++)
				it[b][i] = ratio_item(s[b][i], &x, m, cap);
			bt[b] = (struct sparq_attend_batch){ .items = it[b], .n = n, .mode = mode };
			int ret = sparq_backend_attend(be[b], &bt[b]);
			T_CHECK(ret == 0, "graphs step %u (backend %d): %d %s", t, b, ret,
				bt[b].why ? bt[b].why : "");
			T_CHECK(bt[b].stats.cpu_items == 0, "graphs step %u: fell back to the CPU", t);
		}
		calls++;
		T_CHECK(bt[0].stats.graph_calls == 0 && bt[1].stats.graph_calls == 1,
			"step %u: graph calls %u / %u, want 0 / 1", t, bt[0].stats.graph_calls,
			bt[1].stats.graph_calls);
		graph_calls += bt[1].stats.graph_calls;
		replays += bt[1].stats.graph_replays;
		for (uint32_t i = 0; i < n; i++) {
			const struct sparq_attend_item *a = &it[0][i], *g = &it[1][i];
			T_CHECK(a->n_sel == g->n_sel && memcmp(a->sel, g->sel, a->n_sel * 4) == 0 &&
				memcmp(a->alpha, g->alpha, x.g * 4) == 0,
				"step %u item %u: the graph selected other rows", t, i);
			T_CHECK(mode == SPARQ_ATTEND_SELECT ||
				memcmp(a->y, g->y, (size_t)x.g * x.d * 4) == 0,
				"step %u item %u: y differs with graphs", t, i);
		}
		if (t % 16 == 0 && mode == SPARQ_ATTEND_FULL) {
			struct data xs = x;
			xs.S = S0 + t + 1;
			check_ref("graphs: decode step", &xs, m, &it[1][0]);
		}
		for (int b = 0; b < 2; b++)
			for (uint32_t i = 0; i < n; i++)
				free_item(&it[b][i]);
	}
	printf("graphs: %u calls, %u as graphs, %u replayed without a new capture\n", calls,
	       graph_calls, replays);
	/* the shape changes at most twice per 8 steps (mask), 12 (two items), 24 (select
	 * mode), 16 (k) and 64 (record runs): at least half the calls replay */
	T_CHECK(replays >= calls / 2 && replays < calls, "%u replays of %u calls", replays,
		calls);

	/* a stream whose records are staged (plain heap): launched one by one */
	T_CHECK(sparq_store_heap_create(64, 0, &heap) == 0, "heap store");
	struct sparq_stream *hs = stream_of(be[1], heap, &x, x.S, 1);
	struct sparq_attend_item hi = ratio_item(hs, &x, NULL, cap);
	struct sparq_attend_batch hb = { .items = &hi, .n = 1 };
	T_CHECK(sparq_backend_attend(be[1], &hb) == 0, "staged call: %s", hb.why ? hb.why : "");
	T_CHECK(hb.stats.graph_calls == 0, "a staged call ran as a graph");
	check_ref("graphs: staged call", &x, NULL, &hi);
	free_item(&hi);
	sparq_stream_destroy(hs);
	sparq_store_destroy(heap);

	for (int b = 0; b < 2; b++) {
		for (int i = 0; i < 2; i++)
			sparq_stream_destroy(s[b][i]);
		sparq_backend_close(be[b]);
		sparq_store_destroy(st[b]);
	}
	free(mask);
	free_data(&x);
}

/* ---- CUDA failures served by the CPU backend (cuda_fault_every) ---- */

struct log_rec {
	int n, degraded;
};

static void log_cb(void *user, const char *msg)
{
	struct log_rec *l = user;

	l->n++;
	l->degraded += strstr(msg, "degraded") != NULL;
	printf("log: %s\n", msg);
}

/* One stream of the fault test, the same data on the CUDA and on the CPU backend. */
struct twin {
	struct data x;
	struct sparq_stream *g, *c;   /* on the CUDA backend, on the CPU backend */
	uint64_t *mask;               /* NULL: none */
	uint32_t r, k;
	enum sparq_blend blend;
};

static void twin_open(struct twin *t, struct sparq_backend *gb, struct sparq_store *gst,
		      struct sparq_backend *cb, struct sparq_store *cst, uint32_t upto)
{
	const char *why = NULL;

	T_CHECK(sparq_stream_create(gb, gst, t->x.d, t->x.dt, &t->g, &why) == 0, "create: %s", why);
	T_CHECK(sparq_stream_create(cb, cst, t->x.d, t->x.dt, &t->c, &why) == 0, "create: %s", why);
	append_range(t->g, &t->x, 0, upto, upto);
	append_range(t->c, &t->x, 0, upto, upto);
}

/* The CUDA item against the CPU backend's, bit for bit (a fallback IS the CPU backend). */
static void same_bits(const char *what, const struct twin *t, const struct sparq_attend_item *a,
		      const struct sparq_attend_item *c, bool full)
{
	T_CHECK(a->n_sel == c->n_sel && memcmp(a->sel, c->sel, a->n_sel * 4) == 0,
		"%s: selection differs from the CPU backend's", what);
	T_CHECK(memcmp(a->alpha, c->alpha, t->x.g * 4) == 0, "%s: alpha differs", what);
	T_CHECK(!full || memcmp(a->y, c->y, (size_t)t->x.g * t->x.d * 4) == 0,
		"%s: y differs from the CPU backend's", what);
}

/*
 * Decode steps over three streams (a zero-copy store with the row cache in v2, a plain
 * one), each step one append and one call of three items on the CUDA backend with a
 * synthetic CUDA failure every `every` calls, and the same on the CPU backend: a call
 * that fell back answers bit for bit as the CPU backend; the others still match the
 * reference (the row cache a failed call left half-claimed was dropped). Sticky: the
 * backend degrades at the first fault, logs it once, and from then on every call,
 * append and new stream is served by the CPU, bit for bit. A validation error is
 * returned as such, not turned into a fallback.
 */
static void test_fault_fallback(const struct sparq_backend_config *base, bool v2, bool sticky)
{
	const uint32_t every = sticky ? 2 : 3, steps = 8, pre = 8;
	struct sparq_backend_config cfg = *base;
	struct sparq_backend *gb, *cb;
	struct sparq_store *g_region, *g_plain, *c_plain;
	struct sparq_backend_health h;
	struct log_rec lg = { 0 };
	struct twin tw[3] = {
		{ .r = 16, .k = 256, .blend = SPARQ_BLEND_ON },
		{ .r = 8, .k = 200, .blend = SPARQ_BLEND_AUTO },
		{ .r = 32, .k = 128, .blend = SPARQ_BLEND_OFF },
	};
	/* sticky: attended only after the loop, its appends meet the degraded backend */
	struct twin idle = { .r = 16, .k = 100, .blend = SPARQ_BLEND_ON };
	const char *name = sticky ? (v2 ? "fault v2 sticky" : "fault v1 sticky")
				  : (v2 ? "fault v2" : "fault v1");
	uint32_t n_fb = 0;
	char what[96];

	cfg.cuda_fault_every = every;
	cfg.cuda_fault_sticky = sticky;
	cfg.log = log_cb;
	cfg.log_user = &lg;
	if (v2)
		T_CHECK(setenv("SPARQ_CUDA_KERNELS", "v2", 1) == 0, "setenv");
	T_CHECK(sparq_backend_open("cuda", &cfg, &gb) == 0, "%s: open cuda", name);
	T_CHECK(unsetenv("SPARQ_CUDA_KERNELS") == 0, "unsetenv");
	T_CHECK(sparq_backend_open("cpu", base, &cb) == 0, "%s: open cpu", name);
	T_CHECK(sparq_store_heap_create_region(64, 64ull << 20, &g_region) == 0, "region store");
	T_CHECK(sparq_store_heap_create(64, 0, &g_plain) == 0, "store");
	T_CHECK(sparq_store_heap_create(64, 0, &c_plain) == 0, "store");
	make_data(&tw[0].x, 3000, 128, 4, SPARQ_DTYPE_F16, 61, 1.0f);
	make_data(&tw[1].x, 2500, 64, 2, SPARQ_DTYPE_BF16, 62, 1.0f);
	make_data(&tw[2].x, 1200, 128, 1, SPARQ_DTYPE_F16, 63, 1.0f);
	tw[1].mask = t_alloc((2500 + 63) / 64 * 8);
	memset(tw[1].mask, 0, (2500 + 63) / 64 * 8);
	for (uint32_t j = 3; j < 2500; j += 7)
		tw[1].mask[j / 64] |= UINT64_C(1) << (j % 64);
	for (int i = 0; i < 3; i++)
		twin_open(&tw[i], gb, i == 1 ? g_plain : g_region, cb, c_plain,
			  tw[i].x.S - pre - 1);
	if (sticky) {
		make_data(&idle.x, 900, 128, 2, SPARQ_DTYPE_F16, 65, 1.0f);
		twin_open(&idle, gb, g_plain, cb, c_plain, 900 - steps);
	}

	for (uint32_t step = 1; step <= steps; step++) {
		/* the third call selects only: its fault stands in for the alpha launch */
		const bool full = step != 3;
		struct sparq_attend_item a[3], c[3];
		struct data cur[3];

		for (int i = 0; i < 3; i++) {
			const uint32_t S = tw[i].x.S - pre - 1 + step;

			append_range(tw[i].g, &tw[i].x, S - 1, S, 1);
			append_range(tw[i].c, &tw[i].x, S - 1, S, 1);
			cur[i] = tw[i].x;
			cur[i].S = S;
			a[i] = item_for(tw[i].g, &cur[i], tw[i].mask, tw[i].r, tw[i].k, tw[i].blend);
			c[i] = item_for(tw[i].c, &cur[i], tw[i].mask, tw[i].r, tw[i].k, tw[i].blend);
		}
		if (sticky) {
			append_range(idle.g, &idle.x, 900 - steps + step - 1, 900 - steps + step, 1);
			append_range(idle.c, &idle.x, 900 - steps + step - 1, 900 - steps + step, 1);
		}
		const enum sparq_attend_mode mode = full ? SPARQ_ATTEND_FULL : SPARQ_ATTEND_SELECT;
		struct sparq_attend_batch ga = { .items = a, .n = 3, .mode = mode };
		struct sparq_attend_batch ca = { .items = c, .n = 3, .mode = mode };
		int ret = sparq_backend_attend(gb, &ga);
		T_CHECK(ret == 0, "%s step %u: %d %s", name, step, ret, ga.why ? ga.why : "");
		ret = sparq_backend_attend(cb, &ca);
		T_CHECK(ret == 0, "%s step %u (cpu): %d %s", name, step, ret, ca.why ? ca.why : "");
		const bool want_fb = sticky ? step >= every : step % every == 0;
		T_CHECK(ga.stats.fallback_items == (want_fb ? 3u : 0u) &&
			ga.stats.cpu_items == ga.stats.fallback_items,
			"%s step %u: %u items fell back, %u on the CPU (want %u)", name, step,
			ga.stats.fallback_items, ga.stats.cpu_items, want_fb ? 3u : 0u);
		for (int i = 0; i < 3; i++) {
			snprintf(what, sizeof(what), "%s step %u item %d", name, step, i);
			if (want_fb)
				same_bits(what, &tw[i], &a[i], &c[i], full);
			else if (full)
				check_ref(what, &cur[i], tw[i].mask, &a[i]);
			free_item(&a[i]);
			free_item(&c[i]);
		}
		n_fb += want_fb;
	}
	sparq_backend_health(gb, &h);
	printf("%s: %s\n", name, gb->detail);
	printf("%s: %llu CUDA errors, %llu calls (%llu items) fell back, %u streams lost%s\n",
	       name, (unsigned long long)h.cuda_errors, (unsigned long long)h.fallback_batches,
	       (unsigned long long)h.fallback_items, h.streams_lost,
	       h.degraded ? ", degraded" : "");
	T_CHECK(h.fallback_batches == n_fb && h.fallback_items == 3ull * n_fb,
		"%s: health counts %llu calls, %llu items; want %u, %u", name,
		(unsigned long long)h.fallback_batches, (unsigned long long)h.fallback_items, n_fb,
		3 * n_fb);
	T_CHECK(h.cuda_errors == (sticky ? 1u : steps / every), "%s: %llu CUDA errors", name,
		(unsigned long long)h.cuda_errors);
	T_CHECK(h.degraded == sticky && h.streams_lost == (sticky ? 3u : 0u),
		"%s: degraded %d, %u streams lost", name, h.degraded, h.streams_lost);
	T_CHECK(lg.n == 1 && lg.degraded == (sticky ? 1 : 0),
		"%s: %d log lines (%d on degrading), want one", name, lg.n, lg.degraded);
	T_CHECK(!sticky || strstr(gb->detail, "DEGRADED"), "%s: detail '%s'", name, gb->detail);

	if (sticky) {
		/* a stream the failed call did not have: its GPU copy went stale with the
		 * appends after degrading, its keys come from the store */
		struct sparq_attend_item ia = item_for(idle.g, &idle.x, NULL, idle.r, idle.k,
						       idle.blend);
		struct sparq_attend_item ic = item_for(idle.c, &idle.x, NULL, idle.r, idle.k,
						       idle.blend);
		struct sparq_attend_batch iga = { .items = &ia, .n = 1 };
		struct sparq_attend_batch ica = { .items = &ic, .n = 1 };
		T_CHECK(sparq_backend_attend(gb, &iga) == 0 && sparq_backend_attend(cb, &ica) == 0,
			"%s: idle stream: %s", name, iga.why ? iga.why : "");
		T_CHECK(iga.stats.fallback_items == 1, "%s: idle stream not counted", name);
		same_bits("degraded: idle stream", &idle, &ia, &ic, true);
		free_item(&ia);
		free_item(&ic);
		sparq_backend_health(gb, &h);
		T_CHECK(h.streams_lost == 4, "%s: %u streams lost after the idle one", name,
			h.streams_lost);

		/* degraded: a new stream lives on the CPU from the start */
		struct twin nt = { .r = 8, .k = 64, .blend = SPARQ_BLEND_ON };
		make_data(&nt.x, 700, 64, 2, SPARQ_DTYPE_F16, 64, 1.0f);
		twin_open(&nt, gb, g_region, cb, c_plain, 700);
		struct sparq_attend_item a = item_for(nt.g, &nt.x, NULL, nt.r, nt.k, nt.blend);
		struct sparq_attend_item c = item_for(nt.c, &nt.x, NULL, nt.r, nt.k, nt.blend);
		struct sparq_attend_batch ga = { .items = &a, .n = 1 }, ca = { .items = &c, .n = 1 };
		T_CHECK(sparq_backend_attend(gb, &ga) == 0 && sparq_backend_attend(cb, &ca) == 0,
			"%s: new stream: %s", name, ga.why ? ga.why : "");
		T_CHECK(ga.stats.fallback_items == 1, "%s: new stream not counted", name);
		same_bits("degraded: new stream", &nt, &a, &c, true);
		sparq_backend_health(gb, &h);
		T_CHECK(h.streams_lost == 5 && lg.n == 1, "%s: %u streams lost, %d log lines", name,
			h.streams_lost, lg.n);
		free_item(&a);
		free_item(&c);
		sparq_stream_destroy(nt.g);
		sparq_stream_destroy(nt.c);
		free_data(&nt.x);
		sparq_backend_health(gb, &h);
		T_CHECK(h.streams_lost == 4, "%s: a closed lost stream still counted", name);
		sparq_stream_destroy(idle.g);
		sparq_stream_destroy(idle.c);
		free_data(&idle.x);
	} else {
		/* a validation error is returned, not served by the CPU: the fault drawn by
		 * the call is not taken (overflow is found before the last launch) */
		struct data ok, big;
		make_data(&ok, 1000, 64, 1, SPARQ_DTYPE_BF16, 31, 1.0f);
		make_data(&big, 1000, 64, 1, SPARQ_DTYPE_BF16, 32, 1e38f);
		struct sparq_stream *s1 = stream_of(gb, g_plain, &ok, 1000, 1000);
		struct sparq_stream *s2 = stream_of(gb, g_plain, &big, 1000, 1000);
		struct sparq_attend_item it[2] = {
			item_for(s1, &ok, NULL, 64, 128, SPARQ_BLEND_ON),
			item_for(s2, &big, NULL, 64, 128, SPARQ_BLEND_ON),
		};
		const uint32_t to_fault = every - steps % every; /* calls up to the next fault */
		for (uint32_t i = 1; i < to_fault; i++) {
			struct sparq_attend_batch bt = { .items = it, .n = 1 };
			T_CHECK(sparq_backend_attend(gb, &bt) == 0 && bt.stats.fallback_items == 0,
				"%s: call before the fault: %s", name, bt.why ? bt.why : "");
		}
		struct sparq_attend_batch bt = { .items = it, .n = 2 };
		int ret = sparq_backend_attend(gb, &bt);
		T_CHECK(ret == -ERANGE && bt.bad_item == 1 && bt.stats.fallback_items == 0,
			"%s: overflow with a fault drawn gave %d item %d (%s), %u fell back", name, ret,
			bt.bad_item, bt.why ? bt.why : "", bt.stats.fallback_items);
		struct sparq_backend_health h2;
		sparq_backend_health(gb, &h2);
		T_CHECK(h2.fallback_batches == h.fallback_batches && h2.cuda_errors == h.cuda_errors,
			"%s: the overflow counted as a CUDA error", name);
		bt = (struct sparq_attend_batch){ .items = it, .n = 1 };
		T_CHECK(sparq_backend_attend(gb, &bt) == 0 && bt.stats.fallback_items == 0,
			"%s: after the overflow: %s", name, bt.why ? bt.why : "");
		check_ref("fault: after the overflow", &ok, NULL, &it[0]);
		free_item(&it[0]);
		free_item(&it[1]);
		sparq_stream_destroy(s1);
		sparq_stream_destroy(s2);
		free_data(&ok);
		free_data(&big);
	}
	for (int i = 0; i < 3; i++) {
		sparq_stream_destroy(tw[i].g);
		sparq_stream_destroy(tw[i].c);
		free(tw[i].mask);
		free_data(&tw[i].x);
	}
	sparq_backend_close(gb);
	sparq_backend_close(cb);
	sparq_store_destroy(g_region);
	sparq_store_destroy(g_plain);
	sparq_store_destroy(c_plain);
}

int main(void)
{
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct sparq_backend *be;
	int ret = sparq_backend_open("cuda", &cfg, &be);

	if (ret) {
		struct sparq_backend_info info[2];
		sparq_backend_list(info, 2);
		printf("SKIP: no CUDA backend here (%s): %s\n", strerror(-ret), info[1].detail);
		return T_EXIT_SKIP;
	}
	printf("cuda: %s\n", be->detail);
	sparq_backend_close(be);
	test_budget_fallback(&cfg);
	test_paths(&cfg);
	test_overflow(&cfg);
	test_generations(&cfg);
	/* the row cache lives in the v2 path */
	T_CHECK(setenv("SPARQ_CUDA_KERNELS", "v2", 1) == 0, "setenv");
	test_row_cache(&cfg);
	T_CHECK(unsetenv("SPARQ_CUDA_KERNELS") == 0, "unsetenv");
	for (int v2 = 0; v2 < 2; v2++) {
		test_fault_fallback(&cfg, v2, false);
		test_fault_fallback(&cfg, v2, true);
	}
	test_graphs(&cfg);

	/* int8 key slices: the checks that touch the slice, against K_score */
	key_slice = cfg.key_slice = SPARQ_SLICE_INT8;
	test_budget_fallback(&cfg);
	test_paths(&cfg);
	test_generations(&cfg);
	for (int v2 = 0; v2 < 2; v2++)
		test_fault_fallback(&cfg, v2, false);
	printf("cuda: all checks passed (native and int8 key slices)\n");
	return T_EXIT_PASS;
}
