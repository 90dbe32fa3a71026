/*
 * pool.c — see pool.h. Workers sleep on a condition variable between runs; a run is
 * published by bumping a generation number so a worker never takes a task twice.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "pool.h"

struct sparq_pool {
	pthread_mutex_t mu;
	pthread_cond_t wake, done;
	pthread_t *threads;
	uint32_t n_threads;      /* including the caller */
	uint32_t started;        /* threads actually started */
	uint64_t generation;
	bool stop;
	/* the run in progress */
	sparq_pool_fn fn;
	void *arg;
	uint32_t n_tasks;
	_Atomic uint32_t next;
	uint32_t busy;           /* workers still inside the run */
};

struct worker_arg {
	struct sparq_pool *p;
	uint32_t id;
};

static void drain(struct sparq_pool *p, uint32_t worker)
{
	for (;;) {
		uint32_t t = atomic_fetch_add(&p->next, 1);
		if (t >= p->n_tasks)
			return;
		p->fn(p->arg, t, worker);
	}
}

static void *worker_main(void *a)
{
	struct worker_arg wa = *(struct worker_arg *)a;
	struct sparq_pool *p = wa.p;
	uint64_t seen = 0;

	free(a);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && p->generation == seen)
			pthread_cond_wait(&p->wake, &p->mu);
		if (p->stop)
			break;
		seen = p->generation;
		pthread_mutex_unlock(&p->mu);
		drain(p, wa.id);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int sparq_pool_create(uint32_t n_threads, struct sparq_pool **out)
{
	struct sparq_pool *p;
	int ret = 0;

	if (n_threads == 0)
		n_threads = 1;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->n_threads = n_threads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->wake, NULL);
	pthread_cond_init(&p->done, NULL);
	p->threads = calloc(n_threads, sizeof(*p->threads));
	if (!p->threads) {
		ret = -ENOMEM;
		goto err;
	}
	for (uint32_t i = 1; i < n_threads; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));
		if (!wa) {
			ret = -ENOMEM;
			goto err;
		}
		wa->p = p;
		wa->id = i;
		if (pthread_create(&p->threads[p->started], NULL, worker_main, wa)) {
			free(wa);
			ret = -EAGAIN;
			goto err;
		}
		p->started++;
	}
	*out = p;
	return 0;
err:
	sparq_pool_destroy(p);
	return ret;
}

void sparq_pool_destroy(struct sparq_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);
	for (uint32_t i = 0; i < p->started; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->wake);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

uint32_t sparq_pool_threads(const struct sparq_pool *p)
{
	return p->n_threads;
}

void sparq_pool_run(struct sparq_pool *p, uint32_t n_tasks, sparq_pool_fn fn, void *arg)
{
	if (p->started == 0 || n_tasks <= 1) {
		for (uint32_t t = 0; t < n_tasks; t++)
			fn(arg, t, 0);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->arg = arg;
	p->n_tasks = n_tasks;
	atomic_store(&p->next, 0);
	p->busy = p->started;
	p->generation++;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);

	drain(p, 0);

	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
