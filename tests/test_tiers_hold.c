/*
 * test_tiers_hold.c — the tier manager's in-place reads (store.h addr, region, hold,
 * release; issue 5): addresses give the bytes gather gives and lie in the region; a
 * stream with a chunk on NVMe is not held until that chunk is back in RAM; a held
 * stream is never demoted, however hard other streams' appends push, and when nothing
 * else can go an append fails with -ENOSPC and loses nothing; holds nest; a held
 * stream refuses rewrites and cuts but takes appends; closing a held stream frees it;
 * with in_place off the store has none of these ops.
 */
#include <inttypes.h>

#include "tier_helpers.h"

#define CHUNK (64u << 10)

struct fix {
	struct tier_manager *m;
	struct sparq_store *st;
	uint32_t rb, per;      /* record bytes, records per chunk */
};

static void fix_open(struct fix *f, const char *dir, uint32_t rb, uint32_t ram_chunks)
{
	f->m = t_manager(dir, CHUNK, ram_chunks, 1ull << 30, NULL, NULL);
	f->st = tier_manager_store(f->m);
	f->rb = rb;
	f->per = CHUNK / rb;
}

static struct sparq_store_stream *fill(struct fix *f, uint32_t id, uint32_t n)
{
	struct sparq_store_stream *s;

	T_CHECK(f->st->ops->stream_open(f->st->ctx, f->rb, &s) == 0, "open %u", id);
	/* in pieces that straddle chunk boundaries, as prefill and decode do */
	for (uint32_t pos = 0; pos < n; pos += 301)
		T_CHECK(t_append(f->st, s, 7, id, pos, n - pos < 301 ? n - pos : 301, f->rb) == 0,
			"append stream %u at %u", id, pos);
	return s;
}

static int hold(struct fix *f, struct sparq_store_stream *s)
{
	return f->st->ops->hold(f->st->ctx, s);
}

static void release(struct fix *f, struct sparq_store_stream *s)
{
	f->st->ops->release(f->st->ctx, s);
}

/* Every record of s through addr equals its seeded bytes (and so what gather gives);
 * returns how many addr calls the runs needed. */
static uint32_t check_addr(struct fix *f, struct sparq_store_stream *s, uint32_t id, uint32_t len)
{
	uint8_t *want = t_alloc(f->rb);
	void *base;
	size_t bytes;
	uint32_t calls = 0;

	T_CHECK(f->st->ops->region(f->st->ctx, &base, &bytes) == 0, "region");
	for (uint32_t pos = 0; pos < len;) {
		uint32_t run = 0;
		const uint8_t *a = f->st->ops->addr(f->st->ctx, s, pos, &run);

		T_CHECK(a, "addr(%u) of a RAM-resident record", pos);
		uint32_t end = (pos / f->per + 1) * f->per;
		/* the rest of the chunk: records lie back to back in a slot */
		T_CHECK(run == (end < len ? end : len) - pos, "run %u at %u", run, pos);
		T_CHECK(a >= (const uint8_t *)base &&
			a + (size_t)run * f->rb <= (const uint8_t *)base + bytes,
			"records %u..%u outside the region", pos, pos + run);
		for (uint32_t t = 0; t < run; t++) {
			t_record(7, id, pos + t, f->rb, want);
			T_CHECK(memcmp(a + (size_t)t * f->rb, want, f->rb) == 0,
				"record %u in place differs", pos + t);
		}
		pos += run;
		calls++;
	}
	free(want);
	return calls;
}

/* addr gives the bytes gather gives, chunk by chunk; NULL past the end or on NVMe. */
static void test_addr(const char *dir, uint32_t rb)
{
	struct fix f;
	uint32_t run = 0;

	fix_open(&f, dir, rb, 4);
	uint32_t len = 3 * f.per + 17;
	struct sparq_store_stream *a = fill(&f, 1, len);
	uint32_t calls = check_addr(&f, a, 1, len);
	T_CHECK(calls == 4, "one addr call per chunk: %u", calls);
	uint32_t all[64];
	for (uint32_t i = 0; i < 64; i++)
		all[i] = (uint32_t)((uint64_t)i * len / 64);
	T_CHECK(t_check(f.st, a, 7, 1, all, 64, rb) == 0, "gather");
	T_CHECK(!f.st->ops->addr(f.st->ctx, a, len, &run), "addr past the end");
	T_CHECK(!f.st->ops->addr(f.st->ctx, a, UINT32_MAX, &run), "addr(UINT32_MAX)");

	/* a second stream pushes a's oldest chunk to NVMe: no address for it */
	struct sparq_store_stream *b = fill(&f, 2, 2 * f.per);
	uint64_t ram, nvme;
	tier_stream_placement(a, &ram, &nvme);
	T_CHECK(nvme > 0, "a must have records on NVMe");
	T_CHECK(!f.st->ops->addr(f.st->ctx, a, 0, &run), "addr of a record on NVMe");
	f.st->ops->stream_close(f.st->ctx, b);
	f.st->ops->stream_close(f.st->ctx, a);
	tier_manager_close(f.m);
	printf("record %u B: addr == gather for %u records in %u runs; NULL on NVMe\n", rb, len,
	       calls);
}

