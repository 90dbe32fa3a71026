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
#include <string.h>

#if defined(__clang__) && __clang_major__ < 15
/* clang before 15 does not know "f16c" in __builtin_cpu_supports: ask CPUID.1:ECX */
#include <cpuid.h>
static int cpu_has_f16c(void)
{
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#else
#define cpu_has_f16c() __builtin_cpu_supports("f16c")
#endif

#define AVX2 __attribute__((target("avx2,fma,f16c")))
/* elements ahead on each channel run (2 KiB of fp16): far enough to cover DRAM latency */
#define SCORE_PREFETCH 1024
/*
 * bytes ahead on each int8 channel run: 4 lines. The r runs sit a multiple of 4 KiB
 * apart, so their lines at one offset share an L1 set; at 2 KiB ahead (32 lines a
 * run) the hints evicted each other before use and the int8 score phase ran no faster
 * than fp16's. 128-384 B measured alike on the dev VM; 4096 B was 1.5x slower.
 */
#define SCORE_PREFETCH_I8 256
/* records per tile of the exact step: 32 x 512 B stay in L1 between its two uses */
#define ROW_TILE SPARQ_CPU_ROW_TILE
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

AVX2_INLINE __m256 load8(const uint16_t *p, enum sparq_dtype dt)
{
	__m128i h = _mm_loadu_si128((const __m128i *)p);

	if (dt == SPARQ_DTYPE_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 int8 channel entries of the int8 slice, sign-extended and converted exactly. */
AVX2_INLINE __m256 load8_i8(const int8_t *p)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/*
 * The fp16/bf16 slice: the constants G and P specialise each inlined copy.
 */
AVX2_INLINE __m256 score_tiles(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
			       uint32_t r, const float *qc, enum sparq_dtype dt, float *z, size_t zs,
			       const int G, const int P)
{
	const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	__m256 big = _mm256_setzero_ps();

	for (uint32_t j = 0; j < n; j += 8u * (uint32_t)P) {
		__m256 acc[4][8];

		for (int h = 0; h < G; h++)
			for (int p = 0; p < P; p++)
				acc[h][p] = _mm256_setzero_ps();
		for (uint32_t i = 0; i < r; i++) {
			const uint16_t *src = kt + (size_t)comp[i] * cap + j;
			__m256 kv[8];

			/* r interleaved runs defeat the hardware prefetcher: fetch each run
			 * ahead by hand, one hint per 64-byte line (32 fp16), 2 KiB ahead */
			for (int p = 0; p < P; p += 4)
				_mm_prefetch((const char *)(src + 8 * p + SCORE_PREFETCH), _MM_HINT_T0);
			for (int p = 0; p < P; p++)
				kv[p] = load8(src + 8 * p, dt);
			for (int h = 0; h < G; h++) {
				__m256 qv = _mm256_broadcast_ss(qc + (size_t)h * r + i);
				for (int p = 0; p < P; p++)
					acc[h][p] = _mm256_fmadd_ps(qv, kv[p], acc[h][p]);
			}
		}
		for (int h = 0; h < G; h++)
			for (int p = 0; p < P; p++) {
				_mm256_storeu_ps(z + (size_t)h * zs + j + 8 * p, acc[h][p]);
				/* max of |z| (NaN propagates through max's second operand) */
				big = _mm256_max_ps(_mm256_and_ps(acc[h][p], abs_mask), big);
			}
	}
	return big;
}

/*
 * The int8 slice (quant.h): G heads x P vectors of 8 positions. Each 8-entry run is
 * converted and used at once, so only the G x P accumulators and G query values stay
 * live (no spills: the int8 slice halves the bytes per position, so the loop must not
 * add work per position either). The product is rounded before the add, as in the
 * portable kernel: the two tables give bit-identical logits.
 */
AVX2_INLINE __m256 score_tiles_i8(const int8_t *q8, const float *scale, uint32_t cap, uint32_t n,
				  const uint32_t *comp, uint32_t r, const float *qc, float *z,
				  size_t zs, const int G, const int P)
{
	const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	__m256 big = _mm256_setzero_ps();

	for (uint32_t j = 0; j < n; j += 8u * (uint32_t)P) {
		__m256 acc[4][8];

		for (int h = 0; h < G; h++)
			for (int p = 0; p < P; p++)
				acc[h][p] = _mm256_setzero_ps();
		for (uint32_t i = 0; i < r; i++) {
			const int8_t *src = q8 + (size_t)comp[i] * cap + j;
			__m256 qv[4];

			/* one hint per 64-byte line (64 positions) of each run */
			for (int p = 0; p < P; p += 8)
				_mm_prefetch((const char *)(src + 8 * p + SCORE_PREFETCH_I8), _MM_HINT_T0);
			for (int h = 0; h < G; h++)
				qv[h] = _mm256_broadcast_ss(qc + (size_t)h * r + i);
			for (int p = 0; p < P; p++) {
				__m256 kv = load8_i8(src + 8 * p);
				for (int h = 0; h < G; h++)
					acc[h][p] = _mm256_add_ps(acc[h][p], _mm256_mul_ps(qv[h], kv));
			}
		}
		/* each position's scale once, after the channel sum */
		for (int p = 0; p < P; p++) {
			__m256 sv = _mm256_loadu_ps(scale + j + 8 * p);
			for (int h = 0; h < G; h++) {
				acc[h][p] = _mm256_mul_ps(acc[h][p], sv);
				_mm256_storeu_ps(z + (size_t)h * zs + j + 8 * p, acc[h][p]);
				big = _mm256_max_ps(_mm256_and_ps(acc[h][p], abs_mask), big);
			}
		}
	}
	return big;
}

/* the largest lane of |z| (NaN wins, as in the portable kernel) */
AVX2_INLINE float lanes_max(__m256 big)
{
	float lanes[8], m = 0.0f;

	_mm256_storeu_ps(lanes, big);
	for (int i = 0; i < 8; i++)
		m = (lanes[i] > m || lanes[i] != lanes[i]) ? lanes[i] : m;
	return m;
}

/* heads in chunks of 4, 2, 1; tile widths 16, 32, 64 keep <= 13 live registers */
AVX2 static float score_avx2(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
			     uint32_t r, const float *qc, uint32_t G, enum sparq_dtype dt,
			     float *z, size_t zs)
{
	__m256 big = _mm256_setzero_ps();
	uint32_t h = 0;

	for (; h + 4 <= G; h += 4)
		big = _mm256_max_ps(score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt,
						z + h * zs, zs, 4, 2), big);
	if (h + 2 <= G) {
		big = _mm256_max_ps(score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt,
						z + h * zs, zs, 2, 4), big);
		h += 2;
	}
	if (h < G)
		big = _mm256_max_ps(score_tiles(kt, cap, n, comp, r, qc + (size_t)h * r, dt,
						z + h * zs, zs, 1, 8), big);
	return lanes_max(big);
}

/* the same chunks of heads; G x P accumulators + G query values <= 13 registers */
AVX2 static float score_i8_avx2(const int8_t *q8, const float *scale, uint32_t cap, uint32_t n,
				const uint32_t *comp, uint32_t r, const float *qc, uint32_t G,
				float *z, size_t zs)
{
	__m256 big = _mm256_setzero_ps();
	uint32_t h = 0;

	for (; h + 4 <= G; h += 4)
		big = _mm256_max_ps(score_tiles_i8(q8, scale, cap, n, comp, r, qc + (size_t)h * r,
						   z + h * zs, zs, 4, 2), big);
	if (h + 2 <= G) {
		big = _mm256_max_ps(score_tiles_i8(q8, scale, cap, n, comp, r, qc + (size_t)h * r,
						   z + h * zs, zs, 2, 4), big);
		h += 2;
	}
	if (h < G)
		big = _mm256_max_ps(score_tiles_i8(q8, scale, cap, n, comp, r, qc + (size_t)h * r,
						   z + h * zs, zs, 1, 8), big);
	return lanes_max(big);
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

/* lt[h*ROW_TILE + t] = qs_h · K_t for heads h0..h0+G-1 over the nt records of a tile */
AVX2_INLINE void tile_logits(const void *const *rows, uint32_t nt, uint32_t d, const float *qs,
			     enum sparq_dtype dt, float *lt, uint32_t h0, const int G)
{
	for (uint32_t t = 0; t < nt; t++) {
		const uint16_t *k = rows[t];
		__m256 acc[4];

		for (int h = 0; h < G; h++)
			acc[h] = _mm256_setzero_ps();
		for (uint32_t c = 0; c < d; c += 8) {
			__m256 kv = load8(k + c, dt);
			for (int h = 0; h < G; h++)
				acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qs + (h0 + h) * d + c), kv,
							 acc[h]);
		}
		for (int h = 0; h < G; h++)
			lt[(h0 + h) * ROW_TILE + t] = hsum8(acc[h]);
	}
}

