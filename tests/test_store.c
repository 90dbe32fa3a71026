/*
 * test_store.c — the heap record store, through the sparq_store_ops table the
 * algorithm uses: chunk-size and record-size validation, write/gather round trips
 * across chunk boundaries (scattered, repeated and batched over several streams),
 * overwrite and truncation semantics, the in-place addr op and its runs, and the
 * capacity limit turning into -ENOSPC without harming what is already stored.
 *
 * Every stream has a shadow copy of what it should hold, so each check compares
 * against bytes this file wrote itself rather than against the store's own view.
 */
#include <errno.h>
#include <string.h>

#include "helpers.h"

#define CHUNK 16u
#define MAX_RECORDS 256u

struct shadow {
	struct sparq_store_stream *s;
	uint32_t record_bytes;
	uint32_t len;
	uint32_t tag;  /* which stream, for the byte pattern */
	uint8_t *rec;  /* [MAX_RECORDS][record_bytes] what the store should return */
};

static struct sparq_store *st;
static struct t_rng rng = { 0x570be5u };
/* Bumped on every write so that an overwrite is distinguishable from stale data. */
static uint32_t generation, n_opened;

static void shadow_open(struct shadow *sh, uint32_t d)
{
	sh->record_bytes = 2 * d * 2;
	sh->len = 0;
	sh->tag = ++n_opened;
	sh->rec = t_alloc((size_t)MAX_RECORDS * sh->record_bytes);
	T_CHECK(st->ops->stream_open(st->ctx, sh->record_bytes, &sh->s) == 0, "open d=%u", d);
}

static void shadow_close(struct shadow *sh)
{
	st->ops->stream_close(st->ctx, sh->s);
	free(sh->rec);
	sh->s = NULL;
	sh->rec = NULL;
}

/* Bytes unique to (stream, position, K or V, byte, generation). */
static uint8_t pattern(const struct shadow *sh, uint32_t pos, uint32_t byte)
{
	uint64_t x = ((uint64_t)sh->tag << 52) ^ ((uint64_t)pos << 20) ^
		     ((uint64_t)byte << 4) ^ ((uint64_t)generation << 40);
	struct t_rng r = { x };

	return (uint8_t)t_next(&r);
}

/* Writes n fresh records at pos through the store; on success mirrors it in the shadow. */
static int shadow_write(struct shadow *sh, uint32_t pos, uint32_t n)
{
	uint32_t row = sh->record_bytes / 2;
	uint8_t *k = t_alloc((size_t)n * row), *v = t_alloc((size_t)n * row);
	int ret;

	generation++;
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t b = 0; b < row; b++) {
			k[(size_t)i * row + b] = pattern(sh, pos + i, b);
			v[(size_t)i * row + b] = pattern(sh, pos + i, row + b);
		}
	}
	ret = st->ops->write(st->ctx, sh->s, pos, n, k, v);
	if (ret == 0) {
		T_CHECK(pos + n <= MAX_RECORDS, "test writes past its shadow");
		/* a record is the K row then the V row, back to back */
		for (uint32_t i = 0; i < n; i++) {
			uint8_t *rec = sh->rec + (size_t)(pos + i) * sh->record_bytes;

			memcpy(rec, k + (size_t)i * row, row);
			memcpy(rec + row, v + (size_t)i * row, row);
		}
		sh->len = pos + n;
	}
	free(k);
	free(v);
	return ret;
}

static void expect_record(const struct shadow *sh, const uint8_t *got, uint32_t pos,
			  const char *what)
{
	const uint8_t *want = sh->rec + (size_t)pos * sh->record_bytes;

	for (uint32_t b = 0; b < sh->record_bytes; b++)
		T_CHECK(got[b] == want[b], "%s: record %u (record_bytes %u) byte %u: %02x, want %02x",
			what, pos, sh->record_bytes, b, got[b], want[b]);
}

/*
 * The stream's length as the store sees it: the last position gathers, the next one
 * is -ERANGE. (The interface has no length query; the stream layer keeps its own.)
 */
