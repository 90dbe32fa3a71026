/*
 * test_identities.c — the degenerate identities of SparQ, checked against direct
 * computation rather than the reference: r = d gives the exact scores, k >= S gives
 * dense attention, and a planted "needle" key aligned with q is always selected.
 * Runs on every available CPU kernel table.
 */
#include <errno.h>
#include <string.h>

#include "helpers.h"

static struct sparq_stream *random_stream(struct sparq_backend *be, struct sparq_store *st,
					  uint32_t S, uint32_t d, enum sparq_dtype dt,
					  struct t_rng *rng, double **kd, double **vd)
{
	uint16_t *k = t_alloc((size_t)S * d * 2), *v = t_alloc((size_t)S * d * 2);
	struct sparq_stream *s;
	const char *why = NULL;

	*kd = t_alloc((size_t)S * d * sizeof(double));
	*vd = t_alloc((size_t)S * d * sizeof(double));
	for (size_t i = 0; i < (size_t)S * d; i++) {
		k[i] = t_to_dtype((float)t_normal(rng), dt);
		v[i] = t_to_dtype((float)t_normal(rng), dt);
		(*kd)[i] = t_from_dtype(k[i], dt);
		(*vd)[i] = t_from_dtype(v[i], dt);
	}
	T_CHECK(sparq_stream_create(be, st, d, dt, &s, &why) == 0, "create %s", why);
	T_CHECK(sparq_stream_append(s, S, k, v, &why) == 0, "append %s", why);
	free(k);
	free(v);
	return s;
}

/* exact logits q_h·K_j/√d in double */
static double exact_logit(const float *q, const double *kd, uint32_t d, uint32_t j)
{
	double acc = 0;
	for (uint32_t c = 0; c < d; c++)
		acc += q[c] * kd[(size_t)j * d + c];
	return acc / sqrt((double)d);
}

static void test_r_equals_d(struct sparq_backend *be, struct sparq_store *st)
{
	struct t_rng rng = { 11 };
	uint32_t S = 4096, d = 128, k = 64;

	for (uint32_t g = 1; g <= 4; g *= 4) {
		double *kd, *vd;
		struct sparq_stream *s = random_stream(be, st, S, d, SPARQ_DTYPE_F16, &rng, &kd, &vd);
		float *q = t_alloc((size_t)g * d * sizeof(float)), y[4 * 128], alpha[4];
		uint32_t sel[64];
		double *zs = t_alloc(S * sizeof(double));

		for (uint32_t i = 0; i < g * d; i++)
			q[i] = (float)(2.0 * t_normal(&rng));
		struct sparq_attend_item it = {
			.stream = s, .g = g, .q = q, .y = y, .alpha = alpha, .sel = sel, .sel_cap = k,
			.params = { .r = d, .k = k, .l = 0, .blend = SPARQ_BLEND_ON },
		};
		struct sparq_attend_batch b = { .items = &it, .n = 1 };
		T_CHECK(sparq_backend_attend(be, &b) == 0, "attend: %s", b.why);
		T_CHECK(it.n_sel == k && sel[k - 1] == S - 1, "window must hold the current token");

		/* with every component kept τ = √d, so the group logits are exact */
		double worst_kept = INFINITY, best_dropped = -INFINITY;
		for (uint32_t j = 0; j < S; j++) {
			zs[j] = 0;
			for (uint32_t h = 0; h < g; h++)
				zs[j] += exact_logit(q + h * d, kd, d, j);
		}
		for (uint32_t j = 0, i = 0; j < S - 1; j++) {
			bool in = i < k && sel[i] == j;
			i += in;
			if (in)
				worst_kept = fmin(worst_kept, zs[j]);
			else
				best_dropped = fmax(best_dropped, zs[j]);
		}
		T_CHECK(worst_kept >= best_dropped - 1e-4,
			"g=%u: kept %.6f below dropped %.6f: scores not exact", g, worst_kept,
			best_dropped);
		/* alpha: the exact softmax mass of the selected rows */
		for (uint32_t h = 0; h < g; h++) {
			double m = -INFINITY, den = 0, num = 0;
			for (uint32_t j = 0; j < S; j++)
				m = fmax(m, exact_logit(q + h * d, kd, d, j));
			for (uint32_t j = 0, i = 0; j < S; j++) {
				double e = exp(exact_logit(q + h * d, kd, d, j) - m);
				den += e;
				if (i < k && sel[i] == j) {
					num += e;
					i++;
				}
			}
			T_CHECK(fabs(alpha[h] - num / den) < 1e-5, "alpha %.7f vs exact mass %.7f",
				alpha[h], num / den);
		}
		sparq_stream_destroy(s);
		free(kd);
		free(vd);
		free(q);
		free(zs);
	}
}

