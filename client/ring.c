/*
 * ring.c — libsparq's data plane (ipc/shm.h): a bump allocator over the shared data
 * area, and one ring request at a time: push the descriptor, ring the submit
 * doorbell, wait for the completion.
 *
 * The wait spins on the completion ring first: a decode step over a small context
 * completes within the spin, and sleeping costs a wake-up (tens of µs on a busy VM),
 * the very overhead the ring exists to avoid. The spin lasts SPARQ_CLIENT_SPIN_NS, or,
 * when the last few requests all completed within SPARQ_CLIENT_SPIN_MAX_NS, twice the
 * slowest of them (bounded by that): a client that sleeps once pays its wake-up, and
 * its next request then finds the daemon's watcher gone, a cold path that repeats. It
 * yields the CPU now and then while it spins, so a daemon thread sharing this CPU (a
 * machine with fewer cores than busy threads) can run the very request we wait for.
 * Then it blocks in poll() on the completion eventfd together with the control
 * socket, so a daemon that dies (socket hang-up) ends the wait with -EPIPE, and the
 * wait is bounded (-ETIMEDOUT).
 *
 * Doorbells both ways only when the other side sleeps (shm.h): the submit eventfd is
 * written only when no daemon worker is polling the ring, and while we spin we tell
 * the daemon (cq_flags) that a completion needs no eventfd write; before sleeping we
 * raise SPARQ_CQ_WAITING and look at the ring once more.
 *
 * The data area is reused by every request, so a request given up on (timeout) leaves
 * the daemon free to write into it later: until that request's completion arrives, no
 * new request is submitted (c->stale).
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client-impl.h"
#include "wire.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spinning this long between yields costs a syscall per few µs of spin at most. */
#define SPIN_YIELD_NS 4000u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

int sparq_client_alloc(struct sparq_client *c, uint64_t bytes, uint64_t *off, void **p)
{
	uint64_t start = (c->bump + SPARQ_CLIENT_ALIGN - 1) & ~(uint64_t)(SPARQ_CLIENT_ALIGN - 1);

	if (start > c->shm.data_bytes || bytes > c->shm.data_bytes - start)
		return sparq_client_fail(c, -E2BIG,
					 "request needs more than the %llu-byte shared data area",
					 (unsigned long long)c->shm.data_bytes);
	/* offsets count from the region's start (the header page makes 0 mean absent) */
	*off = c->shm.data_off + start;
	*p = c->shm.base + c->shm.data_off + start;
	c->bump = start + (bytes ? bytes : 1);
	return 0;
}

/*
 * Whether the daemon hung up. A packet on the socket while we wait for a ring
 * completion is unexpected (replies only answer control calls, and a late reply to a
 * timed-out call is harmless): it is read and dropped.
 */
static int check_socket(struct sparq_client *c, short revents)
{
	if (revents & (POLLHUP | POLLERR | POLLRDHUP)) {
		c->dead = true;
		return sparq_client_fail(c, -EPIPE, "the daemon closed the connection");
	}
	if (revents & POLLIN) {
		ssize_t n = sparq_wire_recv(c->sock, c->rx, sizeof(c->rx), NULL, 0, NULL);
		if (n == 0 || n == -ECONNRESET) {
			c->dead = true;
			return sparq_client_fail(c, -EPIPE, "the daemon closed the connection");
		}
	}
	return 0;
}

/* How long to spin before sleeping: see the top of the file. */
static uint64_t spin_ns(const struct sparq_client *c)
{
	uint64_t slowest = 0;

	for (uint32_t i = 0; i < SPARQ_CLIENT_RECENT; i++) {
		if (!c->recent_ns[i] || c->recent_ns[i] > SPARQ_CLIENT_SPIN_MAX_NS)
			return SPARQ_CLIENT_SPIN_NS;
		if (c->recent_ns[i] > slowest)
			slowest = c->recent_ns[i];
	}
	slowest *= 2;
	if (slowest < SPARQ_CLIENT_SPIN_NS)
		return SPARQ_CLIENT_SPIN_NS;
	return slowest < SPARQ_CLIENT_SPIN_MAX_NS ? slowest : SPARQ_CLIENT_SPIN_MAX_NS;
}

static void note_latency(struct sparq_client *c, uint64_t ns)
{
	c->recent_ns[c->recent_at++ % SPARQ_CLIENT_RECENT] = ns;
}

/*
 * Takes completions until the one for user_data (into *cqe) or the deadline.
 * Completions of stale requests are consumed on the way, and only at the top of the
 * loop: one popped anywhere else and not counted would leave c->stale waiting for a
 * completion that already came (a late control reply and a late completion arriving
 * in the same wake-up did exactly that).
 */