/* -EAGAIN while a chunk is on NVMe (nothing taken), 0 once it is promoted. */
static void test_hold_nvme(const char *dir)
{
	struct fix f;
	struct tier_stats ts;

	fix_open(&f, dir, 512, 4);
	struct sparq_store_stream *a = fill(&f, 1, 3 * f.per);
	struct sparq_store_stream *b = fill(&f, 2, 3 * f.per); /* demotes a's chunks 0 and 1 */
	T_CHECK(hold(&f, a) == -EAGAIN, "hold of a stream with chunks on NVMe");
	T_CHECK(hold(&f, b) == 0, "hold of a RAM-resident stream");
	release(&f, b);
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.holds == 1 && ts.hold_misses == 1, "holds %" PRIu64 " misses %" PRIu64,
		ts.holds, ts.hold_misses);
	/* the refused hold took nothing: a's RAM chunk can still be demoted */
	struct sparq_store_stream *c = fill(&f, 3, 4 * f.per);
	uint64_t ram, nvme;
	tier_stream_placement(a, &ram, &nvme);
	T_CHECK(ram == 0, "a refused hold must pin nothing: %" PRIu64 " records in RAM", ram);

	/* free RAM, then read a's chunks often enough that the gather promotes them */
	f.st->ops->stream_close(f.st->ctx, b);
	f.st->ops->stream_close(f.st->ctx, c);
	uint32_t *pos = t_alloc(3 * f.per * sizeof(uint32_t));
	for (uint32_t i = 0; i < 3 * f.per; i++)
		pos[i] = i;
	T_CHECK(t_check(f.st, a, 7, 1, pos, 3 * f.per, 512) == 0, "gather from NVMe");
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.promotions >= 3, "promotions %" PRIu64, ts.promotions);
	T_CHECK(hold(&f, a) == 0, "hold after promotion");
	check_addr(&f, a, 1, 3 * f.per);
	release(&f, a);
	free(pos);
	f.st->ops->stream_close(f.st->ctx, a);
	tier_manager_close(f.m);
	printf("hold: -EAGAIN with a chunk on NVMe, 0 after its promotion\n");
}

/* Addresses of every record of s, one per chunk (the records of a chunk are contiguous). */
static void chunk_addrs(struct fix *f, struct sparq_store_stream *s, uint32_t len,
			const void **out)
{
	for (uint32_t ci = 0; ci * f->per < len; ci++) {
		uint32_t run;
		out[ci] = f->st->ops->addr(f->st->ctx, s, ci * f->per, &run);
	}
}

/* Other streams' appends demote around a held stream, never its chunks; with nothing
 * else left they fail with -ENOSPC and keep what they had; holds nest. */
static void test_pressure(const char *dir)
{
	struct fix f;
	struct tier_stats ts0, ts;
	const void *before[4], *after[4];

	fix_open(&f, dir, 512, 6);
	uint32_t len = 3 * f.per + 5;   /* 4 chunks */
	struct sparq_store_stream *a = fill(&f, 1, len);
	T_CHECK(hold(&f, a) == 0, "hold a");
	T_CHECK(hold(&f, a) == 0, "hold a again (nested)");
	chunk_addrs(&f, a, len, before);
	tier_manager_stats(f.m, &ts0);

	/* 2 free slots for c's 12 chunks: c demotes its own, never a's */
	struct sparq_store_stream *c = fill(&f, 3, 12 * f.per);
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.demotions - ts0.demotions >= 10, "c's appends must demote: %" PRIu64,
		ts.demotions - ts0.demotions);
	chunk_addrs(&f, a, len, after);
	T_CHECK(!memcmp(before, after, sizeof(before)), "a held chunk moved");
	check_addr(&f, a, 1, len);

	/* one release of two: still held */
	release(&f, a);
	struct sparq_store_stream *d = fill(&f, 4, 4 * f.per);
	uint64_t ram, nvme;
	tier_stream_placement(a, &ram, &nvme);
	T_CHECK(ram == len && nvme == 0, "a still held once: %" PRIu64 " in RAM", ram);
	check_addr(&f, a, 1, len);

	/* RAM: a's 4 chunks (held) and d's last 2 (not held) */
	tier_stream_placement(d, &ram, &nvme);
	T_CHECK(ram == 2 * f.per, "d has 2 chunks in RAM: %" PRIu64, ram);
	f.st->ops->stream_close(f.st->ctx, c);
	/* e, held from empty (its new chunks are pinned as they come), takes d's 2 slots;
	 * then only held chunks remain */
	struct sparq_store_stream *e = fill(&f, 5, 0);
	T_CHECK(hold(&f, e) == 0, "hold of an empty stream");
	uint32_t e_len = 0;
	int ret;
	while ((ret = t_append(f.st, e, 7, 5, e_len, f.per, 512)) == 0) {
		e_len += f.per;
		T_CHECK(e_len <= 2 * f.per, "e grew past the slots that were not held: %u", e_len);
	}
	T_CHECK(ret == -ENOSPC, "an append with only held chunks left: %d", ret);
	T_CHECK(e_len == 2 * f.per, "e took d's 2 slots: %u records", e_len);
	T_CHECK(hold(&f, d) == -EAGAIN, "d is on NVMe now");
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.ram_chunks == 6, "RAM full of held chunks: %" PRIu64, ts.ram_chunks);
	/* nothing lost: e's length and records, a's records, all in place */
	uint32_t run;
	T_CHECK(!f.st->ops->addr(f.st->ctx, e, e_len, &run), "the failed append left no record");
	check_addr(&f, e, 5, e_len);
	check_addr(&f, a, 1, len);
	uint32_t probe[4] = { 0, f.per, 2 * f.per + 3, 4 * f.per - 1 };
	T_CHECK(t_check(f.st, d, 7, 4, probe, 4, 512) == 0, "d's records from NVMe");

	/* after release the same append succeeds, demoting a's chunks */
	release(&f, a);
	T_CHECK(t_append(f.st, e, 7, 5, e_len, f.per, 512) == 0, "append after release");
	tier_stream_placement(a, &ram, &nvme);
	T_CHECK(nvme > 0, "a released: its chunks may go");
	release(&f, e);
	uint32_t *all = t_alloc(len * sizeof(uint32_t));
	for (uint32_t i = 0; i < len; i++)
		all[i] = i;
	T_CHECK(t_check(f.st, a, 7, 1, all, len, 512) == 0, "a intact after it all");
	free(all);
	f.st->ops->stream_close(f.st->ctx, a);
	f.st->ops->stream_close(f.st->ctx, d);
	f.st->ops->stream_close(f.st->ctx, e);
	tier_manager_close(f.m);
	printf("held chunks never demoted; -ENOSPC with only held chunks left, nothing lost; "
	       "nested holds\n");
}

