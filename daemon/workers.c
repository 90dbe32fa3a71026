/*
 * workers.c — the worker pool (workers.h). One mutex guards every client's job list
 * and flags; it is never held while a job runs.
 *
 * Ownership rides on EPOLLONESHOT: a client's doorbell delivers one event, then stays
 * disarmed until its owner re-arms it on leaving, so exactly one worker holds a client
 * and no event for it can be in flight while it is owned. That is also what makes
 * freeing safe: the owner that ran a client's teardown never re-arms, marks the client
 * dead and wakes the loop through wake_fd (only the loop frees a client: it owns the
 * client list), and by then no worker can still hold a pointer to it.
 *
 * An owner keeps SPARQ_SQ_POLLING raised (shm.h) for as long as it owns the client,
 * not only while it watches the ring: it always looks at the ring before leaving, so
 * the client's next request needs no doorbell even when it comes while the current
 * one still runs.
 */
#include <errno.h>
#include <sched.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "exec.h"
#include "workers.h"

/* Jobs and ring requests of one client a worker runs before letting others go first. */
#define RUN_BUDGET 32u
/*
 * How long past --poll-us a watcher waits for a client that sleeps on its completion
 * eventfd: the window is for the client's own work between two requests, not for its
 * wake-up, which costs tens of µs on a busy VM. Without this, a client that slept once
 * (a slow request) wakes after the window closed, its next request pays the cold
 * path, it sleeps again, and so on: a back-to-back loop locked into the slow path
 * (measured: pings at ~90 µs instead of ~1 µs on the 2-core dev VM).
 */
#define WAKE_GRACE_NS 500000u

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static int arm(struct sd_pool *p, struct sd_client *c, int op)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.ptr = c };

	return epoll_ctl(p->ep_fd, op, c->submit_fd, &ev) ? -errno : 0;
}

/* Resets the doorbell's counter: what it announced is in the ring or the job list. */
static void doorbell_clear(struct sd_client *c)
{
	uint64_t count;

	if (read(c->submit_fd, &count, sizeof(count)) < 0)
		return;  /* EAGAIN: nobody rang */
}

static void doorbell_ring(struct sd_client *c)
{
	uint64_t one = 1;

	if (write(c->submit_fd, &one, sizeof(one)) < 0)
		return;  /* EAGAIN: the counter is saturated, the doorbell is up anyway */
}

/* Pool lock held: whether c's ring may be read now. Not while jobs the loop queued wait
 * (they arrived first), nor once the client is going or the daemon stops reading. */
static bool ring_open(const struct sd_pool *p, const struct sd_client *c)
{
	return !c->head && !c->closing && !p->quiesce && !p->stop;
}

/* Pool lock held on entry and return, dropped while the job runs. */
static void run_job(struct sparqd *d, struct sd_client *c)
{
	struct sd_pool *p = &d->pool;
	struct sd_job *job = c->head;

	c->head = job->next;
	if (!c->head)
		c->tail = NULL;
	pthread_mutex_unlock(&p->mu);
	if (job->teardown)
		sd_sessions_conn_gone(&d->sessions, c->id);
	else
		sd_exec(d, c, job);
	sd_req_release(&job->req);
	pthread_mutex_lock(&p->mu);
	if (job->teardown) {
		c->dead = true;
		c->next_dead = p->dead;
		p->dead = c;
	}
	free(job);
}

/*
 * Takes one ring submission and runs it (pool lock not held). 1 when one was taken
 * (answered, even if with an error), 0 when there is none or no completion slot is
 * free, -EPROTO when the client's tail is impossible (answered once; the ring is not
 * read again until the client rings).
 */
static int ring_step(struct sparqd *d, struct sd_client *c)
{
	struct sd_job *job;
	uint64_t lost;
	int ret = sd_ring_take(d, c, &job, &lost);

	if (ret == -ENOMEM) {
		sd_ring_answer_enomem(d, c, lost);
		return 1;
	}
	if (ret < 0) {
		struct sd_job bad = { .t0 = sd_now_ns(),
				      .req = { .ring = true, .err = -EPROTO, .bad_item = -1 } };

		sd_log(&d->log, SD_LOG_WARN, "client %" PRIu64 ": submission ring tail is impossible",
		       c->id);
		snprintf(bad.req.why, sizeof(bad.req.why), "submission tail ahead of the ring");
		sd_exec(d, c, &bad);
		return -EPROTO;
	}
	if (ret == 1) {
		sd_exec(d, c, job);
		sd_req_release(&job->req);
		free(job);
	}
	return ret;
}

enum watch_end { WATCH_IDLE, WATCH_PENDING, WATCH_OTHER };

