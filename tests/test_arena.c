/*
 * test_arena.c — the host-RAM tier's arena (tiers/arena.h): config validation with
 * reasons, slot carving (distinct, aligned, writable, inside the region), a full RAM
 * tier (-ENOSPC), hint-ordered allocation with wrap-around, harmless bad frees, stats,
 * two threads allocating and freeing at once, and the region's NUMA placement.
 * Exit 0 pass, 1 fail (77 is never needed: every check runs with or without NUMA).
 */
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arena.h"
#include "helpers.h"

#define KIB 1024ull
#define MIB (1024ull * 1024ull)

static struct tier_arena *arena_or_fail(int node, uint64_t capacity, uint32_t slot_bytes,
					bool huge_pages)
{
	struct tier_arena_config cfg = { .node = node, .capacity_bytes = capacity,
					 .slot_bytes = slot_bytes, .huge_pages = huge_pages };
	struct tier_arena *a = NULL;
	const char *why = NULL;
	int ret = tier_arena_create(&cfg, &a, &why);

	T_CHECK(ret == 0 && a, "create node %d, %llu B of %u B slots: %d (%s)", node,
		(unsigned long long)capacity, slot_bytes, ret, why ? why : "no reason");
	return a;
}

static void expect_err(const char *what, int node, uint64_t capacity, uint32_t slot_bytes,
		       int want)
{
	struct tier_arena_config cfg = { .node = node, .capacity_bytes = capacity,
					 .slot_bytes = slot_bytes };
	struct tier_arena *a = (struct tier_arena *)&cfg; /* must be overwritten with NULL */
	const char *why = NULL;
	int ret = tier_arena_create(&cfg, &a, &why);

	T_CHECK(ret == want, "%s: got %d, want %d", what, ret, want);
	T_CHECK(a == NULL, "%s: *out not cleared on failure", what);
	T_CHECK(why && *why, "%s: no reason given", what);
	printf("  rejected %-34s: %s\n", what, why);
}

static void expect_einval(const char *what, int node, uint64_t capacity, uint32_t slot_bytes)
{
	expect_err(what, node, capacity, slot_bytes, -EINVAL);
}

static void test_config(void)
{
	expect_einval("slot size 1000 (not 4096-multiple)", -1, MIB, 1000);
	expect_einval("slot size 4096 + 512", -1, MIB, 4096 + 512);
	expect_einval("slot size 0", -1, MIB, 0);
	expect_einval("capacity below one slot", -1, 64 * KIB - 4096, 64 * KIB);
	expect_einval("capacity 0", -1, 0, 4096);
	expect_einval("node 99", 99, MIB, 64 * KIB);
	expect_einval("node -2", -2, MIB, 64 * KIB);
	/* more than the kernel can hand out: refused now, not OOM-killed at first touch */
	expect_err("capacity 1 TiB (above available)", 0, 1024 * 1024 * MIB, 64 * KIB, -ENOMEM);
	/* 2^32 slots would make UINT32_MAX (TIER_ARENA_NO_SLOT) a real slot */
	expect_einval("2^32 slots", -1, 4096ull << 32, 4096);

	/* a bad config never needs a why pointer to be safe */
	struct tier_arena_config cfg = { .node = -1, .capacity_bytes = MIB, .slot_bytes = 0 };
	struct tier_arena *a;
	T_CHECK(tier_arena_create(&cfg, &a, NULL) == -EINVAL, "why == NULL");

	tier_arena_destroy(NULL);
}

static void check_stats(const struct tier_arena *a, uint32_t slots, uint32_t used,
			uint32_t slot_bytes)
{
	struct tier_arena_stats st;

	tier_arena_stats(a, &st);
	T_CHECK(st.slots == slots, "stats slots %u, want %u", st.slots, slots);
	T_CHECK(st.slots_used == used, "stats slots_used %u, want %u", st.slots_used, used);
	T_CHECK(st.slot_bytes == slot_bytes, "stats slot_bytes %llu",
		(unsigned long long)st.slot_bytes);
	T_CHECK(st.capacity_bytes == (uint64_t)slots * slot_bytes, "stats capacity %llu",
		(unsigned long long)st.capacity_bytes);
	T_CHECK(st.used_bytes == (uint64_t)used * slot_bytes, "stats used_bytes %llu",
		(unsigned long long)st.used_bytes);
	T_CHECK(st.node >= 0, "stats node %d", st.node);
}

static uint32_t alloc_or_fail(struct tier_arena *a, uint32_t hint)
{
	uint32_t slot = TIER_ARENA_NO_SLOT;
	int ret = tier_arena_alloc(a, hint, &slot);

	T_CHECK(ret == 0, "alloc(hint %u): %d", hint, ret);
	return slot;
}

