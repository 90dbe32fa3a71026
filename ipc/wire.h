/*
 * wire.h — the control plane's framing: one protobuf-c message per SOCK_SEQPACKET
 * packet (the socket keeps boundaries, CRIU cr-service style), file descriptors beside
 * it with SCM_RIGHTS. The schema is sparq.proto; its generated code is sparq.pb-c.h.
 *
 * Both sides use these calls; neither trusts the other's bytes: a packet longer than
 * SPARQ_WIRE_MAX is reported as truncated, descriptors beyond what the caller expects
 * are closed, and every unpacked message is freed on every path by the caller.
 */
#ifndef SPARQ_IPC_WIRE_H
#define SPARQ_IPC_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sparq.pb-c.h"

/* Largest control packet either side sends or accepts. */
#define SPARQ_WIRE_MAX 65536u
/* Most descriptors one packet carries (HelloReply: memfd, submit and completion eventfds). */
#define SPARQ_WIRE_MAX_FDS 3u

/*
 * Packs msg and sends it as one packet with n_fds descriptors (may be 0). -EINVAL for
 * a message that packs to nothing (it would read as a closed connection); -EMSGSIZE
 * when it packs to more than SPARQ_WIRE_MAX; -errno of sendmsg (-EPIPE when the peer
 * is gone; MSG_NOSIGNAL is used so it never raises SIGPIPE).
 */
int sparq_wire_send(int sock, const ProtobufCMessage *msg, const int *fds, unsigned n_fds);

/*
 * Receives one packet into buf (cap >= SPARQ_WIRE_MAX) and up to max_fds descriptors
 * (opened close-on-exec; any beyond max_fds are closed). Returns the packet's length,
 * 0 when the peer closed the connection, -EMSGSIZE for a truncated packet (its
 * descriptors closed), -errno of recvmsg (-EAGAIN on a non-blocking socket).
 */
ssize_t sparq_wire_recv(int sock, uint8_t *buf, size_t cap, int *fds, unsigned max_fds,
			unsigned *n_fds);

/* The peer's credentials (SO_PEERCRED); -errno on failure. */
int sparq_wire_peer(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

#endif
