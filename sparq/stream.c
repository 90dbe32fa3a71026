/*
 * stream.c — a stream ties its key slice (backend), its records (store) and the fp32
 * running sum of V together and keeps them in step: an append is validated whole
 * before anything is written, and the length only advances once both the store and
 * the slice hold the new positions, so a failed append leaves nothing behind. A mark
 * copies the length and the V sum, so that appends to several streams can be undone
 * as one (sparqd appends every KV head of a layer or none).
 *
 * v_sum is an fp32 sum with Kahan compensation: a plain fp32 sum of 1M values drifts
 * by ~1e-4 relative, the compensated one stays within a few ulp (SPARQ.md pitfall:
 * never fp16, and here not even a drifting fp32).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend-impl.h"
#include "half.h"
#include "stream.h"

struct sparq_stream {
	struct sparq_backend *be;
	struct sparq_store *store;
	struct sparq_store_stream *records;
	struct sparq_slice *slice;
	uint32_t d;
	enum sparq_dtype dtype;
	uint32_t len;
	float *v_sum;    /* [d] running sum of V */
	float *v_comp;   /* [d] Kahan compensation: the low-order part v_sum lost */
};

int sparq_stream_create(struct sparq_backend *be, struct sparq_store *st, uint32_t d,
			enum sparq_dtype dt, struct sparq_stream **out, const char **why)
{
	struct sparq_stream *s;
	int ret;

	ret = sparq_geometry_check(d, 1, dt, why);
	if (ret)
		return ret;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->be = be;
	s->store = st;
	s->d = d;
	s->dtype = dt;
	s->v_sum = calloc(2 * (size_t)d, sizeof(float));
	if (!s->v_sum) {
		ret = -ENOMEM;
		goto err;
	}
	s->v_comp = s->v_sum + d;
	ret = st->ops->stream_open(st->ctx, sparq_stream_record_bytes(s), &s->records);
	if (ret)
		goto err;
	ret = be->ops->slice_create(be->ctx, d, dt, &s->slice);
	if (ret)
		goto err;
	*out = s;
	return 0;
err:
	if (why)
		*why = ret == -ENOMEM ? "out of memory" : "cannot open the stream's records";
	sparq_stream_destroy(s);
	return ret;
}

/* Positions read back per batch while attaching: bounded scratch, few store calls. */
#define ATTACH_BATCH 1024u

static void vsum_add(struct sparq_stream *s, const uint16_t *v, uint32_t n);
static bool rows_finite(const uint16_t *x, size_t n, enum sparq_dtype dt);

int sparq_stream_attach(struct sparq_backend *be, struct sparq_store *st,
			struct sparq_store_stream *records, uint32_t len, uint32_t d,
			enum sparq_dtype dt, struct sparq_stream **out, const char **why)
{
	struct sparq_stream *s;
	uint32_t *pos = NULL;
	uint16_t *rec = NULL, *k = NULL, *v = NULL;
	const char *reason = "out of memory";
	int ret;

	ret = sparq_geometry_check(d, 1, dt, why);
	if (ret || len > SPARQ_POS_MAX) {
		st->ops->stream_close(st->ctx, records);
		if (!ret && why)
			*why = "stream longer than 2^31 positions";
		return ret ? ret : -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		st->ops->stream_close(st->ctx, records);
		return -ENOMEM;
	}
	s->be = be;
	s->store = st;
	s->records = records;
	s->d = d;
	s->dtype = dt;
	s->v_sum = calloc(2 * (size_t)d, sizeof(float));
	pos = malloc(ATTACH_BATCH * sizeof(*pos));
	rec = malloc((size_t)ATTACH_BATCH * 2 * d * sizeof(*rec));
	k = malloc((size_t)ATTACH_BATCH * d * sizeof(*k));
	v = malloc((size_t)ATTACH_BATCH * d * sizeof(*v));
	ret = -ENOMEM;
	if (!s->v_sum || !pos || !rec || !k || !v)
		goto err;
	s->v_comp = s->v_sum + d;
	reason = "cannot create the key slice";
	ret = be->ops->slice_create(be->ctx, d, dt, &s->slice);
	if (ret)
		goto err;
	/* records are K row then V row; the slice takes K rows, v_sum the V rows */
	for (uint32_t at = 0; at < len; at += ATTACH_BATCH) {
		uint32_t n = len - at < ATTACH_BATCH ? len - at : ATTACH_BATCH;
		struct sparq_gather g = { .stream = records, .pos = pos, .n = n, .out = rec };

		for (uint32_t i = 0; i < n; i++)
			pos[i] = at + i;
		reason = "cannot read the stream's records back";
		ret = st->ops->gather(st->ctx, &g, 1);
		if (ret)
			goto err;
		for (uint32_t i = 0; i < n; i++) {
			memcpy(k + (size_t)i * d, rec + (size_t)i * 2 * d, d * sizeof(*k));
			memcpy(v + (size_t)i * d, rec + (size_t)i * 2 * d + d, d * sizeof(*v));
		}
		reason = "NaN or Inf in a stored record";
		ret = -EINVAL;
		if (!rows_finite(k, (size_t)n * d, dt) || !rows_finite(v, (size_t)n * d, dt))
			goto err;
		reason = "key slice append failed";
		ret = be->ops->slice_write(be->ctx, s->slice, at, n, k);
		if (ret)
			goto err;
		vsum_add(s, v, n);
		s->len = at + n;
	}
	free(pos);
	free(rec);
	free(k);
	free(v);
	*out = s;
	return 0;
err:
	if (why)
		*why = reason;
	free(pos);
	free(rec);
	free(k);
	free(v);
	sparq_stream_destroy(s);
	return ret;
}

