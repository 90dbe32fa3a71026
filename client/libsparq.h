/*
 * libsparq.h — the C client library an inference engine links against to keep its KV
 * caches in sparqd and get SparQ attention back (DESIGN.md §5). This is the library's
 * only public header; the shared object exports these symbols and nothing else.
 *
 * Model: a session is one sequence's cache with a fixed geometry (layers, query heads,
 * KV heads, head dimension, fp16/bf16). The engine appends each layer's K/V as it
 * computes them (bulk at prefill, one token per decode step) and asks for attention
 * once per layer per step, batched over sessions. Engines that attend themselves ask
 * for the selection (positions + alpha) and gather the rows instead.
 *
 * Control calls (connect, sessions, stats) are protobuf messages over the daemon's
 * Unix socket; data calls (append, attend, select, gather) travel through a shared-
 * memory region and its rings, so a decode step makes no socket round trip.
 *
 * Errors: every call returns 0 or a negative errno code (never prints, never exits):
 *   -EINVAL bad argument, -ENOENT no such session (or another client's), -ECONNREFUSED /
 *   -ENOENT at connect when no daemon listens, -EACCES socket not accessible,
 *   -EPROTONOSUPPORT daemon speaks another protocol version, -EPIPE daemon gone,
 *   -E2BIG request larger than the shared region, -ENOSPC tiers full, -EIO, -EBADMSG,
 *   -ETIMEDOUT the daemon did not answer within $SPARQ_CLIENT_TIMEOUT_MS milliseconds
 *   (default 120000; park and resume get ten times that).
 * sparq_client_error() gives the daemon's message for the last failed call.
 *
 * Thread-safety: a client handle may be shared by threads; calls on it are serialized
 * by an internal lock (one request in flight per handle). For parallel requests, open
 * one handle per thread. Handles are not inherited across fork().
 */
#ifndef LIBSPARQ_H
#define LIBSPARQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LIBSPARQ_DEFAULT_SOCKET "sparqd.sock"   /* relative to the daemon's data directory */

struct sparq_client;

enum sparq_client_dtype { SPARQ_CLIENT_F16 = 1, SPARQ_CLIENT_BF16 = 2 };
enum sparq_client_blend { SPARQ_CLIENT_BLEND_AUTO = 0, SPARQ_CLIENT_BLEND_ON = 1,
			  SPARQ_CLIENT_BLEND_OFF = 2 };

struct sparq_geometry {
	uint32_t n_layers;
	uint32_t n_q_heads;     /* a multiple of n_kv_heads */
	uint32_t n_kv_heads;
	uint32_t head_dim;      /* a multiple of 8, at most 1024 */
	enum sparq_client_dtype dtype;
};

/* SparQ hyper-parameters: explicit r/k/l win over ratio (SPARQ.md "Choosing r and k"). */
struct sparq_attn_params {
	uint32_t r;             /* query components; 0 = from ratio */
	uint32_t k;             /* rows fetched; 0 = from ratio */
	int32_t l;              /* local window; -1 = k/4 */
	float ratio;            /* target transfer 1/ratio; 0 = explicit r, k only */
	enum sparq_client_blend blend;
	bool dense;             /* exact attention over every position instead */
};

struct sparq_session_opts {
	struct sparq_geometry geometry;
	struct sparq_attn_params defaults;  /* used when a request passes no params */
	bool persistent;        /* parked, not freed, when the client disconnects or dies */
	const char *label;      /* optional, shown by sparqctl; at most 63 bytes */
};

struct sparq_session_info {
	uint64_t id;
	struct sparq_geometry geometry;
	uint64_t tokens;
	bool persistent, parked, open;
	uint32_t owner_uid, owner_pid;
	char label[64];
	/* tier placement of its records over its open streams (0, 0 when not open) */
	uint64_t ram_records, nvme_records;
};

/*
 * Connects to the daemon listening on socket_path (NULL: $SPARQD_SOCKET, else
 * ./sparqd-data/sparqd.sock), says hello as name, maps the shared region (shm_bytes
 * of data area; 0 = the daemon's default). -ECONNREFUSED/-ENOENT when no daemon
 * listens, -EACCES, -EPROTONOSUPPORT, -EPROTO for a bad reply.
 */
int sparq_connect(const char *socket_path, const char *name, size_t shm_bytes,
		  struct sparq_client **out);
/* Closes the connection; the daemon frees the handle's non-persistent sessions. */
void sparq_disconnect(struct sparq_client *c);