static void fill_slot(struct tier_arena *a, uint32_t slot, uint32_t slot_bytes, uint8_t tag)
{
	memset(tier_arena_ptr(a, slot), (int)(tag ^ (slot * 37u)), slot_bytes);
}

static bool slot_holds(struct tier_arena *a, uint32_t slot, uint32_t slot_bytes, uint8_t tag)
{
	const uint8_t *p = tier_arena_ptr(a, slot);
	uint8_t want = (uint8_t)(tag ^ (slot * 37u));

	for (uint32_t i = 0; i < slot_bytes; i++)
		if (p[i] != want)
			return false;
	return true;
}

/* 1 MiB of 64 KiB slots: the examples of arena.h, one arena at a time. */
static void test_slots(int node, bool huge_pages)
{
	const uint32_t sb = 64 * KIB, n = 16;
	struct tier_arena *a = arena_or_fail(node, MIB, sb, huge_pages);
	struct tier_arena_stats st;
	uint8_t *base;
	size_t len;
	uint32_t slot, s[16];
	bool seen[16] = { false };

	tier_arena_region(a, (void **)&base, &len);
	tier_arena_stats(a, &st);
	printf("  node %d%s: region %p + %zu B, stats node %d, huge pages %s\n", node,
	       huge_pages ? " huge" : "", (void *)base, len, st.node,
	       st.huge_pages ? "advised" : "not advised");
	T_CHECK(base && len >= MIB, "region %p + %zu", (void *)base, len);
	T_CHECK((uintptr_t)base % 4096 == 0, "region base not page-aligned");
	if (huge_pages)
		T_CHECK(len % (2 * MIB) == 0, "huge-page region %zu B not 2 MiB-rounded", len);
	else
		T_CHECK(!st.huge_pages, "huge_pages reported without being asked for");
	/* madvise(MADV_HUGEPAGE) succeeds on any kernel built with THP, whatever the mode */
	if (huge_pages && access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0)
		T_CHECK(st.huge_pages, "THP present but MADV_HUGEPAGE not recorded");
	if (node >= 0)
		T_CHECK(st.node == node, "stats node %d, want %d", st.node, node);
	check_stats(a, n, 0, sb);

	/* all of them: distinct, aligned, in the region, writable */
	for (uint32_t i = 0; i < n; i++) {
		s[i] = alloc_or_fail(a, TIER_ARENA_NO_SLOT);
		T_CHECK(s[i] < n, "slot %u out of range", s[i]);
		T_CHECK(!seen[s[i]], "slot %u handed out twice", s[i]);
		seen[s[i]] = true;
		uint8_t *p = tier_arena_ptr(a, s[i]);
		T_CHECK(p == base + (size_t)s[i] * sb, "ptr of slot %u", s[i]);
		T_CHECK((uintptr_t)p % 4096 == 0, "slot %u not 4096-aligned", s[i]);
		T_CHECK(p >= base && p + sb <= base + len, "slot %u outside the region", s[i]);
		fill_slot(a, s[i], sb, 0x5a);
	}
	/* with no hint and nothing freed, first fit is the natural order */
	for (uint32_t i = 0; i < n; i++)
		T_CHECK(s[i] == i, "fresh arena: alloc %u gave slot %u", i, s[i]);
	check_stats(a, n, n, sb);

	/* a full RAM tier */
	slot = 1234;
	T_CHECK(tier_arena_alloc(a, TIER_ARENA_NO_SLOT, &slot) == -ENOSPC, "17th alloc");
	T_CHECK(tier_arena_alloc(a, 5, &slot) == -ENOSPC, "17th alloc with a hint");
	T_CHECK(slot == 1234, "-ENOSPC wrote the slot");
	T_CHECK(tier_arena_ptr(a, n) == NULL, "ptr of slot %u (out of range)", n);
	T_CHECK(tier_arena_ptr(a, TIER_ARENA_NO_SLOT) == NULL, "ptr of TIER_ARENA_NO_SLOT");

	/* a freed slot is the next one handed out */
	tier_arena_free(a, 7);
	check_stats(a, n, n - 1, sb);
	T_CHECK(alloc_or_fail(a, TIER_ARENA_NO_SLOT) == 7, "freed slot 7 not reused");
	fill_slot(a, 7, sb, 0x5a);

	/* hints: first free at or after the hint, wrapping around */
	tier_arena_free(a, 3);
	tier_arena_free(a, 9);
	check_stats(a, n, n - 2, sb);
	slot = alloc_or_fail(a, 5);
	T_CHECK(slot == 9, "alloc(hint 5) gave %u, want 9", slot);
	slot = alloc_or_fail(a, 10);
	T_CHECK(slot == 3, "alloc(hint 10) gave %u, want 3 (wrap)", slot);
	fill_slot(a, 3, sb, 0x5a);
	fill_slot(a, 9, sb, 0x5a);
	tier_arena_free(a, 12);
	T_CHECK(alloc_or_fail(a, 12) == 12, "alloc(hint 12) on free slot 12");
	tier_arena_free(a, 0);
	T_CHECK(alloc_or_fail(a, 15) == 0, "alloc(hint 15) wraps to 0");
	tier_arena_free(a, 15);
	T_CHECK(alloc_or_fail(a, 15) == 15, "alloc(hint 15) on free slot 15");
	/* out-of-range hints count as no hint: search from 0 */
	tier_arena_free(a, 2);
	tier_arena_free(a, 11);
	T_CHECK(alloc_or_fail(a, n) == 2, "alloc(hint = slots)");
	T_CHECK(alloc_or_fail(a, 1000) == 11, "alloc(hint 1000)");
	fill_slot(a, 0, sb, 0x5a);
	fill_slot(a, 2, sb, 0x5a);
	fill_slot(a, 11, sb, 0x5a);
	fill_slot(a, 12, sb, 0x5a);
	fill_slot(a, 15, sb, 0x5a);
	check_stats(a, n, n, sb);

	/* double free and out-of-range free: harmless */
	tier_arena_free(a, 4);
	tier_arena_free(a, 4);
	check_stats(a, n, n - 1, sb);
	tier_arena_free(a, n);
	tier_arena_free(a, 1000);
	tier_arena_free(a, TIER_ARENA_NO_SLOT);
	check_stats(a, n, n - 1, sb);
	T_CHECK(alloc_or_fail(a, TIER_ARENA_NO_SLOT) == 4, "slot 4 after a double free");
	T_CHECK(tier_arena_alloc(a, TIER_ARENA_NO_SLOT, &slot) == -ENOSPC,
		"double free made a slot appear twice");
	fill_slot(a, 4, sb, 0x5a);

	/* data in a slot survives other slots' alloc/free */
	for (int round = 0; round < 1000; round++) {
		tier_arena_free(a, 3);
		tier_arena_free(a, 9);
		uint32_t x = alloc_or_fail(a, (uint32_t)round % n);
		uint32_t y = alloc_or_fail(a, (uint32_t)round % n);
		T_CHECK((x == 3 && y == 9) || (x == 9 && y == 3), "churn gave %u, %u", x, y);
		fill_slot(a, x, sb, (uint8_t)round);
		fill_slot(a, y, sb, (uint8_t)round);
	}
	for (uint32_t i = 0; i < n; i++)
		if (i != 3 && i != 9)
			T_CHECK(slot_holds(a, i, sb, 0x5a), "slot %u lost its data", i);
	T_CHECK(slot_holds(a, 3, sb, (uint8_t)999) && slot_holds(a, 9, sb, (uint8_t)999),
		"churned slots lost their data");

	for (uint32_t i = 0; i < n; i++)
		tier_arena_free(a, i);
	check_stats(a, n, 0, sb);
	tier_arena_destroy(a);
}

