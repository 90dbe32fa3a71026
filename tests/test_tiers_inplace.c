/*
 * test_tiers_inplace.c — a backend over the tier manager with some streams wholly in
 * RAM (held and read in place, issue 5) and some partly or wholly on NVMe (copied
 * with gather) in the same call gives bit for bit the selections and outputs of the
 * same calls over a heap store: full and select modes, masks, blend on and off, dense
 * items, one stream twice in a call. Every hold ends with its call, a failing one
 * included: afterwards other appends can demote those streams again.
 *
 * Argument: the backend (cpu by default; cuda skips with 77 where no GPU answers).
 */
#include <fcntl.h>
#include <inttypes.h>

#include "tier_helpers.h"

#define S 3000u
#define D 128u
#define G 4u
#define N_KV 4u
#define N_IT 5u         /* the 4 streams, then stream 0 again */
#define CHUNK (64u << 10)
#define RAM_CHUNKS 60u  /* of 4 x 24: streams 0 and 1 fit whole, 3 in part, 2 not */

static void placement(struct sparq_stream *s, uint64_t *ram, uint64_t *nvme)
{
	tier_stream_placement(sparq_stream_records(s), ram, nvme);
}

int main(int argc, char **argv)
{
	const char *be_name = argc > 1 ? argv[1] : "cpu";
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct sparq_backend *be = t_backend_or_skip(be_name, &cfg);
	char *dir = t_tempdir();
	struct tier_manager *m = t_manager(dir, CHUNK, RAM_CHUNKS, 1ull << 30, NULL, NULL);
	struct sparq_store *heap, *tiers = tier_manager_store(m);
	struct sparq_stream *a[N_KV], *b[N_KV];
	struct t_rng rng = { 11 };
	const char *why = "";
	uint16_t *k = t_alloc((size_t)S * D * 2), *v = t_alloc((size_t)S * D * 2);
	static float q[N_IT][G * D], ya[N_IT][G * D], yb[N_IT][G * D];
	static float aa[N_IT][G], ab[N_IT][G];
	static uint32_t sa[N_IT][S], sb[N_IT][S];
	uint64_t mask[(S + 63) / 64] = { 0 };
	struct tier_stats ts0, ts;
	uint64_t ram, nvme;

	T_CHECK(sparq_store_heap_create(1024, 0, &heap) == 0, "heap");
	for (uint32_t j = 0; j < S; j += 5)
		mask[j / 64] |= UINT64_C(1) << (j % 64);
	for (uint32_t h = 0; h < N_KV; h++) {
		T_CHECK(sparq_stream_create(be, heap, D, SPARQ_DTYPE_F16, &a[h], &why) == 0, "a");
		T_CHECK(sparq_stream_create(be, tiers, D, SPARQ_DTYPE_F16, &b[h], &why) == 0, "b");
	}
	/* streams 2 and 3 first: the LRU then pushes them, not 0 and 1, to NVMe */
	static const uint32_t order[N_KV] = { 2, 3, 0, 1 };
	for (uint32_t o = 0; o < N_KV; o++) {
		uint32_t h = order[o];
		for (size_t i = 0; i < (size_t)S * D; i++) {
			k[i] = sparq_f32_to_f16((float)t_normal(&rng));
			v[i] = sparq_f32_to_f16((float)t_normal(&rng));
		}
		/* prefill then decode-sized appends, as an engine does */
		T_CHECK(sparq_stream_append(a[h], S - 8, k, v, &why) == 0, "append a: %s", why);
		T_CHECK(sparq_stream_append(b[h], S - 8, k, v, &why) == 0, "append b: %s", why);
		for (uint32_t t = S - 8; t < S; t++) {
			T_CHECK(sparq_stream_append(a[h], 1, k + (size_t)t * D, v + (size_t)t * D,
						    &why) == 0, "append a: %s", why);
			T_CHECK(sparq_stream_append(b[h], 1, k + (size_t)t * D, v + (size_t)t * D,
						    &why) == 0, "append b: %s", why);
		}
	}
	for (uint32_t i = 0; i < N_IT; i++)
		for (uint32_t j = 0; j < G * D; j++)
			q[i][j] = (float)(2 * t_normal(&rng));
	placement(b[0], &ram, &nvme);
	T_CHECK(ram == S && nvme == 0, "stream 0 in RAM: %" PRIu64 "/%" PRIu64, ram, nvme);
	placement(b[1], &ram, &nvme);
	T_CHECK(ram == S && nvme == 0, "stream 1 in RAM: %" PRIu64 "/%" PRIu64, ram, nvme);
	placement(b[2], &ram, &nvme);
	T_CHECK(nvme == S, "stream 2 on NVMe: %" PRIu64 "/%" PRIu64, ram, nvme);
	placement(b[3], &ram, &nvme);
	T_CHECK(ram > 0 && nvme > 0, "stream 3 split: %" PRIu64 "/%" PRIu64, ram, nvme);

	uint32_t calls = 0;
	for (int mode = 0; mode < 2; mode++)
	for (int variant = 0; variant < 4; variant++) {
		/* 0: sparse, no blend; 1: sparse, blend, mask; 2: dense; 3: dense, blend, mask */
		bool dense = variant >= 2, masked = variant & 1;
		struct sparq_attend_item ia[N_IT], ib[N_IT];

		for (uint32_t i = 0; i < N_IT; i++) {
			uint32_t h = i % N_KV;
			struct sparq_params p = { .ratio = dense ? 0 : 8, .l = -1,
						  .r = dense ? 16 : 0, .k = dense ? S : 0,
						  .blend = masked ? SPARQ_BLEND_ON : SPARQ_BLEND_OFF };
			ia[i] = (struct sparq_attend_item){
				.stream = a[h], .g = G, .q = q[i], .y = mode ? NULL : ya[i],
				.alpha = aa[i], .sel = sa[i], .sel_cap = S, .params = p,
				.exclude = masked ? mask : NULL };
			ib[i] = ia[i];
			ib[i].stream = b[h];
			ib[i].y = mode ? NULL : yb[i];
			ib[i].alpha = ab[i];
			ib[i].sel = sb[i];
		}
		struct sparq_attend_batch ba = { .items = ia, .n = N_IT, .mode = mode },
					  bb = { .items = ib, .n = N_IT, .mode = mode };
		memset(yb, 0, sizeof(yb));
		tier_manager_stats(m, &ts0);
		T_CHECK(sparq_backend_attend(be, &ba) == 0, "heap attend: %s", ba.why);
		T_CHECK(sparq_backend_attend(be, &bb) == 0, "tier attend: %s", bb.why);
		tier_manager_stats(m, &ts);
		for (uint32_t i = 0; i < N_IT; i++) {
			T_CHECK(ia[i].n_sel == ib[i].n_sel &&
				!memcmp(sa[i], sb[i], ia[i].n_sel * sizeof(uint32_t)),
				"selections differ (mode %d variant %d item %u)", mode, variant, i);
			T_CHECK(!memcmp(aa[i], ab[i], sizeof(aa[i])), "alpha differs");
			T_CHECK(mode || !memcmp(ya[i], yb[i], sizeof(ya[i])),
				"outputs differ (variant %d item %u)", variant, i);
		}
		/* the CPU backend holds each full-mode item's stream for the call (a GPU
		 * run may also hold for its internal CPU items: at least as many) */
		uint64_t holds = ts.holds - ts0.holds, misses = ts.hold_misses - ts0.hold_misses;
		if (mode == SPARQ_ATTEND_FULL)
			T_CHECK(holds >= 3 && misses >= 2, "holds %" PRIu64 " misses %" PRIu64,
				holds, misses);
		else
			T_CHECK(holds == 0 && misses == 0, "select mode holds nothing");
		calls++;
	}
	printf("%s: %u calls over tiers (2 streams in place, 2 copied) == heap, bit for bit\n",
	       be_name, calls);

	/* a call that fails after its holds were taken: junk over stream 2's file (uid 3,
	 * the third stream the manager opened) makes its gather fail */
	char path[4200];
	snprintf(path, sizeof(path), "%s/%016x.rec", dir, 3);
	int fd = open(path, O_WRONLY);
	T_CHECK(fd >= 0, "open %s", path);
	uint8_t *junk = t_alloc((size_t)S * 512);
	memset(junk, 0x5a, (size_t)S * 512);
	T_CHECK(pwrite(fd, junk, (size_t)S * 512, 0) == (ssize_t)S * 512, "corrupt");
	close(fd);
	free(junk);
	struct sparq_attend_item it[N_KV];
	for (uint32_t h = 0; h < N_KV; h++)
		it[h] = (struct sparq_attend_item){ .stream = b[h], .g = G, .q = q[h], .y = yb[h],
						    .params = { .ratio = 8, .l = -1 } };
	struct sparq_attend_batch bt = { .items = it, .n = N_KV };
	int ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == -EBADMSG, "attend over corrupt records must fail, got %d", ret);

	/* no hold outlived its call: a new stream's appends demote streams 0 and 1 */
	struct sparq_store_stream *x;
	T_CHECK(tiers->ops->stream_open(tiers->ctx, 512, &x) == 0, "open x");
	T_CHECK(t_append(tiers, x, 3, 9, 0, RAM_CHUNKS * (CHUNK / 512), 512) == 0, "append x");
	placement(b[0], &ram, &nvme);
	T_CHECK(nvme > 0, "stream 0 still pinned after its calls");
	placement(b[1], &ram, &nvme);
	T_CHECK(nvme > 0, "stream 1 still pinned after its calls");
	tiers->ops->stream_close(tiers->ctx, x);
	printf("a failing call (-EBADMSG) released its holds too\n");

	for (uint32_t h = 0; h < N_KV; h++) {
		sparq_stream_destroy(a[h]);
		sparq_stream_destroy(b[h]);
	}
	sparq_store_destroy(heap);
	sparq_backend_close(be);
	tier_manager_close(m);
	t_rmdir(dir);
	free(dir);
	free(k);
	free(v);
	return T_EXIT_PASS;
}
