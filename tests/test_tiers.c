/*
 * test_tiers.c — the tier manager: demotion under RAM pressure and serving from NVMe,
 * promotion, record sizes that are not a sector, a full NVMe tier, injected EIO /
 * ENOSPC / short reads, park and resume across a restart, corrupted chunks detected
 * and named, half-written manifest entries and orphaned files discarded.
 */
#include <fcntl.h>
#include <inttypes.h>

#include "nvme.h"
#include "tier_helpers.h"

#define CHUNK (64u << 10)

struct logbuf {
	char text[8192];
};

static void capture(void *user, enum tier_log_level lv, const char *msg)
{
	struct logbuf *lb = user;
	size_t n = strlen(lb->text);

	(void)lv;
	snprintf(lb->text + n, sizeof(lb->text) - n, "%s\n", msg);
}

static uint32_t *random_positions(struct t_rng *r, uint32_t n, uint32_t len)
{
	uint32_t *p = t_alloc(n * sizeof(uint32_t));
	for (uint32_t i = 0; i < n; i++)
		p[i] = (uint32_t)(t_next(r) % len);
	return p;
}

/* RAM holds 4 chunks; 20 chunks of records force demotions and NVMe reads. */
static void test_pressure(const char *dir, uint32_t rb)
{
	struct tier_manager *m = t_manager(dir, CHUNK, 4, 1ull << 30, NULL, NULL);
	struct sparq_store *st = tier_manager_store(m);
	struct sparq_store_stream *s;
	struct tier_stats ts;
	struct t_rng r = { rb };
	uint32_t per = CHUNK / rb, len = 20 * per;

	T_CHECK(st->ops->stream_open(st->ctx, rb, &s) == 0, "open");
	for (uint32_t pos = 0; pos < len; pos += 777)
		T_CHECK(t_append(st, s, 1, 0, pos, len - pos < 777 ? len - pos : 777, rb) == 0,
			"append at %u", pos);
	tier_manager_stats(m, &ts);
	T_CHECK(ts.demotions >= 16 && ts.ram_chunks <= 4, "demotions %" PRIu64 " chunks %" PRIu64,
		ts.demotions, ts.ram_chunks);
	T_CHECK(ts.nvme_chunks >= 16, "nvme chunks %" PRIu64, ts.nvme_chunks);
	uint32_t *pos = random_positions(&r, 3000, len);
	T_CHECK(t_check(st, s, 1, 0, pos, 3000, rb) == 0, "gather");
	tier_manager_stats(m, &ts);
	T_CHECK(ts.nvme_records_read > 0 && ts.ram_records_read > 0, "both tiers served");
	double amp = (double)ts.nvme_gather_bytes / (double)ts.nvme_gather_requested;
	uint32_t unit = (rb + ts.io_align - 1) / ts.io_align * ts.io_align;
	T_CHECK(fabs(amp - (double)unit / rb) < 1e-9, "read amplification %.3f", amp);
	printf("record %u B: %" PRIu64 " demotions, %" PRIu64 " promotions, %" PRIu64
	       " records from NVMe, read amplification %.2f\n",
	       rb, ts.demotions, ts.promotions, ts.nvme_records_read, amp);

	/* with RAM full, hot chunks are not promoted by demoting others (no churn) */
	uint64_t before = ts.promotions;
	uint32_t hot[64];
	for (int round = 0; round < 8; round++) {
		for (uint32_t i = 0; i < 64; i++)
			hot[i] = per + (uint32_t)(t_next(&r) % per); /* chunk 1: long demoted */
		T_CHECK(t_check(st, s, 1, 0, hot, 64, rb) == 0, "hot gather");
	}
	tier_manager_stats(m, &ts);
	T_CHECK(ts.promotions == before, "promotion must not demote: %" PRIu64 " promotions",
		ts.promotions - before);

	/* appending to a demoted partial chunk promotes it and keeps its records */
	T_CHECK(t_append(st, s, 1, 0, len, 10, rb) == 0, "append after demotion");
	uint32_t tail[3] = { len - 1, len, len + 9 };
	T_CHECK(t_check(st, s, 1, 0, tail, 3, rb) == 0, "tail");
	uint32_t past = len + 10;
	T_CHECK(t_check(st, s, 1, 0, &past, 1, rb) == -ERANGE, "past the end");
	free(pos);
	st->ops->stream_close(st->ctx, s);
	tier_manager_stats(m, &ts);
	T_CHECK(ts.ram_chunks == 0 && ts.ram_used == 0 && ts.nvme_used == 0, "close frees both tiers");
	tier_manager_close(m);
}

