/*
 * quant.c — int8 key-slice quantization (quant.h). Written for plainness: the CPU
 * backend runs it once per appended position, off the decode step's scoring path.
 */
#include <math.h>

#include "half.h"
#include "quant.h"

double sparq_quant_rne(double x)
{
	double f = floor(x), diff = x - f;

	/* diff is exact: x and floor(x) are within a factor 2 or x is small */
	if (diff > 0.5 || (diff == 0.5 && fmod(f, 2.0) != 0.0))
		f += 1.0;
	return f;
}

static float elem(uint16_t x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(x) : sparq_bf16_to_f32(x);
}

void sparq_quant_rows(const uint16_t *k, uint32_t n, uint32_t d, enum sparq_dtype dt,
		      int8_t *q, size_t c_stride, size_t t_stride, float *scale)
{
	for (uint32_t t = 0; t < n; t++) {
		const uint16_t *row = k + (size_t)t * d;
		float m = 0.0f;

		for (uint32_t c = 0; c < d; c++) {
			float a = fabsf(elem(row[c], dt));
			m = a > m ? a : m;
		}
		scale[t] = m / (float)SPARQ_QUANT_MAX;
		for (uint32_t c = 0; c < d; c++) {
			double v = 0.0;
			if (m > 0.0f) {
				/* K·127 is exact in double (≤ 24 + 7 bits): one rounding in
				 * the division, one in the RNE below */
				v = sparq_quant_rne((double)elem(row[c], dt) * SPARQ_QUANT_MAX /
						    (double)m);
				v = v > SPARQ_QUANT_MAX ? SPARQ_QUANT_MAX
				  : v < -SPARQ_QUANT_MAX ? -SPARQ_QUANT_MAX : v;
			}
			q[(size_t)c * c_stride + (size_t)t * t_stride] = (int8_t)v;
		}
	}
}
