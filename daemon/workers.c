/*
 * workers.c — the worker pool (workers.h). One mutex guards the ready queue and every
 * client's job list and flags; it is never held while a job runs. A worker that ran a
 * client's teardown job marks the client dead and wakes the loop through wake_fd,
 * because only the loop thread may free a client (it owns the client list and epoll).
 */
#include <errno.h>
#include <stdlib.h>
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