/*
 * Pool lock held on entry and return. Watches c's empty ring until *end (pushed back
 * while the client still sleeps, up to cap): PENDING when a submission appeared, IDLE
 * when the time is up or c must stop (jobs queued, the daemon stopping), OTHER when no
 * worker is idle and another client's doorbell was taken into *next: this worker
 * serves it, so a waiting client never waits for a watcher's window.
 */
static enum watch_end watch_ring(struct sparqd *d, struct sd_client *c, uint64_t *end,
				 uint64_t cap, struct epoll_event *next)
{
	struct sd_pool *p = &d->pool;
	uint64_t poll_ns = (uint64_t)d->cfg.poll_us * 1000u;
	enum watch_end why = WATCH_IDLE;

	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 1;; i++) {
		if (sparq_sq_pending(&c->shm)) {
			/* a client that publishes what it cannot complete (its completion
			 * ring full) does not keep us past the window */
			if (now_ns() < *end)
				why = WATCH_PENDING;
			break;
		}
		/* the lock costs little, but not on every turn of a tight loop */
		if (i % 64 == 0) {
			uint64_t now = now_ns();
			bool stop, look;

			pthread_mutex_lock(&p->mu);
			stop = !ring_open(p, c);
			look = p->idle == 0;
			pthread_mutex_unlock(&p->mu);
			if (now < cap && sparq_cq_client_asleep(&c->shm))
				*end = now + poll_ns;
			if (stop || now >= *end)
				break;
			/* the client (its wake-up, its next request) may need this very CPU:
			 * on a machine with fewer cores than busy threads a watcher that never
			 * yields holds it off for a whole time slice; with a core to spare
			 * this returns at once */
			sched_yield();
			if (look && epoll_wait(p->ep_fd, next, 1, 0) == 1) {
				why = WATCH_OTHER;
				break;
			}
		}
		cpu_relax();
	}
	pthread_mutex_lock(&p->mu);
	return why;
}

/*
 * Pool lock held on entry and return. This worker has just taken c's doorbell: it
 * owns c until c has nothing left, is dead, has had its budget, or another client's
 * doorbell was taken while watching (then *have_next is set and *next holds it).
 */
static void own(struct sparqd *d, struct sd_client *c, struct epoll_event *next, bool *have_next)
{
	struct sd_pool *p = &d->pool;
	uint64_t poll_ns = (uint64_t)d->cfg.poll_us * 1000u, end = 0, cap = 0;
	unsigned budget = RUN_BUDGET;
	bool broken = false, wake_loop = false;
	int err = 0;

	if (c->queued)
		c->queued = false;   /* the loop counted it busy when it rang */
	else
		p->busy++;
	c->running = true;
	doorbell_clear(c);
	sparq_sq_set_polling(&c->shm, true);
	for (;;) {
		int ret;

		while (c->head && budget) {
			budget--;
			run_job(d, c);
		}
		/* the budget protects clients waiting for a worker; an idle one serves them */
		if (!budget && p->idle)
			budget = RUN_BUDGET;
		if (c->dead || !ring_open(p, c) || broken || !budget)
			break;
		pthread_mutex_unlock(&p->mu);
		ret = ring_step(d, c);
		pthread_mutex_lock(&p->mu);
		if (ret == 1) {
			budget--;
			end = 0;
			continue;
		}
		if (ret < 0) {
			broken = true;
			continue;
		}
		if (!poll_ns)
			break;
		if (!end) {
			end = now_ns() + poll_ns;
			cap = end + WAKE_GRACE_NS;
		}
		enum watch_end w = watch_ring(d, c, &end, cap, next);
		if (w == WATCH_OTHER) {
			*have_next = true;
			break;
		}
		/* a job the loop queued meanwhile runs now, within the same budget */
		if (w == WATCH_IDLE && !c->head)
			break;
	}
	/* leaving: the client rings again from here on (its fence pairs with this one) */
	sparq_sq_set_polling(&c->shm, false);
	c->running = false;
	if (c->dead) {
		wake_loop = true;
		p->busy--;
	} else if (c->head || (!broken && ring_open(p, c))) {
		bool more;

		/* published while the flag went down, or left for fairness: nobody rang
		 * for it, so we do, and it waits behind the doorbells already pending */
		doorbell_clear(c);
		more = c->head || (!broken && ring_open(p, c) && sparq_sq_pending(&c->shm));
		if (more) {
			c->queued = true;
			doorbell_ring(c);
		} else {
			p->busy--;
		}
		err = arm(p, c, EPOLL_CTL_MOD);
	} else {
		/* a broken ring waits for the client's next doorbell; a quiescing daemon
		 * for none (a closing client is dead here: its teardown was ours to run) */
		if (broken && !p->quiesce && !p->stop)
			err = arm(p, c, EPOLL_CTL_MOD);
		p->busy--;
	}
	if (err)
		sd_log(&d->log, SD_LOG_ERROR, "client %" PRIu64 ": cannot re-arm its doorbell: %s",
		       c->id, strerror(-err));
	if (p->busy == 0)
		pthread_cond_broadcast(&p->idle_cv);
	if (wake_loop) {
		uint64_t one = 1;

		if (write(d->wake_fd, &one, sizeof(one)) < 0)
			return;  /* the counter is far from full; nothing else to do */
	}
}

