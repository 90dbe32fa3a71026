/*
 * test_errors.c — bad input is an error with a reason, never a silent result, and a
 * failed call changes nothing: NaN/Inf in q, K or V, r > d, k = 0, l >= k, bad
 * ratios, unknown dtype or blend, mismatched geometry, foreign streams, short output
 * buffers, empty or fully masked streams, a full store, logit overflow.
 */
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define D 64u

static struct sparq_backend *be, *be2;
static struct sparq_store *st;

static struct sparq_stream *make(uint32_t S, float kval)
{
	struct sparq_stream *s;
	const char *why = NULL;
	uint16_t *k = t_alloc((size_t)S * D * 2), *v = t_alloc((size_t)S * D * 2);

	for (size_t i = 0; i < (size_t)S * D; i++) {
		k[i] = sparq_f32_to_bf16(kval * ((float)((i * 7919) % 13) / 13.0f));
		v[i] = sparq_f32_to_bf16((float)(i % 5));
	}
	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_BF16, &s, &why) == 0, "create %s", why);
	if (S)
		T_CHECK(sparq_stream_append(s, S, k, v, &why) == 0, "append %s", why);
	free(k);
	free(v);
	return s;
}

/* Runs one item and expects err with a reason mentioning needle. */
static void expect(struct sparq_attend_item *it, int mode, int err, const char *needle)
{
	struct sparq_attend_batch b = { .items = it, .n = 1, .mode = mode };
	int ret = sparq_backend_attend(be, &b);

	T_CHECK(ret == err, "expected %d (%s), got %d (%s)", err, needle, ret, b.why ? b.why : "-");
	if (err) {
		T_CHECK(b.why && strstr(b.why, needle), "reason '%s' should mention '%s'",
			b.why ? b.why : "(none)", needle);
		T_CHECK(b.bad_item == 0, "bad_item %d", b.bad_item);
	}
}

static void test_attend_errors(void)
{
	struct sparq_stream *s = make(300, 1.0f), *empty = make(0, 1.0f);
	float q[4 * D], y[4 * D];
	uint32_t sel[8];
	struct sparq_attend_item it;

	for (uint32_t i = 0; i < 4 * D; i++)
		q[i] = 0.25f * (float)(i % 9) - 1.0f;
#define RESET() it = (struct sparq_attend_item){ .stream = s, .g = 1, .q = q, .y = y, \
		.params = { .r = 8, .k = 64, .l = -1 } }
	RESET();
	expect(&it, SPARQ_ATTEND_FULL, 0, "");

	RESET(); q[3] = NAN;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "q");
	q[3] = INFINITY;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "q");
	q[3] = 0.5f;

	RESET(); it.params.r = D + 1;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "r exceeds");
	RESET(); it.params.r = 0;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "r = 0");
	RESET(); it.params.k = 0;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "k = 0");
	RESET(); it.params.l = 64;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "l must");
	RESET(); it.params.l = -5;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "l must");
	RESET(); it.params = (struct sparq_params){ .ratio = 0.5f };
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "ratio");
	RESET(); it.params = (struct sparq_params){ .ratio = NAN };
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "ratio");
	RESET(); it.params.blend = (enum sparq_blend)9;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "blend");
	RESET(); it.g = 0;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "query heads");
	RESET(); it.g = 65;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "query heads");
	RESET(); it.y = NULL;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "output");
	RESET(); it.q = NULL;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "query");
	RESET(); it.sel = sel; it.sel_cap = 8;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "smaller than k");
	RESET();
	expect(&it, SPARQ_ATTEND_SELECT, -EINVAL, "selection buffer");
	RESET(); it.stream = empty;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "empty");

	uint64_t all[5];
	memset(all, 0xff, sizeof(all));
	RESET(); it.exclude = all;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "masked");

	/* a stream of another backend instance */
	struct sparq_stream *foreign;
	const char *why;
	T_CHECK(sparq_stream_create(be2, st, D, SPARQ_DTYPE_F16, &foreign, &why) == 0, "create");
	RESET(); it.stream = foreign;
	expect(&it, SPARQ_ATTEND_FULL, -EINVAL, "another backend");
	sparq_stream_destroy(foreign);

	/* finite bf16 keys near 3e38 times a finite query overflow the fp32 logits */
	struct sparq_stream *huge = make(300, 3e38f);
	for (uint32_t i = 0; i < D; i++)
		q[i] = 1e3f;
	RESET(); it.stream = huge; it.params.r = D;
	expect(&it, SPARQ_ATTEND_FULL, -ERANGE, "overflow");
	sparq_stream_destroy(huge);

	/* a bad item anywhere fails the batch before any work, and names the item */
	struct sparq_attend_item two[2];
	RESET(); two[0] = it; two[1] = it; two[1].params.k = 0;
	struct sparq_attend_batch b = { .items = two, .n = 2 };
	T_CHECK(sparq_backend_attend(be, &b) == -EINVAL && b.bad_item == 1, "bad item index");
	b = (struct sparq_attend_batch){ .items = two, .n = 1, .mode = (enum sparq_attend_mode)5 };
	T_CHECK(sparq_backend_attend(be, &b) == -EINVAL && strstr(b.why, "mode"), "bad mode");
