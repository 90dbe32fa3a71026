/*
 * test_tiers_crash.c — parked sessions survive kill -9. A child process creates
 * sessions, parks them and reports each id over a pipe only after tier_park returned
 * success, under RAM pressure so demotions run too; the parent kills it with SIGKILL at
 * a random moment, reopens the store and requires every reported session back bit for
 * bit. Sessions the child did not live to report may be present or not, but if present
 * they must be whole. Eight rounds on the same directory, so recovered sessions are
 * recovered again after later crashes.
 */
#include <inttypes.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "tier_helpers.h"

#define CHUNK (64u << 10)
#define RB 512u
#define ROUNDS 8

struct shape {
	uint32_t n;
	uint32_t len[4];
};

static struct shape shape_of(uint64_t session)
{
	struct t_rng r = { session * 7919 };
	struct shape sh = { .n = 1 + (uint32_t)(t_next(&r) % 3) };

	for (uint32_t i = 0; i < sh.n; i++)
		sh.len[i] = 1 + (uint32_t)(t_next(&r) % 3000);
	return sh;
}

static void child(const char *dir, uint64_t first, int report)
{
	struct tier_manager *m = t_manager(dir, CHUNK, 6, 1ull << 30, NULL, NULL);
	struct sparq_store *st = tier_manager_store(m);

	for (uint64_t session = first;; session++) {
		struct shape sh = shape_of(session);
		struct sparq_store_stream *s[4];

		for (uint32_t i = 0; i < sh.n; i++) {
			if (st->ops->stream_open(st->ctx, RB, &s[i]))
				_exit(3);
			for (uint32_t pos = 0; pos < sh.len[i]; pos += 400) {
				uint32_t n = sh.len[i] - pos < 400 ? sh.len[i] - pos : 400;
				if (t_append(st, s[i], session, i, pos, n, RB))
					_exit(4);
			}
		}
		if (tier_park(m, session, &sh, sizeof(sh), s, sh.n))
			_exit(5);
		if (write(report, &session, sizeof(session)) != sizeof(session))
			_exit(6);
		for (uint32_t i = 0; i < sh.n; i++)
			st->ops->stream_close(st->ctx, s[i]);
	}
}

static void verify(struct tier_manager *m, uint64_t session)
{
	struct sparq_store *st = tier_manager_store(m);
	struct shape want = shape_of(session), got;
	struct sparq_store_stream *s[4];

	T_CHECK(tier_resume(m, session, &got, sizeof(got), s, want.n, true) == 0,
		"resume %" PRIu64, session);
	T_CHECK(memcmp(&got, &want, sizeof(got)) == 0, "meta of %" PRIu64, session);
	for (uint32_t i = 0; i < want.n; i++) {
		uint32_t *all = t_alloc(want.len[i] * sizeof(uint32_t));
		for (uint32_t p = 0; p < want.len[i]; p++)
			all[p] = p;
		T_CHECK(t_check(st, s[i], session, i, all, want.len[i], RB) == 0,
			"session %" PRIu64 " stream %u", session, i);
		free(all);
		st->ops->stream_close(st->ctx, s[i]);
	}
}

int main(void)
{
	char *dir = t_tempdir();
	struct timespec ts;
	unsigned total_confirmed = 0, total_checked = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	struct t_rng rng = { (uint64_t)ts.tv_nsec };
	/* probe once in this process, so a refusing filesystem skips before any fork */
	tier_manager_close(t_manager(dir, CHUNK, 6, 1ull << 30, NULL, NULL));

	for (int round = 0; round < ROUNDS; round++) {
		int fds[2];
		uint64_t first = (uint64_t)round * 100000, id;
		uint64_t *confirmed = t_alloc(100000 * sizeof(uint64_t));
		uint32_t nc = 0;

		T_CHECK(pipe(fds) == 0, "pipe");
		pid_t pid = fork();
		T_CHECK(pid >= 0, "fork");
		if (pid == 0) {
			close(fds[0]);
			child(dir, first, fds[1]);
			_exit(0);
		}
		close(fds[1]);
		struct timespec nap = { 0, (long)(20 + t_next(&rng) % 300) * 1000000L };
		nanosleep(&nap, NULL);
		kill(pid, SIGKILL);
		int status;
		T_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		T_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
			"child died on its own (status %d): a park failed", status);
		while (read(fds[0], &id, sizeof(id)) == sizeof(id))
			confirmed[nc++] = id;
		close(fds[0]);

		struct tier_manager *m = t_manager(dir, CHUNK, 6, 1ull << 30, NULL, NULL);
		struct tier_parked_info *info = t_alloc(200000 * sizeof(*info));
		uint32_t count;
		T_CHECK(tier_parked_list(m, info, 200000, &count) == 0, "list");
		for (uint32_t c = 0; c < nc; c++) {
			bool found = false;
			for (uint32_t i = 0; i < count; i++)
				found |= info[i].session == confirmed[c];
			T_CHECK(found, "round %d: parked session %" PRIu64 " lost", round, confirmed[c]);
		}
		/* everything present must be whole, confirmed or not */
		for (uint32_t i = 0; i < count; i++)
			verify(m, info[i].session);
		/* keep the previous round's sessions for one more crash, drop older ones */
		for (uint32_t i = 0; i < count; i++)
			if (info[i].session + 100000 < first)
				T_CHECK(tier_drop(m, info[i].session) == 0, "drop");
		printf("round %d: killed after %u parks, %u sessions recovered and verified\n",
		       round, nc, count);
		total_confirmed += nc;
		total_checked += count;
		tier_manager_close(m);
		free(info);
		free(confirmed);
	}
	T_CHECK(total_confirmed > 0, "the child never parked anything: nothing was tested");
	printf("test_tiers_crash: %u confirmed parks survived kill -9 (%u verifications)\n",
	       total_confirmed, total_checked);
	t_rmdir(dir);
	free(dir);
	return T_EXIT_PASS;
}
