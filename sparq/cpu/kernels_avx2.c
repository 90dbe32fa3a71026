/*
 * kernels_avx2.c — the CPU inner loops with AVX2, FMA and F16C, compiled with
 * function-level target attributes so the rest of the build stays baseline x86-64
 * and the table is picked at run time (cpu_backend.c).
 *
 * Scoring is the bandwidth-critical loop: for a tile of positions it keeps G heads ×
 * P vectors of logits in registers while it walks the r chosen channels, so each
 * key-slice byte is read from memory once and converted once, whatever G is.
 */
#include "cpu-impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

AVX2_INLINE __m256 load8(const uint16_t *p, enum sparq_dtype dt)
{
	__m128i h = _mm_loadu_si128((const __m128i *)p);

	if (dt == SPARQ_DTYPE_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2_INLINE void score_tiles(const uint16_t *kt, uint32_t cap, uint32_t n,
			     const uint32_t *comp, uint32_t r, const float *qc,
			     enum sparq_dtype dt, float *z, size_t zs, const int G, const int P)
{
	for (uint32_t j = 0; j < n; j += 8u * (uint32_t)P) {
		__m256 acc[4][8];

		for (int h = 0; h < G; h++)
			for (int p = 0; p < P; p++)
				acc[h][p] = _mm256_setzero_ps();
		for (uint32_t i = 0; i < r; i++) {
			const uint16_t *src = kt + (size_t)comp[i] * cap + j;
			__m256 kv[8];

			for (int p = 0; p < P; p++)
				kv[p] = load8(src + 8 * p, dt);
			for (int h = 0; h < G; h++) {
				__m256 qv = _mm256_broadcast_ss(qc + (size_t)h * r + i);
				for (int p = 0; p < P; p++)
					acc[h][p] = _mm256_fmadd_ps(qv, kv[p], acc[h][p]);
			}
		}
		for (int h = 0; h < G; h++)
			for (int p = 0; p < P; p++)
				_mm256_storeu_ps(z + (size_t)h * zs + j + 8 * p, acc[h][p]);
	}
}

AVX2 static void score_avx2(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
			    uint32_t r, const float *qc, uint32_t G, enum sparq_dtype dt,
			    float *z, size_t zs)
{
	/* heads in chunks of 4, 2, 1; tile widths 16, 32, 64 keep ≤ 12 live registers */
	uint32_t h = 0;

	for (; h + 4 <= G; h += 4)
		score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt, z + h * zs, zs, 4, 2);
	if (h + 2 <= G) {
		score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt, z + h * zs, zs, 2, 4);
		h += 2;
	}
	if (h < G)
		score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt, z + h * zs, zs, 1, 8);
}

/* exp for x <= 0 to within 2 ulp: 2^n · p(f) with a degree-6 minimax polynomial. */
AVX2_INLINE __m256 exp8(__m256 x)
{
	const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
	const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);
	const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);

	x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f)); /* below that the result is 0 anyway */
	x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 f = _mm256_fnmadd_ps(n, ln2_hi, x);
	f = _mm256_fnmadd_ps(n, ln2_lo, f);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.0f)));
	__m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
						       _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AVX2 static double exp_shift_avx2(const float *x, uint32_t n, float m, const uint64_t *exclude,
				  float *out)
{
	const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
	const __m256 mv = _mm256_set1_ps(m);
	double sum = 0.0;
	uint32_t j = 0;

	while (j + 8 <= n) {
		/* fp32 lanes over at most 1024 elements, then into the double total */
		uint32_t end = j + 1024 < n ? j + 1024 : n;
		__m256 acc = _mm256_setzero_ps();

		for (; j + 8 <= end; j += 8) {
			__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
			if (exclude) {
				uint32_t bits = (uint32_t)(exclude[j >> 6] >> (j & 63)) & 0xffu;
				if (bits) {
					__m256i hit = _mm256_cmpeq_epi32(
						_mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bit),
						_mm256_setzero_si256());
					e = _mm256_and_ps(e, _mm256_castsi256_ps(hit));
				}
			}
			if (out)
				_mm256_storeu_ps(out + j, e);
			acc = _mm256_add_ps(acc, e);
		}
		__m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
		s = _mm_add_ps(s, _mm_movehl_ps(s, s));
		s = _mm_add_ss(s, _mm_movehdup_ps(s));
		sum += _mm_cvtss_f32(s);
	}
	for (; j < n; j++) {
		if (sparq_excluded(exclude, j))
			continue;
		float e = expf(x[j] - m);
		if (out)
			out[j] = e;
		sum += e;
	}
	return sum;
}

AVX2_INLINE float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

AVX2 static void logits_avx2(const void *const *rows, uint32_t n, uint32_t d, const float *qs,
			     uint32_t g, enum sparq_dtype dt, float *out)
{
	for (uint32_t j = 0; j < n; j++) {
		const uint16_t *k = rows[j];

		for (uint32_t h0 = 0; h0 < g; h0 += 4) {
			uint32_t G = g - h0 < 4 ? g - h0 : 4;
			__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(),
					  _mm256_setzero_ps(), _mm256_setzero_ps() };

			for (uint32_t c = 0; c < d; c += 8) {
				__m256 kv = load8(k + c, dt);
				for (uint32_t h = 0; h < G; h++)
					acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + (h0 + h) * d + c),
								 kv, acc[h]);
			}
			for (uint32_t h = 0; h < G; h++)
				out[(size_t)(h0 + h) * n + j] = hsum8(acc[h]);
		}
	}
}

AVX2 static void accum_v_avx2(const void *const *rows, uint32_t n, uint32_t d, const float *w,
			      uint32_t g, enum sparq_dtype dt, float *y)
{
	for (uint32_t j = 0; j < n; j++) {
		const uint16_t *v = (const uint16_t *)rows[j] + d;

		for (uint32_t c = 0; c < d; c += 8) {
			__m256 vv = load8(v + c, dt);
			for (uint32_t h = 0; h < g; h++) {
				float *yp = y + h * d + c;
				__m256 wj = _mm256_set1_ps(w[(size_t)h * n + j]);
				_mm256_storeu_ps(yp, _mm256_fmadd_ps(wj, vv, _mm256_loadu_ps(yp)));
			}
		}
	}
}

static const struct sparq_cpu_kernels avx2_kernels = {
	.isa = "AVX2+FMA+F16C",
	.score = score_avx2,
	.exp_shift = exp_shift_avx2,
	.logits = logits_avx2,
	.accum_v = accum_v_avx2,
};

const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	    __builtin_cpu_supports("f16c"))
		return &avx2_kernels;
	return NULL;
}

#else

const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void)
{
	return NULL;
}

#endif