static void expect_len(struct shadow *sh)
{
	uint8_t *buf = t_alloc(sh->record_bytes);
	uint32_t pos;
	struct sparq_gather g = { .stream = sh->s, .pos = &pos, .n = 1, .out = buf };

	if (sh->len) {
		pos = sh->len - 1;
		T_CHECK(st->ops->gather(st->ctx, &g, 1) == 0, "gather of last record %u", pos);
		expect_record(sh, buf, pos, "last record");
	}
	pos = sh->len;
	T_CHECK(st->ops->gather(st->ctx, &g, 1) == -ERANGE, "gather at len %u should be -ERANGE",
		pos);
	free(buf);
}

/* Gathers every record in order and a scrambled list with repeats, one stream at a time. */
static void expect_contents(struct shadow *sh)
{
	uint32_t n = sh->len + sh->len / 2 + 1;
	uint32_t *pos = t_alloc((size_t)n * sizeof(*pos));
	uint8_t *out = t_alloc((size_t)n * sh->record_bytes);
	struct sparq_gather g = { .stream = sh->s, .pos = pos, .out = out };

	expect_len(sh);
	if (!sh->len)
		goto done;
	for (uint32_t i = 0; i < sh->len; i++)
		pos[i] = i;
	g.n = sh->len;
	T_CHECK(st->ops->gather(st->ctx, &g, 1) == 0, "gather 0..%u", sh->len);
	for (uint32_t i = 0; i < sh->len; i++)
		expect_record(sh, out + (size_t)i * sh->record_bytes, i, "in-order gather");
	for (uint32_t i = 0; i < n; i++)
		pos[i] = (uint32_t)(t_next(&rng) % sh->len);
	g.n = n;
	T_CHECK(st->ops->gather(st->ctx, &g, 1) == 0, "scattered gather of %u", n);
	for (uint32_t i = 0; i < n; i++)
		expect_record(sh, out + (size_t)i * sh->record_bytes, pos[i], "scattered gather");
done:
	free(pos);
	free(out);
}

/*
 * addr hands out the record in place and how many records follow it contiguously:
 * the rest of its chunk, cut at the stream's end. Reading the whole run checks that
 * the claim is true, not just the count.
 */
static void expect_addr(struct shadow *sh)
{
	uint32_t n_run;

	for (uint32_t pos = 0; pos < sh->len; pos++) {
		uint32_t want = CHUNK - pos % CHUNK;
		const uint8_t *p;

		if (want > sh->len - pos)
			want = sh->len - pos;
		n_run = 0xdeadbeef;
		p = st->ops->addr(st->ctx, sh->s, pos, &n_run);
		T_CHECK(p, "addr(%u) of a stream of %u is NULL", pos, sh->len);
		T_CHECK(n_run == want, "addr(%u) len %u: n_run %u, want %u", pos, sh->len, n_run,
			want);
		for (uint32_t j = 0; j < n_run; j++)
			expect_record(sh, p + (size_t)j * sh->record_bytes, pos + j, "addr run");
	}
	for (uint32_t pos = sh->len; pos < sh->len + 2 * CHUNK; pos++)
		T_CHECK(!st->ops->addr(st->ctx, sh->s, pos, &n_run), "addr(%u) past len %u",
			pos, sh->len);
	T_CHECK(!st->ops->addr(st->ctx, sh->s, UINT32_MAX, &n_run), "addr(UINT32_MAX)");
}

static void test_create_rejects(void)
{
	static const uint32_t bad[] = { 0, 3, 5, 6, 12, 17, 48, 0x80000001u, UINT32_MAX };
	static const uint32_t good[] = { 1, 2, 16, 1024, 0x80000000u };
	struct sparq_store *s;

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		T_CHECK(sparq_store_heap_create(bad[i], 0, &s) == -EINVAL, "chunk %u accepted",
			bad[i]);
	for (unsigned i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		T_CHECK(sparq_store_heap_create(good[i], 0, &s) == 0, "chunk %u rejected", good[i]);
		T_CHECK(sparq_store_heap_used(s) == 0, "fresh store holds memory");
		sparq_store_destroy(s);
	}
}

static void test_open_rejects(void)
{
	static const uint32_t bad[] = { 0, 1, 3, 255, 513, UINT32_MAX };
	struct sparq_store_stream *s;

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		T_CHECK(st->ops->stream_open(st->ctx, bad[i], &s) == -EINVAL,
			"record_bytes %u accepted", bad[i]);
	T_CHECK(st->ops->stream_open(st->ctx, 2, &s) == 0, "record_bytes 2 rejected");
	st->ops->stream_close(st->ctx, s);
}