/* Capacity rounded down to whole slots; a slot count that is not a multiple of 64. */
static void test_rounding(void)
{
	const uint32_t n = 100;
	struct tier_arena *a = arena_or_fail(-1, (uint64_t)n * 4096 + 1234, 4096, false);
	bool seen[100] = { false };
	uint32_t slot;

	check_stats(a, n, 0, 4096);
	for (uint32_t i = 0; i < n; i++) {
		slot = alloc_or_fail(a, (i * 7919u) % n);
		T_CHECK(slot < n && !seen[slot], "slot %u out of range or repeated", slot);
		seen[slot] = true;
	}
	T_CHECK(tier_arena_alloc(a, 99, &slot) == -ENOSPC, "101st of 100");
	tier_arena_free(a, 99);
	T_CHECK(alloc_or_fail(a, 64) == 99, "last slot of the second word");
	tier_arena_free(a, 63);
	T_CHECK(alloc_or_fail(a, 64) == 63, "search from word 1 wraps to word 0");
	tier_arena_destroy(a);
}

/* Two threads allocating and freeing one arena; every slot owned by one of them. */
#define STRESS_SLOTS 100
#define STRESS_OPS 100000

struct stress {
	struct tier_arena *a;
	_Atomic int *owner;     /* [STRESS_SLOTS]: 0 free, else the thread's id */
	int id;
	uint64_t seed;
	uint64_t allocs, enospc;
	const char *err;
};

