/*
 * test_crc32c.c — CRC32C against published check values (the "123456789" check value
 * and the iSCSI test vectors of RFC 3720 B.4), incremental == one-shot on every split,
 * and the SSE4.2 path against the table path on random buffers of random lengths and
 * alignments. The dispatching tier_crc32c is compared with tier_crc32c_portable; on a
 * processor without SSE4.2 both are the table path and the test says so.
 */
#include <stdint.h>
#include <string.h>

#include "crc32c.h"
#include "helpers.h"

static void test_vectors(void)
{
	uint8_t buf[32];

	T_CHECK(tier_crc32c(0, "123456789", 9) == 0xe3069283u, "check value %08x",
		tier_crc32c(0, "123456789", 9));
	T_CHECK(tier_crc32c_portable(0, "123456789", 9) == 0xe3069283u, "portable check value %08x",
		tier_crc32c_portable(0, "123456789", 9));
	T_CHECK(tier_crc32c(0, NULL, 0) == 0 && tier_crc32c(0x12345678u, "", 0) == 0x12345678u,
		"an empty buffer leaves the value unchanged");

	/* RFC 3720 B.4 */
	memset(buf, 0, sizeof(buf));
	T_CHECK(tier_crc32c(0, buf, 32) == 0x8a9136aau, "32 x 0x00: %08x", tier_crc32c(0, buf, 32));
	T_CHECK(tier_crc32c_portable(0, buf, 32) == 0x8a9136aau, "portable 32 x 0x00");
	memset(buf, 0xff, sizeof(buf));
	T_CHECK(tier_crc32c(0, buf, 32) == 0x62a8ab43u, "32 x 0xff: %08x", tier_crc32c(0, buf, 32));
	T_CHECK(tier_crc32c_portable(0, buf, 32) == 0x62a8ab43u, "portable 32 x 0xff");
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	T_CHECK(tier_crc32c(0, buf, 32) == 0x46dd794eu, "32 ascending: %08x",
		tier_crc32c(0, buf, 32));
	T_CHECK(tier_crc32c_portable(0, buf, 32) == 0x46dd794eu, "portable 32 ascending");
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	T_CHECK(tier_crc32c(0, buf, 32) == 0x113fdb5cu, "32 descending: %08x",
		tier_crc32c(0, buf, 32));
	T_CHECK(tier_crc32c_portable(0, buf, 32) == 0x113fdb5cu, "portable 32 descending");
}

/* Every split point of a buffer that covers head, 8-byte body and tail on both paths. */
static void test_incremental(struct t_rng *rng)
{
	uint8_t buf[300];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)t_next(rng);
	for (size_t len = 0; len <= sizeof(buf); len += 37) {
		uint32_t whole = tier_crc32c(0, buf, len);

		for (size_t cut = 0; cut <= len; cut++) {
			uint32_t a = tier_crc32c(tier_crc32c(0, buf, cut), buf + cut, len - cut);
			uint32_t b = tier_crc32c_portable(tier_crc32c_portable(0, buf, cut),
							  buf + cut, len - cut);

			T_CHECK(a == whole && b == whole, "len %zu cut %zu: %08x %08x vs %08x", len,
				cut, a, b, whole);
		}
	}
}

/* Random lengths (0..64 KiB, biased small) at every offset mod 16, chained seeds. */
static void test_paths_agree(struct t_rng *rng)
{
	enum { MAX = 65536 + 16 };
	uint8_t *buf = t_alloc(MAX);

	for (size_t i = 0; i < MAX; i++)
		buf[i] = (uint8_t)t_next(rng);
	for (int iter = 0; iter < 20000; iter++) {
		size_t off = t_next(rng) % 16;
		size_t len = iter % 4 ? t_next(rng) % 600 : t_next(rng) % 65537;
		uint32_t seed = iter % 3 ? (uint32_t)t_next(rng) : 0;
		uint32_t hw = tier_crc32c(seed, buf + off, len);
		uint32_t sw = tier_crc32c_portable(seed, buf + off, len);

		T_CHECK(hw == sw, "iter %d off %zu len %zu seed %08x: %08x vs %08x", iter, off, len,
			seed, hw, sw);
	}
	free(buf);
}

int main(void)
{
	struct t_rng rng = { 0x5eed0c3cull };

#if defined(__x86_64__)
	printf("crc32c: sse4.2 path %s\n",
	       __builtin_cpu_supports("sse4.2") ? "in use" : "absent (table path only)");
#else
	printf("crc32c: table path only on this architecture\n");
#endif
	test_vectors();
	test_incremental(&rng);
	test_paths_agree(&rng);
	printf("crc32c: ok\n");
	return T_EXIT_PASS;
}
