/*
 * params.c — geometry checks and the resolution of SparQ hyper-parameters for one
 * stream length (SPARQ.md "Choosing r and k"). Kept apart from the backends so that
 * every backend, the daemon and the tools resolve r, k, l the same way.
 */
#include <errno.h>
#include <math.h>

#include "sparq.h"

size_t sparq_dtype_size(enum sparq_dtype dt)
{
	switch (dt) {
	case SPARQ_DTYPE_F16:
	case SPARQ_DTYPE_BF16:
		return 2;
	}
	return 0;
}

const char *sparq_dtype_name(enum sparq_dtype dt)
{
	switch (dt) {
	case SPARQ_DTYPE_F16:
		return "fp16";
	case SPARQ_DTYPE_BF16:
		return "bf16";
	}
	return "unknown";
}

static int fail(const char **why, const char *msg)
{
	if (why)
		*why = msg;
	return -EINVAL;
}

int sparq_geometry_check(uint32_t d, uint32_t g, enum sparq_dtype dt, const char **why)
{
	if (sparq_dtype_size(dt) == 0)
		return fail(why, "unknown storage dtype (fp16 or bf16)");
	if (d == 0 || d % 8 != 0 || d > SPARQ_HEAD_DIM_MAX)
		return fail(why, "head_dim must be a multiple of 8 in [8, 1024]");
	if (g == 0 || g > SPARQ_GROUP_MAX)
		return fail(why, "query heads per KV head must be in [1, 64]");
	return 0;
}

int sparq_params_resolve(const struct sparq_params *p, uint32_t d, uint32_t g,
			 uint64_t S, struct sparq_resolved *out, const char **why)
{
	uint64_t r = p->r, k = p->k;

	if (p->ratio != 0.0f) {
		double c = p->ratio;

		if (!isfinite(c) || c < 1.0)
			return fail(why, "ratio must be a finite compression c >= 1 (transfer 1/c)");
		if (r == 0) {
			r = (uint64_t)llround((double)d / c);
			if (r == 0)
				r = 1;
		}
		if (k == 0) {
			k = (uint64_t)llround((double)S / (2.0 * c));
			if (k < SPARQ_K_MIN)
				k = SPARQ_K_MIN;
		}
	}
	if (r == 0)
		return fail(why, "r = 0: give r or a ratio");
	if (r > d)
		return fail(why, "r exceeds head_dim");
	if (k == 0)
		return fail(why, "k = 0: give k or a ratio");
	if (k > SPARQ_POS_MAX)
		k = SPARQ_POS_MAX;
	if (p->l < -1)
		return fail(why, "l must be >= 0 (or -1 for k/4)");
	uint64_t l = p->l < 0 ? k / 4 : (uint64_t)p->l;
	if (l >= k)
		return fail(why, "l must be smaller than k");
	switch (p->blend) {
	case SPARQ_BLEND_AUTO:
		out->blend = g == 1;
		break;
	case SPARQ_BLEND_ON:
		out->blend = true;
		break;
	case SPARQ_BLEND_OFF:
		out->blend = false;
		break;
	default:
		return fail(why, "unknown blend mode (auto, on, off)");
	}
	out->r = (uint32_t)r;
	out->k = (uint32_t)k;
	out->l = (uint32_t)l;
	return 0;
}

double sparq_transfer_dense(uint64_t S, uint32_t d)
{
	return 2.0 * (double)S * d + 2.0 * d;
}

double sparq_transfer_sparq(uint64_t S, uint32_t d, uint32_t r, uint32_t k)
{
	uint64_t kk = k < S ? k : S;

	return (double)S * r + 2.0 * (double)kk * d + 4.0 * d;
}