static int wait_completion_flagged(struct sparq_client *c, uint64_t user_data,
				   struct sparq_cqe *cqe, uint64_t deadline_ns)
{
	uint64_t spin_end = now_ns() + spin_ns(c), next_yield = 0;
	bool waiting = false;
	int gone = 0;

	for (;;) {
		int r = sparq_cq_pop(&c->shm, cqe);
		if (r < 0) {
			c->dead = true;
			return sparq_client_fail(c, -EPROTO, "the completion ring is corrupt");
		}
		if (r == 1) {
			if (cqe->user_data == user_data)
				return 0;
			if (c->stale)
				c->stale--;
			if (user_data == 0 && c->stale == 0)
				return 0;
			continue;
		}
		if (gone)
			return gone;
		uint64_t now = now_ns();
		if (now < spin_end) {
			if (!next_yield) {
				next_yield = now + SPIN_YIELD_NS;
			} else if (now >= next_yield) {
				sched_yield();
				next_yield = now + SPIN_YIELD_NS;
			}
			cpu_relax();
			continue;
		}
		if (now >= deadline_ns)
			return sparq_client_fail(c, -ETIMEDOUT,
						 "no completion from the daemon within %u ms",
						 c->timeout_ms);
		if (!waiting) {
			/* from now on the daemon rings; one more look at the ring first */
			sparq_cq_set_waiting(&c->shm, true);
			waiting = true;
			continue;
		}
		struct pollfd p[2] = {
			{ .fd = c->complete_fd, .events = POLLIN },
			{ .fd = c->sock, .events = POLLIN | POLLRDHUP },
		};
		uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
		int n = poll(p, 2, left_ms > 60000 ? 60000 : (int)left_ms);
		if (n < 0 && errno != EINTR)
			return sparq_client_fail(c, -errno, "poll on the completion doorbell failed");
		if (n <= 0)
			continue;
		if (p[1].revents) {
			/* a completion may have been posted just before the daemon went: the
			 * ring is read to its end (at the top, where stale ones are counted)
			 * before the hang-up is reported */
			int ret = check_socket(c, p[1].revents);
			if (ret)
				gone = ret;
		}
		if (p[0].revents & POLLIN) {
			uint64_t v;
			/* resets the counter; the ring itself says what completed */
			if (read(c->complete_fd, &v, sizeof(v)) < 0 && errno != EAGAIN &&
			    errno != EINTR)
				return sparq_client_fail(c, -errno, "reading the completion doorbell failed");
		}
	}
}

static int wait_completion(struct sparq_client *c, uint64_t user_data, struct sparq_cqe *cqe,
			   uint64_t deadline_ns)
{
	int ret = wait_completion_flagged(c, user_data, cqe, deadline_ns);

	sparq_cq_set_waiting(&c->shm, false);
	return ret;
}

/* Lets the completions of requests we gave up on arrive before reusing the data area. */
static int drain_stale(struct sparq_client *c, uint64_t deadline_ns)
{
	struct sparq_cqe cqe;

	while (c->stale) {
		/* user_data 0 is never issued: every completion counts as stale */
		int ret = wait_completion(c, 0, &cqe, deadline_ns);
		if (ret == -ETIMEDOUT)
			return sparq_client_fail(c, -ETIMEDOUT,
						 "the daemon has not finished an earlier request "
						 "that timed out");
		if (ret)
			return ret;
	}
	return 0;
}

int sparq_client_submit_locked(struct sparq_client *c, struct sparq_sqe *sqe,
			       struct sparq_cqe *cqe)
{
	uint64_t deadline = now_ns() + (uint64_t)c->timeout_ms * 1000000u;
	uint64_t one = 1;
	int ret;

	if (c->dead)
		return sparq_client_fail(c, -EPIPE, "the daemon closed the connection");
	ret = drain_stale(c, deadline);
	if (ret)
		return ret;
	sqe->user_data = ++c->next_user_data;
	/* one request in flight per handle, so the ring always has room; -EAGAIN here
	 * means the daemon stopped consuming it */
	ret = sparq_sq_push(&c->shm, sqe);
	if (ret)
		return sparq_client_fail(c, -EPROTO, "the submission ring is full");
	while (sparq_sq_needs_doorbell(&c->shm) && write(c->submit_fd, &one, sizeof(one)) < 0) {
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break; /* counter saturated: the daemon has a wake-up pending anyway */
		return sparq_client_fail(c, -errno, "ringing the submit doorbell failed");
	}
	uint64_t t0 = now_ns();
	ret = wait_completion(c, sqe->user_data, cqe, deadline);
	/* a timed-out request says nothing of the next one's latency but "not quick" */
	note_latency(c, ret ? 0 : now_ns() - t0);
	if (ret == -ETIMEDOUT)
		c->stale++;
	return ret;
}
