/*
 * backend.c — the registry and the public wrappers of the backend interface. The
 * wrappers validate a whole batch before any backend sees it (STYLE.md §1: assert,
 * then dispatch), so each backend can trust geometry, finite queries and resolvable
 * parameters, and every backend rejects bad input the same way.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend-impl.h"
#include "stream.h"

int sparq_backend_list(struct sparq_backend_info *out, int max)
{
	struct sparq_backend_info info[2];
	struct sparq_backend *cpu;

	memset(info, 0, sizeof(info));
	info[0].name = "cpu";
	if (sparq_cpu_backend_create(NULL, &cpu) == 0) {
		info[0].available = true;
		snprintf(info[0].detail, sizeof(info[0].detail), "%s", cpu->detail);
		sparq_backend_close(cpu);
	} else {
		snprintf(info[0].detail, sizeof(info[0].detail), "cannot start worker threads");
	}
	info[1].name = "cuda";
	info[1].available = sparq_cuda_probe(info[1].detail, sizeof(info[1].detail)) == 0;
	for (int i = 0; i < 2 && i < max; i++)
		out[i] = info[i];
	return 2;
}

const char *sparq_slice_format_name(enum sparq_slice_format f)
{
	switch (f) {
	case SPARQ_SLICE_NATIVE:
		return "native";
	case SPARQ_SLICE_INT8:
		return "int8";
	}
	return NULL;
}

int sparq_slice_format_parse(const char *s, enum sparq_slice_format *out)
{
	if (s && strcmp(s, "native") == 0)
		*out = SPARQ_SLICE_NATIVE;
	else if (s && strcmp(s, "int8") == 0)
		*out = SPARQ_SLICE_INT8;
	else
		return -EINVAL;
	return 0;
}

uint32_t sparq_slice_position_bytes(enum sparq_slice_format f, uint32_t d, enum sparq_dtype dt)
{
	switch (f) {
	case SPARQ_SLICE_NATIVE:
		return d * (uint32_t)sparq_dtype_size(dt);
	case SPARQ_SLICE_INT8:
		return d + (uint32_t)sizeof(float);
	}
	return 0;
}

int sparq_backend_open(const char *name, const struct sparq_backend_config *cfg,
		       struct sparq_backend **out)
{
	/* checked here, before any backend allocates (STYLE.md §5) */
	if (cfg && !sparq_slice_format_name(cfg->key_slice))
		return -EINVAL;
	if (!name || strcmp(name, "cpu") == 0)
		return sparq_cpu_backend_create(cfg, out);
	/* no silent CPU fallback: without a device (or a CUDA build) this is -ENODEV */
	if (strcmp(name, "cuda") == 0)
		return sparq_cuda_backend_create(cfg, out);
	return -ENOENT;
}

void sparq_backend_close(struct sparq_backend *be)
{
	if (be)
		be->ops->destroy(be->ctx);
}

const char *sparq_backend_name(const struct sparq_backend *be)
{
	return be->ops->name;
}

void sparq_backend_health(struct sparq_backend *be, struct sparq_backend_health *out)
{
	*out = (struct sparq_backend_health){ 0 };
	if (be && be->ops->health)
		be->ops->health(be->ctx, out);
}

static uint32_t visible_count(const uint64_t *exclude, uint32_t S)
{
	uint32_t masked = 0, words = S / 64;

	if (!exclude)
		return S;
	for (uint32_t w = 0; w < words; w++)
		masked += (uint32_t)__builtin_popcountll(exclude[w]);
	if (S % 64)
		masked += (uint32_t)__builtin_popcountll(exclude[words] &
							 ((UINT64_C(1) << (S % 64)) - 1));
	return S - masked;
}

static int check_item(const struct sparq_backend *be, enum sparq_attend_mode mode,
		      struct sparq_attend_item *it, const char **why)
{
	uint32_t S, d;
	int ret;

	if (!it->stream || !it->q) {
		*why = "item without a stream or a query";
		return -EINVAL;
	}
	if (sparq_stream_slice(it->stream)->owner != be) {
		*why = "stream belongs to another backend";
		return -EINVAL;
	}
	d = sparq_stream_head_dim(it->stream);
	ret = sparq_geometry_check(d, it->g, sparq_stream_dtype(it->stream), why);
	if (ret)
		return ret;
	S = sparq_stream_len(it->stream);
	if (S == 0) {
		*why = "stream is empty";
		return -EINVAL;
	}
	for (size_t i = 0; i < (size_t)it->g * d; i++) {
		if (!isfinite(it->q[i])) {
			*why = "NaN or Inf in q";
			return -EINVAL;
		}
	}
	ret = sparq_params_resolve(&it->params, d, it->g, S, &it->used, why);
	if (ret)
		return ret;
	if (mode == SPARQ_ATTEND_FULL && !it->y) {
		*why = "no output buffer y";
		return -EINVAL;
	}
	if (mode == SPARQ_ATTEND_SELECT && !it->sel) {
		*why = "select mode needs a selection buffer";
		return -EINVAL;
	}
	if (it->sel && it->sel_cap < (it->used.k < S ? it->used.k : S)) {
		*why = "selection buffer smaller than k";
		return -EINVAL;
	}
	if (visible_count(it->exclude, S) == 0) {
		*why = "every position is masked";
		return -EINVAL;
	}
	return 0;
}

int sparq_backend_attend(struct sparq_backend *be, struct sparq_attend_batch *b)
{
	int ret;

	b->bad_item = -1;
	b->why = NULL;
	if (b->mode != SPARQ_ATTEND_FULL && b->mode != SPARQ_ATTEND_SELECT) {
		b->why = "unknown attend mode";
		return -EINVAL;
	}
	if (b->n && !b->items) {
		b->why = "batch without items";
		return -EINVAL;
	}
	for (uint32_t i = 0; i < b->n; i++) {
		ret = check_item(be, b->mode, &b->items[i], &b->why);
		if (ret) {
			b->bad_item = (int32_t)i;
			return ret;
		}
	}
	if (b->n == 0)
		return 0;
	return be->ops->attend(be->ctx, b);
}
