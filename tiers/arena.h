/*
 * arena.h — the host-RAM tier's memory: one NUMA-bound allocation per arena, carved
 * into fixed-size chunk slots (DESIGN.md §3). Allocate once, carve, free once (STYLE
 * §7): the region is a single range that the CUDA backend can register with the GPU
 * once, and slots handed to one stream are kept close together (alloc near a hint)
 * so that a stream's gathers stay inside a small window of host memory.
 *
 * Thread-safety: slot alloc/free are internally locked; reading and writing a slot's
 * bytes is the owner's business.
 */
#ifndef SPARQ_TIERS_ARENA_H
#define SPARQ_TIERS_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tier_arena;

struct tier_arena_config {
	int node;                 /* NUMA node; -1 = the calling thread's local node */
	uint64_t capacity_bytes;  /* rounded down to whole slots; at least one slot */
	uint32_t slot_bytes;      /* bytes per chunk slot, a multiple of 4096 */
	bool huge_pages;          /* advise transparent huge pages for the region */
};

#define TIER_ARENA_NO_SLOT UINT32_MAX

/*
 * Validates cfg, then reserves the region on the node (pages are touched lazily).
 * -EINVAL with a reason for a bad config (node that does not exist, slot size not a
 * multiple of 4096, capacity below one slot or above the node's memory), -ENOMEM.
 * Works without NUMA support in the kernel (one node, 0).
 */
int tier_arena_create(const struct tier_arena_config *cfg, struct tier_arena **out,
		      const char **why);
void tier_arena_destroy(struct tier_arena *a);

/*
 * A free slot, preferably the first free one at or after hint (pass the stream's
 * previous slot + 1, or TIER_ARENA_NO_SLOT for none). -ENOSPC when every slot is taken.
 */
int tier_arena_alloc(struct tier_arena *a, uint32_t hint, uint32_t *slot);
void tier_arena_free(struct tier_arena *a, uint32_t slot);
/* The slot's bytes: slot_bytes of them, 4096-aligned. */
void *tier_arena_ptr(const struct tier_arena *a, uint32_t slot);

struct tier_arena_stats {
	int node;
	uint32_t slots, slots_used;
	uint64_t slot_bytes, capacity_bytes, used_bytes;
	bool huge_pages;          /* the kernel accepted MADV_HUGEPAGE for the region */
};
void tier_arena_stats(const struct tier_arena *a, struct tier_arena_stats *out);
/* The whole region, for one-time registration with a GPU. */
void tier_arena_region(const struct tier_arena *a, void **base, size_t *len);

#endif
