/*
 * quant.h — the compressed key slice's one quantizer (issue 5): int8 with one fp32
 * scale per position. Only approximate scoring (SPARQ.md steps 1-3, 5) reads a key
 * slice; the exact step reads the full-precision records, which never change.
 *
 * Format, per position j with keys K_j (d elements, fp16 or bf16 as stored):
 *   m_j = max_c |K_jc|, s_j = m_j / 127 (fp32; 0 for an all-zero row),
 *   q_jc = round-half-to-even(K_jc · 127 / m_j), in [-127, 127] (-128 never occurs),
 * so K_jc ≈ s_j · q_jc and the approximate logit is z_j = s_j · Σ_{c∈i1} q̂_c q_jc.
 * The quotient is formed in double from exact operands (K_jc · 127 is exact), so the
 * result does not depend on the compiler's contraction or the rounding mode: every
 * backend that quantizes here (CPU, the CUDA backend's host side, the tests building
 * the reference's scoring keys) holds the same bytes.
 */
#ifndef SPARQ_QUANT_H
#define SPARQ_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "sparq.h"

/* The largest |q| of the int8 format; -128 is left out so the range is symmetric. */
#define SPARQ_QUANT_MAX 127

/*
 * Quantizes n finite key rows k [n][d] of storage dtype dt. Element (t, c) goes to
 * q[c * c_stride + t * t_stride] — c_stride = capacity, t_stride = 1 writes straight
 * into a channel-major slice; c_stride = 1, t_stride = d gives rows — and the scale of
 * row t to scale[t]. Non-finite inputs are the caller's to refuse (streams do).
 */
void sparq_quant_rows(const uint16_t *k, uint32_t n, uint32_t d, enum sparq_dtype dt,
		      int8_t *q, size_t c_stride, size_t t_stride, float *scale);

/* round-half-to-even of x, whatever the floating-point rounding mode is. */
double sparq_quant_rne(double x);

#endif
