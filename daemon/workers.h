/*
 * workers.h — the request workers. Each client has a FIFO of jobs; a client with jobs
 * waits in one ready queue, and a worker takes a whole client, runs its jobs in order
 * (a bounded run, then it queues the client again behind the others), so one client's
 * requests never overtake each other and a slow client holds one worker, not all.
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
/* Blocks until no client has work left (loop thread, at shutdown). */
void sd_pool_drain(struct sparqd *d);
/* Clients whose teardown ran, for the loop to free (loop thread). */
struct sd_client *sd_pool_take_dead(struct sparqd *d);

#endif
