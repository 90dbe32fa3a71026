/*
 * arena.c — the host-RAM tier's memory (see arena.h): one region per arena, bound to a
 * NUMA node with libnuma, carved into fixed-size slots tracked by a bitmap.
 *
 * The region is reserved once at create and released once at destroy (STYLE §7); the
 * kernel backs its pages lazily on first touch, under the node binding set here, so a
 * large arena costs nothing until chunks are written into it. With huge_pages the
 * length is rounded up to 2 MiB: MADV_HUGEPAGE can only back whole, aligned 2 MiB
 * ranges, and Linux places anonymous mappings whose length is a multiple of 2 MiB on
 * a 2 MiB boundary, so the whole region becomes eligible. Fewer, larger pages are what
 * keeps a GPU's zero-copy gathers from being address-translation bound (DESIGN §7).
 *
 * Slot allocation is first-fit from a hint, wrapping around, one 64-bit bitmap word at
 * a time: consecutive chunks of one stream land next to each other, so the stream's
 * rows stay inside a small window of host memory.
 */
#include <errno.h>
#include <stdio.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arena.h"

#define ARENA_SLOT_ALIGN 4096u
/* The PMD-sized transparent huge page of x86-64 and 4 KiB-page arm64. */
#define ARENA_HUGE_BYTES (2ull << 20)

struct tier_arena {
	uint8_t *base;          /* region start: slot s at base + s * slot_bytes */
	size_t region_len;      /* mapped bytes: the slots, rounded to 2 MiB with huge pages */
	bool numa;              /* base came from libnuma (numa_free), else mmap (munmap) */
	bool huge_pages;        /* MADV_HUGEPAGE was accepted for the region */
	int node;               /* the node the region is bound to (0 without NUMA) */
	uint32_t slots;
	uint32_t slot_bytes;
	uint32_t words;         /* used_map words: ceil(slots / 64) */
	/*
	 * Changed only under mu; atomic so that stats, which take a const arena, can
	 * read a snapshot without the lock.
	 */
	_Atomic uint32_t used;
	pthread_mutex_t mu;
	/*
	 * One bit per slot, set = taken. The bits past the last slot in the last word are
	 * set at create and never cleared, so the search never has to bound-check a bit.
	 */
	uint64_t used_map[];
};

/*
 * The node an arena with node -1 is bound to: the calling thread's, resolved now so that
 * the binding (and what stats report) does not depend on which thread later touches a
 * page first.
 */
static int arena_local_node(void)
{
	int cpu = sched_getcpu();
	int node = cpu >= 0 ? numa_node_of_cpu(cpu) : -1;

	return node >= 0 ? node : 0;
}

/* Whether cpusets let this process allocate on node (mbind would fail otherwise). */
static bool arena_node_allowed(int node)
{
	struct bitmask *allowed = numa_get_mems_allowed();
	bool ok;

	/* no mask to consult: let the binding itself decide */
	if (!allowed)
		return true;
	ok = numa_bitmask_isbitset(allowed, (unsigned int)node);
	numa_free_nodemask(allowed);
	return ok;
}

/*
 * Validates cfg without allocating anything (STYLE §5): on success, *node is the node to
 * bind to and *numa whether libnuma is usable. capacity is the usable bytes (whole slots).
 */
/* MemAvailable from /proc/meminfo in bytes, 0 when it cannot be read. */
static uint64_t arena_mem_available(void)
{
	char line[256];
	unsigned long long kib = 0;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	fclose(f);
	return (uint64_t)kib * 1024;
}

