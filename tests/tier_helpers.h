/*
 * tier_helpers.h — what the tier tests share: a private data directory, a manager
 * sized to force demotion, and records derived from (seed, stream, position) so any
 * record read back can be checked without keeping a copy.
 */
#ifndef SPARQ_TEST_TIER_HELPERS_H
#define SPARQ_TEST_TIER_HELPERS_H

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "manager.h"

static inline void t_record(uint64_t seed, uint32_t stream, uint32_t pos, uint32_t rb,
			    uint8_t *rec)
{
	struct t_rng r = { seed * 0x9e3779b97f4a7c15ull ^ ((uint64_t)stream << 40) ^ pos };

	for (uint32_t i = 0; i < rb; i += 8) {
		uint64_t x = t_next(&r);
		memcpy(rec + i, &x, rb - i < 8 ? rb - i : 8);
	}
}

/* Appends positions [pos, pos+n) of a seeded stream through the store interface. */
static inline int t_append(struct sparq_store *st, struct sparq_store_stream *s, uint64_t seed,
			   uint32_t stream, uint32_t pos, uint32_t n, uint32_t rb)
{
	uint8_t *k = t_alloc((size_t)n * rb / 2), *v = t_alloc((size_t)n * rb / 2);
	uint8_t *rec = t_alloc(rb);

	for (uint32_t i = 0; i < n; i++) {
		t_record(seed, stream, pos + i, rb, rec);
		memcpy(k + (size_t)i * rb / 2, rec, rb / 2);
		memcpy(v + (size_t)i * rb / 2, rec + rb / 2, rb / 2);
	}
	int ret = st->ops->write(st->ctx, s, pos, n, k, v);
	free(k);
	free(v);
	free(rec);
	return ret;
}

/* Gathers positions and compares each with its seeded content; returns the gather's
 * error, or exits on a mismatch. */
static inline int t_check(struct sparq_store *st, struct sparq_store_stream *s, uint64_t seed,
			  uint32_t stream, const uint32_t *pos, uint32_t n, uint32_t rb)
{
	uint8_t *out = t_alloc((size_t)n * rb), *want = t_alloc(rb);
	struct sparq_gather g = { .stream = s, .pos = pos, .n = n, .out = out };
	int ret = st->ops->gather(st->ctx, &g, 1);

	for (uint32_t i = 0; i < n && ret == 0; i++) {
		t_record(seed, stream, pos[i], rb, want);
		T_CHECK(memcmp(out + (size_t)i * rb, want, rb) == 0,
			"record %u of stream %u differs", pos[i], stream);
	}
	free(out);
	free(want);
	return ret;
}

static inline char *t_tempdir(void)
{
	const char *base = getenv("SPARQ_TEST_DIR");
	char tmpl[4096];

	snprintf(tmpl, sizeof(tmpl), "%s/sparq-tiers-XXXXXX", base ? base : "/tmp");
	char *d = mkdtemp(tmpl);
	T_CHECK(d, "mkdtemp: %s", strerror(errno));
	return strdup(d);
}

static inline void t_rmdir(const char *dir)
{
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	T_CHECK(system(cmd) == 0, "rm -rf %s", dir);
}

/* A manager on dir with ram_chunks chunks of RAM; exits 77 when the directory refuses
 * O_DIRECT or the kernel refuses io_uring. */
/* The tests' tier settings: small chunks, no huge pages, a modest queue. */
static inline void t_manager_config(struct tier_manager_config *cfg, const char *dir,
				    uint32_t chunk_bytes, uint32_t ram_chunks, uint64_t nvme_bytes)
{
	tier_manager_defaults(cfg);
	cfg->dir = dir;
	cfg->chunk_bytes = chunk_bytes;
	cfg->ram_bytes = (uint64_t)chunk_bytes * ram_chunks;
	cfg->nvme_bytes = nvme_bytes;
	cfg->staging_bytes = chunk_bytes > (1u << 20) ? chunk_bytes : (1u << 20);
	cfg->huge_pages = false;
	cfg->queue_depth = 32;
}

static inline struct tier_manager *t_manager(const char *dir, uint32_t chunk_bytes,
					     uint32_t ram_chunks, uint64_t nvme_bytes,
					     void (*log)(void *, enum tier_log_level, const char *),
					     void *log_user)
{
	struct tier_manager_config cfg;
	struct tier_manager *m;
	const char *why = "";

	t_manager_config(&cfg, dir, chunk_bytes, ram_chunks, nvme_bytes);
	cfg.log = log;
	cfg.log_user = log_user;
	int ret = tier_manager_open(&cfg, &m, &why);
	if (ret == -EOPNOTSUPP) {
		printf("SKIP: %s refuses O_DIRECT or io_uring: %s\n", dir, why);
		exit(T_EXIT_SKIP);
	}
	T_CHECK(ret == 0, "tier_manager_open: %d %s", ret, why);
	return m;
}

#endif
