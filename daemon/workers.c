/*
 * workers.c — the worker pool (workers.h). One mutex guards the ready queue and every
 * client's job list and flags; it is never held while a job runs. A worker that ran a
 * client's teardown job marks the client dead and wakes the loop through wake_fd,
 * because only the loop thread may free a client (it owns the client list and epoll).
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "exec.h"
#include "workers.h"

/* Jobs of one client a worker runs before letting others go first. */
#define RUN_BUDGET 32u

static void ready_push(struct sd_pool *p, struct sd_client *c)
{
	c->queued = true;
	c->next_ready = NULL;
	if (p->ready_tail)
		p->ready_tail->next_ready = c;
	else
		p->ready_head = c;
	p->ready_tail = c;
}

static struct sd_client *ready_pop(struct sd_pool *p)
{
	struct sd_client *c = p->ready_head;

	if (c) {
		p->ready_head = c->next_ready;
		if (!p->ready_head)
			p->ready_tail = NULL;
		c->queued = false;
	}
	return c;
}

static void teardown(struct sparqd *d, struct sd_client *c)
{
	sd_sessions_conn_gone(&d->sessions, c->id);
}

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

/* Pool lock held: whether the worker running c should stop watching c's ring (or not
 * start: the loop is taking submissions from it right now). */
static bool poll_should_stop(struct sd_pool *p, struct sd_client *c)
{
	return p->stop || p->ready_head || c->head || c->loop_takes;
}

/*
 * The pool lock is held on entry and on return; c is running on this worker, whose
 * queue is empty. Watches c's submission ring for up to poll_us after each request,
 * running what it takes. Afterwards whatever the client published while the flag was
 * going down is handed to the loop by ringing the submit doorbell ourselves.
 */
static void poll_ring(struct sparqd *d, struct sd_client *c)
{
	struct sd_pool *p = &d->pool;
	uint64_t end = now_ns() + (uint64_t)d->cfg.poll_us * 1000u;
	bool left = false;

	c->polling = true;
	pthread_mutex_unlock(&p->mu);
	sparq_sq_set_polling(&c->shm, true);
	for (unsigned i = 1;; i++) {
		struct sd_job *job;
		uint64_t lost;
		int ret;

		if (sparq_sq_pending(&c->shm)) {
			/* a request the loop queued meanwhile goes first: order per client */
			pthread_mutex_lock(&p->mu);
			left = poll_should_stop(p, c);
			pthread_mutex_unlock(&p->mu);
			if (left)
				break;
			ret = sd_ring_take(d, c, &job, &lost);
			if (ret == -ENOMEM)
				sd_ring_answer_enomem(d, c, lost);
			if (ret < 0 && ret != -ENOMEM)
				break;   /* an impossible tail: the loop answers it */
			if (ret == 1) {
				sd_exec(d, c, job);
				sd_req_release(&job->req);
				free(job);
				end = now_ns() + (uint64_t)d->cfg.poll_us * 1000u;
			}
			if (ret != 0)
				continue;
		}
		/* the lock costs little, but not on every turn of a tight loop */
		if (i % 64 == 0) {
			pthread_mutex_lock(&p->mu);
			left = poll_should_stop(p, c);
			pthread_mutex_unlock(&p->mu);
			if (left || now_ns() >= end)
				break;
		}
		cpu_relax();
	}
	sparq_sq_set_polling(&c->shm, false);
	pthread_mutex_lock(&p->mu);
	c->polling = false;
	/* published after our last look, or while the loop still deferred to us: nobody
	 * else rang for it (a failed write leaves it to the client's next doorbell) */
	if (sparq_sq_pending(&c->shm)) {
		uint64_t one = 1;

		if (write(c->submit_fd, &one, sizeof(one)) < 0)
			return;
	}
}

static void *worker_main(void *arg)
{
	struct sparqd *d = arg;
	struct sd_pool *p = &d->pool;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct sd_client *c;
		unsigned budget = RUN_BUDGET;
		bool wake_loop = false;

		while (!p->ready_head && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		c = ready_pop(p);
		if (!c)
			break;
		c->running = true;
		for (;;) {
			while (c->head && budget--) {
				struct sd_job *job = c->head;

				c->head = job->next;
				if (!c->head)
					c->tail = NULL;
				pthread_mutex_unlock(&p->mu);
				if (job->teardown)
					teardown(d, c);
				else
					sd_exec(d, c, job);
				sd_req_release(&job->req);
				pthread_mutex_lock(&p->mu);
				if (job->teardown) {
					c->dead = true;
					c->next_dead = p->dead;
					p->dead = c;
					wake_loop = true;
				}
				free(job);
			}
			if (!d->cfg.poll_us || c->dead || !c->hello_done || c->head ||
			    poll_should_stop(p, c))
				break;
			poll_ring(d, c);
			/* a job queued meanwhile runs now, within the same budget */
			if (!c->head || !budget)
				break;
		}
		c->running = false;
		if (c->head && !c->dead) {
			ready_push(p, c);
			pthread_cond_signal(&p->cv);
		} else {
			p->busy--;
			if (p->busy == 0)
				pthread_cond_broadcast(&p->idle_cv);
		}
		if (wake_loop) {
			uint64_t one = 1;

			if (write(d->wake_fd, &one, sizeof(one)) < 0)
				continue;  /* the counter is far from full; nothing else to do */
		}
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int sd_pool_start(struct sparqd *d)
{
	struct sd_pool *p = &d->pool;
	int ret = 0;

	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->idle_cv, NULL);
	p->threads = calloc(d->cfg.workers, sizeof(*p->threads));
	if (!p->threads)
		return -ENOMEM;
	for (; p->n_threads < d->cfg.workers; p->n_threads++) {
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

	sd_pool_drain(d);
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (uint32_t i = 0; i < p->n_threads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	p->threads = NULL;
	p->n_threads = 0;
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->idle_cv);
	pthread_mutex_destroy(&p->mu);
}

void sd_pool_submit(struct sparqd *d, struct sd_client *c, struct sd_job *job)
{
	struct sd_pool *p = &d->pool;

	job->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (c->tail)
		c->tail->next = job;
	else
		c->head = job;
	c->tail = job;
	if (!c->queued && !c->running) {
		p->busy++;
		ready_push(p, c);
		pthread_cond_signal(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
}

bool sd_pool_ring_claim(struct sparqd *d, struct sd_client *c)
{
	bool ok;

	pthread_mutex_lock(&d->pool.mu);
	ok = !c->polling;
	c->loop_takes = ok;
	pthread_mutex_unlock(&d->pool.mu);
	return ok;
}

void sd_pool_ring_release(struct sparqd *d, struct sd_client *c)
{
	pthread_mutex_lock(&d->pool.mu);
	c->loop_takes = false;
	pthread_mutex_unlock(&d->pool.mu);
}

bool sd_pool_client_idle(struct sparqd *d, struct sd_client *c)
{
	bool idle;

	pthread_mutex_lock(&d->pool.mu);
	idle = !c->head && !c->queued && !c->running;
	pthread_mutex_unlock(&d->pool.mu);
	return idle;
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