static void test_full_nvme(const char *dir)
{
	struct tier_manager *m = t_manager(dir, CHUNK, 2, 3ull * CHUNK, NULL, NULL);
	struct sparq_store *st = tier_manager_store(m);
	struct sparq_store_stream *s;
	uint32_t per = CHUNK / 512, pos = 0;
	int ret = 0;

	T_CHECK(st->ops->stream_open(st->ctx, 512, &s) == 0, "open");
	for (; pos < 20 * per && ret == 0; pos += per / 2)
		ret = t_append(st, s, 2, 0, pos, per / 2, 512);
	T_CHECK(ret == -ENOSPC, "RAM 2 + NVMe 3 chunks must fill up: %d", ret);
	/* everything appended before the failure is intact */
	uint32_t kept = pos - per / 2, probe[4] = { 0, kept / 3, kept / 2, kept - 1 };
	T_CHECK(t_check(st, s, 2, 0, probe, 4, 512) == 0, "records kept after ENOSPC");
	st->ops->stream_close(st->ctx, s);
	tier_manager_close(m);
}

static void test_faults(const char *dir)
{
	struct logbuf lb = { "" };
	struct tier_manager *m = t_manager(dir, CHUNK, 2, 1ull << 30, capture, &lb);
	struct sparq_store *st = tier_manager_store(m);
	struct tier_nvme *nv = tier_manager_nvme(m);
	struct sparq_store_stream *s;
	uint32_t per = CHUNK / 512;
	uint32_t cold[4] = { 1, 2, 3, 4 }; /* chunk 0: demoted once 3 chunks exist */

	T_CHECK(st->ops->stream_open(st->ctx, 512, &s) == 0, "open");
	T_CHECK(t_append(st, s, 3, 0, 0, 3 * per, 512) == 0, "append");

	struct tier_nvme_fault f = { .after = 1, .count = 1, .err = -EIO, .reads = true };
	tier_nvme_inject(nv, &f);
	T_CHECK(t_check(st, s, 3, 0, cold, 4, 512) == -EIO, "injected EIO reaches the caller");
	f = (struct tier_nvme_fault){ .count = 1, .short_io = true, .reads = true };
	tier_nvme_inject(nv, &f);
	T_CHECK(t_check(st, s, 3, 0, cold, 4, 512) == -EIO, "short read is an error");
	f = (struct tier_nvme_fault){ 0 };
	tier_nvme_inject(nv, &f);
	T_CHECK(t_check(st, s, 3, 0, cold, 4, 512) == 0, "reads work again");

	/* ENOSPC while demoting: the append fails, nothing is lost */
	f = (struct tier_nvme_fault){ .count = 1000, .err = -ENOSPC, .writes = true };
	tier_nvme_inject(nv, &f);
	T_CHECK(t_append(st, s, 3, 0, 3 * per, per, 512) == -ENOSPC, "injected ENOSPC");
	f = (struct tier_nvme_fault){ 0 };
	tier_nvme_inject(nv, &f);
	uint32_t all[6] = { 0, per - 1, per, 2 * per - 1, 2 * per, 3 * per - 1 };
	T_CHECK(t_check(st, s, 3, 0, all, 6, 512) == 0, "records survive a failed demotion");
	T_CHECK(t_append(st, s, 3, 0, 3 * per, per, 512) == 0, "append after the fault");
	T_CHECK(strstr(lb.text, "demoting"), "the failure was logged: %s", lb.text);
	st->ops->stream_close(st->ctx, s);
	tier_manager_close(m);
}