/* The daemon's message for the last failed call on this handle ("" if none). */
const char *sparq_client_error(const struct sparq_client *c);
/* The backend the daemon attends with ("cpu" or "cuda"). */
const char *sparq_client_backend(const struct sparq_client *c);
/* The daemon's version string, as its hello reply gave it. */
const char *sparq_client_server_version(const struct sparq_client *c);

int sparq_session_create(struct sparq_client *c, const struct sparq_session_opts *opts,
			 uint64_t *id);
/* Frees the session (and its parked copy, if any). */
int sparq_session_close(struct sparq_client *c, uint64_t id);
/* Makes the session durable on NVMe; it stays open and usable. -EEXIST if parked. */
int sparq_session_park(struct sparq_client *c, uint64_t id);
/* Reopens a parked session (same uid as its creator), from NVMe or read into RAM. */
int sparq_session_resume(struct sparq_client *c, uint64_t id, bool to_ram);
/* Removes a session's parked copy (its open streams, if any, stay). */
int sparq_session_drop(struct sparq_client *c, uint64_t id);
/* Sessions this client's uid owns, up to max; *count receives how many there are. */
int sparq_session_list(struct sparq_client *c, struct sparq_session_info *out, uint32_t max,
		       uint32_t *count);

/*
 * Appends n_tokens positions to every KV head of one layer: k and v are
 * [n_tokens][n_kv_heads][head_dim] in the session's dtype (raw 16-bit patterns).
 * Prefill appends in bulk, decode one token. Nothing is appended on error, with one
 * exception: an append larger than the shared data area is split into several ring
 * requests, each applied atomically by the daemon; NaN/Inf anywhere refuses the whole
 * append before any piece is sent, but a daemon-side failure of a later piece (-ENOSPC,
 * -EIO) keeps the pieces before it, and sparq_client_error() says how many tokens went
 * in. -E2BIG when one token does not fit the data area.
 */
int sparq_append(struct sparq_client *c, uint64_t id, uint32_t layer, uint32_t n_tokens,
		 const uint16_t *k, const uint16_t *v);

/* One sequence of a batched attend. */
struct sparq_attend_req {
	uint64_t session;
	const float *q;         /* [n_q_heads][head_dim], post-RoPE */
	float *y;               /* [n_q_heads][head_dim] out */
	float *alpha;           /* [n_q_heads] out, optional */
	const struct sparq_attn_params *params;  /* NULL = the session's defaults */
};

/*
 * Attention for one layer of n sequences in one request (all KV heads of each).
 * On failure *bad (optional) names the failing request, -1 if none.
 */
int sparq_attend(struct sparq_client *c, uint32_t layer, const struct sparq_attend_req *reqs,
		 uint32_t n, int32_t *bad);

/*
 * SparQ selection only: sel [n_kv_heads][sel_cap] ascending positions, n_sel
 * [n_kv_heads], alpha [n_q_heads] (optional).
 */
int sparq_select(struct sparq_client *c, uint64_t id, uint32_t layer, const float *q,
		 const struct sparq_attn_params *params, uint32_t *sel, uint32_t sel_cap,
		 uint32_t *n_sel, float *alpha);

/* Records of one stream: out [n][2·head_dim] (K row then V row), session dtype. */
int sparq_gather(struct sparq_client *c, uint64_t id, uint32_t layer, uint32_t kv_head,
		 const uint32_t *pos, uint32_t n, uint16_t *out);

/* Round trip of an empty ring request: the IPC floor, for benchmarks. */
int sparq_ping(struct sparq_client *c);

struct sparq_op_stats {
	char op[16];
	uint64_t count, errors, p50_ns, p99_ns;
};

struct sparq_stats {
	char backend[16];
	char backend_detail[160];
	uint32_t clients, sessions;
	uint32_t n_ops;
	struct sparq_op_stats ops[16];
	uint64_t ram_capacity, ram_used, nvme_capacity, nvme_used;
	uint64_t ram_records_read, nvme_records_read, nvme_bytes_read, nvme_bytes_written;
	uint64_t demotions, promotions, parks, resumes, checksum_failures;
	double read_amplification;
	uint64_t uptime_ns;
};

int sparq_stats_get(struct sparq_client *c, struct sparq_stats *out);

/* One setting of the daemon's effective configuration (its long option name). */
struct sparq_config_entry {
	char key[32];
	char value[480];        /* longer values end truncated */
};

/* The daemon's settings, up to max of them; *count receives how many there are. */
int sparq_config_get(struct sparq_client *c, struct sparq_config_entry *out, uint32_t max,
		     uint32_t *count);

#ifdef __cplusplus
}
#endif

#endif
