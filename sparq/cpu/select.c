/*
 * select.c — top-m selection without sorting the S scores (issue: "quickselect or
 * radix select"). Scores map to order-preserving uint32 keys; an 11-bit histogram
 * over all eligible positions finds the bucket holding the m-th largest, one more
 * pass keeps (in position order) every position at or above that bucket, and two
 * narrower radix passes over just that bucket pin the exact threshold key. The
 * final filter walks the kept list in position order, so equal keys at the
 * threshold go to the lower positions and the output comes out ascending.
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

void sparq_cpu_topk(const float *x, uint32_t n, const uint64_t *exclude, uint32_t m,
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
