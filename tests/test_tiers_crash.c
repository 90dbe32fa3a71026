/*
 * test_tiers_crash.c — parked sessions survive kill -9. A child process creates
 * sessions, parks them and reports each id over a pipe only after tier_park returned
 * success, under RAM pressure so demotions run too; the parent kills it with SIGKILL at
 * a random moment, reopens the store and requires every reported session back bit for
 * bit. Sessions the child did not live to report may be present or not, but if present
 * they must be whole. Eight rounds on the same directory, so recovered sessions are
 * recovered again after later crashes.
 *
 * Then a re-park (tier_repark) killed at each of its steps in turn, through the
 * manager's park_step hook: a session parked, reopened after a restart, grown, parked
 * again; or parked again over fresh streams. Each restart must find the old copy or
 * the new one, whole, every record verifying, never neither, never the old one once a
 * crash point had given the new one, and no file either copy does not reference.
 */
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/stat.h>
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

/* ---- a re-park killed at each step ---- */

#define RP_SESSION 5u
#define RP_N 2u

struct rp_meta {
	uint64_t seed;            /* records of stream i, position p: t_record(seed, i, p) */
	uint32_t len[RP_N];
};

static const struct rp_meta rp_old = { 1, { 200, 130 } };    /* a partial last chunk each */
static const struct rp_meta rp_grown = { 1, { 450, 131 } };  /* the same streams, grown */
static const struct rp_meta rp_fresh = { 2, { 50, 600 } };   /* other streams altogether */

struct rp_crash {
	unsigned k, n;            /* kill at the k-th step; steps seen so far */
	int report;               /* the step's name goes here first */
};

static void rp_step(void *user, const char *what)
{
	struct rp_crash *c = user;

	if (++c->n != c->k)
		return;
	if (write(c->report, what, strlen(what)) < 0)
		_exit(7);
	kill(getpid(), SIGKILL);
}

static struct tier_manager *rp_manager(const char *dir, struct rp_crash *crash)
{
	struct tier_manager_config cfg;
	struct tier_manager *m;
	const char *why = "";

	/* 4 RAM chunks: growing demotes, so some old chunks are on NVMe only */
	t_manager_config(&cfg, dir, CHUNK, 4, 1ull << 30);
	cfg.park_step = crash ? rp_step : NULL;
	cfg.step_user = crash;
	if (tier_manager_open(&cfg, &m, &why))
		_exit(8);
	return m;
}

static void rp_fill(struct sparq_store *st, struct sparq_store_stream **s, const struct rp_meta *mt,
		    const uint32_t *from)
{
	for (uint32_t i = 0; i < RP_N; i++)
		if (t_append(st, s[i], mt->seed, i, from[i], mt->len[i] - from[i], RB))
			_exit(9);
}

/* Parks the old copy, restarts, grows it (or makes fresh streams), re-parks with the
 * k-th step fatal. Exits 0 when the re-park finished first. */
static void rp_child(const char *dir, bool fresh, unsigned k, int report)
{
	static const uint32_t zero[RP_N];
	struct rp_crash crash = { .k = k, .report = report };
	struct tier_manager *m = rp_manager(dir, NULL);
	struct sparq_store *st = tier_manager_store(m);
	struct sparq_store_stream *s[RP_N];
	struct rp_meta got;
	const struct rp_meta *now = fresh ? &rp_fresh : &rp_grown;

	for (uint32_t i = 0; i < RP_N; i++)
		if (st->ops->stream_open(st->ctx, RB, &s[i]))
			_exit(3);
	rp_fill(st, s, &rp_old, zero);
	if (tier_park(m, RP_SESSION, &rp_old, sizeof(rp_old), s, RP_N))
		_exit(4);
	for (uint32_t i = 0; i < RP_N; i++)
		st->ops->stream_close(st->ctx, s[i]);
	tier_manager_close(m);

	m = rp_manager(dir, &crash);
	st = tier_manager_store(m);
	if (tier_resume(m, RP_SESSION, &got, sizeof(got), s, RP_N, false))
		_exit(5);
	if (fresh) {
		struct sparq_store_stream *f[RP_N];
		for (uint32_t i = 0; i < RP_N; i++)
			if (st->ops->stream_open(st->ctx, RB, &f[i]))
				_exit(3);
		rp_fill(st, f, now, zero);
		if (tier_repark(m, RP_SESSION, now, sizeof(*now), f, RP_N))
			_exit(6);
	} else {
		rp_fill(st, s, now, rp_old.len);
		if (tier_repark(m, RP_SESSION, now, sizeof(*now), s, RP_N))
			_exit(6);
	}
	tier_manager_close(m);
	_exit(0);
}