/* Rewrites and cuts of a held stream: -EBUSY, nothing changed; appends go in. Closing
 * a held stream frees its RAM for good. */
static void test_rewind_close(const char *dir)
{
	struct fix f;
	struct tier_stats ts;
	uint32_t run;

	fix_open(&f, dir, 512, 4);
	uint32_t len = f.per + 10;
	struct sparq_store_stream *a = fill(&f, 1, len);
	T_CHECK(hold(&f, a) == 0, "hold");
	T_CHECK(f.st->ops->write(f.st->ctx, a, len - 5, 0, NULL, NULL) == -EBUSY, "cut while held");
	T_CHECK(t_append(f.st, a, 9, 1, 3, 1, 512) == -EBUSY, "rewrite while held");
	check_addr(&f, a, 1, len);
	T_CHECK(t_append(f.st, a, 7, 1, len, f.per, 512) == 0, "append while held");
	check_addr(&f, a, 1, len + f.per);
	release(&f, a);
	T_CHECK(f.st->ops->write(f.st->ctx, a, len, 0, NULL, NULL) == 0, "cut after release");
	T_CHECK(!f.st->ops->addr(f.st->ctx, a, len, &run), "cut records have no address");
	check_addr(&f, a, 1, len);

	/* a stream of length 0 is trivially all in RAM */
	struct sparq_store_stream *z = fill(&f, 2, 0);
	T_CHECK(hold(&f, z) == 0, "hold of an empty stream");
	release(&f, z);
	f.st->ops->stream_close(f.st->ctx, z);

	/* close ends the holds: the slots are free and nothing pins them */
	T_CHECK(hold(&f, a) == 0, "hold before close");
	f.st->ops->stream_close(f.st->ctx, a);
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.ram_chunks == 0 && ts.ram_used == 0, "close of a held stream frees its RAM");
	struct sparq_store_stream *b = fill(&f, 3, 8 * f.per);
	tier_manager_stats(f.m, &ts);
	T_CHECK(ts.ram_chunks == 4, "b uses the whole RAM tier: %" PRIu64, ts.ram_chunks);
	f.st->ops->stream_close(f.st->ctx, b);
	tier_manager_close(f.m);
	printf("held: cut and rewrite -EBUSY, append ok; close of a held stream frees it\n");
}

/* in_place off: a copy-only store, as before issue 5. */
static void test_copy_only(const char *dir)
{
	struct tier_manager_config cfg;
	struct tier_manager *m;
	const char *why = "";

	t_manager_config(&cfg, dir, CHUNK, 4, 1ull << 30);
	T_CHECK(cfg.in_place, "in place is the default");
	cfg.in_place = false;
	T_CHECK(tier_manager_open(&cfg, &m, &why) == 0, "open: %s", why);
	const struct sparq_store_ops *ops = tier_manager_store(m)->ops;
	T_CHECK(!ops->addr && !ops->region && !ops->hold && !ops->release && ops->gather,
		"in_place=false: copies only");
	tier_manager_close(m);
}

int main(void)
{
	char *dir = t_tempdir();

	test_addr(dir, 512);
	test_addr(dir, 384);  /* not a sector: padded on NVMe, back to back in RAM */
	test_hold_nvme(dir);
	test_pressure(dir);
	test_rewind_close(dir);
	test_copy_only(dir);
	t_rmdir(dir);
	free(dir);
	return T_EXIT_PASS;
}
