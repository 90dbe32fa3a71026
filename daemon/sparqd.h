/*
 * sparqd.h — the daemon's top-level context: everything mutable the daemon owns hangs
 * off one struct sparqd (no other global state), plus the per-connection client and
 * the queued job that the event loop (loop.c), the workers (workers.c) and the
 * executor (exec.c) pass between them.
 *
 * Threads: the event loop thread owns the listening socket, epoll, the client list
 * and every client's receive side. Workers wait on the clients' submit doorbells
 * themselves (workers.h): the worker that takes a doorbell owns that client
 * (c->running under pool.mu) until it has nothing left, so per-client order holds,
 * the submission ring has one consumer, and a client's completion ring and socket
 * have one writer at a time: the owning worker, or the loop (socket only) while the
 * client is idle (no job queued or running).
 */
#ifndef SPARQD_SPARQD_H
#define SPARQD_SPARQD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "config.h"
#include "log.h"
#include "manager.h"
#include "request.h"
#include "session.h"
#include "shm.h"
#include "stats.h"

struct sd_job {
	struct sd_req req;
	uint64_t t0;            /* when its bytes arrived, for latency */
	bool teardown;          /* the client's last job: retire its sessions */
	struct sd_job *next;
};

/* What an epoll event is about: epoll_event.data.ptr points at one of these. */
enum sd_watch_kind { SD_WATCH_LISTEN, SD_WATCH_SIGNAL, SD_WATCH_WAKE, SD_WATCH_SOCK };

struct sd_watch {
	enum sd_watch_kind kind;
	struct sd_client *c;     /* SOCK */
};

struct sd_client {
	uint64_t id;
	struct sd_watch w_sock;
	int sock;
	int submit_fd, complete_fd;   /* -1 before hello */
	uint32_t uid, pid;
	char name[SD_NAME_MAX];
	bool hello_done;
	struct sparq_shm shm;         /* mapped after hello */
	struct sd_job *bye;           /* its teardown job, allocated at hello: going never fails */
	/* under pool.mu */
	struct sd_job *head, *tail;
	bool queued;                  /* its doorbell was rung for queued work, no owner yet */
	bool running;                 /* a worker owns it */
	bool closing;                 /* no more jobs will come; teardown is queued */
	bool dead;                    /* teardown ran: the loop may free it */
	struct sd_client *next_dead;
	/* loop thread only */
	struct sd_client *next;
};

struct sd_pool {
	pthread_mutex_t mu;
	pthread_cond_t idle_cv;       /* shutdown waits for no work left */
	int ep_fd;                    /* the clients' submit doorbells (one-shot), kick_fd */
	int kick_fd;                  /* written once at stop: wakes every worker */
	struct sd_client *dead;       /* torn down, for the loop to free */
	unsigned busy;                /* clients queued or running */
	unsigned idle;                /* workers waiting on ep_fd */
	bool quiesce;                 /* shutdown: no more ring submissions are taken */
	bool stop;
	pthread_t *threads;
	uint32_t n_threads;
};

struct sparqd {
	struct sd_config cfg;
	struct sd_log log;
	struct tier_manager *tm;
	struct sparq_backend *be;
	char backend_detail[160];
	struct sd_sessions sessions;
	bool sessions_ready;
	struct sd_stats stats;
	struct sd_pool pool;
	bool pool_started;
	int listen_fd, epoll_fd, signal_fd, wake_fd;
	struct sd_watch w_listen, w_signal, w_wake;
	struct sd_client *clients;
	uint32_t n_clients;
	uint64_t next_client_id;
	bool stopping;
	bool ready_written, pid_written, socket_bound;
	struct sd_metrics *metrics;   /* metrics.h; NULL when --metrics-port is 0 */
};

#endif