#undef RESET
	sparq_stream_destroy(s);
	sparq_stream_destroy(empty);
}

static void test_stream_errors(void)
{
	struct sparq_stream *s;
	const char *why = NULL;
	uint16_t k[3 * D], v[3 * D];

	T_CHECK(sparq_stream_create(be, st, D, (enum sparq_dtype)7, &s, &why) == -EINVAL &&
		strstr(why, "dtype"), "unknown dtype");
	T_CHECK(sparq_stream_create(be, st, 60, SPARQ_DTYPE_F16, &s, &why) == -EINVAL &&
		strstr(why, "head_dim"), "head_dim not a multiple of 8");
	T_CHECK(sparq_stream_create(be, st, 2048, SPARQ_DTYPE_F16, &s, &why) == -EINVAL,
		"head_dim too large");

	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &s, &why) == 0, "create");
	for (uint32_t i = 0; i < 3 * D; i++)
		k[i] = v[i] = sparq_f32_to_f16(0.5f);
	T_CHECK(sparq_stream_append(s, 3, k, v, &why) == 0, "append");
	k[D + 5] = 0x7e00; /* NaN */
	T_CHECK(sparq_stream_append(s, 3, k, v, &why) == -EINVAL && strstr(why, "K"), "NaN K");
	k[D + 5] = 0x7c00; /* +Inf */
	T_CHECK(sparq_stream_append(s, 3, k, v, &why) == -EINVAL && strstr(why, "K"), "Inf K");
	k[D + 5] = sparq_f32_to_f16(0.5f);
	v[2 * D] = 0xfc00; /* -Inf */
	T_CHECK(sparq_stream_append(s, 3, k, v, &why) == -EINVAL && strstr(why, "V"), "Inf V");
	T_CHECK(sparq_stream_append(s, 3, k, NULL, &why) == -EINVAL, "missing V");
	T_CHECK(sparq_stream_len(s) == 3, "failed appends must append nothing");
	float mean[D];
	T_CHECK(sparq_stream_vmean(s, mean) == 0 && mean[0] == 0.5f, "mean untouched");
	uint32_t past = 3;
	uint8_t rec[2 * D * 2];
	T_CHECK(sparq_stream_gather(s, &past, 1, rec) == -ERANGE, "gather past the end");
	sparq_stream_destroy(s);

	struct sparq_stream *e;
	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &e, &why) == 0, "create");
	T_CHECK(sparq_stream_vmean(e, mean) == -ENODATA, "mean of nothing");
	sparq_stream_destroy(e);
}

/* A full store refuses with -ENOSPC and keeps what it had. */
static void test_full_store(void)
{
	struct sparq_store *small;
	struct sparq_stream *s;
	const char *why = NULL;
	uint32_t rec = 2 * D * 2, chunk = 16;
	uint16_t k[40 * D], v[40 * D];

	T_CHECK(sparq_store_heap_create(chunk, 2ull * chunk * rec, &small) == 0, "store");
	T_CHECK(sparq_stream_create(be, small, D, SPARQ_DTYPE_F16, &s, &why) == 0, "create");
	for (uint32_t i = 0; i < 40 * D; i++) {
		k[i] = sparq_f32_to_f16((float)(i / D));
		v[i] = sparq_f32_to_f16(1.0f);
	}
	T_CHECK(sparq_stream_append(s, 30, k, v, &why) == 0, "fits in two chunks");
	T_CHECK(sparq_stream_append(s, 10, k, v, &why) == -ENOSPC && strstr(why, "full"),
		"third chunk must not fit");
	T_CHECK(sparq_stream_len(s) == 30, "nothing appended");
	uint32_t pos = 29;
	uint16_t out[2 * D];
	T_CHECK(sparq_stream_gather(s, &pos, 1, out) == 0 && sparq_f16_to_f32(out[0]) == 29.0f,
		"records kept");
	sparq_stream_destroy(s);
	sparq_store_destroy(small);
}

int main(void)
{
	struct sparq_backend_config cfg = { .n_threads = 2 };

	be = t_backend_or_skip("cpu", &cfg);
	be2 = t_backend_or_skip("cpu", &cfg);
	T_CHECK(sparq_store_heap_create(64, 0, &st) == 0, "store");
	test_attend_errors();
	test_stream_errors();
	test_full_store();
	sparq_store_destroy(st);
	sparq_backend_close(be);
	sparq_backend_close(be2);
	printf("test_errors: ok\n");
	return T_EXIT_PASS;
}
