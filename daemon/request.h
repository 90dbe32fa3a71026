/*
 * request.h — the daemon's one internal request, and the two decoders that produce it:
 * a protobuf Request packet from the control socket, and a 64-byte submission from the
 * client's ring. Both paths end in the same struct sd_req, validated completely before
 * anything runs, so the executor (and a libFuzzer target) never sees an unchecked field.
 *
 * Trust: every byte handed in comes from the client. Offsets and lengths are checked
 * against the client's own data area with sparq_shm_range (overflow-safe), indices
 * against the session's geometry, sizes against the limits below. The decoders keep no
 * state and touch no socket: a caller passes the region, whether hello happened, and a
 * lookup that answers a session id with its geometry (for the caller's uid only).
 *
 * Pointers in a decoded request point into the client's region, which the client can
 * rewrite at any time: the executor copies inputs out before it trusts their contents.
 */
#ifndef SPARQD_REQUEST_H
#define SPARQD_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shm.h"
#include "sparq.h"

#define SD_NAME_MAX 64u          /* client names, with the NUL */
#define SD_LABEL_MAX 64u         /* session labels, with the NUL */
#define SD_WHY_MAX 128u          /* reasons in replies, with the NUL */
#define SD_LAYERS_MAX 1024u      /* per session */
#define SD_KV_HEADS_MAX 256u     /* per session */
#define SD_STREAMS_MAX 65536u    /* n_layers * n_kv_heads per session */
#define SD_ATTEND_MAX 1024u      /* sequences in one batched attend */

enum sd_op {
	SD_OP_NONE = 0,   /* decode failed before the operation was known */
	SD_OP_HELLO,
	SD_OP_CREATE,
	SD_OP_CLOSE,
	SD_OP_PARK,
	SD_OP_RESUME,
	SD_OP_DROP,
	SD_OP_LIST,
	SD_OP_STATS,
	SD_OP_APPEND,
	SD_OP_ATTEND,
	SD_OP_SELECT,
	SD_OP_GATHER,
	SD_OP_NOP,
	SD_OP_CONFIG,     /* the effective configuration (control socket only) */
	SD_OP_COUNT
};

struct sd_geometry {
	uint32_t n_layers, n_q_heads, n_kv_heads, head_dim;
	enum sparq_dtype dtype;
};

/* Hyper-parameters of a request or a session's defaults. */
struct sd_params {
	struct sparq_params p;
	bool dense;          /* exact attention over every position */
	bool use_defaults;   /* take the session's defaults (attend/select only) */
};

/* One sequence of a batched attend, or the single sequence of a select. */
struct sd_entry {
	uint64_t session;
	struct sd_geometry geo;  /* the session's, as the lookup answered */
	const float *q;          /* [n_q_heads][head_dim] */
	float *y;                /* attend: [n_q_heads][head_dim] */
	float *alpha;            /* [n_q_heads], NULL when absent */
	uint32_t *sel;           /* select: [n_kv_heads][sel_cap] */
	uint32_t *n_sel;         /* select: [n_kv_heads] */
	uint32_t sel_cap;
	struct sd_params params;
};

struct sd_req {
	enum sd_op op;
	bool ring;              /* from the ring: answered by a completion, id = user_data */
	uint64_t id;            /* Request.id or the submission's user_data */

	uint64_t session;       /* close, park, resume, drop, append, gather */
	uint32_t layer;         /* append, attend, select, gather */
	uint32_t kv_head;       /* gather */
	uint32_t n;             /* append: tokens; attend/select: entries; gather: rows */
	struct sd_geometry geo; /* create: requested; append/gather: the session's */

	/* hello */
	uint32_t version;
	char name[SD_NAME_MAX];
	uint64_t shm_bytes;
	/* create */
	struct sd_params defaults;
	bool persistent;
	char label[SD_LABEL_MAX];
	/* resume */
	bool to_ram;
	/* append: [n][n_kv_heads][head_dim] in the session dtype */
	const uint16_t *k, *v;
	/* gather: pos [n], out [n][2 * head_dim] */
	const uint32_t *pos;
	uint16_t *out;
	/* attend, select: n entries (owned, freed by sd_req_release) */
	struct sd_entry *entries;

	/* set when decoding failed: the error to answer with */
	int err;
	int32_t bad_item;       /* failing attend entry, -1 if none */
	char why[SD_WHY_MAX];
};

/* Answers a session id with its geometry; -ENOENT for no session of this client's uid. */
typedef int (*sd_lookup_fn)(void *user, uint64_t session, struct sd_geometry *out);

struct sd_req_ctx {
	const struct sparq_shm *shm;  /* the client's region; NULL before hello */
	bool hello_done;              /* requests before hello and a second hello: -EPROTO */
	sd_lookup_fn lookup;
	void *lookup_user;
};

/*
 * Decodes and validates one control packet. Returns 0 with *out filled, or a negative
 * errno with out->err, out->why (and out->id, out->op when they were readable) set so
 * the caller can answer: -EPROTO for bytes that do not unpack, an empty or unknown
 * body, or hello out of order; -EPROTONOSUPPORT for another protocol version; -EINVAL
 * for a bad field; -ERANGE for an offset or length outside the region; -ENOENT for a
 * session the lookup does not know; -ENOMEM. Call sd_req_release on every path.
 */
int sd_req_decode_msg(const struct sd_req_ctx *ctx, const uint8_t *buf, size_t len,
		      struct sd_req *out);

/*
 * Decodes and validates one ring submission (copied out of the ring by the caller);
 * attend descriptors are copied out of the data area before they are checked. Same
 * errors as sd_req_decode_msg; -EINVAL for an unknown op or nonzero flags/reserved.
 */
int sd_req_decode_sqe(const struct sd_req_ctx *ctx, const struct sparq_sqe *sqe,
		      struct sd_req *out);

/* Frees what a decode allocated; safe on a zeroed or failed request, idempotent. */
void sd_req_release(struct sd_req *r);

/* "append", "attend", ... for logs and stats. */
const char *sd_op_name(enum sd_op op);

/*
 * Resolves request or default parameters into what the core takes for a stream of S
 * positions: dense becomes k = S (exact attention), r = d. Returns -EINVAL with a
 * reason when they cannot apply to any length.
 */
int sd_params_check(const struct sd_params *p, uint32_t head_dim, uint32_t group,
		    const char **why);
struct sparq_params sd_params_for(const struct sd_params *p, uint32_t head_dim, uint32_t S);

#endif