/*
 * y_h += Σ_t w[h*ROW_TILE + t] · V_t[c..c+8V) over a tile, H heads × V vectors of y held
 * in registers while the tile's rows stream past. H and V are compile-time constants
 * so the accumulators never leave registers.
 */
AVX2_INLINE void tile_accum(const void *const *rows, uint32_t nt, uint32_t d, const float *w,
			    enum sparq_dtype dt, float *y, uint32_t h0, uint32_t c, const int H,
			    const int V)
{
	__m256 acc[2][4];

	for (int h = 0; h < H; h++)
		for (int v = 0; v < V; v++)
			acc[h][v] = _mm256_loadu_ps(y + (h0 + h) * d + c + 8 * v);
	for (uint32_t t = 0; t < nt; t++) {
		const uint16_t *vr = (const uint16_t *)rows[t] + d + c;
		__m256 vv[4];

		for (int v = 0; v < V; v++)
			vv[v] = load8(vr + 8 * v, dt);
		for (int h = 0; h < H; h++) {
			__m256 wt = _mm256_broadcast_ss(w + (h0 + h) * ROW_TILE + t);
			for (int v = 0; v < V; v++)
				acc[h][v] = _mm256_fmadd_ps(wt, vv[v], acc[h][v]);
		}
	}
	for (int h = 0; h < H; h++)
		for (int v = 0; v < V; v++)
			_mm256_storeu_ps(y + (h0 + h) * d + c + 8 * v, acc[h][v]);
}

