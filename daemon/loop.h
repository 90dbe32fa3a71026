/*
 * loop.h — the event loop (redis ae.c style): one epoll over the listening socket,
 * every client's socket and submission doorbell, a signalfd for SIGTERM/SIGINT and the
 * workers' wake eventfd. It receives and decodes, answers what is cheap while a client
 * is idle (hello, decode errors, NOP), and hands everything else to the workers.
 */
#ifndef SPARQD_LOOP_H
#define SPARQD_LOOP_H

#include "sparqd.h"

/*
 * Binds the control socket: refuses to replace a socket a daemon still answers on
 * (-EADDRINUSE) or a path that is not a socket (-EEXIST), removes a stale one, applies
 * socket-mode. Then creates epoll, the signalfd (SIGTERM/SIGINT must be blocked) and
 * the wake eventfd. -errno with a reason.
 */
int sd_loop_open(struct sparqd *d, const char **why);

/* Serves until SIGTERM/SIGINT, then stops accepting, removes the socket and waits for
 * every queued request (and client teardown) to finish. */
int sd_loop_run(struct sparqd *d);

/* Frees every client (after the workers stopped) and closes the loop's fds. */
void sd_loop_close(struct sparqd *d);

#endif
