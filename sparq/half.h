/*
 * half.h — scalar conversions between fp32 and the two storage formats (IEEE fp16,
 * bfloat16). Storage is fp16/bf16, arithmetic is fp32 (SPARQ.md); these are the
 * portable definitions the SIMD paths must agree with bit for bit.
 */
#ifndef SPARQ_HALF_H
#define SPARQ_HALF_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static inline float sparq_bits_to_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline uint32_t sparq_f32_to_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float sparq_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0x1f) /* inf / nan */
		return sparq_bits_to_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return sparq_bits_to_f32(sign);
		/* subnormal: value = man * 2^-24, exact in fp32 */
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	}
	return sparq_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round to nearest even, overflow to inf, NaN stays NaN (quiet). */
static inline uint16_t sparq_f32_to_f16(float f)
{
	uint32_t u = sparq_f32_to_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;

	if (a >= 0x7f800000u) /* inf or nan */
		return sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);
	if (a >= 0x477ff000u) /* rounds to >= 65520: overflow */
		return sign | 0x7c00u;
	if (a < 0x38800000u) { /* below the smallest normal 2^-14: subnormal or zero */
		/* a * 2^24 rounded to nearest even is the subnormal mantissa; the fp32
		 * addition performs exactly that rounding. */
		float v = sparq_bits_to_f32(a) * 0x1p24f;
		float rounded = (v + 0x1p23f) - 0x1p23f;
		return sign | (uint16_t)rounded;
	}
	uint32_t man_odd = (a >> 13) & 1u;
	a += 0xfffu + man_odd; /* round to nearest even at bit 13 */
	return sign | (uint16_t)((a - (112u << 23)) >> 13);
}

static inline float sparq_bf16_to_f32(uint16_t h)
{
	return sparq_bits_to_f32((uint32_t)h << 16);
}

static inline uint16_t sparq_f32_to_bf16(float f)
{
	uint32_t u = sparq_f32_to_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep it quiet */
		return (uint16_t)((u >> 16) | 0x40u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* True when a stored element is NaN or ±inf (exponent all ones). */
static inline bool sparq_f16_nonfinite(uint16_t h)
{
	return (h & 0x7c00u) == 0x7c00u;
}

static inline bool sparq_bf16_nonfinite(uint16_t h)
{
	return (h & 0x7f80u) == 0x7f80u;
}

#endif