AVX2_INLINE void tile_accum_heads(const void *const *rows, uint32_t nt, uint32_t d,
				  const float *w, enum sparq_dtype dt, float *y, uint32_t h0,
				  const int H)
{
	uint32_t c = 0;

	for (; c + 32 <= d; c += 32)
		tile_accum(rows, nt, d, w, dt, y, h0, c, H, 4);
	for (; c < d; c += 8)
		tile_accum(rows, nt, d, w, dt, y, h0, c, H, 1);
}

/*
 * One pass over the records with an online softmax (running max and sum per head, the
 * partial output rescaled when the max moves), so each record is read from memory
 * once; the next tile's records are prefetched while this one is computed.
 */
AVX2 static void attend_rows_avx2(const void *const *rows, uint32_t n, uint32_t d,
				  const float *qs, uint32_t g, enum sparq_dtype dt, float *y,
				  float *scratch)
{
	float *lt = scratch; /* [g][ROW_TILE] */
	float m[SPARQ_GROUP_MAX];
	double l[SPARQ_GROUP_MAX];
	uint32_t rec = 4 * d; /* bytes of K row + V row at 2 bytes an element */

	for (uint32_t h = 0; h < g; h++) {
		m[h] = -INFINITY;
		l[h] = 0.0;
	}
	memset(y, 0, (size_t)g * d * sizeof(float));
	for (uint32_t t0 = 0; t0 < n; t0 += ROW_TILE) {
		uint32_t nt = n - t0 < ROW_TILE ? n - t0 : ROW_TILE;
		const void *const *tr = rows + t0;

		for (uint32_t t = t0 + ROW_TILE; t < t0 + 2 * ROW_TILE && t < n; t++)
			for (uint32_t b = 0; b < rec; b += 64)
				_mm_prefetch((const char *)rows[t] + b, _MM_HINT_T0);
		uint32_t h = 0;
		for (; h + 4 <= g; h += 4)
			tile_logits(tr, nt, d, qs, dt, lt, h, 4);
		for (; h < g; h++)
			tile_logits(tr, nt, d, qs, dt, lt, h, 1);
		for (h = 0; h < g; h++) {
			float *lh = lt + h * ROW_TILE, mt = m[h];
			for (uint32_t t = 0; t < nt; t++)
				mt = lh[t] > mt ? lh[t] : mt;
			if (mt > m[h]) {
				float sc = expf(m[h] - mt); /* 0 on the first tile */
				l[h] *= sc;
				for (uint32_t c = 0; c < d; c++)
					y[h * d + c] *= sc;
				m[h] = mt;
			}
			l[h] += exp_shift_avx2(lh, nt, mt, NULL, lh);
		}
		for (h = 0; h + 2 <= g; h += 2)
			tile_accum_heads(tr, nt, d, lt, dt, y, h, 2);
		if (h < g)
			tile_accum_heads(tr, nt, d, lt, dt, y, h, 1);
	}
	for (uint32_t h = 0; h < g; h++) {
		float inv = (float)(1.0 / l[h]);
		for (uint32_t c = 0; c < d; c++)
			y[h * d + c] *= inv;
	}
}

static const struct sparq_cpu_kernels avx2_kernels = {
	.isa = "AVX2+FMA+F16C",
	.score = score_avx2,
	.score_i8 = score_i8_avx2,
	.exp_shift = exp_shift_avx2,
	.attend_rows = attend_rows_avx2,
};

const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	    cpu_has_f16c())
		return &avx2_kernels;
	return NULL;
}

#else

const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void)
{
	return NULL;
}

#endif
