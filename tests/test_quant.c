/*
 * test_quant.c — the int8 key slice (issue 5): the quantizer's exact values at its
 * edges (quant.h), and the CPU backend's int8 slices — both kernel tables — built
 * alike however the keys arrive, scored with their scales, smaller than native ones,
 * and the format refused when it is unknown. Conformance against the reference is
 * test_conformance's job (`int8`); this program pins what that suite cannot see,
 * because the reference is fed by the same quantizer.
 */
#include <errno.h>
#include <string.h>

#include "backend-impl.h"
#include "cpu/cpu-impl.h"
#include "helpers.h"
#include "quant.h"
#include "stream.h"

/* One fp16 row of d = 8 through the quantizer, both strides. */
static void quant8(const float *x, enum sparq_dtype dt, int8_t *q, float *scale)
{
	uint16_t k[8];
	int8_t qt[8];
	float st;

	for (int c = 0; c < 8; c++)
		k[c] = t_to_dtype(x[c], dt);
	sparq_quant_rows(k, 1, 8, dt, q, 1, 8, scale);
	/* channel-major with a capacity of 3: the same bytes at their strided places */
	int8_t cm[8 * 3];
	memset(cm, 0x55, sizeof(cm));
	sparq_quant_rows(k, 1, 8, dt, cm + 1, 3, 1, &st);
	for (int c = 0; c < 8; c++)
		qt[c] = cm[c * 3 + 1];
	T_CHECK(memcmp(q, qt, 8) == 0 && st == *scale, "strided quantization differs");
	T_CHECK(cm[0] == 0x55 && cm[2] == 0x55, "quantizer wrote outside its column");
}

static void expect(const char *what, const float *x, enum sparq_dtype dt, const int8_t *want,
		   float want_scale)
{
	int8_t q[8];
	float s;

	quant8(x, dt, q, &s);
	for (int c = 0; c < 8; c++)
		T_CHECK(q[c] == want[c], "%s: q[%d] = %d, want %d", what, c, q[c], want[c]);
	T_CHECK(s == want_scale, "%s: scale %.9g, want %.9g", what, s, want_scale);
}

static void test_quantizer(void)
{
	/* max 127: the quotient is the value itself, so the halves are exact ties and
	 * round to even (away from zero would give 63, 1, 2, -3, 127; truncation 63) */
	const float ties[8] = { 127, 62.5f, 63.5f, 0.5f, 1.5f, 2.5f, -2.5f, 126.5f };
	const int8_t ties_q[8] = { 127, 62, 64, 0, 2, 2, -2, 126 };
	expect("ties", ties, SPARQ_DTYPE_F16, ties_q, 1.0f);
	/* negative maximum: the scale is of |K|, the sign stays on q */
	const float neg[8] = { -127, 62.5f, -63.5f, 0, -0.0f, 1, -1, 3.25f };
	const int8_t neg_q[8] = { -127, 62, -64, 0, 0, 1, -1, 3 };
	expect("negative max", neg, SPARQ_DTYPE_F16, neg_q, 1.0f);

	const float zero[8] = { 0, -0.0f, 0, -0.0f, 0, 0, 0, 0 };
	const int8_t zero_q[8] = { 0 };
	expect("all-zero row", zero, SPARQ_DTYPE_F16, zero_q, 0.0f);

	/* one huge channel drowns the rest: 258·127/65504 = 0.5002 rounds up, 129 down */
	const float huge[8] = { 65504, 1, -1, 258, -129, 0.001f, 0, -65504 };
	const int8_t huge_q[8] = { 127, 0, 0, 1, 0, 0, 0, -127 };
	expect("huge channel", huge, SPARQ_DTYPE_F16, huge_q, 65504.0f / 127.0f);

	/* fp16 subnormals (2^-24 steps): the scale stays nonzero and exact enough */
	float sub[8] = { 0x1p-24f, 3 * 0x1p-24f, -2 * 0x1p-24f, 0, 0x1p-24f, 0, 0, 0 };
	const int8_t sub_q[8] = { 42, 127, -85, 0, 42, 0, 0, 0 };
	expect("fp16 subnormals", sub, SPARQ_DTYPE_F16, sub_q, 3 * 0x1p-24f / 127.0f);

	/* bf16: near the fp32 limit, and subnormals far below fp16's range */
	const float bigbf[8] = { 3.0e38f, -1.5e38f, 1e-30f, 0, 0, 0, 0, 1e36f };
	int8_t bigbf_q[8];
	float s;
	quant8(bigbf, SPARQ_DTYPE_BF16, bigbf_q, &s);
	T_CHECK(bigbf_q[0] == 127 && bigbf_q[1] == -64 && bigbf_q[2] == 0 && bigbf_q[7] == 0,
		"bf16 large row: %d %d %d %d", bigbf_q[0], bigbf_q[1], bigbf_q[2], bigbf_q[7]);
	T_CHECK(isfinite(s) && s > 2.3e36f && s < 2.4e36f, "bf16 large scale %.9g", s);
	const float subbf[8] = { 0x1p-133f, 0x1p-127f, -0x1p-127f, 0, 0, 0, 0, 0 };
	const int8_t subbf_q[8] = { 2, 127, -127, 0, 0, 0, 0, 0 };
	expect("bf16 subnormals", subbf, SPARQ_DTYPE_BF16, subbf_q, 0x1p-127f / 127.0f);

	T_CHECK(sparq_quant_rne(0.5) == 0 && sparq_quant_rne(1.5) == 2 && sparq_quant_rne(2.5) == 2 &&
		sparq_quant_rne(-0.5) == 0 && sparq_quant_rne(-1.5) == -2 &&
		sparq_quant_rne(3.4999) == 3 && sparq_quant_rne(-3.5001) == -4 &&
		sparq_quant_rne(-1e-20) == 0, "round half to even");
	printf("quantizer: exact at ties, zeros, a huge channel, fp16 and bf16 subnormals\n");
}