static int arena_check_config(const struct tier_arena_config *cfg, uint64_t *capacity,
			      int *node, bool *numa, const char **why)
{
	uint64_t slots;

	if (cfg->slot_bytes == 0) {
		*why = "slot size is zero";
		return -EINVAL;
	}
	if (cfg->slot_bytes % ARENA_SLOT_ALIGN) {
		*why = "slot size is not a multiple of 4096";
		return -EINVAL;
	}
	if (cfg->capacity_bytes < cfg->slot_bytes) {
		*why = "capacity is below one slot";
		return -EINVAL;
	}
	slots = cfg->capacity_bytes / cfg->slot_bytes;
	/* UINT32_MAX is TIER_ARENA_NO_SLOT, so the last slot index must stay below it */
	if (slots >= UINT32_MAX) {
		*why = "capacity holds more slots than a 32-bit slot index can name";
		return -EINVAL;
	}
	*capacity = slots * cfg->slot_bytes;
	if (*capacity > SIZE_MAX - ARENA_HUGE_BYTES) {
		*why = "capacity does not fit in the address space";
		return -EINVAL;
	}
	if (cfg->node < -1) {
		*why = "NUMA node must be -1 (local) or a node number";
		return -EINVAL;
	}

	/*
	 * Pages are touched lazily and the binding is strict, so an arena larger than what
	 * the kernel can still hand out would end in an OOM kill at first touch, not in an
	 * error: refuse it now, with the figure.
	 */
	uint64_t avail = arena_mem_available();
	if (avail && *capacity > avail) {
		*why = "capacity is above the memory available now (MemAvailable)";
		return -ENOMEM;
	}

	*numa = numa_available() >= 0;
	if (!*numa) {
		/* a kernel without NUMA support is one node, 0; size it from the whole machine */
		long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);

		if (cfg->node > 0) {
			*why = "NUMA node does not exist (no NUMA support: only node 0)";
			return -EINVAL;
		}
		if (pages > 0 && page > 0 && *capacity > (uint64_t)pages * (uint64_t)page) {
			*why = "capacity is above the machine's memory";
			return -EINVAL;
		}
		*node = 0;
		return 0;
	}

	*node = cfg->node == -1 ? arena_local_node() : cfg->node;
	if (*node > numa_max_node()) {
		*why = "NUMA node does not exist";
		return -EINVAL;
	}
	/* node numbers can be sparse, and memory-less nodes exist (CPU-only, some CXL) */
	long long node_bytes = numa_node_size64(*node, NULL);
	if (node_bytes <= 0) {
		*why = "NUMA node does not exist or has no memory";
		return -EINVAL;
	}
	/*
	 * numa_alloc_onnode does not fail when the binding is refused: it warns and hands
	 * back unbound memory. Refuse a node outside our cpuset here instead.
	 */
	if (!arena_node_allowed(*node)) {
		*why = "NUMA node is not allowed for this process (cpuset)";
		return -EINVAL;
	}
	if (*capacity > (uint64_t)node_bytes) {
		*why = "capacity is above the NUMA node's memory";
		return -EINVAL;
	}
	return 0;
}