/* Appends in uneven pieces so that writes start, end and straddle chunk boundaries. */
static void fill(struct shadow *sh, uint32_t total)
{
	static const uint32_t pieces[] = { 1, 15, 17, 3, 13, 16, 32, 2, 40 };
	unsigned i = 0;

	while (sh->len < total) {
		uint32_t n = pieces[i++ % (sizeof(pieces) / sizeof(pieces[0]))];

		if (n > total - sh->len)
			n = total - sh->len;
		T_CHECK(shadow_write(sh, sh->len, n) == 0, "append %u at %u", n, sh->len);
	}
}

static void test_round_trip(void)
{
	struct shadow sh[3];
	static const uint32_t d[3] = { 8, 128, 8 }, len[3] = { 100, 77, 33 };
	uint64_t want_used = 0;

	for (int i = 0; i < 3; i++) {
		shadow_open(&sh[i], d[i]);
		expect_contents(&sh[i]);
	}
	/* interleaved, so chunks of different streams alternate in the heap */
	for (uint32_t step = 0; step < 100; step += 10)
		for (int i = 0; i < 3; i++)
			fill(&sh[i], step + 10 < len[i] ? step + 10 : len[i]);
	for (int i = 0; i < 3; i++) {
		expect_contents(&sh[i]);
		expect_addr(&sh[i]);
		want_used += (uint64_t)((len[i] + CHUNK - 1) / CHUNK) * CHUNK * sh[i].record_bytes;
	}
	T_CHECK(sparq_store_heap_used(st) == want_used, "used %llu, want %llu",
		(unsigned long long)sparq_store_heap_used(st), (unsigned long long)want_used);

	/* one call for all three streams, as a tier sees a whole layer's reads */
	{
		struct sparq_gather g[3];
		uint32_t n[3] = { 50, 1, 120 };
		uint32_t *pos[3];
		uint8_t *out[3];

		for (int i = 0; i < 3; i++) {
			pos[i] = t_alloc(n[i] * sizeof(uint32_t));
			out[i] = t_alloc((size_t)n[i] * sh[i].record_bytes);
			for (uint32_t j = 0; j < n[i]; j++)
				pos[i][j] = (uint32_t)(t_next(&rng) % len[i]);
			g[i] = (struct sparq_gather){ .stream = sh[i].s, .pos = pos[i], .n = n[i],
						      .out = out[i] };
		}
		T_CHECK(st->ops->gather(st->ctx, g, 3) == 0, "batched gather");
		for (int i = 0; i < 3; i++)
			for (uint32_t j = 0; j < n[i]; j++)
				expect_record(&sh[i], out[i] + (size_t)j * sh[i].record_bytes,
					      pos[i][j], "batched gather");

		/* a bad position in the last stream fails the call; the streams survive it */
		pos[2][n[2] - 1] = len[2];
		T_CHECK(st->ops->gather(st->ctx, g, 3) == -ERANGE, "batched gather past the end");
		pos[2][n[2] - 1] = UINT32_MAX;
		T_CHECK(st->ops->gather(st->ctx, g, 3) == -ERANGE, "batched gather at UINT32_MAX");
		T_CHECK(st->ops->gather(st->ctx, g, 0) == 0, "empty batch");
		for (int i = 0; i < 3; i++) {
			free(pos[i]);
			free(out[i]);
		}
	}
	for (int i = 0; i < 3; i++) {
		expect_contents(&sh[i]);
		shadow_close(&sh[i]);
	}
	T_CHECK(sparq_store_heap_used(st) == 0, "used %llu after closing everything",
		(unsigned long long)sparq_store_heap_used(st));
}

/*
 * A write at pos <= len replaces from pos and the length becomes pos + n, shorter or
 * longer than before: that is how the stream layer retries a failed append. A write
 * that would leave a hole is refused and changes nothing.
 */
