/*
 * kernels_portable.c — the CPU inner loops in plain C: the fallback on processors
 * without AVX2, and the definition the SIMD kernels are checked against.
 */
#include <math.h>

#include "../half.h"
#include "cpu-impl.h"

static inline float elem(uint16_t x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(x) : sparq_bf16_to_f32(x);
}

static float score_portable(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
			    uint32_t r, const float *qc, uint32_t G, enum sparq_dtype dt,
			    float *z, size_t zs)
{
	float big = 0.0f;

	for (uint32_t h = 0; h < G; h++) {
		float *zh = z + h * zs;

		for (uint32_t j = 0; j < n; j++)
			zh[j] = 0.0f;
		for (uint32_t i = 0; i < r; i++) {
			const uint16_t *row = kt + (size_t)comp[i] * cap;
			float qv = qc[h * r + i];

			for (uint32_t j = 0; j < n; j++)
				zh[j] += qv * elem(row[j], dt);
		}
		for (uint32_t j = 0; j < n; j++)
			big = (fabsf(zh[j]) > big || zh[j] != zh[j]) ? fabsf(zh[j]) : big;
	}
	return big;
}

static float score_i8_portable(const int8_t *q8, const float *scale, uint32_t cap, uint32_t n,
			       const uint32_t *comp, uint32_t r, const float *qc, uint32_t G,
			       float *z, size_t zs)
{
	float big = 0.0f;

	for (uint32_t h = 0; h < G; h++) {
		float *zh = z + h * zs;

		for (uint32_t j = 0; j < n; j++)
			zh[j] = 0.0f;
		for (uint32_t i = 0; i < r; i++) {
			const int8_t *row = q8 + (size_t)comp[i] * cap;
			float qv = qc[h * r + i];

			for (uint32_t j = 0; j < n; j++)
				zh[j] += qv * (float)row[j];
		}
		/* the scale once per position, after the channel sum (quant.h) */
		for (uint32_t j = 0; j < n; j++) {
			zh[j] *= scale[j];
			big = (fabsf(zh[j]) > big || zh[j] != zh[j]) ? fabsf(zh[j]) : big;
		}
	}
	return big;
}

static double exp_shift_portable(const float *x, uint32_t n, float m, const uint64_t *exclude,
				 float *out)
{
	double sum = 0.0;

	for (uint32_t j = 0; j < n; j++) {
		if (sparq_excluded(exclude, j))
			continue;
		float e = expf(x[j] - m);
		if (out)
			out[j] = e;
		sum += e;
	}
	return sum;
}

/* Two passes: all logits, then the softmax-weighted sum of the values. */
static void attend_rows_portable(const void *const *rows, uint32_t n, uint32_t d,
				 const float *qs, uint32_t g, enum sparq_dtype dt, float *y,
				 float *w)
{
	for (uint32_t h = 0; h < g; h++) {
		float *wh = w + (size_t)h * n, m = -INFINITY;
		double den = 0.0;

		for (uint32_t j = 0; j < n; j++) {
			const uint16_t *k = rows[j];
			float acc = 0.0f;
			for (uint32_t c = 0; c < d; c++)
				acc += qs[h * d + c] * elem(k[c], dt);
			wh[j] = acc;
			m = acc > m ? acc : m;
		}
		for (uint32_t j = 0; j < n; j++) {
			wh[j] = expf(wh[j] - m);
			den += wh[j];
		}
		for (uint32_t c = 0; c < d; c++)
			y[h * d + c] = 0.0f;
		for (uint32_t j = 0; j < n; j++) {
			const uint16_t *v = (const uint16_t *)rows[j] + d;
			for (uint32_t c = 0; c < d; c++)
				y[h * d + c] += wh[j] * elem(v[c], dt);
		}
		float inv = (float)(1.0 / den);
		for (uint32_t c = 0; c < d; c++)
			y[h * d + c] *= inv;
	}
}

const struct sparq_cpu_kernels sparq_cpu_kernels_portable = {
	.isa = "portable C",
	.score = score_portable,
	.score_i8 = score_i8_portable,
	.exp_shift = exp_shift_portable,
	.attend_rows = attend_rows_portable,
};
