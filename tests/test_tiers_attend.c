/*
 * test_tiers_attend.c — the SparQ core over the tier manager, with most records on
 * NVMe, gives bit for bit the same selections and outputs as over the heap store:
 * the tiers plug in behind the store interface without touching the algorithm. Also
 * a stream whose record turns corrupt on disk makes attend fail, never answer wrong.
 */
#include <fcntl.h>

#include "tier_helpers.h"

#define S 20000u
#define D 128u
#define G 4u
#define N_KV 4u

int main(void)
{
	char *dir = t_tempdir();
	struct tier_manager *m = t_manager(dir, 64u << 10, 8, 1ull << 30, NULL, NULL);
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);
	struct sparq_store *heap, *tiers = tier_manager_store(m);
	struct sparq_stream *a[N_KV], *b[N_KV];
	struct t_rng rng = { 5 };
	const char *why = "";
	uint16_t *k = t_alloc((size_t)S * D * 2), *v = t_alloc((size_t)S * D * 2);
	static float q[N_KV][G * D], ya[N_KV][G * D], yb[N_KV][G * D];
	static uint32_t sa[N_KV][4096], sb[N_KV][4096];
	uint64_t mask[(S + 63) / 64] = { 0 };

	T_CHECK(sparq_store_heap_create(1024, 0, &heap) == 0, "heap");
	for (uint32_t j = 0; j < S; j += 7)
		mask[j / 64] |= UINT64_C(1) << (j % 64);
	for (uint32_t h = 0; h < N_KV; h++) {
		for (size_t i = 0; i < (size_t)S * D; i++) {
			k[i] = sparq_f32_to_f16((float)t_normal(&rng));
			v[i] = sparq_f32_to_f16((float)t_normal(&rng));
		}
		T_CHECK(sparq_stream_create(be, heap, D, SPARQ_DTYPE_F16, &a[h], &why) == 0, "a");
		T_CHECK(sparq_stream_create(be, tiers, D, SPARQ_DTYPE_F16, &b[h], &why) == 0, "b");
		T_CHECK(sparq_stream_append(a[h], S, k, v, &why) == 0, "append a: %s", why);
		T_CHECK(sparq_stream_append(b[h], S, k, v, &why) == 0, "append b: %s", why);
		for (uint32_t i = 0; i < G * D; i++)
			q[h][i] = (float)(2 * t_normal(&rng));
	}
	struct tier_stats ts;
	tier_manager_stats(m, &ts);
	T_CHECK(ts.ram_chunks <= 8 && ts.demotions > 0, "most records must be on NVMe");

	for (int blend = 0; blend < 2; blend++) {
		struct sparq_attend_item ia[N_KV], ib[N_KV];
		for (uint32_t h = 0; h < N_KV; h++) {
			struct sparq_params p = { .ratio = 8, .l = -1,
						  .blend = blend ? SPARQ_BLEND_ON : SPARQ_BLEND_OFF };
			ia[h] = (struct sparq_attend_item){ .stream = a[h], .g = G, .q = q[h], .y = ya[h],
							    .sel = sa[h], .sel_cap = 4096, .params = p,
							    .exclude = blend ? mask : NULL };
			ib[h] = ia[h];
			ib[h].stream = b[h];
			ib[h].y = yb[h];
			ib[h].sel = sb[h];
		}
		struct sparq_attend_batch ba = { .items = ia, .n = N_KV }, bb = { .items = ib, .n = N_KV };
		T_CHECK(sparq_backend_attend(be, &ba) == 0, "heap attend: %s", ba.why);
		T_CHECK(sparq_backend_attend(be, &bb) == 0, "tier attend: %s", bb.why);
		for (uint32_t h = 0; h < N_KV; h++) {
			T_CHECK(ia[h].n_sel == ib[h].n_sel &&
				!memcmp(sa[h], sb[h], ia[h].n_sel * sizeof(uint32_t)), "selections differ");
			T_CHECK(!memcmp(ya[h], yb[h], sizeof(ya[h])), "outputs differ (blend %d)", blend);
		}
	}
	tier_manager_stats(m, &ts);
	printf("attend over tiers == attend over heap; %llu records served from NVMe, %llu from RAM\n",
	       (unsigned long long)ts.nvme_records_read, (unsigned long long)ts.ram_records_read);
	T_CHECK(ts.nvme_records_read > 0, "NVMe must have served records");

	/* junk over the first stream's file (uid 1: the first opened on this manager) */
	char path[4200];
	snprintf(path, sizeof(path), "%s/%016x.rec", dir, 1);
	int fd = open(path, O_WRONLY);
	T_CHECK(fd >= 0, "open %s", path);
	uint8_t *junk = t_alloc(1 << 20);
	memset(junk, 0x5a, 1 << 20);
	for (off_t off = 0; off < (off_t)S * 512; off += 1 << 20)
		T_CHECK(pwrite(fd, junk, 1 << 20, off) == 1 << 20, "corrupt");
	close(fd);
	free(junk);
	struct sparq_attend_item it = { .stream = b[0], .g = G, .q = q[0], .y = yb[0],
					.params = { .ratio = 8, .l = -1 } };
	struct sparq_attend_batch bt = { .items = &it, .n = 1 };
	int ret = sparq_backend_attend(be, &bt);
	T_CHECK(ret == -EBADMSG, "attend over corrupt records must fail, got %d", ret);
	printf("corrupt records on NVMe: attend fails with -EBADMSG (%s)\n", bt.why);

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