/* Parks two sessions, restarts, resumes one to RAM and one on NVMe, corrupts a third. */
static void test_park_restart(const char *dir)
{
	struct logbuf lb = { "" };
	struct tier_manager *m = t_manager(dir, CHUNK, 8, 1ull << 30, capture, &lb);
	struct sparq_store *st = tier_manager_store(m);
	struct sparq_store_stream *s[3];
	uint32_t lens[3] = { 1, 300, 3000 };
	const char meta[] = "geometry: 2 layers, d=128";
	uint32_t count;
	struct tier_parked_info info[8];

	for (uint64_t session = 10; session < 13; session++) {
		for (uint32_t i = 0; i < 3; i++) {
			T_CHECK(st->ops->stream_open(st->ctx, 512, &s[i]) == 0, "open");
			T_CHECK(t_append(st, s[i], session, i, 0, lens[i], 512) == 0, "append");
		}
		T_CHECK(tier_park(m, session, meta, sizeof(meta), s, 3) == 0, "park %" PRIu64, session);
		T_CHECK(tier_park(m, session, meta, sizeof(meta), s, 3) == -EEXIST, "park twice");
		if (session == 10) {
			/* parked streams stay usable, and grow past what was parked */
			T_CHECK(t_append(st, s[2], session, 2, lens[2], 5, 512) == 0, "append after park");
		}
		for (uint32_t i = 0; i < 3; i++)
			st->ops->stream_close(st->ctx, s[i]);
	}
	tier_manager_close(m);

	/* corrupt one record of session 12, stream 2, position 2500 on disk */
	char path[4200];
	int fd = -1;
	m = t_manager(dir, CHUNK, 8, 1ull << 30, capture, &lb);
	T_CHECK(tier_parked_list(m, info, 8, &count) == 0 && count == 3, "3 parked, got %u", count);
	tier_manager_close(m);
	{
		/* stream uids: 1..9 in open order; session 12 stream 2 is the ninth */
		snprintf(path, sizeof(path), "%s/%016x.rec", dir, 9);
		fd = open(path, O_WRONLY);
		T_CHECK(fd >= 0, "open %s", path);
		uint8_t junk[4] = { 0xde, 0xad, 0xbe, 0xef };
		T_CHECK(pwrite(fd, junk, 4, 2500ull * 512 + 100) == 4, "corrupt");
		close(fd);
	}
	m = t_manager(dir, CHUNK, 8, 1ull << 30, capture, &lb);
	st = tier_manager_store(m);
	char got[64];
	T_CHECK(tier_resume(m, 10, got, sizeof(got), s, 3, true) == 0, "resume 10 to RAM");
	T_CHECK(strcmp(got, meta) == 0, "meta back");
	for (uint32_t i = 0; i < 3; i++) {
		uint32_t ends[2] = { 0, lens[i] - 1 };
		T_CHECK(t_check(st, s[i], 10, i, ends, 2, 512) == 0, "session 10 data");
	}
	T_CHECK(tier_resume(m, 10, got, sizeof(got), s, 3, true) == -EBUSY, "resume twice");
	for (uint32_t i = 0; i < 3; i++)
		st->ops->stream_close(st->ctx, s[i]);

	T_CHECK(tier_resume(m, 11, got, sizeof(got), s, 3, false) == 0, "resume 11 on NVMe");
	uint32_t some[3] = { 0, 150, 299 };
	T_CHECK(t_check(st, s[1], 11, 1, some, 3, 512) == 0, "served from NVMe");
	/* with free RAM, a chunk read often enough (here chunk 1 of stream 2) comes back whole */
	struct tier_stats before;
	tier_manager_stats(m, &before);
	struct t_rng hr = { 77 };
	uint32_t hot[64];
	for (int round = 0; round < 8; round++) {
		for (uint32_t i = 0; i < 64; i++)
			hot[i] = 128 + (uint32_t)(t_next(&hr) % 128);
		T_CHECK(t_check(st, s[2], 11, 2, hot, 64, 512) == 0, "hot gather");
	}
	struct tier_stats after;
	tier_manager_stats(m, &after);
	T_CHECK(after.promotions > before.promotions, "a hot chunk must be promoted into free RAM");
	T_CHECK(after.nvme_gather_bytes - before.nvme_gather_bytes >=
			(after.nvme_records_read - before.nvme_records_read + 128) * 512,
		"promotion reads count in the read amplification");
	for (uint32_t i = 0; i < 3; i++)
		st->ops->stream_close(st->ctx, s[i]);

	T_CHECK(tier_resume(m, 12, got, sizeof(got), s, 3, true) == -EBADMSG,
		"corruption found on resume");
	T_CHECK(strstr(lb.text, "checksum mismatch: session 12 stream 2 position 2500"),
		"log names session and position: %s", lb.text);
	T_CHECK(tier_resume(m, 12, got, sizeof(got), s, 3, false) == 0, "resume 12 on NVMe");
	uint32_t bad = 2500, good = 2499;
	T_CHECK(t_check(st, s[2], 12, 2, &good, 1, 512) == 0, "neighbour fine");
	T_CHECK(t_check(st, s[2], 12, 2, &bad, 1, 512) == -EBADMSG, "corrupt record refused");
	struct tier_stats ts;
	tier_manager_stats(m, &ts);
	T_CHECK(ts.checksum_failures == 2, "checksum failures %" PRIu64, ts.checksum_failures);
	for (uint32_t i = 0; i < 3; i++)
		st->ops->stream_close(st->ctx, s[i]);

	/* drop: gone from the list and from the disk */
	T_CHECK(tier_drop(m, 11) == 0 && tier_drop(m, 11) == -ENOENT, "drop");
	T_CHECK(tier_resume(m, 11, got, sizeof(got), s, 3, false) == -ENOENT, "dropped");
	tier_manager_close(m);

	/* half-written and damaged manifest entries, orphaned files: discarded on open */
	snprintf(path, sizeof(path), "%s/session-00000000000000ff.man.tmp", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	T_CHECK(fd >= 0 && write(fd, "half", 4) == 4, "tmp entry");
	close(fd);
	snprintf(path, sizeof(path), "%s/session-00000000000000fe.man", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	T_CHECK(fd >= 0 && write(fd, "SPQMAN01garbage-garbage-garbage-garbage", 39) == 39, "bad entry");
	close(fd);
	snprintf(path, sizeof(path), "%s/00000000000000aa.rec", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	lb.text[0] = 0;
	m = t_manager(dir, CHUNK, 8, 1ull << 30, capture, &lb);
	T_CHECK(strstr(lb.text, "discarding half-written manifest entry"), "tmp logged: %s", lb.text);
	T_CHECK(strstr(lb.text, "discarding manifest entry session-00000000000000fe.man"),
		"bad entry logged: %s", lb.text);
	T_CHECK(strstr(lb.text, "orphaned file 00000000000000aa.rec"), "orphan logged");
	T_CHECK(access(path, F_OK) != 0, "orphan removed");
	T_CHECK(tier_parked_list(m, info, 8, &count) == 0 && count == 2, "10 and 12 left: %u", count);
	T_CHECK(tier_drop(m, 10) == 0 && tier_drop(m, 12) == 0, "drop the rest");
	tier_manager_close(m);
}

/* ---- appends undone: one operation over several streams, all or nothing ---- */

#define RW_HEADS 4u
#define RW_D 128u
#define RW_G 2u

struct rw_set {
	struct sparq_stream *s[RW_HEADS];
	struct sparq_stream_mark *mark[RW_HEADS];
};

static void rw_open(struct rw_set *x, struct sparq_backend *be, struct sparq_store *st)
{
	const char *why = "";

	for (uint32_t h = 0; h < RW_HEADS; h++) {
		T_CHECK(sparq_stream_create(be, st, RW_D, SPARQ_DTYPE_F16, &x->s[h], &why) == 0,
			"stream: %s", why);
		x->mark[h] = t_alloc(sparq_stream_mark_size(x->s[h]));
	}
}

static void rw_close(struct rw_set *x)
{
	for (uint32_t h = 0; h < RW_HEADS; h++) {
		sparq_stream_destroy(x->s[h]);
		free(x->mark[h]);
	}
}

/* Rows of head h, positions [pos, pos+n): K then V, [n][d] each. */
static void rw_rows(uint32_t h, uint32_t pos, uint32_t n, uint16_t *k, uint16_t *v)
{
	for (uint32_t t = 0; t < n; t++) {
		struct t_rng r = { ((uint64_t)h << 32) ^ (pos + t) ^ 0xabcdull << 40 };
		for (uint32_t i = 0; i < RW_D; i++) {
			k[(size_t)t * RW_D + i] = sparq_f32_to_f16((float)t_normal(&r));
			v[(size_t)t * RW_D + i] = sparq_f32_to_f16((float)(3 * t_normal(&r) + 1));
		}
	}
}

/* What sparqd does for one layer: mark every head, append head by head, rewind them
 * all when one fails. Returns 0, or the error with the failing head in *at. */
static int rw_append(struct rw_set *x, uint32_t n, uint32_t *at)
{
	uint16_t *k = t_alloc((size_t)n * RW_D * 2), *v = t_alloc((size_t)n * RW_D * 2);
	const char *why = "";
	int ret = 0;

	for (uint32_t h = 0; h < RW_HEADS; h++)
		sparq_stream_mark(x->s[h], x->mark[h]);
	for (uint32_t h = 0; h < RW_HEADS && !ret; h++) {
		rw_rows(h, sparq_stream_len(x->s[h]), n, k, v);
		ret = sparq_stream_append(x->s[h], n, k, v, &why);
		*at = h;
	}
	for (uint32_t h = 0; ret && h < RW_HEADS; h++)
		T_CHECK(sparq_stream_rewind(x->s[h], x->mark[h]) == 0, "rewind head %u", h);
	free(k);
	free(v);
	return ret;
}

/* Attention of every head with fixed queries: y is [RW_HEADS][RW_G][RW_D]. */
static void rw_attend(struct sparq_backend *be, struct rw_set *x, float *y)
{
	static float q[RW_HEADS][RW_G * RW_D];
	struct sparq_attend_item it[RW_HEADS];
	struct t_rng r = { 4242 };

	for (uint32_t h = 0; h < RW_HEADS; h++) {
		for (uint32_t i = 0; i < RW_G * RW_D; i++)
			q[h][i] = (float)(2 * t_normal(&r));
		it[h] = (struct sparq_attend_item){ .stream = x->s[h], .g = RW_G, .q = q[h],
						    .y = y + (size_t)h * RW_G * RW_D,
						    .params = { .ratio = 8, .l = -1 } };
	}
	struct sparq_attend_batch b = { .items = it, .n = RW_HEADS };
	T_CHECK(sparq_backend_attend(be, &b) == 0, "attend: %s", b.why);
}

/*
 * A round of appends to 4 streams over the tiers fails at every I/O its demotions
 * make (injected ENOSPC and EIO); each failure must leave every stream as it was: its
 * length, its V sum bit for bit (the mean equals that of heap streams that only saw
 * the successful appends), its attention output, and no records past its end. Then
 * the round succeeds and both sets still agree; a parked prefix cannot be rewound.
 */
static void test_rewind(const char *dir)
{
	struct tier_manager *m = t_manager(dir, CHUNK, RW_HEADS, 1ull << 30, NULL, NULL);
	struct sparq_backend_config bc = { .n_threads = 2 };
	struct sparq_backend *be = t_backend_or_skip("cpu", &bc);
	struct sparq_store *heap, *st = tier_manager_store(m);
	struct tier_nvme *nv = tier_manager_nvme(m);
	static float y0[RW_HEADS * RW_G * RW_D], y1[RW_HEADS * RW_G * RW_D];
	static float m0[RW_D], m1[RW_D];
	struct rw_set tier, ref;
	uint32_t at = 0, failures = 0, late = 0, per = CHUNK / (RW_D * 4);
	int ret;

	T_CHECK(sparq_store_heap_create(1024, 0, &heap) == 0, "heap");
	rw_open(&tier, be, st);
	rw_open(&ref, be, heap);
	/* most of a chunk per head: RAM is full, the next round demotes */
	T_CHECK(rw_append(&tier, per - 28, &at) == 0 && rw_append(&ref, per - 28, &at) == 0,
		"first round");
	rw_attend(be, &tier, y0);
	for (uint32_t after = 0;; after++) {
		struct tier_nvme_fault f = { .after = after, .count = 1u << 20,
					     .err = after % 2 ? -EIO : -ENOSPC, .writes = true };
		tier_nvme_inject(nv, &f);
		ret = rw_append(&tier, 100, &at);
		f = (struct tier_nvme_fault){ 0 };
		tier_nvme_inject(nv, &f);
		if (ret == 0)
			break;
		T_CHECK(ret == -ENOSPC || ret == -EIO, "round fails with %d", ret);
		failures++;
		late += at > 0;
		for (uint32_t h = 0; h < RW_HEADS; h++) {
			uint64_t ram, nvme;
			uint32_t end = per - 28;

			T_CHECK(sparq_stream_len(tier.s[h]) == end, "after %u: head %u length %u", after,
				h, sparq_stream_len(tier.s[h]));
			T_CHECK(sparq_stream_vmean(tier.s[h], m0) == 0 &&
					sparq_stream_vmean(ref.s[h], m1) == 0 && !memcmp(m0, m1, sizeof(m0)),
				"after %u: head %u V sum not restored bit for bit", after, h);
			tier_stream_placement(sparq_stream_records(tier.s[h]), &ram, &nvme);
			T_CHECK(ram + nvme == end, "after %u: head %u keeps %" PRIu64 " records", after,
				h, ram + nvme);
			uint8_t rec[RW_D * 4];
			uint32_t last = end - 1;
			T_CHECK(sparq_stream_gather(tier.s[h], &end, 1, rec) == -ERANGE &&
					sparq_stream_gather(tier.s[h], &last, 1, rec) == 0,
				"after %u: head %u records end at %u", after, h, end);
		}
		rw_attend(be, &tier, y1);
		T_CHECK(!memcmp(y0, y1, sizeof(y0)), "after %u: attention changed", after);
	}
	T_CHECK(late > 0, "no failure after the first head (%u failures): nothing rewound",
		failures);
	T_CHECK(rw_append(&ref, 100, &at) == 0, "reference round");
	rw_attend(be, &tier, y0);
	rw_attend(be, &ref, y1);
	T_CHECK(!memcmp(y0, y1, sizeof(y0)), "after the retry the streams differ from the reference");
	for (uint32_t h = 0; h < RW_HEADS; h++)
		T_CHECK(sparq_stream_vmean(tier.s[h], m0) == 0 &&
				sparq_stream_vmean(ref.s[h], m1) == 0 && !memcmp(m0, m1, sizeof(m0)),
			"head %u: V sum differs from the reference after the retry", h);
	printf("rewind: %u failed rounds (%u after the first head), every stream restored bit for "
	       "bit\n", failures, late);

	/* misuse: a mark of another stream; a rewind into the parked prefix */
	T_CHECK(sparq_stream_rewind(tier.s[1], tier.mark[0]) == -EINVAL, "foreign mark");
	struct sparq_store_stream *recs[RW_HEADS];
	for (uint32_t h = 0; h < RW_HEADS; h++)
		recs[h] = sparq_stream_records(tier.s[h]);
	T_CHECK(tier_park(m, 77, "x", 1, recs, RW_HEADS) == 0, "park");
	T_CHECK(sparq_stream_rewind(tier.s[0], tier.mark[0]) == -EBUSY &&
			sparq_stream_len(tier.s[0]) == per + 72,
		"a rewind into the parked records must be refused");
	uint16_t kr[RW_D] = { 0 }, vr[RW_D] = { 0 };
	T_CHECK(st->ops->write(st->ctx, recs[0], 5, 1, kr, vr) == -EBUSY, "rewrite of a parked record");
	T_CHECK(tier_drop(m, 77) == 0, "drop");
	rw_close(&tier);
	rw_close(&ref);
	sparq_store_destroy(heap);
	sparq_backend_close(be);
	tier_manager_close(m);
}

static void test_config(const char *dir)
{
	struct tier_manager_config cfg;
	struct tier_manager *m;
	const char *why = NULL;

	tier_manager_defaults(&cfg);
	cfg.dir = dir;
	cfg.chunk_bytes = 1000;
	T_CHECK(tier_manager_open(&cfg, &m, &why) == -EINVAL && strstr(why, "chunk"), "chunk size");
	tier_manager_defaults(&cfg);
	cfg.dir = dir;
	cfg.ram_bytes = 4096;
	T_CHECK(tier_manager_open(&cfg, &m, &why) == -EINVAL && strstr(why, "RAM"), "RAM size");
	tier_manager_defaults(&cfg);
	cfg.dir = "";
	T_CHECK(tier_manager_open(&cfg, &m, &why) == -EINVAL, "no dir");
}

int main(void)
{
	char *dir = t_tempdir();

	test_config(dir);
	test_pressure(dir, 512);   /* d=128 fp16: one record, one sector */
	test_pressure(dir, 320);   /* d=80: padded to the next aligned unit */
	test_full_nvme(dir);
	test_faults(dir);
	test_rewind(dir);
	t_rmdir(dir);
	free(dir);
	/* a fresh directory: the test knows which stream file to corrupt by its uid */
	dir = t_tempdir();
	test_park_restart(dir);
	t_rmdir(dir);
	free(dir);
	printf("test_tiers: ok\n");
	return T_EXIT_PASS;
}
