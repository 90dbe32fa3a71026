/*
 * test_select.c — the CPU top-m selection against a full sort, with the tie rule
 * (equal scores go to the lower position) tested on inputs made of ties: all equal,
 * a handful of distinct values, ±0, and masks. "Ties excepted" in the conformance
 * suite covers fp32-vs-double near-ties only; exact ties must match exactly.
 */
#include <string.h>

#include "cpu/cpu-impl.h"
#include "helpers.h"

struct kv {
	float x;
	uint32_t j;
};

static int by_score(const void *a, const void *b)
{
	const struct kv *p = a, *q = b;
	if (p->x != q->x)
		return p->x > q->x ? -1 : 1;
	return (p->j > q->j) - (p->j < q->j);
}

static int by_pos(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void check(const float *x, uint32_t n, const uint64_t *ex, uint32_t m, const char *what)
{
	struct kv *all = t_alloc(n * sizeof(*all));
	uint32_t *want = t_alloc((m + 1) * sizeof(uint32_t)), *got = t_alloc((m + 1) * sizeof(uint32_t));
	uint32_t *scratch = t_alloc(3 * (size_t)n * sizeof(uint32_t)), e = 0;

	for (uint32_t j = 0; j < n; j++)
		if (!sparq_excluded(ex, j))
			all[e++] = (struct kv){ x[j], j };
	qsort(all, e, sizeof(*all), by_score);
	for (uint32_t i = 0; i < m; i++)
		want[i] = all[i].j;
	qsort(want, m, sizeof(uint32_t), by_pos);
	sparq_cpu_topk(x, n, ex, m, scratch, got);
	for (uint32_t i = 0; i < m; i++)
		T_CHECK(got[i] == want[i], "%s: n=%u m=%u: output %u is %u, want %u", what, n, m, i,
			got[i], want[i]);
	free(all);
	free(want);
	free(got);
	free(scratch);
}

int main(void)
{
	struct t_rng rng = { 99 };
	static const uint32_t sizes[] = { 1, 2, 7, 64, 65, 1000, 4096, 8192, 100003, 300000 };
	unsigned runs = 0;

	for (unsigned si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		uint32_t n = sizes[si];
		float *x = t_alloc(n * sizeof(float));
		uint64_t *ex = t_alloc(((n + 63) / 64) * sizeof(uint64_t));
		uint32_t eligible = 0;

		for (int kind = 0; kind < 6; kind++) {
			for (uint32_t j = 0; j < n; j++) {
				switch (kind) {
				case 0: x[j] = (float)t_normal(&rng); break;            /* distinct */
				case 1: x[j] = 3.25f; break;                             /* one big tie */
				case 2: x[j] = (float)(t_next(&rng) % 5) - 2.0f; break;  /* few values */
				case 3: x[j] = (t_next(&rng) & 1) ? 0.0f : -0.0f; break; /* ±0 tie */
				case 4: x[j] = -1e30f * (float)t_uniform(&rng); break;   /* negatives */
				default: x[j] = (float)(t_next(&rng) % 3) * 1e-40f; break; /* subnormals */
				}
			}
			for (int masked = 0; masked <= 1; masked++) {
				memset(ex, 0, ((n + 63) / 64) * sizeof(uint64_t));
				eligible = n;
				if (masked) {
					for (uint32_t j = 0; j < n; j++)
						if (t_next(&rng) % 4 == 0 && eligible > 1) {
							ex[j / 64] |= UINT64_C(1) << (j % 64);
							eligible--;
						}
				}
				/* small shares take the sampled path, large ones the exact one */
				uint32_t ms[] = { 1, 2, eligible / 100, eligible / 16, eligible / 5,
						  eligible / 3, eligible - 1, eligible };
				for (unsigned mi = 0; mi < 8; mi++) {
					if (ms[mi] == 0 || ms[mi] > eligible)
						continue;
					check(x, n, masked ? ex : NULL, ms[mi], masked ? "masked" : "plain");
					runs++;
				}
			}
		}
		free(x);
		free(ex);
	}
	printf("test_select: %u selections match a full sort, ties to the lower position\n", runs);
	return T_EXIT_PASS;
}
