/*
 * test_params.c — hyper-parameter resolution (SPARQ.md "Choosing r and k"): the ratio
 * recipe r = round(d/c), k = max(128, round(S/2c)), l = k/4; explicit values win;
 * blend auto is on for MHA and off for GQA; the transfer formulas.
 */
#include <errno.h>

#include "helpers.h"

static struct sparq_resolved resolve(struct sparq_params p, uint32_t d, uint32_t g, uint64_t S)
{
	struct sparq_resolved out;
	const char *why = NULL;
	int ret = sparq_params_resolve(&p, d, g, S, &out, &why);

	T_CHECK(ret == 0, "resolve failed: %s", why);
	return out;
}

int main(void)
{
	struct sparq_resolved r;

	/* ratio 1/8 at S = 131072, d = 128: r = 16, k = 8192, l = 2048 */
	r = resolve((struct sparq_params){ .ratio = 8, .l = -1 }, 128, 4, 131072);
	T_CHECK(r.r == 16 && r.k == 8192 && r.l == 2048 && !r.blend, "1/8: %u %u %u", r.r, r.k, r.l);
	/* short contexts keep k_min = 128 */
	r = resolve((struct sparq_params){ .ratio = 8, .l = -1 }, 128, 1, 1000);
	T_CHECK(r.r == 16 && r.k == 128 && r.l == 32 && r.blend, "k_min: %u %u %u", r.r, r.k, r.l);
	/* rounding: d/c = 64/3 = 21.33 -> 21; S/2c = 100000/6 = 16666.7 -> 16667 */
	r = resolve((struct sparq_params){ .ratio = 3, .l = -1 }, 64, 1, 100000);
	T_CHECK(r.r == 21 && r.k == 16667 && r.l == 4166, "rounding: %u %u %u", r.r, r.k, r.l);
	/* a ratio so high that d/c rounds to 0 still keeps one component */
	r = resolve((struct sparq_params){ .ratio = 1000, .l = -1 }, 64, 1, 10);
	T_CHECK(r.r == 1 && r.k == 128, "r floor: %u %u", r.r, r.k);
	/* explicit r, k, l win over the ratio */
	r = resolve((struct sparq_params){ .r = 32, .k = 512, .l = 7, .ratio = 8 }, 128, 4, 131072);
	T_CHECK(r.r == 32 && r.k == 512 && r.l == 7, "explicit: %u %u %u", r.r, r.k, r.l);
	r = resolve((struct sparq_params){ .r = 32, .ratio = 8, .l = -1 }, 128, 4, 131072);
	T_CHECK(r.r == 32 && r.k == 8192, "explicit r only: %u %u", r.r, r.k);
	/* fixed-k recipe */
	r = resolve((struct sparq_params){ .r = 16, .k = 128, .l = 32 }, 128, 4, 1 << 20);
	T_CHECK(r.r == 16 && r.k == 128 && r.l == 32, "fixed k");
	/* blend */
	T_CHECK(resolve((struct sparq_params){ .r = 1, .k = 1, .l = -1 }, 64, 1, 9).blend, "auto MHA");
	T_CHECK(!resolve((struct sparq_params){ .r = 1, .k = 1, .l = -1 }, 64, 8, 9).blend, "auto GQA");
	T_CHECK(resolve((struct sparq_params){ .r = 1, .k = 1, .l = -1, .blend = SPARQ_BLEND_ON },
			64, 8, 9).blend, "on");
	T_CHECK(!resolve((struct sparq_params){ .r = 1, .k = 1, .l = -1, .blend = SPARQ_BLEND_OFF },
			 64, 1, 9).blend, "off");
	/* k = 1: only the current token, l = 0 */
	r = resolve((struct sparq_params){ .r = 1, .k = 1, .l = -1 }, 64, 1, 9);
	T_CHECK(r.k == 1 && r.l == 0, "k = 1");

	/* transfer: ratio ≈ r/(2d) + k/S, and k is capped at S */
	double t = sparq_transfer_sparq(131072, 128, 16, 8192) / sparq_transfer_dense(131072, 128);
	T_CHECK(fabs(t - (16.0 / 256 + 8192.0 / 131072)) < 1e-4, "transfer ratio %.6f", t);
	T_CHECK(sparq_transfer_sparq(100, 64, 64, 500) == 100.0 * 64 + 2.0 * 100 * 64 + 4.0 * 64,
		"k capped at S");
	T_CHECK(sparq_dtype_size(SPARQ_DTYPE_BF16) == 2 && sparq_dtype_size((enum sparq_dtype)3) == 0,
		"dtype sizes");
	printf("test_params: ok\n");
	return T_EXIT_PASS;
}