static void *stress_thread(void *arg)
{
	struct stress *t = arg;
	struct t_rng rng = { t->seed };
	uint32_t held[STRESS_SLOTS], n = 0, last = TIER_ARENA_NO_SLOT;

	for (int op = 0; op < STRESS_OPS && !t->err; op++) {
		/* phases of 4096 ops that fill (5 allocs in 8) and drain (3 in 8): each
		 * thread alone reaches a full arena, so -ENOSPC is met even when the two
		 * never overlap */
		uint64_t fill = (op >> 12) & 1 ? 5 : 3;

		if (n == 0 || t_next(&rng) % 8 < fill) {
			uint32_t hint = last == TIER_ARENA_NO_SLOT ? last : last + 1;
			uint32_t slot;
			int ret = tier_arena_alloc(t->a, hint, &slot);

			if (ret == -ENOSPC) {
				t->enospc++;
				continue;
			}
			int expected = 0;
			if (ret || slot >= STRESS_SLOTS || n == STRESS_SLOTS ||
			    !atomic_compare_exchange_strong(&t->owner[slot], &expected, t->id)) {
				t->err = "alloc handed out a slot someone holds";
				break;
			}
			uint64_t *p = tier_arena_ptr(t->a, slot);
			p[0] = ((uint64_t)t->id << 32) | slot;
			p[511] = ~p[0];
			held[n++] = slot;
			last = slot;
			t->allocs++;
		} else {
			uint32_t i = (uint32_t)(t_next(&rng) % n), slot = held[i];
			uint64_t *p = tier_arena_ptr(t->a, slot);
			int expected = t->id;

			if (p[0] != (((uint64_t)t->id << 32) | slot) || p[511] != ~p[0]) {
				t->err = "a held slot was overwritten";
				break;
			}
			held[i] = held[--n];
			if (!atomic_compare_exchange_strong(&t->owner[slot], &expected, 0)) {
				t->err = "ownership lost";
				break;
			}
			tier_arena_free(t->a, slot);
		}
	}
	/* hand everything back, owner mark first, as a free above does */
	while (n) {
		uint32_t slot = held[--n];

		atomic_store(&t->owner[slot], 0);
		tier_arena_free(t->a, slot);
	}
	return NULL;
}

static void test_stress(void)
{
	struct tier_arena *a = arena_or_fail(-1, STRESS_SLOTS * 4096ull, 4096, false);
	_Atomic int owner[STRESS_SLOTS];
	struct stress t[2];
	pthread_t th[2];

	for (int i = 0; i < STRESS_SLOTS; i++)
		atomic_init(&owner[i], 0);
	for (int i = 0; i < 2; i++) {
		t[i] = (struct stress){ .a = a, .owner = owner, .id = i + 1,
					.seed = 0x5eed0000u + (uint64_t)i };
		T_CHECK(pthread_create(&th[i], NULL, stress_thread, &t[i]) == 0, "pthread_create");
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 2; i++) {
		T_CHECK(!t[i].err, "thread %d: %s", i, t[i].err);
		printf("  stress thread %d: %llu allocs, %llu -ENOSPC\n", i,
		       (unsigned long long)t[i].allocs, (unsigned long long)t[i].enospc);
	}
	T_CHECK(t[0].enospc + t[1].enospc > 0, "stress never filled the arena");
	check_stats(a, STRESS_SLOTS, 0, 4096);

	/* consistent afterwards: every slot exactly once, then full */
	bool seen[STRESS_SLOTS] = { false };
	uint32_t slot;
	for (int i = 0; i < STRESS_SLOTS; i++) {
		slot = alloc_or_fail(a, TIER_ARENA_NO_SLOT);
		T_CHECK(slot < STRESS_SLOTS && !seen[slot], "after stress: slot %u", slot);
		seen[slot] = true;
	}
	T_CHECK(tier_arena_alloc(a, 0, &slot) == -ENOSPC, "after stress: not full");
	tier_arena_destroy(a);
}

/* This process's mapped bytes, from /proc/self/status (0 when unreadable). */
static uint64_t vm_size(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long kib = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %llu kB", &kib) == 1)
			break;
	fclose(f);
	return kib * KIB;
}

/*
 * Create/destroy repeatedly, touching the region. A leaked slot map shows under ASan; a
 * leaked region (mmap, which ASan does not track) shows as address space that grows by
 * the 100 regions' 600 MiB.
 */
