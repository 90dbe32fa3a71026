/*
 * pool.h — the CPU backend's worker threads. A batch is split into tasks (one per
 * item of a phase); workers and the calling thread take task indices from an atomic
 * counter until none is left, then the caller returns. Owned by one backend context
 * (no global state); one run at a time.
 */
#ifndef SPARQ_CPU_POOL_H
#define SPARQ_CPU_POOL_H

#include <stdint.h>

struct sparq_pool;

typedef void (*sparq_pool_fn)(void *arg, uint32_t task, uint32_t worker);

/* n_threads counts the caller: n_threads - 1 threads are started. -ENOMEM, -EAGAIN. */
int sparq_pool_create(uint32_t n_threads, struct sparq_pool **out);
void sparq_pool_destroy(struct sparq_pool *p);
uint32_t sparq_pool_threads(const struct sparq_pool *p);
/* Runs fn(arg, t, worker) for t in [0, n_tasks); worker < sparq_pool_threads(). */
void sparq_pool_run(struct sparq_pool *p, uint32_t n_tasks, sparq_pool_fn fn, void *arg);

#endif