static void test_format_names(void)
{
	enum sparq_slice_format f = SPARQ_SLICE_NATIVE;
	struct sparq_backend_config cfg = { .n_threads = 1, .key_slice = (enum sparq_slice_format)7 };
	struct sparq_backend *be = NULL;

	T_CHECK(sparq_slice_format_parse("int8", &f) == 0 && f == SPARQ_SLICE_INT8, "parse int8");
	T_CHECK(sparq_slice_format_parse("native", &f) == 0 && f == SPARQ_SLICE_NATIVE, "native");
	T_CHECK(sparq_slice_format_parse("INT8", &f) == -EINVAL && f == SPARQ_SLICE_NATIVE &&
		sparq_slice_format_parse("fp8", &f) == -EINVAL &&
		sparq_slice_format_parse(NULL, &f) == -EINVAL, "bad names refused, nothing changed");
	T_CHECK(strcmp(sparq_slice_format_name(SPARQ_SLICE_INT8), "int8") == 0 &&
		sparq_slice_format_name((enum sparq_slice_format)7) == NULL, "names");
	T_CHECK(sparq_slice_position_bytes(SPARQ_SLICE_INT8, 128, SPARQ_DTYPE_F16) == 132 &&
		sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, 128, SPARQ_DTYPE_BF16) == 256,
		"bytes per position");
	T_CHECK(sparq_backend_open("cpu", &cfg, &be) == -EINVAL && !be, "cpu: unknown format");
	T_CHECK(sparq_backend_open("cuda", &cfg, &be) == -EINVAL && !be, "cuda: unknown format");
	T_CHECK(sparq_cpu_backend_create(&cfg, &be) == -EINVAL && !be, "cpu constructor");
}

#define D 64u

struct run_out {
	uint32_t sel[256], n_sel;
	float alpha, y[D];
	uint64_t slice_bytes;
};

static void attend1(struct sparq_backend *be, struct sparq_stream *s, const float *q, uint32_t r,
		    uint32_t k, uint32_t l, struct run_out *o)
{
	struct sparq_attend_item it = {
		.stream = s, .g = 1, .q = q, .y = o->y, .alpha = &o->alpha, .sel = o->sel,
		.sel_cap = 256,
		.params = { .r = r, .k = k, .l = (int32_t)l, .blend = SPARQ_BLEND_ON },
	};
	struct sparq_attend_batch b = { .items = &it, .n = 1 };

	T_CHECK(sparq_backend_attend(be, &b) == 0, "attend: %s", b.why);
	o->n_sel = it.n_sel;
	o->slice_bytes = b.stats.slice_bytes;
}

/* Keys appended one by one and in uneven pieces across a block boundary build the
 * same slice as one append: the outputs agree bit for bit. */
