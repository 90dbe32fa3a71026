/*
 * exec.h — runs one decoded request against the sessions and the backend and answers
 * it: a Response packet for socket requests, a completion (then the completion
 * doorbell) for ring requests. Called by the worker running the client, or by the
 * event loop while the client is idle (decode errors, NOP, hello replies).
 */
#ifndef SPARQD_EXEC_H
#define SPARQD_EXEC_H

#include "sparqd.h"

/* Executes job->req (answering its decode error if it has one), answers, records stats. */
void sd_exec(struct sparqd *d, struct sd_client *c, struct sd_job *job);
/*
 * Takes the next submission of c's ring into a new decoded job (*out). 1: taken, 0: the
 * ring is empty (or every completion slot is owed), -EPROTO: its tail is impossible,
 * -ENOMEM: taken but no job for it (*lost: its user_data, owed an answer). Only the
 * ring's consumer calls it: the worker that owns the client (workers.h).
 */
int sd_ring_take(struct sparqd *d, struct sd_client *c, struct sd_job **out, uint64_t *lost);
/* Completes user_data with -ENOMEM "out of memory" (the completion ring's writer only). */
void sd_ring_answer_enomem(struct sparqd *d, struct sd_client *c, uint64_t user_data);

/* Sends a Response{error} with id on the client's socket. */
void sd_reply_error(struct sd_client *c, uint64_t id, int code, const char *why);

#endif