static void test_churn(void)
{
	uint64_t before = vm_size();

	for (int i = 0; i < 100; i++) {
		struct tier_arena *a = arena_or_fail(i % 2 ? 0 : -1, (4 + i % 5) * MIB,
						     64 * KIB, i % 3 == 0);
		uint32_t slot = alloc_or_fail(a, TIER_ARENA_NO_SLOT);

		memset(tier_arena_ptr(a, slot), i, 64 * KIB);
		tier_arena_destroy(a);
	}
	uint64_t after = vm_size();
	printf("  address space before %llu MiB, after %llu MiB\n",
	       (unsigned long long)(before / MIB), (unsigned long long)(after / MIB));
	T_CHECK(after < before + 64 * MIB, "regions leaked: VmSize grew by %llu MiB",
		(unsigned long long)((after - before) / MIB));
}

/*
 * -ENOMEM when the region cannot be reserved: a child process capped just above its
 * current address space asks for 1 GiB, which validation accepts unless the node is
 * smaller (then the probe is skipped).
 */
static void test_enomem(void)
{
	struct tier_arena_config cfg = { .node = -1, .capacity_bytes = 1024 * MIB,
					 .slot_bytes = 64 * KIB, .huge_pages = true };
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	T_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		struct rlimit old, cap;
		struct tier_arena *a = NULL;
		const char *why = NULL;
		int ret;

		T_CHECK(getrlimit(RLIMIT_AS, &old) == 0, "getrlimit");
		cap = old;
		cap.rlim_cur = vm_size() + 32 * MIB;
		T_CHECK(setrlimit(RLIMIT_AS, &cap) == 0, "setrlimit: %s", strerror(errno));
		ret = tier_arena_create(&cfg, &a, &why);
		/* the leak check at exit needs room again */
		T_CHECK(setrlimit(RLIMIT_AS, &old) == 0, "setrlimit back");
		if (ret == -EINVAL) {
			printf("  enomem: skipped, 1 GiB refused by validation: %s\n", why);
			exit(T_EXIT_SKIP);
		}
		T_CHECK(ret == -ENOMEM && !a, "capped create: %d, want -ENOMEM", ret);
		T_CHECK(why && *why, "-ENOMEM without a reason");
		printf("  enomem: %s\n", why);
		exit(T_EXIT_PASS);
	}
	T_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	T_CHECK(WIFEXITED(status) &&
		(WEXITSTATUS(status) == T_EXIT_PASS || WEXITSTATUS(status) == T_EXIT_SKIP),
		"enomem child failed (%d)", status);
}

/* A touched page of a node-bound arena lies on that node (only with NUMA support). */
static void test_placement(void)
{
	if (numa_available() < 0) {
		printf("  placement: no NUMA support in this kernel, skipped\n");
		return;
	}
	for (int node = -1; node <= 0; node++) {
		struct tier_arena *a = arena_or_fail(node, 4 * MIB, 64 * KIB, true);
		struct tier_arena_stats st;
		uint32_t slot = alloc_or_fail(a, TIER_ARENA_NO_SLOT);
		char *p = tier_arena_ptr(a, slot);
		int on = -1, status = -1;
		void *pages[1] = { p };

		tier_arena_stats(a, &st);
		memset(p, 0xa5, 64 * KIB);
		T_CHECK(get_mempolicy(&on, NULL, 0, p, MPOL_F_NODE | MPOL_F_ADDR) == 0,
			"get_mempolicy: %s", strerror(errno));
		T_CHECK(move_pages(0, 1, pages, NULL, &status, 0) == 0, "move_pages: %s",
			strerror(errno));
		printf("  placement: node %d arena (stats node %d): page on node %d (%d)\n", node,
		       st.node, on, status);
		T_CHECK(on == st.node && status == st.node, "page on node %d/%d, arena on %d", on,
			status, st.node);
		if (node >= 0)
			T_CHECK(st.node == node, "stats node %d, want %d", st.node, node);
		tier_arena_destroy(a);
	}
}

int main(void)
{
	printf("config validation\n");
	test_config();
	printf("slots\n");
	test_slots(-1, false);
	test_slots(0, false);
	test_slots(-1, true);
	test_slots(0, true);
	printf("rounding\n");
	test_rounding();
	printf("stress\n");
	test_stress();
	printf("create/destroy x100\n");
	test_churn();
	printf("out of memory\n");
	test_enomem();
	printf("placement\n");
	test_placement();
	printf("PASS\n");
	return T_EXIT_PASS;
}
