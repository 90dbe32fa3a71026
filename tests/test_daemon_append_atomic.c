/*
 * test_daemon_append_atomic.c — an append that fails partway through a layer changes
 * nothing. sparqd runs with tiny tiers (1 MiB of RAM, 1 MiB of NVMe, 64 KiB chunks);
 * one-chunk filler sessions take every free chunk, two of them are closed again, and
 * an append to a session with 4 KV heads then finds room for the new chunks of two
 * heads only: the third fails with -ENOSPC after two heads took the tokens. The client
 * must get the error and the session must be exactly as before: every stream's length
 * (gather ends there, list counts the records), the attention output bit for bit. Once
 * room is made, the same append succeeds and the session equals one that never saw the
 * failure, bit for bit.
 */
#include <errno.h>
#include <string.h>

#include "client_helpers.h"
#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#define HQ 8u
#define HKV 4u
#define D 128u
#define PER 128u          /* records per 64 KiB chunk: 2 · 128 · 2 B = 512 B each */
#define GROW 100u
#define FILLERS_MAX 128u

static uint16_t elem(uint32_t pos, uint32_t h, uint32_t i, bool is_v)
{
	struct t_rng r = { 0xa70 ^ ((uint64_t)pos << 20) ^ ((uint64_t)h << 12) ^
			   ((uint64_t)i << 1) ^ is_v };
	t_next(&r);
	return sparq_f32_to_f16((float)(is_v ? 2 * t_normal(&r) + 0.5 : t_normal(&r)));
}

/* Appends positions [pos, pos+n) of every KV head (hkv of them) to layer 0. */
static int append(struct sparq_client *c, uint64_t id, uint32_t hkv, uint32_t pos, uint32_t n)
{
	uint16_t *k = t_alloc((size_t)n * hkv * D * 2), *v = t_alloc((size_t)n * hkv * D * 2);

	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < hkv; h++)
			for (uint32_t i = 0; i < D; i++) {
				size_t at = ((size_t)t * hkv + h) * D + i;
				k[at] = elem(pos + t, h, i, false);
				v[at] = elem(pos + t, h, i, true);
			}
	int ret = sparq_append(c, id, 0, n, k, v);
	free(k);
	free(v);
	return ret;
}

static void attend(struct sparq_client *c, uint64_t id, float *y, float *alpha)
{
	static float q[HQ * D];
	struct t_rng r = { 17 };
	struct sparq_attend_req req = { .session = id, .q = q, .y = y, .alpha = alpha };
	int32_t bad;

	for (uint32_t i = 0; i < HQ * D; i++)
		q[i] = (float)(2 * t_normal(&r));
	T_CHECK_OK(c, sparq_attend(c, 0, &req, 1, &bad));
}

/* Every KV head holds exactly positions [0, len), with the rows appended. */
static void check_streams(struct sparq_client *c, uint64_t id, uint32_t len)
{
	uint32_t *pos = t_alloc((size_t)len * 4), end = len;
	uint16_t *out = t_alloc((size_t)len * 2 * D * 2);
	struct sparq_session_info list[FILLERS_MAX + 4];
	const struct sparq_session_info *info;
	uint32_t n;

	for (uint32_t j = 0; j < len; j++)
		pos[j] = j;
	for (uint32_t h = 0; h < HKV; h++) {
		T_CHECK_OK(c, sparq_gather(c, id, 0, h, pos, len, out));
		for (uint32_t j = 0; j < len; j++)
			for (uint32_t i = 0; i < D; i++)
				T_CHECK(out[(size_t)j * 2 * D + i] == elem(j, h, i, false) &&
						out[(size_t)j * 2 * D + D + i] == elem(j, h, i, true),
					"head %u row %u differs", h, j);
		int ret = sparq_gather(c, id, 0, h, &end, 1, out);
		T_CHECK(ret == -ERANGE, "head %u holds position %u (gather: %d)", h, end, ret);
	}
	T_CHECK_OK(c, sparq_session_list(c, list, FILLERS_MAX + 4, &n));
	info = t_session_find(list, n < FILLERS_MAX + 4 ? n : FILLERS_MAX + 4, id);
	T_CHECK(info && info->tokens == len && info->ram_records + info->nvme_records == HKV * len,
		"list: %llu tokens, %llu records in the tiers, want %u and %u",
		info ? (unsigned long long)info->tokens : 0ull,
		info ? (unsigned long long)(info->ram_records + info->nvme_records) : 0ull, len,
		HKV * len);
	free(pos);
	free(out);
}

