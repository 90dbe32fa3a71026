/*
 * select.c — top-m selection without sorting the S scores (issue: "quickselect or
 * radix select"). Scores map to order-preserving uint32 keys; an 11-bit histogram
 * over all eligible positions finds the bucket holding the m-th largest, one more
 * pass keeps (in position order) every position at or above that bucket, and two
 * narrower radix passes over just that bucket pin the exact threshold key. The
 * final filter walks the kept list in position order, so equal keys at the
 * threshold go to the lower positions and the output comes out ascending.
 *
 * When m is a small share of n (the decode case: k ≈ S/16), a strided sample of 1024
 * scores first estimates a threshold safely below the m-th largest; one compaction
 * pass keeps the scores at or above it, and the exact select runs on those alone.
 * If the estimate was too high (fewer than m kept) the exact select runs on all.
 */
#include <string.h>

#include "../half.h"
#include "cpu-impl.h"

static inline uint32_t sort_key(float f)
{
	/* +0.0f folds -0 into +0 so the two zeros tie, as they compare equal */
	uint32_t u = sparq_f32_to_bits(f + 0.0f);

	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Bucket b with above + count(> b) < m <= above + count(>= b); adds count(> b) to *above. */
static uint32_t find_bucket(const uint32_t *hist, uint32_t nb, uint32_t m, uint32_t *above)
{
	uint32_t b = nb - 1;

	for (;; b--) {
		if (*above + hist[b] >= m || b == 0)
			return b;
		*above += hist[b];
	}
}

static void topk_exact(const float *x, uint32_t n, const uint64_t *exclude, uint32_t m,
		       uint32_t *scratch, uint32_t *out)
{
	uint32_t hist[2048];
	uint32_t above = 0, kept = 0, b1, b2, b3, threshold, ties;

	if (m == 0)
		return;
	memset(hist, 0, sizeof(hist));
	for (uint32_t j = 0; j < n; j++)
		if (!sparq_excluded(exclude, j))
			hist[sort_key(x[j]) >> 21]++;
	b1 = find_bucket(hist, 2048, m, &above);

	/* kept: every eligible position in bucket >= b1, in position order */
	for (uint32_t j = 0; j < n; j++)
		if (!sparq_excluded(exclude, j) && (sort_key(x[j]) >> 21) >= b1)
			scratch[kept++] = j;

	/* the next 11 bits, over bucket b1 only */
	memset(hist, 0, sizeof(hist));
	for (uint32_t i = 0; i < kept; i++) {
		uint32_t key = sort_key(x[scratch[i]]);
		if ((key >> 21) == b1)
			hist[(key >> 10) & 0x7ffu]++;
	}
	b2 = find_bucket(hist, 2048, m, &above);

	/* the last 10 bits, over keys with prefix (b1, b2) */
	memset(hist, 0, 1024 * sizeof(hist[0]));
	for (uint32_t i = 0; i < kept; i++) {
		uint32_t key = sort_key(x[scratch[i]]);
		if ((key >> 10) == ((b1 << 11) | b2))
			hist[key & 0x3ffu]++;
	}
	b3 = find_bucket(hist, 1024, m, &above);
	threshold = (b1 << 21) | (b2 << 10) | b3;
	ties = m - above;   /* keys equal to threshold that still fit */

	uint32_t o = 0;
	for (uint32_t i = 0; i < kept; i++) {
		uint32_t j = scratch[i], key = sort_key(x[j]);
		if (key > threshold || (key == threshold && ties && ties--))
			out[o++] = j;
	}
}

#define SAMPLES 1024u

/* The rank-th largest (0-based) of v[0..n), by quickselect; reorders v. */
static float nth_largest(float *v, uint32_t n, uint32_t rank)
{
	uint32_t lo = 0, hi = n - 1;

	while (lo < hi) {
		float pivot = v[lo + (hi - lo) / 2];
		uint32_t i = lo, j = hi;
		while (i <= j) {
			while (v[i] > pivot)
				i++;
			while (v[j] < pivot)
				j--;
			if (i <= j) {
				float t = v[i];
				v[i] = v[j];
				v[j] = t;
				i++;
				if (j == 0)
					break;
				j--;
			}
		}
		if (rank <= j)
			hi = j;
		else if (rank >= i)
			lo = i;
		else
			return v[rank];
	}
	return v[rank];
}

void sparq_cpu_topk(const float *x, uint32_t n, const uint64_t *exclude, uint32_t m,
		    uint32_t *scratch, uint32_t *out)
{
	float smp[SAMPLES];
	uint32_t ns = 0, stride = n / SAMPLES, c = 0;

	if (m == 0)
		return;
	if (n < 8 * SAMPLES || m > n / 4)
		goto exact;
	for (uint32_t i = 0; i < SAMPLES; i++) {
		uint32_t j = i * stride + stride / 2;
		if (!sparq_excluded(exclude, j))
			smp[ns++] = x[j] + 0.0f;
	}
	if (ns < SAMPLES / 4)
		goto exact;
	/* aim at 1.5x the expected share plus a few, so the estimate is rarely too high */
	uint64_t rank = ((uint64_t)m * SAMPLES * 3) / ((uint64_t)n * 2) + 8;
	if (rank >= ns)
		goto exact;
	float t = nth_largest(smp, ns, (uint32_t)rank);

	uint32_t *pos = scratch;
	if (exclude) {
		for (uint32_t j = 0; j < n; j++) {
			pos[c] = j;
			c += (x[j] >= t) & !sparq_excluded(exclude, j);
		}
	} else {
		for (uint32_t j = 0; j < n; j++) {
			pos[c] = j;
			c += x[j] >= t;
		}
	}
	if (c < m)
		goto exact;
	float *vals = (float *)(scratch + c);
	for (uint32_t i = 0; i < c; i++)
		vals[i] = x[pos[i]];
	topk_exact(vals, c, NULL, m, scratch + 2 * (size_t)c, out);
	/* candidates are in position order, so indices map back ascending */
	for (uint32_t i = 0; i < m; i++)
		out[i] = pos[out[i]];
	return;
exact:
	topk_exact(x, n, exclude, m, scratch, out);
}