static unsigned count_files(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	unsigned n = 0;

	T_CHECK(d, "opendir %s", dir);
	while ((de = readdir(d))) {
		size_t a = strlen(de->d_name), b = strlen(suffix);
		n += a > b && strcmp(de->d_name + a - b, suffix) == 0;
	}
	closedir(d);
	return n;
}

/* After a restart: one session, the old copy or the new one, every record verifying.
 * Returns true for the new one. */
static bool rp_verify(const char *dir, const struct rp_meta *now, unsigned k, const char *step)
{
	struct tier_manager *m = t_manager(dir, CHUNK, 4, 1ull << 30, NULL, NULL);
	struct sparq_store *st = tier_manager_store(m);
	struct sparq_store_stream *s[RP_N];
	struct tier_parked_info info[4];
	struct rp_meta got;
	uint32_t count;

	T_CHECK(tier_parked_list(m, info, 4, &count) == 0 && count == 1 &&
			info[0].session == RP_SESSION,
		"killed at step %u (%s): %u parked sessions, want the one", k, step, count);
	T_CHECK(tier_resume(m, RP_SESSION, &got, sizeof(got), s, RP_N, true) == 0,
		"killed at step %u (%s): the parked copy does not resume (checksums)", k, step);
	bool is_new = memcmp(&got, now, sizeof(got)) == 0;
	T_CHECK(is_new || memcmp(&got, &rp_old, sizeof(got)) == 0,
		"killed at step %u (%s): a copy neither old nor new", k, step);
	for (uint32_t i = 0; i < RP_N; i++) {
		uint32_t *all = t_alloc(got.len[i] * sizeof(uint32_t));
		for (uint32_t p = 0; p < got.len[i]; p++)
			all[p] = p;
		T_CHECK(t_check(st, s[i], got.seed, i, all, got.len[i], RB) == 0,
			"killed at step %u (%s): stream %u", k, step, i);
		free(all);
		st->ops->stream_close(st->ctx, s[i]);
	}
	/* the files the other copy used are gone once the manager has reopened */
	T_CHECK(count_files(dir, ".rec") == RP_N && count_files(dir, ".crc") == RP_N &&
			count_files(dir, ".man") == 1 && count_files(dir, ".tmp") == 0,
		"killed at step %u (%s): files left over", k, step);
	tier_manager_close(m);
	return is_new;
}

static void repark_crash_points(const char *base, bool fresh)
{
	const struct rp_meta *now = fresh ? &rp_fresh : &rp_grown;
	unsigned n_old = 0, n_new = 0, k;
	bool seen_new = false;

	for (k = 1;; k++) {
		char dir[3900], step[128] = "";
		int fds[2], status;

		snprintf(dir, sizeof(dir), "%s/repark-%s-%u", base, fresh ? "fresh" : "grown", k);
		T_CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
		T_CHECK(pipe(fds) == 0, "pipe");
		pid_t pid = fork();
		T_CHECK(pid >= 0, "fork");
		if (pid == 0) {
			close(fds[0]);
			rp_child(dir, fresh, k, fds[1]);
		}
		close(fds[1]);
		T_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		ssize_t r = read(fds[0], step, sizeof(step) - 1);
		step[r > 0 ? r : 0] = '\0';
		close(fds[0]);
		bool done = WIFEXITED(status) && WEXITSTATUS(status) == 0;
		T_CHECK(done || (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL),
			"step %u: the child failed on its own (status %d)", k, status);
		bool is_new = rp_verify(dir, now, k, done ? "none: finished" : step);
		T_CHECK(!(seen_new && !is_new), "killed at step %u (%s): back to the old copy", k, step);
		T_CHECK(!done || is_new, "a finished re-park left the old copy");
		seen_new |= is_new;
		n_new += is_new;
		n_old += !is_new;
		t_rmdir(dir);
		if (done)
			break;
	}
	T_CHECK(n_old > 0 && n_new > 1, "the steps gave %u old and %u new copies", n_old, n_new);
	printf("re-park over %s streams: killed at each of its %u steps: %u restarts found the "
	       "old copy, %u the new one, all verified\n", fresh ? "fresh" : "the grown", k - 1,
	       n_old, n_new - 1);
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

	dir = t_tempdir();
	repark_crash_points(dir, false);
	repark_crash_points(dir, true);
	t_rmdir(dir);
	free(dir);
	return T_EXIT_PASS;
}
