/*
 * test_vmean.c — the running value mean stays exact over 1M one-token appends of
 * large values (SPARQ.md pitfall: fp16 overflows, and a plain fp32 sum drifts).
 * fp16 values near its 65504 limit and bf16 values near 1e30; the exact mean is
 * computed in double (exact here: every fp16 value is a multiple of 32).
 */
#include <float.h>

#include "helpers.h"

#define N_APPEND 1000000u
#define D 64u

static void run(struct sparq_backend *be, struct sparq_store *st, enum sparq_dtype dt)
{
	struct t_rng rng = { 7 };
	struct sparq_stream *s;
	const char *why = NULL;
	uint16_t k[D], v[D];
	double exact[D] = { 0 };
	float naive[D] = { 0 }, mean[D];
	double scale = dt == SPARQ_DTYPE_F16 ? 1.0 : 1e26;

	T_CHECK(sparq_stream_create(be, st, D, dt, &s, &why) == 0, "create %s", why);
	for (uint32_t c = 0; c < D; c++)
		k[c] = t_to_dtype(0.5f, dt);
	for (uint32_t n = 0; n < N_APPEND; n++) {
		for (uint32_t c = 0; c < D; c++) {
			/* in [50000, 65000): fp16 cannot even hold the sum of two of them */
			v[c] = t_to_dtype((float)((50000.0 + 15000.0 * t_uniform(&rng)) * scale), dt);
			double x = t_from_dtype(v[c], dt);
			exact[c] += x;
			naive[c] += (float)x;
		}
		T_CHECK(sparq_stream_append(s, 1, k, v, &why) == 0, "append %u: %s", n, why);
	}
	T_CHECK(sparq_stream_len(s) == N_APPEND, "length");
	T_CHECK(sparq_stream_vmean(s, mean) == 0, "vmean");
	double worst = 0, worst_naive = 0;
	for (uint32_t c = 0; c < D; c++) {
		double m = exact[c] / N_APPEND;
		worst = fmax(worst, fabs(mean[c] - m) / m);
		worst_naive = fmax(worst_naive, fabs(naive[c] / N_APPEND - m) / m);
		T_CHECK(isfinite(mean[c]), "mean overflowed");
	}
	printf("%s: 1M appends, mean relative error %.3g (fp32 rounding %.3g; a plain fp32 "
	       "sum would be off by %.3g)\n", sparq_dtype_name(dt), worst, (double)FLT_EPSILON,
	       worst_naive);
	T_CHECK(worst <= 2 * FLT_EPSILON, "running mean drifted: %.3g", worst);
	sparq_stream_destroy(s);
}

int main(void)
{
	struct sparq_backend_config cfg = { .n_threads = 1 };
	struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);
	struct sparq_store *st;

	T_CHECK(sparq_store_heap_create(4096, 0, &st) == 0, "store");
	run(be, st, SPARQ_DTYPE_F16);
	run(be, st, SPARQ_DTYPE_BF16);
	sparq_store_destroy(st);
	sparq_backend_close(be);
	return T_EXIT_PASS;
}