static void test_overwrite(void)
{
	struct shadow sh;

	shadow_open(&sh, 8);
	fill(&sh, 70);

	T_CHECK(shadow_write(&sh, 71, 1) == -EINVAL, "write leaving a hole at 70");
	T_CHECK(shadow_write(&sh, UINT32_MAX, 1) == -EINVAL, "write at UINT32_MAX");
	expect_contents(&sh);

	T_CHECK(shadow_write(&sh, 40, 5) == 0, "overwrite 40..44");  /* truncates to 45 */
	T_CHECK(sh.len == 45, "shadow len");
	expect_contents(&sh);
	expect_addr(&sh);

	T_CHECK(shadow_write(&sh, 46, 1) == -EINVAL, "write past the truncated end");
	T_CHECK(shadow_write(&sh, 30, 20) == 0, "overwrite straddling the old end");
	expect_contents(&sh);
	T_CHECK(shadow_write(&sh, 50, 30) == 0, "append at len, past the old 70");
	expect_contents(&sh);
	T_CHECK(shadow_write(&sh, 0, 1) == 0, "overwrite from 0");
	T_CHECK(sh.len == 1, "shadow len");
	expect_contents(&sh);
	expect_addr(&sh);
	T_CHECK(shadow_write(&sh, 1, 64) == 0, "regrow");
	expect_contents(&sh);
	expect_addr(&sh);
	shadow_close(&sh);
}

/*
 * capacity is exactly two chunks: the third chunk must be refused with -ENOSPC, the
 * stream must keep serving what it has, and closing it must give the bytes back for
 * another stream to use.
 */
static void test_capacity(void)
{
	struct sparq_store *saved = st, *cap;
	struct shadow a, b;
	uint32_t rb = 2 * 8 * 2;
	uint64_t chunk_bytes = (uint64_t)CHUNK * rb;

	T_CHECK(sparq_store_heap_create(CHUNK, 2 * chunk_bytes, &cap) == 0, "create capped");
	st = cap;
	shadow_open(&a, 8);
	shadow_open(&b, 8);
	fill(&a, 2 * CHUNK);
	T_CHECK(sparq_store_heap_used(st) == 2 * chunk_bytes, "used %llu after two chunks",
		(unsigned long long)sparq_store_heap_used(st));

	T_CHECK(shadow_write(&a, a.len, 1) == -ENOSPC, "third chunk accepted");
	T_CHECK(shadow_write(&a, a.len, CHUNK) == -ENOSPC, "third chunk accepted (n=16)");
	T_CHECK(shadow_write(&b, 0, 1) == -ENOSPC, "other stream's first chunk accepted");
	T_CHECK(sparq_store_heap_used(st) == 2 * chunk_bytes, "used %llu after refusals",
		(unsigned long long)sparq_store_heap_used(st));
	expect_contents(&a);
	expect_addr(&a);
	expect_contents(&b);

	/* rewriting inside the chunks already held needs no new memory */
	T_CHECK(shadow_write(&a, 5, 2 * CHUNK - 5) == 0, "overwrite within capacity");
	expect_contents(&a);

	shadow_close(&a);
	T_CHECK(sparq_store_heap_used(st) == 0, "used %llu after close",
		(unsigned long long)sparq_store_heap_used(st));
	fill(&b, 2 * CHUNK);
	T_CHECK(sparq_store_heap_used(st) == 2 * chunk_bytes, "used %llu for the other stream",
		(unsigned long long)sparq_store_heap_used(st));
	T_CHECK(shadow_write(&b, b.len, 1) == -ENOSPC, "other stream's third chunk accepted");
	expect_contents(&b);
	expect_addr(&b);
	shadow_close(&b);
	T_CHECK(sparq_store_heap_used(st) == 0, "used after closing both");
	sparq_store_destroy(cap);
	st = saved;
}

int main(void)
{
	test_create_rejects();
	T_CHECK(sparq_store_heap_create(CHUNK, 0, &st) == 0, "create");
	T_CHECK(st->ops->name && st->ops->stream_open && st->ops->stream_close &&
			st->ops->write && st->ops->gather && st->ops->destroy,
		"heap store ops incomplete");
	T_CHECK(st->ops->addr, "the heap store is byte-addressable and must provide addr");
	test_open_rejects();
	test_round_trip();
	test_overwrite();
	test_capacity();
	T_CHECK(sparq_store_heap_used(st) == 0, "used after all streams closed");
	sparq_store_destroy(st);
	printf("store: heap store passed\n");
	return T_EXIT_PASS;
}