int tier_arena_create(const struct tier_arena_config *cfg, struct tier_arena **out,
		      const char **why)
{
	const char *reason = NULL;
	struct tier_arena *a = NULL;
	uint64_t capacity = 0;
	uint32_t slots, words;
	int node = 0;
	bool numa = false;
	int ret;

	*out = NULL;
	ret = arena_check_config(cfg, &capacity, &node, &numa, &reason);
	if (ret)
		goto err;
	slots = (uint32_t)(capacity / cfg->slot_bytes);
	words = (uint32_t)((slots + 63ull) / 64);

	a = calloc(1, sizeof(*a) + (size_t)words * sizeof(a->used_map[0]));
	if (!a) {
		reason = "out of memory for the arena's slot map";
		ret = -ENOMEM;
		goto err;
	}
	a->node = node;
	a->numa = numa;
	a->slots = slots;
	a->slot_bytes = cfg->slot_bytes;
	a->words = words;
	atomic_init(&a->used, 0);
	if (slots % 64)
		a->used_map[words - 1] = ~0ull << (slots % 64);

	a->region_len = (size_t)capacity;
	if (cfg->huge_pages)
		a->region_len = (a->region_len + ARENA_HUGE_BYTES - 1) & ~(ARENA_HUGE_BYTES - 1);
	/* reserves address space and sets the node binding; no page is touched here */
	if (numa) {
		a->base = numa_alloc_onnode(a->region_len, node);
	} else {
		void *p = mmap(NULL, a->region_len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		a->base = p == MAP_FAILED ? NULL : p;
	}
	if (!a->base) {
		reason = "cannot reserve the arena's region";
		ret = -ENOMEM;
		goto err;
	}
	/* advisory: without THP the arena still works, with 4 KiB pages */
	if (cfg->huge_pages)
		a->huge_pages = madvise(a->base, a->region_len, MADV_HUGEPAGE) == 0;

	ret = pthread_mutex_init(&a->mu, NULL);
	if (ret) {
		reason = "cannot initialise the arena's lock";
		ret = -ret;
		goto err;
	}
	*out = a;
	return 0;
err:
	if (a && a->base) {
		if (a->numa)
			numa_free(a->base, a->region_len);
		else
			munmap(a->base, a->region_len);
	}
	free(a);
	if (why)
		*why = reason;
	return ret;
}

void tier_arena_destroy(struct tier_arena *a)
{
	if (!a)
		return;
	if (a->numa)
		numa_free(a->base, a->region_len);
	else
		munmap(a->base, a->region_len);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

int tier_arena_alloc(struct tier_arena *a, uint32_t hint, uint32_t *slot)
{
	uint32_t w0, w, i;
	uint64_t avail;

	/* TIER_ARENA_NO_SLOT is out of range too: slots < UINT32_MAX */
	if (hint >= a->slots)
		hint = 0;
	w0 = hint / 64;

	pthread_mutex_lock(&a->mu);
	if (atomic_load_explicit(&a->used, memory_order_relaxed) == a->slots) {
		pthread_mutex_unlock(&a->mu);
		return -ENOSPC;
	}
	/*
	 * The hint's own word from the hint's bit on, then the following words, wrapping
	 * around; the last step revisits w0 whole, which covers the bits below the hint.
	 */
	avail = ~a->used_map[w0] & (~0ull << (hint % 64));
	w = w0;
	for (i = 1; !avail && i <= a->words; i++) {
		w = (w0 + i) % a->words;
		avail = ~a->used_map[w];
	}
	if (!avail) {
		/* unreachable while used counts the map's bits; never hand out a taken slot */
		pthread_mutex_unlock(&a->mu);
		return -ENOSPC;
	}
	uint32_t bit = (uint32_t)__builtin_ctzll(avail);
	a->used_map[w] |= 1ull << bit;
	atomic_fetch_add_explicit(&a->used, 1, memory_order_relaxed);
	pthread_mutex_unlock(&a->mu);
	*slot = w * 64 + bit;
	return 0;
}

void tier_arena_free(struct tier_arena *a, uint32_t slot)
{
	uint64_t bit = 1ull << (slot % 64);

	/* a slot never handed out, or TIER_ARENA_NO_SLOT: nothing to release */
	if (slot >= a->slots)
		return;
	pthread_mutex_lock(&a->mu);
	/* a second free of the same slot leaves the count alone */
	if (a->used_map[slot / 64] & bit) {
		a->used_map[slot / 64] &= ~bit;
		atomic_fetch_sub_explicit(&a->used, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&a->mu);
}

void *tier_arena_ptr(const struct tier_arena *a, uint32_t slot)
{
	if (slot >= a->slots)
		return NULL;
	return a->base + (size_t)slot * a->slot_bytes;
}

void tier_arena_stats(const struct tier_arena *a, struct tier_arena_stats *out)
{
	uint32_t used = atomic_load_explicit(&a->used, memory_order_relaxed);

	out->node = a->node;
	out->slots = a->slots;
	out->slots_used = used;
	out->slot_bytes = a->slot_bytes;
	out->capacity_bytes = (uint64_t)a->slots * a->slot_bytes;
	out->used_bytes = (uint64_t)used * a->slot_bytes;
	out->huge_pages = a->huge_pages;
}

void tier_arena_region(const struct tier_arena *a, void **base, size_t *len)
{
	*base = a->base;
	*len = a->region_len;
}