void sparq_stream_destroy(struct sparq_stream *s)
{
	if (!s)
		return;
	if (s->slice)
		s->be->ops->slice_destroy(s->be->ctx, s->slice);
	if (s->records)
		s->store->ops->stream_close(s->store->ctx, s->records);
	free(s->v_sum);
	free(s);
}

static bool rows_finite(const uint16_t *x, size_t n, enum sparq_dtype dt)
{
	uint16_t mask = dt == SPARQ_DTYPE_F16 ? 0x7c00u : 0x7f80u;

	for (size_t i = 0; i < n; i++)
		if ((x[i] & mask) == mask)
			return false;
	return true;
}

static float to_f32(uint16_t x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(x) : sparq_bf16_to_f32(x);
}

int sparq_stream_append(struct sparq_stream *s, uint32_t n, const uint16_t *k,
			const uint16_t *v, const char **why)
{
	size_t elems = (size_t)n * s->d;
	int ret;

	if (n == 0)
		return 0;
	if (!k || !v) {
		if (why)
			*why = "append needs both K and V rows";
		return -EINVAL;
	}
	if ((uint64_t)s->len + n > SPARQ_POS_MAX) {
		if (why)
			*why = "stream would exceed 2^31 positions";
		return -EOVERFLOW;
	}
	if (!rows_finite(k, elems, s->dtype)) {
		if (why)
			*why = "NaN or Inf in appended K";
		return -EINVAL;
	}
	if (!rows_finite(v, elems, s->dtype)) {
		if (why)
			*why = "NaN or Inf in appended V";
		return -EINVAL;
	}
	ret = s->store->ops->write(s->store->ctx, s->records, s->len, n, k, v);
	if (ret) {
		if (why)
			*why = ret == -ENOSPC ? "record store is full" : "record store write failed";
		return ret;
	}
	ret = s->be->ops->slice_write(s->be->ctx, s->slice, s->len, n, k);
	if (ret) {
		/* the store holds the positions past len: cut them (a write of 0 records),
		 * so that its length, and what a park would write, stays the stream's */
		s->store->ops->write(s->store->ctx, s->records, s->len, 0, k, v);
		if (why)
			*why = "key slice append failed";
		return ret;
	}
	vsum_add(s, v, n);
	s->len += n;
	return 0;
}

static void vsum_add(struct sparq_stream *s, const uint16_t *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const uint16_t *row = v + (size_t)i * s->d;

		for (uint32_t c = 0; c < s->d; c++) {
			float y = to_f32(row[c], s->dtype) - s->v_comp[c];
			float t = s->v_sum[c] + y;

			s->v_comp[c] = (t - s->v_sum[c]) - y;
			s->v_sum[c] = t;
		}
	}
}

struct sparq_stream_mark {
	const struct sparq_stream *s;
	uint32_t len;
	float v[];       /* [2d]: v_sum then v_comp */
};

size_t sparq_stream_mark_size(const struct sparq_stream *s)
{
	return sizeof(struct sparq_stream_mark) + 2 * (size_t)s->d * sizeof(float);
}

void sparq_stream_mark(const struct sparq_stream *s, struct sparq_stream_mark *mark)
{
	mark->s = s;
	mark->len = s->len;
	/* v_comp follows v_sum in the same allocation */
	memcpy(mark->v, s->v_sum, 2 * (size_t)s->d * sizeof(float));
}

int sparq_stream_rewind(struct sparq_stream *s, const struct sparq_stream_mark *mark)
{
	int ret;

	if (mark->s != s || mark->len > s->len)
		return -EINVAL;
	/* the store contract: a write leaves the length at pos + n, so n = 0 cuts it */
	ret = s->store->ops->write(s->store->ctx, s->records, mark->len, 0, NULL, NULL);
	if (ret)
		return ret;
	s->len = mark->len;
	memcpy(s->v_sum, mark->v, 2 * (size_t)s->d * sizeof(float));
	return 0;
}

uint32_t sparq_stream_len(const struct sparq_stream *s)
{
	return s->len;
}

uint32_t sparq_stream_head_dim(const struct sparq_stream *s)
{
	return s->d;
}

enum sparq_dtype sparq_stream_dtype(const struct sparq_stream *s)
{
	return s->dtype;
}

uint32_t sparq_stream_record_bytes(const struct sparq_stream *s)
{
	return 2 * s->d * (uint32_t)sparq_dtype_size(s->dtype);
}

int sparq_stream_gather(struct sparq_stream *s, const uint32_t *pos, uint32_t n, void *out)
{
	struct sparq_gather g = { .stream = s->records, .pos = pos, .n = n, .out = out };

	for (uint32_t i = 0; i < n; i++)
		if (pos[i] >= s->len)
			return -ERANGE;
	return s->store->ops->gather(s->store->ctx, &g, 1);
}

int sparq_stream_vmean(const struct sparq_stream *s, float *out)
{
	if (s->len == 0)
		return -ENODATA;
	sparq_stream_vsum(s, out);
	for (uint32_t c = 0; c < s->d; c++)
		out[c] /= (float)s->len;
	return 0;
}

struct sparq_slice *sparq_stream_slice(const struct sparq_stream *s)
{
	return s->slice;
}

struct sparq_store *sparq_stream_store(const struct sparq_stream *s)
{
	return s->store;
}

struct sparq_store_stream *sparq_stream_records(const struct sparq_stream *s)
{
	return s->records;
}

void sparq_stream_vsum(const struct sparq_stream *s, float *out)
{
	/* Kahan: v_comp holds what the last additions lost, with its sign flipped. */
	for (uint32_t c = 0; c < s->d; c++)
		out[c] = s->v_sum[c] - s->v_comp[c];
}