static void *worker_main(void *arg)
{
	struct sparqd *d = arg;
	struct sd_pool *p = &d->pool;
	struct epoll_event ev;
	bool have = false;

	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		if (!have) {
			int n;

			p->idle++;
			pthread_mutex_unlock(&p->mu);
			n = epoll_wait(p->ep_fd, &ev, 1, -1);
			pthread_mutex_lock(&p->mu);
			p->idle--;
			if (n != 1)
				continue;  /* EINTR */
		}
		have = false;
		if (ev.data.ptr)
			own(d, ev.data.ptr, &ev, &have);
		/* else the kick: p->stop is set */
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int sd_pool_start(struct sparqd *d)
{
	struct sd_pool *p = &d->pool;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int ret = 0;

	p->ep_fd = p->kick_fd = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->idle_cv, NULL);
	p->ep_fd = epoll_create1(EPOLL_CLOEXEC);
	if (p->ep_fd < 0)
		ret = -errno;
	if (!ret) {
		p->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (p->kick_fd < 0)
			ret = -errno;
	}
	/* level-triggered and never read: once written, every worker sees it */
	if (!ret && epoll_ctl(p->ep_fd, EPOLL_CTL_ADD, p->kick_fd, &ev))
		ret = -errno;
	if (!ret) {
		p->threads = calloc(d->cfg.workers, sizeof(*p->threads));
		if (!p->threads)
			ret = -ENOMEM;
	}
	for (; !ret && p->n_threads < d->cfg.workers; p->n_threads++) {
		ret = -pthread_create(&p->threads[p->n_threads], NULL, worker_main, d);
		if (ret)
			break;
	}
	if (ret)
		sd_pool_stop(d);
	return ret;
}

void sd_pool_stop(struct sparqd *d)
{
	struct sd_pool *p = &d->pool;
	uint64_t one = 1;

	sd_pool_drain(d);
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_mutex_unlock(&p->mu);
	if (p->n_threads && write(p->kick_fd, &one, sizeof(one)) < 0)
		sd_log(&d->log, SD_LOG_ERROR, "cannot wake the workers to stop: %s", strerror(errno));
	for (uint32_t i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	p->threads = NULL;
	p->n_threads = 0;
	if (p->kick_fd >= 0)
		close(p->kick_fd);
	if (p->ep_fd >= 0)
		close(p->ep_fd);
	p->kick_fd = p->ep_fd = -1;
	pthread_cond_destroy(&p->idle_cv);
	pthread_mutex_destroy(&p->mu);
}

int sd_pool_watch(struct sparqd *d, struct sd_client *c)
{
	return arm(&d->pool, c, EPOLL_CTL_ADD);
}

void sd_pool_unwatch(struct sparqd *d, struct sd_client *c)
{
	if (d->pool.ep_fd >= 0 && c->submit_fd >= 0)
		epoll_ctl(d->pool.ep_fd, EPOLL_CTL_DEL, c->submit_fd, NULL);
}

void sd_pool_submit(struct sparqd *d, struct sd_client *c, struct sd_job *job)
{
	struct sd_pool *p = &d->pool;

	job->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (job->teardown)
		c->closing = true;
	if (c->tail)
		c->tail->next = job;
	else
		c->head = job;
	c->tail = job;
	/* an owner sees the job before it leaves; else the doorbell brings one */
	if (!c->queued && !c->running) {
		p->busy++;
		c->queued = true;
		doorbell_ring(c);
	}
	pthread_mutex_unlock(&p->mu);
}

bool sd_pool_client_idle(struct sparqd *d, struct sd_client *c)
{
	bool idle;

	pthread_mutex_lock(&d->pool.mu);
	idle = !c->head && !c->queued && !c->running;
	pthread_mutex_unlock(&d->pool.mu);
	return idle;
}

void sd_pool_quiesce(struct sparqd *d)
{
	pthread_mutex_lock(&d->pool.mu);
	d->pool.quiesce = true;
	pthread_mutex_unlock(&d->pool.mu);
}

void sd_pool_drain(struct sparqd *d)
{
	struct sd_pool *p = &d->pool;

	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->idle_cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

struct sd_client *sd_pool_take_dead(struct sparqd *d)
{
	struct sd_client *list;

	pthread_mutex_lock(&d->pool.mu);
	list = d->pool.dead;
	d->pool.dead = NULL;
	pthread_mutex_unlock(&d->pool.mu);
	return list;
}