static void test_dense(struct sparq_backend *be, struct sparq_store *st)
{
	static const uint32_t sizes[] = { 1, 100, 5000 };
	struct t_rng rng = { 12 };
	uint32_t d = 64, g = 4;

	for (unsigned si = 0; si < 3; si++) {
		uint32_t S = sizes[si];
		double *kd, *vd;
		struct sparq_stream *s = random_stream(be, st, S, d, SPARQ_DTYPE_BF16, &rng, &kd, &vd);
		float q[4 * 64], y[4 * 64], alpha[4];

		for (uint32_t i = 0; i < g * d; i++)
			q[i] = (float)t_normal(&rng);
		for (uint32_t extra = 0; extra <= 1000; extra += 1000) {
			struct sparq_attend_item it = {
				.stream = s, .g = g, .q = q, .y = y, .alpha = alpha,
				.params = { .r = 1, .k = S + extra, .l = -1, .blend = SPARQ_BLEND_ON },
			};
			struct sparq_attend_batch b = { .items = &it, .n = 1 };
			T_CHECK(sparq_backend_attend(be, &b) == 0, "attend: %s", b.why);
			T_CHECK(it.n_sel == S, "dense must take all %u rows, took %u", S, it.n_sel);
			for (uint32_t h = 0; h < g; h++) {
				double m = -INFINITY, den = 0, yh[64] = { 0 };
				T_CHECK(alpha[h] == 1.0f, "dense alpha must be exactly 1");
				for (uint32_t j = 0; j < S; j++)
					m = fmax(m, exact_logit(q + h * d, kd, d, j));
				for (uint32_t j = 0; j < S; j++) {
					double e = exp(exact_logit(q + h * d, kd, d, j) - m);
					den += e;
					for (uint32_t c = 0; c < d; c++)
						yh[c] += e * vd[(size_t)j * d + c];
				}
				for (uint32_t c = 0; c < d; c++)
					T_CHECK(fabs(y[h * d + c] - yh[c] / den) < 1e-5,
						"S=%u dense y %.7f vs %.7f", S, y[h * d + c], yh[c] / den);
			}
		}
		sparq_stream_destroy(s);
		free(kd);
		free(vd);
	}
}

/* A key aligned with the (group) query, of an ordinary key's norm times 2, placed at
 * early, middle and late positions: SparQ must always fetch it. */
static void test_needle(struct sparq_backend *be, struct sparq_store *st)
{
	struct t_rng rng = { 13 };
	uint32_t S = 16384, d = 128, found = 0, tries = 0;

	for (uint32_t g = 1; g <= 4; g *= 4) {
		for (int trial = 0; trial < 12; trial++) {
			uint16_t *k = t_alloc((size_t)S * d * 2), *v = t_alloc((size_t)S * d * 2);
			float q[4 * 128], y[4 * 128], qsum[128] = { 0 };
			uint32_t sel[2048];
			uint32_t at = (uint32_t)(t_next(&rng) % (S - 4096)); /* outside the window */
			struct sparq_stream *s;
			const char *why;
			double norm = 0;

			for (size_t i = 0; i < (size_t)S * d; i++) {
				k[i] = sparq_f32_to_f16((float)t_normal(&rng));
				v[i] = sparq_f32_to_f16((float)t_normal(&rng));
			}
			for (uint32_t i = 0; i < g * d; i++) {
				/* heavy-tailed queries, as real ones are */
				q[i] = (float)(t_normal(&rng) * exp(t_normal(&rng)));
				qsum[i % d] += q[i];
			}
			for (uint32_t c = 0; c < d; c++)
				norm += (double)qsum[c] * qsum[c];
			for (uint32_t c = 0; c < d; c++)
				k[(size_t)at * d + c] = sparq_f32_to_f16(
					(float)(2.0 * sqrt((double)d) * qsum[c] / sqrt(norm)));
			T_CHECK(sparq_stream_create(be, st, d, SPARQ_DTYPE_F16, &s, &why) == 0, "create");
			T_CHECK(sparq_stream_append(s, S, k, v, &why) == 0, "append %s", why);
			for (int pi = 0; pi < 2; pi++) {
				/* ratio 1/8 (r = 16, k = 1024) and the fixed-k recipe (r = 16, k = 128) */
				struct sparq_params p = pi == 0 ? (struct sparq_params){ .ratio = 8, .l = -1 }
							       : (struct sparq_params){ .r = 16, .k = 128, .l = 32 };
				struct sparq_attend_item it = { .stream = s, .g = g, .q = q, .y = y,
								.sel = sel, .sel_cap = 2048, .params = p };
				struct sparq_attend_batch b = { .items = &it, .n = 1 };
				T_CHECK(sparq_backend_attend(be, &b) == 0, "attend: %s", b.why);
				bool hit = false;
				for (uint32_t i = 0; i < it.n_sel; i++)
					hit |= sel[i] == at;
				T_CHECK(hit, "needle at %u missed (g=%u, r=%u, k=%u)", at, g, it.used.r,
					it.used.k);
				found += hit;
				tries++;
			}
			sparq_stream_destroy(s);
			free(k);
			free(v);
		}
	}
	printf("needles found: %u/%u\n", found, tries);
}

int main(void)
{
	for (int portable = 0; portable <= 1; portable++) {
		struct sparq_backend_config cfg = { .n_threads = 2, .cpu_portable = portable };
		struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);
		struct sparq_store *st;

		T_CHECK(sparq_store_heap_create(1024, 0, &st) == 0, "store");
		test_r_equals_d(be, st);
		test_dense(be, st);
		test_needle(be, st);
		sparq_store_destroy(st);
		sparq_backend_close(be);
	}
	printf("test_identities: ok\n");
	return T_EXIT_PASS;
}
