/*
 * test_half.c — the scalar fp16/bf16 conversions of half.h are the definition every
 * SIMD and GPU path must match bit for bit, so they are checked here against
 * independent double-precision routines: every fp16 and bf16 bit pattern decoded and
 * round-tripped; fp32 -> fp16/bf16 rounding (nearest even, overflow, subnormals,
 * signed zero) over a stride through all floats, every halfway case and its
 * neighbours, and random floats; and, where the CPU has F16C, against the hardware.
 */
#include <float.h>
#include <inttypes.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define T_HAVE_X86 1
#endif

#include "helpers.h"

#define N_RANDOM 4000000u

static uint64_t n_checked;

/*
 * Decodes fp16 bits to a double by the textbook formula, sharing no code with half.h.
 * Exponent field 31 with a zero mantissa yields 2^16, the value just past the largest
 * finite fp16, so callers can form the last midpoint before overflow.
 */
static double ref_f16_value(uint16_t h)
{
	int exp = (h >> 10) & 0x1f;
	int man = h & 0x3ff;
	double v = exp == 0 ? ldexp(man, -24) : ldexp(1024 + man, exp - 25);

	return (h & 0x8000) ? -v : v;
}

static double ref_bf16_value(uint16_t h)
{
	int exp = (h >> 7) & 0xff;
	int man = h & 0x7f;
	double v = exp == 0 ? ldexp(man, -133) : ldexp(128 + man, exp - 134);

	return (h & 0x8000) ? -v : v;
}

/*
 * Rounds ax >= 0 to a multiple of quantum, ties to even. Every float divided by a power of
 * two is exact in double, so the comparison with one half is exact too.
 */
static double ref_round_even(double ax, double quantum)
{
	double n = ax / quantum;
	double fl = floor(n);
	double frac = n - fl;

	if (frac > 0.5 || (frac == 0.5 && fmod(fl, 2.0) != 0.0))
		fl += 1.0;
	return fl * quantum;
}

/* Exponent e of the leading bit, ax = m * 2^e with m in [1, 2); ax > 0. */
static int ref_ilogb(double ax)
{
	int e;

	frexp(ax, &e);
	return e - 1;
}

/*
 * fp32 -> fp16 by the definition: pick the spacing of fp16 values around |x| (2^-24
 * below the smallest normal, else 2^(e-10)), round to a multiple of it, overflow
 * wherever the rounded value reaches 2^16, then encode the rounded value.
 */
static uint16_t ref_f32_to_f16(float x)
{
	uint16_t sign = signbit(x) ? 0x8000 : 0;
	double ax = fabs((double)x);
	double r;
	int e;

	if (isnan(x))
		return sign | 0x7e00;
	if (ax >= 0x1p16)
		return sign | 0x7c00;
	if (ax == 0.0)
		return sign;
	e = ref_ilogb(ax);
	r = ref_round_even(ax, ldexp(1.0, (e < -14 ? -14 : e) - 10));
	if (r >= 0x1p16)
		return sign | 0x7c00;
	if (r < 0x1p-14) /* subnormal (or zero): the mantissa counts units of 2^-24 */
		return sign | (uint16_t)(r * 0x1p24);
	e = ref_ilogb(r);
	return sign | (uint16_t)((e + 15) << 10) | (uint16_t)(r * ldexp(1.0, 10 - e) - 1024.0);
}

static uint16_t ref_f32_to_bf16(float x)
{
	uint16_t sign = signbit(x) ? 0x8000 : 0;
	double ax = fabs((double)x);
	double r;
	int e;

	if (isinf(x))
		return sign | 0x7f80;
	if (ax == 0.0)
		return sign;
	e = ref_ilogb(ax);
	r = ref_round_even(ax, ldexp(1.0, (e < -126 ? -126 : e) - 7));
	if (r >= 0x1p128)
		return sign | 0x7f80;
	if (r < 0x1p-126)
		return sign | (uint16_t)(r * 0x1p133);
	e = ref_ilogb(r);
	return sign | (uint16_t)((e + 127) << 7) | (uint16_t)(r * ldexp(1.0, 7 - e) - 128.0);
}

