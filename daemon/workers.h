/*
 * workers.h — the request workers. Each client has a FIFO of jobs; a client with jobs
 * waits in one ready queue, and a worker takes a whole client, runs its jobs in order
 * (a bounded run, then it queues the client again behind the others), so one client's
 * requests never overtake each other and a slow client holds one worker, not all.
 *
 * Polling (--poll-us): a worker that has run a client's last queued job keeps that
 * client and watches its submission ring for up to poll_us, taking and running what
 * arrives there itself: no doorbell, no event loop, no condition variable between the
 * client's next request and a worker. It stops as soon as another client is ready, a
 * job is queued for its client, or the time is up.
 */
#ifndef SPARQD_WORKERS_H
#define SPARQD_WORKERS_H

#include "sparqd.h"

int sd_pool_start(struct sparqd *d);
/* Waits for every queued job to finish, then joins the workers. */
void sd_pool_stop(struct sparqd *d);
/* Queues a job for c (loop thread). */
void sd_pool_submit(struct sparqd *d, struct sd_client *c, struct sd_job *job);
/* Whether c has no job queued or running; stays true until the loop submits (loop thread). */
bool sd_pool_client_idle(struct sparqd *d, struct sd_client *c);
/* The loop becomes the consumer of c's submission ring until sd_pool_ring_release;
 * false when c's worker polls it (the worker then takes what is there). Loop thread. */
bool sd_pool_ring_claim(struct sparqd *d, struct sd_client *c);
void sd_pool_ring_release(struct sparqd *d, struct sd_client *c);
/* Blocks until no client has work left (loop thread, at shutdown). */
void sd_pool_drain(struct sparqd *d);
/* Clients whose teardown ran, for the loop to free (loop thread). */
struct sd_client *sd_pool_take_dead(struct sparqd *d);

#endif
