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

/* Sends a Response{error} with id on the client's socket. */
void sd_reply_error(struct sd_client *c, uint64_t id, int code, const char *why);

#endif
