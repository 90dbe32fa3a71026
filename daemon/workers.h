/*
 * workers.h — the request workers. They wait on the clients' submit doorbells
 * themselves: every client that said hello has its submit eventfd in the pool's epoll
 * set, one-shot, and the worker that takes a doorbell owns that client until it has
 * nothing left: it runs the jobs the loop queued for it (control requests from the
 * socket, its teardown), then what the submission ring holds, then watches the ring
 * for --poll-us, then re-arms the doorbell. A ring request thus costs one wake-up in
 * the daemon (the worker's), not two (the loop's, then a worker's).
 *
 * Per-client order: one owner at a time (the doorbell is disarmed while owned), queued
 * jobs before ring submissions (they arrived first). Fairness: an owner gives the
 * client back after a bounded run, re-ringing its doorbell so that it waits behind
 * the doorbells already pending; while no other worker is idle, a watching owner
 * looks for other doorbells and leaves its client for them. So a busy client holds one
 * worker, not all. The loop rings a client's doorbell itself when it queues a job for
 * a client nobody owns.
 */
#ifndef SPARQD_WORKERS_H
#define SPARQD_WORKERS_H

#include "sparqd.h"

int sd_pool_start(struct sparqd *d);
/* Waits for every queued job to finish, then joins the workers. */
void sd_pool_stop(struct sparqd *d);
/* Puts c's submit doorbell in the workers' set (loop thread, at hello, c idle). */
int sd_pool_watch(struct sparqd *d, struct sd_client *c);
/* Takes it out (loop thread: a failed hello, or c dead and about to be freed). */
void sd_pool_unwatch(struct sparqd *d, struct sd_client *c);
/* Queues a job for c, which said hello (loop thread). A teardown job marks c closing:
 * its ring is not read any more. */
void sd_pool_submit(struct sparqd *d, struct sd_client *c, struct sd_job *job);
/* Whether c has no job queued or running; stays true until the loop submits or c's
 * doorbell is taken (then only its completion ring is written, never its socket). */
bool sd_pool_client_idle(struct sparqd *d, struct sd_client *c);
/* Shutdown: no ring submission is taken from now on; queued jobs still run. */
void sd_pool_quiesce(struct sparqd *d);
/* Blocks until no client has work left (loop thread, at shutdown). */
void sd_pool_drain(struct sparqd *d);
/* Clients whose teardown ran, for the loop to free (loop thread). */
struct sd_client *sd_pool_take_dead(struct sparqd *d);

#endif
