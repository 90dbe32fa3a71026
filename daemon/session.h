/*
 * session.h — the session table: every open session (geometry, defaults, owner, its
 * n_layers × n_kv_heads streams over the tier manager's store) keyed by id, plus the
 * lifecycle calls that move sessions between open, parked (durable in the manifest)
 * and gone. Parked sessions that are not open live only in the tier manager; their
 * meta (meta.h) says who owns them.
 *
 * Isolation: every call takes the caller's uid; a session of another uid answers
 * -ENOENT, exactly like one that does not exist.
 *
 * Concurrency: the table lock guards membership and reference counts only. Work on a
 * session's streams holds the session's own lock (sd_session_lock), so one client's
 * slow append never blocks another's attend. A closed session leaves the table at once
 * and is freed when its last reference is put.
 *
 * Retirement (its connection gone, or shutdown): the session stays in the table,
 * marked retiring, until its streams are closed, so list shows it open exactly as long
 * as the tier manager holds its streams open. A retiring session refuses new data work
 * (-ENOENT, it is going away); resume, close, park and drop of it wait (bounded by
 * SD_RETIRE_WAIT_MS) for the retirement to finish and then act on the parked copy.
 */
#ifndef SPARQD_SESSION_H
#define SPARQD_SESSION_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "log.h"
#include "manager.h"
#include "request.h"
#include "stream.h"

#define SD_BUCKETS 1024u
/* How long a lifecycle call waits for a retiring session: a park writes the session's
 * records durably, which can take seconds on a busy NVMe device. */
#define SD_RETIRE_WAIT_MS 10000u

struct sd_session {
	uint64_t id;
	struct sd_geometry geo;
	struct sd_params defaults;
	bool persistent;
	char label[SD_LABEL_MAX];
	uint32_t owner_uid, owner_pid;
	uint64_t owner_conn;             /* the connection whose departure frees or parks it */
	struct sparq_stream **streams;   /* [n_layers][n_kv_heads] */
	pthread_mutex_t mu;              /* serializes work on the streams */
	/* under the session lock */
	bool parked;                     /* a manifest entry exists */
	uint64_t parked_tokens;          /* sum of the stream lengths it describes */
	/* under the table lock */
	unsigned refs;
	bool linked;                     /* in the table */
	bool retiring;                   /* linked, but its connection is gone */
	bool closing;                    /* its streams are being closed */
	struct sd_session *next;         /* bucket chain */
	struct sd_session *retire_next;  /* retire()'s batch */
};

struct sd_sessions {
	pthread_mutex_t mu;
	pthread_cond_t retired;          /* a retiring session left the table */
	struct sd_session *buckets[SD_BUCKETS];
	uint32_t count;
	uint64_t next_id;
	struct tier_manager *tm;
	struct sparq_store *store;
	struct sparq_backend *be;
	const struct sd_log *log;
};

/* Ids continue above every parked id and above a time-based seed (unique across restarts). */
int sd_sessions_init(struct sd_sessions *t, struct tier_manager *tm, struct sparq_backend *be,
		     const struct sd_log *log);
/* Parks every persistent session (logging failures), then frees every session. */
void sd_sessions_shutdown(struct sd_sessions *t);
uint32_t sd_sessions_count(struct sd_sessions *t);

/* request.h's lookup: user is a struct sd_lookup. */
struct sd_lookup {
	struct sd_sessions *t;
	uint32_t uid;
};
int sd_sessions_geometry(void *user, uint64_t id, struct sd_geometry *out);

/* A referenced session of uid, or NULL (-ENOENT). Put it back with sd_session_put. */
struct sd_session *sd_session_get(struct sd_sessions *t, uint32_t uid, uint64_t id);
void sd_session_put(struct sd_sessions *t, struct sd_session *s);
static inline struct sparq_stream *sd_session_stream(const struct sd_session *s, uint32_t layer,
						     uint32_t kv_head)
{
	return s->streams[(size_t)layer * s->geo.n_kv_heads + kv_head];
}

/* Lifecycle; each returns 0 or -errno with a reason in *why. */
int sd_session_create(struct sd_sessions *t, const struct sd_req *r, uint32_t uid, uint32_t pid,
		      uint64_t conn, uint64_t *id, const char **why);
/* Frees the open session and its parked copy; a parked-only session is dropped. */
int sd_session_close(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why);
/* Makes it durable; -EEXIST when already parked. */
int sd_session_park(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why);
int sd_session_resume(struct sd_sessions *t, uint32_t uid, uint32_t pid, uint64_t conn,
		      uint64_t id, bool to_ram, const char **why);
int sd_session_drop(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why);

struct sd_session_info {
	uint64_t id;
	struct sd_geometry geo;
	uint64_t tokens;
	bool persistent, parked, open;
	uint32_t owner_uid, owner_pid;
	char label[SD_LABEL_MAX];
	uint64_t ram_records, nvme_records;  /* placement of an open session's records */
};
/* The uid's sessions, open and parked, in *out (malloc'd, caller frees). */
int sd_session_list(struct sd_sessions *t, uint32_t uid, struct sd_session_info **out,
		    uint32_t *n);

/* The connection went away: non-persistent sessions freed, persistent ones parked then
 * closed (a parked copy made earlier stays either way). */
void sd_sessions_conn_gone(struct sd_sessions *t, uint64_t conn);

#endif