static bool f16_is_nan(uint16_t h)
{
	return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
}

static bool bf16_is_nan(uint16_t h)
{
	return (h & 0x7f80) == 0x7f80 && (h & 0x7f);
}

#ifdef T_HAVE_X86
static bool have_f16c;

/*
 * F16C instructions are VEX-encoded, so they need the OS to save AVX state as well as
 * the CPUID bit; "avx" covers the former. (clang 14 does not know "f16c" as a
 * __builtin_cpu_supports feature, hence CPUID directly.)
 */
static bool cpu_has_f16c(void)
{
	unsigned a, b, c, d;

	__builtin_cpu_init();
	return __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float x)
{
	return (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h)
{
	return _cvtsh_ss(h);
}
#endif

/* One fp32 input through both encoders, each against its reference. */
static void check_encode(float x)
{
	uint32_t u = sparq_f32_to_bits(x);
	uint16_t h = sparq_f32_to_f16(x), b = sparq_f32_to_bf16(x);

	n_checked++;
	if (isnan(x)) {
		/* payload bits are not promised; NaN-ness, the quiet bit and the sign are */
		T_CHECK(f16_is_nan(h) && (h & 0x200) && (h >> 15) == (u >> 31),
			"f32 %08" PRIx32 " -> f16 %04x: not a quiet NaN of the same sign", u, h);
		T_CHECK(bf16_is_nan(b) && (b & 0x40) && (b >> 15) == (u >> 31),
			"f32 %08" PRIx32 " -> bf16 %04x: not a quiet NaN of the same sign", u, b);
		return;
	}
	T_CHECK(h == ref_f32_to_f16(x), "f32 %08" PRIx32 " (%a) -> f16 %04x, expected %04x",
		u, (double)x, h, ref_f32_to_f16(x));
	T_CHECK(b == ref_f32_to_bf16(x), "f32 %08" PRIx32 " (%a) -> bf16 %04x, expected %04x",
		u, (double)x, b, ref_f32_to_bf16(x));
#ifdef T_HAVE_X86
	if (have_f16c)
		T_CHECK(h == hw_f32_to_f16(x), "f32 %08" PRIx32 " (%a) -> f16 %04x, F16C says %04x",
			u, (double)x, h, hw_f32_to_f16(x));
#endif
}

/* A value and the floats one ulp either side of it, both signs. */
static void check_encode_around(float m)
{
	float near[3] = { m, nextafterf(m, 0.0f), nextafterf(m, INFINITY) };

	for (int i = 0; i < 3; i++) {
		check_encode(near[i]);
		check_encode(-near[i]);
	}
}

static void test_f16_decode_all(void)
{
	for (uint32_t i = 0; i < 0x10000; i++) {
		uint16_t h = (uint16_t)i;
		float f = sparq_f16_to_f32(h);
		bool nan_bits = f16_is_nan(h);

		T_CHECK(sparq_f16_nonfinite(h) == !isfinite(f), "f16 %04x nonfinite %d, value %a",
			h, sparq_f16_nonfinite(h), (double)f);
		if (nan_bits) {
			T_CHECK(isnan(f), "f16 %04x is NaN, decodes to %a", h, (double)f);
			T_CHECK(f16_is_nan(sparq_f32_to_f16(f)), "f16 NaN %04x came back as %04x",
				h, sparq_f32_to_f16(f));
			continue;
		}
		if ((h & 0x7fff) == 0x7c00)
			T_CHECK(isinf(f) && (signbit(f) != 0) == (h >> 15), "f16 %04x -> %a", h,
				(double)f);
		else
			T_CHECK((double)f == ref_f16_value(h) && (signbit(f) != 0) == (h >> 15),
				"f16 %04x -> %a, expected %a", h, (double)f, ref_f16_value(h));
		T_CHECK(sparq_f32_to_f16(f) == h, "f16 %04x -> %a -> %04x", h, (double)f,
			sparq_f32_to_f16(f));
#ifdef T_HAVE_X86
		if (have_f16c)
			T_CHECK(sparq_f32_to_bits(f) == sparq_f32_to_bits(hw_f16_to_f32(h)),
				"f16 %04x -> %a, F16C says %a", h, (double)f,
				(double)hw_f16_to_f32(h));
#endif
	}
}

static void test_bf16_decode_all(void)
{
	for (uint32_t i = 0; i < 0x10000; i++) {
		uint16_t h = (uint16_t)i;
		float f = sparq_bf16_to_f32(h);

		T_CHECK(sparq_bf16_nonfinite(h) == !isfinite(f), "bf16 %04x nonfinite %d, value %a",
			h, sparq_bf16_nonfinite(h), (double)f);
		if (bf16_is_nan(h)) {
			uint16_t back = sparq_f32_to_bf16(f);

			T_CHECK(isnan(f), "bf16 %04x is NaN, decodes to %a", h, (double)f);
			/* a signalling NaN comes back quieted, a quiet one unchanged */
			T_CHECK(back == (h | 0x40), "bf16 NaN %04x came back as %04x", h, back);
			continue;
		}
		if ((h & 0x7fff) == 0x7f80)
			T_CHECK(isinf(f) && (signbit(f) != 0) == (h >> 15), "bf16 %04x -> %a", h,
				(double)f);
		else
			T_CHECK((double)f == ref_bf16_value(h) && (signbit(f) != 0) == (h >> 15),
				"bf16 %04x -> %a, expected %a", h, (double)f, ref_bf16_value(h));
		T_CHECK(sparq_f32_to_bf16(f) == h, "bf16 %04x -> %a -> %04x", h, (double)f,
			sparq_f32_to_bf16(f));
	}
}

/*
 * A stride through all 2^32 patterns: 4093 is odd and just under 2^12, so every
 * combination of the top 20 bits is visited while the 12 low bits (those rounding
 * looks at below the fp16 and bf16 cut) take ever-changing values.
 */
static void test_encode_stride(void)
{
	for (uint64_t u = 0; u <= UINT32_MAX; u += 4093)
		check_encode(sparq_bits_to_f32((uint32_t)u));
	/* and the exact patterns where the low 12 bits are zero, half or all ones */
	for (uint32_t top = 0; top < (1u << 20); top++) {
		static const uint32_t low[] = { 0x000, 0x001, 0x7ff, 0x800, 0x801, 0xfff };

		for (unsigned i = 0; i < sizeof(low) / sizeof(low[0]); i++)
			check_encode(sparq_bits_to_f32(top << 12 | low[i]));
	}
}

/*
 * Ties are where round-to-nearest-even differs from every other rounding, so take the
 * exact midpoint between each pair of neighbouring values and one ulp either side.
 * The pair (max finite, 2^16) gives 65520, the first value that must overflow.
 */
static void test_encode_midpoints(void)
{
	for (uint32_t h = 0; h < 0x7c00; h++) {
		double lo = ref_f16_value((uint16_t)h), hi = ref_f16_value((uint16_t)(h + 1));
		float mid = (float)((lo + hi) / 2);

		T_CHECK((double)mid == (lo + hi) / 2, "f16 midpoint %04x not exact", h);
		check_encode_around(mid);
		check_encode_around((float)lo);
	}
	for (uint32_t h = 0; h < 0x7f80; h++) {
		double lo = ref_bf16_value((uint16_t)h), hi = ref_bf16_value((uint16_t)(h + 1));
		float mid = (float)((lo + hi) / 2);

		T_CHECK((double)mid == (lo + hi) / 2, "bf16 midpoint %04x not exact", h);
		check_encode_around(mid);
		check_encode_around((float)lo);
	}
}

/*
 * Random floats: half of them uniform over all bit patterns (NaNs, infinities, huge
 * and tiny values), half with exponents inside or near the fp16 range, where most of
 * the interesting rounding happens.
 */
static void test_encode_random(void)
{
	struct t_rng rng = { 0x5eed0f16u };

	for (uint32_t i = 0; i < N_RANDOM; i++) {
		uint32_t u = (uint32_t)t_next(&rng);

		if (i & 1) {
			uint32_t exp = 98u + (uint32_t)(t_next(&rng) % 50u); /* 2^-29 .. 2^21 */
			u = (u & 0x807fffffu) | exp << 23;
		}
		check_encode(sparq_bits_to_f32(u));
	}
}

/* The values the rounding rules are usually stated with, spelled out. */
static void test_encode_landmarks(void)
{
	static const struct {
		float x;
		uint16_t f16, bf16;
	} cases[] = {
		{ 0.0f, 0x0000, 0x0000 },
		{ -0.0f, 0x8000, 0x8000 },
		{ 1.0f, 0x3c00, 0x3f80 },
		{ -2.0f, 0xc000, 0xc000 },
		{ 65504.0f, 0x7bff, 0x4780 },         /* 11 ones: bf16 rounds up to 2^16 */
		{ 65519.99609375f, 0x7bff, 0x4780 },  /* just below the fp16 overflow tie */
		{ 65520.0f, 0x7c00, 0x4780 },         /* tie, 0x7bff is odd: to inf */
		{ 0x1p-24f, 0x0001, 0x3380 },         /* smallest fp16 subnormal */
		{ 0x1p-25f, 0x0000, 0x3300 },         /* tie with zero: to even (0) */
		{ 0x1.000002p-25f, 0x0001, 0x3300 },  /* just above the tie */
		{ -0x1p-26f, 0x8000, 0xb280 },        /* underflow keeps the sign */
		{ 0x1p-14f, 0x0400, 0x3880 },         /* smallest normal */
		{ 0x1.ff8p-15f, 0x03ff, 0x3880 },     /* largest subnormal */
		{ 0x1.ffcp-15f, 0x0400, 0x3880 },     /* tie above it, 0x3ff odd: up */
		{ 1.0f + 0x1p-11f, 0x3c00, 0x3f80 },  /* tie, 0x3c00 even: down */
		{ 1.0f + 0x3p-11f, 0x3c02, 0x3f80 },  /* tie, 0x3c01 odd: up */
		{ 1.0f + 0x1p-8f, 0x3c04, 0x3f80 },   /* bf16 tie to even: down */
		{ 1.0f + 0x3p-8f, 0x3c0c, 0x3f82 },   /* bf16 tie from odd: up */
		{ FLT_MAX, 0x7c00, 0x7f80 },          /* rounds past the largest bf16 */
		{ 0x1.fefffep127f, 0x7c00, 0x7f7f },  /* just below the bf16 overflow tie */
		{ 0x1.ffp127f, 0x7c00, 0x7f80 },      /* the tie, 0x7f7f odd: to inf */
		{ INFINITY, 0x7c00, 0x7f80 },
		{ -INFINITY, 0xfc00, 0xff80 },
		{ 0x1p-149f, 0x0000, 0x0000 },        /* fp32 subnormals vanish in fp16 */
	};

	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		float x = cases[i].x;

		T_CHECK(sparq_f32_to_f16(x) == cases[i].f16, "%a -> f16 %04x, expected %04x",
			(double)x, sparq_f32_to_f16(x), cases[i].f16);
		T_CHECK(sparq_f32_to_bf16(x) == cases[i].bf16, "%a -> bf16 %04x, expected %04x",
			(double)x, sparq_f32_to_bf16(x), cases[i].bf16);
		/* the references must agree with the table too, or they prove nothing */
		T_CHECK(ref_f32_to_f16(x) == cases[i].f16, "reference: %a -> f16 %04x", (double)x,
			ref_f32_to_f16(x));
		T_CHECK(ref_f32_to_bf16(x) == cases[i].bf16, "reference: %a -> bf16 %04x",
			(double)x, ref_f32_to_bf16(x));
	}
}

int main(void)
{
#ifdef T_HAVE_X86
	have_f16c = cpu_has_f16c();
#endif
	test_encode_landmarks();
	test_f16_decode_all();
	test_bf16_decode_all();
	test_encode_midpoints();
	test_encode_stride();
	test_encode_random();
#ifdef T_HAVE_X86
	printf("half: %" PRIu64 " encodes checked, F16C cross-check %s\n", n_checked,
	       have_f16c ? "on" : "off (CPU lacks F16C)");
#else
	printf("half: %" PRIu64 " encodes checked, no F16C on this architecture\n", n_checked);
#endif
	return T_EXIT_PASS;
}