int main(void)
{
	const char *args[] = { "--ram-bytes", "1M", "--nvme-bytes", "1M", "--chunk-bytes", "64K",
			       NULL };
	struct sparq_session_opts o = {
		.geometry = { .n_layers = 1, .n_q_heads = HQ, .n_kv_heads = HKV, .head_dim = D,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .ratio = 8, .l = -1 },
		.label = "atomic",
	};
	struct sparq_session_opts fo = o;
	static float y0[HQ * D], y1[HQ * D], a0[HQ], a1[HQ];
	static uint64_t fillers[FILLERS_MAX];
	uint32_t n_fill = 0;
	struct t_daemon d = { 0 };
	struct sparq_client *c;
	uint64_t id, twin;
	int ret = 0;

	t_daemon_need_own("the tiny-tier append test");
	t_daemon_start(&d, NULL, args);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "atomic", 0, &c));
	T_CHECK_OK(c, sparq_session_create(c, &o, &id));
	/* one full chunk per KV head: the next append needs a new chunk for each */
	T_CHECK_OK(c, append(c, id, HKV, 0, PER));
	attend(c, id, y0, a0);

	/* one-chunk sessions until the tiers are full, then two chunks' room again */
	fo.geometry.n_q_heads = 1;
	fo.geometry.n_kv_heads = 1;
	fo.label = "filler";
	for (;;) {
		T_CHECK(n_fill < FILLERS_MAX, "%u one-chunk sessions and still room", n_fill);
		T_CHECK_OK(c, sparq_session_create(c, &fo, &fillers[n_fill]));
		ret = append(c, fillers[n_fill], 1, 0, PER);
		if (ret)
			break;
		n_fill++;
	}
	T_CHECK(ret == -ENOSPC, "a full tier answers %d (%s), not -ENOSPC", ret,
		sparq_client_error(c));
	T_CHECK(n_fill >= 2, "only %u fillers fit", n_fill);
	T_CHECK_OK(c, sparq_session_close(c, fillers[n_fill]));
	T_CHECK_OK(c, sparq_session_close(c, fillers[--n_fill]));
	T_CHECK_OK(c, sparq_session_close(c, fillers[--n_fill]));

	/* heads 0 and 1 get the two chunks, head 2 fails: nothing may remain */
	unsigned rewound = t_daemon_log_count(&d, "at KV head 2 of 4 (");
	ret = append(c, id, HKV, PER, GROW);
	T_CHECK(ret == -ENOSPC, "the append over full tiers gives %d (%s), not -ENOSPC", ret,
		sparq_client_error(c));
	T_CHECK(t_daemon_log_count(&d, "at KV head 2 of 4 (") == rewound + 1,
		"the append did not fail at head 2 after two heads took the tokens");
	check_streams(c, id, PER);
	attend(c, id, y1, a1);
	T_CHECK(memcmp(y0, y1, sizeof(y0)) == 0 && memcmp(a0, a1, sizeof(a0)) == 0,
		"attention changed after a failed append");

	/* with room again, the same append succeeds; the session equals a twin that never
	 * saw the failure (V sums restored bit for bit, or the means would differ) */
	while (n_fill)
		T_CHECK_OK(c, sparq_session_close(c, fillers[--n_fill]));
	T_CHECK_OK(c, append(c, id, HKV, PER, GROW));
	T_CHECK_OK(c, sparq_session_create(c, &o, &twin));
	T_CHECK_OK(c, append(c, twin, HKV, 0, PER + GROW));
	check_streams(c, id, PER + GROW);
	attend(c, id, y0, a0);
	attend(c, twin, y1, a1);
	T_CHECK(memcmp(y0, y1, sizeof(y0)) == 0 && memcmp(a0, a1, sizeof(a0)) == 0,
		"after the retry the session differs from one that never failed");
	sparq_disconnect(c);
	T_CHECK(t_daemon_stop(&d) == 0, "SIGTERM did not end in exit 0");
	t_daemon_cleanup(&d);
	printf("PASS: an append failing at KV head 2 of %u changed nothing\n", HKV);
	return T_EXIT_PASS;
}
