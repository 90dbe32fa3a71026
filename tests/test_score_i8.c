/*
 * test_score_i8.c — the int8 key slice's scoring tables agree bit for bit: the AVX2
 * kernel against the portable one, which defines the function (quant.h: the fp32
 * sum of rounded products q̂_c · q_jc in channel order, then one multiply by s_j).
 * Every head chunking (G = 1..8) and a channel stride that is not the tile count are
 * covered. Exits 77 where the AVX2 table is not available.
 */
#include <string.h>

#include "cpu/cpu-impl.h"
#include "helpers.h"

#define CAP 320u  /* 5 tiles; n below runs 4 of them */
#define D 48u
#define R 13u
#define GMAX 8u

int main(void)
{
	const struct sparq_cpu_kernels *avx2 = sparq_cpu_kernels_avx2();
	const struct sparq_cpu_kernels *port = &sparq_cpu_kernels_portable;
	int8_t *q8 = t_alloc((size_t)D * CAP);
	float *scale = t_alloc(CAP * sizeof(float));
	float *za = t_alloc((size_t)GMAX * CAP * sizeof(float));
	float *zp = t_alloc((size_t)GMAX * CAP * sizeof(float));
	float qc[GMAX * R];
	uint32_t comp[R];
	struct t_rng rng = { 11 };
	uint32_t n = 4 * SPARQ_CPU_TILE, checked = 0;

	if (!avx2) {
		printf("test_score_i8: no AVX2 table here, skipped\n");
		return T_EXIT_SKIP;
	}
	for (int trial = 0; trial < 20; trial++) {
		for (size_t i = 0; i < (size_t)D * CAP; i++)
			q8[i] = (int8_t)((int)(t_next(&rng) % 255) - 127);
		for (uint32_t j = 0; j < CAP; j++)
			scale[j] = (float)(t_uniform(&rng) * 0.05);
		for (uint32_t i = 0, c = (uint32_t)(t_next(&rng) % 3); i < R; i++, c += 3)
			comp[i] = c; /* ascending, as choose_components gives them */
		for (uint32_t i = 0; i < GMAX * R; i++)
			qc[i] = (float)t_normal(&rng);
		for (uint32_t G = 1; G <= GMAX; G++) {
			memset(za, 0xff, (size_t)GMAX * CAP * sizeof(float));
			memset(zp, 0xff, (size_t)GMAX * CAP * sizeof(float));
			float ba = avx2->score_i8(q8, scale, CAP, n, comp, R, qc, G, za, CAP);
			float bp = port->score_i8(q8, scale, CAP, n, comp, R, qc, G, zp, CAP);
			T_CHECK(memcmp(&ba, &bp, sizeof(ba)) == 0, "max |z| %.9g vs %.9g (G=%u)", ba,
				bp, G);
			for (uint32_t h = 0; h < G; h++)
				for (uint32_t j = 0; j < n; j++) {
					size_t at = (size_t)h * CAP + j;
					T_CHECK(memcmp(&za[at], &zp[at], sizeof(float)) == 0,
						"z[%u][%u] = %.9g (AVX2) vs %.9g (portable), G=%u", h,
						j, za[at], zp[at], G);
					checked++;
				}
		}
	}
	free(q8);
	free(scale);
	free(za);
	free(zp);
	printf("test_score_i8: %u logits bit-identical\n", checked);
	return T_EXIT_PASS;
}