static void test_pieces(struct sparq_backend *be, struct sparq_store *st)
{
	const uint32_t S = 16384 + 700;
	uint16_t *k = t_alloc((size_t)S * D * 2), *v = t_alloc((size_t)S * D * 2);
	struct t_rng rng = { 42 };
	struct sparq_stream *one, *many;
	float q[D];
	const char *why;

	for (size_t i = 0; i < (size_t)S * D; i++) {
		k[i] = t_to_dtype((float)(t_normal(&rng) * (1 + (i % D) % 5)), SPARQ_DTYPE_F16);
		v[i] = t_to_dtype((float)t_normal(&rng), SPARQ_DTYPE_F16);
	}
	for (uint32_t c = 0; c < D; c++)
		q[c] = (float)t_normal(&rng);
	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &one, &why) == 0, "create");
	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &many, &why) == 0, "create");
	T_CHECK(sparq_stream_append(one, S, k, v, &why) == 0, "append: %s", why);
	for (uint32_t pos = 0; pos < S;) {
		/* single positions near the block boundary, uneven runs elsewhere */
		uint32_t n = pos > 16300 && pos < 16500 ? 1 : 1 + (uint32_t)(t_next(&rng) % 999);
		n = n > S - pos ? S - pos : n;
		T_CHECK(sparq_stream_append(many, n, k + (size_t)pos * D, v + (size_t)pos * D,
					    &why) == 0, "append: %s", why);
		pos += n;
	}
	struct run_out a, b;
	attend1(be, one, q, 8, 200, 16, &a);
	attend1(be, many, q, 8, 200, 16, &b);
	T_CHECK(a.n_sel == b.n_sel && memcmp(a.sel, b.sel, a.n_sel * 4) == 0, "selections differ");
	T_CHECK(memcmp(&a.alpha, &b.alpha, 4) == 0 && memcmp(a.y, b.y, sizeof(a.y)) == 0,
		"alpha %.9g vs %.9g, or y differ", a.alpha, b.alpha);
	/* r int8 channels and a 4-byte scale per (tile-padded) position */
	uint32_t S_pad = (S + SPARQ_CPU_TILE - 1) / SPARQ_CPU_TILE * SPARQ_CPU_TILE;
	T_CHECK(a.slice_bytes == (uint64_t)(8 + 4) * S_pad, "slice bytes %llu",
		(unsigned long long)a.slice_bytes);
	sparq_stream_destroy(one);
	sparq_stream_destroy(many);
	free(k);
	free(v);
}

/* Rows that differ only by a factor of two quantize to the same q and different
 * scales: scoring must rank the larger one first (without the scale they tie, and
 * a tie goes to the lower position). */
static void test_scale_counts(struct sparq_backend *be, struct sparq_store *st)
{
	const uint32_t S = 300, hi = 77;
	uint16_t *k = t_alloc((size_t)S * D * 2), *v = t_alloc((size_t)S * D * 2);
	struct t_rng rng = { 7 };
	struct sparq_stream *s;
	float q[D], base[D];
	const char *why;

	for (uint32_t c = 0; c < D; c++) {
		base[c] = (float)t_normal(&rng);
		q[c] = base[c];
	}
	for (uint32_t j = 0; j < S; j++)
		for (uint32_t c = 0; c < D; c++) {
			k[(size_t)j * D + c] = t_to_dtype(j == hi ? 2 * base[c] : base[c],
							  SPARQ_DTYPE_F16);
			v[(size_t)j * D + c] = t_to_dtype((float)j, SPARQ_DTYPE_F16);
		}
	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &s, &why) == 0, "create");
	T_CHECK(sparq_stream_append(s, S, k, v, &why) == 0, "append: %s", why);
	struct run_out o;
	attend1(be, s, q, 16, 2, 0, &o);
	T_CHECK(o.n_sel == 2 && o.sel[0] == hi && o.sel[1] == S - 1,
		"selected %u, %u: the doubled key at %u should win", o.sel[0], o.sel[1], hi);
	sparq_stream_destroy(s);
	free(k);
	free(v);
}

/* The raw write the CUDA backend uses refuses a slice of the other format. */
static void test_q8_write(struct sparq_store *st)
{
	struct sparq_backend_config cfg = { .n_threads = 1 };
	struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);
	struct sparq_stream *s;
	const char *why;
	int8_t q[D] = { 0 };
	float sc = 1.0f;

	T_CHECK(sparq_stream_create(be, st, D, SPARQ_DTYPE_F16, &s, &why) == 0, "create");
	T_CHECK(sparq_cpu_slice_write_q8(sparq_stream_slice(s), 0, 1, q, &sc) == -EINVAL,
		"a native slice must refuse quantized keys");
	sparq_stream_destroy(s);
	sparq_backend_close(be);
}

int main(void)
{
	struct sparq_store *st;

	test_quantizer();
	test_format_names();
	T_CHECK(sparq_store_heap_create(256, 0, &st) == 0, "store");
	for (int portable = 0; portable <= 1; portable++) {
		struct sparq_backend_config cfg = { .n_threads = 2, .cpu_portable = portable,
						    .key_slice = SPARQ_SLICE_INT8 };
		struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);

		printf("cpu: %s\n", be->detail);
		T_CHECK(strstr(be->detail, "int8 key slice"), "detail names the format");
		test_pieces(be, st);
		test_scale_counts(be, st);
		sparq_backend_close(be);
	}
	test_q8_write(st);
	sparq_store_destroy(st);
	printf("test_quant: ok\n");
	return T_EXIT_PASS;
}
