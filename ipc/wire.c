/*
 * wire.c — control-plane framing over SOCK_SEQPACKET (wire.h). A packet is exactly one
 * packed protobuf-c message, so a reader never reassembles and a truncated or oversize
 * packet is detectable from MSG_TRUNC alone. Descriptors ride in one SCM_RIGHTS
 * control message; the receiver takes them close-on-exec and closes any it did not
 * ask for, so a hostile peer cannot make the other side leak descriptors.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wire.h"

int sparq_wire_send(int sock, const ProtobufCMessage *msg, const int *fds, unsigned n_fds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * SPARQ_WIRE_MAX_FDS)];
	} ctl;
	size_t len = protobuf_c_message_get_packed_size(msg);
	struct msghdr mh = { 0 };
	struct iovec iov;
	uint8_t *buf;
	ssize_t n;
	int ret = 0;

	/* a zero-length packet would read as "peer closed" on the other side */
	if (len == 0)
		return -EINVAL;
	if (len > SPARQ_WIRE_MAX || n_fds > SPARQ_WIRE_MAX_FDS)
		return -EMSGSIZE;
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	protobuf_c_message_pack(msg, buf);
	iov.iov_base = buf;
	iov.iov_len = len;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (n_fds) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
	}
	do {
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		ret = -errno;
	else if ((size_t)n != len)
		ret = -EMSGSIZE; /* SEQPACKET sends whole packets; anything else is a bug */
	free(buf);
	return ret;
}

/* Takes the descriptors of every SCM_RIGHTS message: the first max_fds, the rest closed. */
static unsigned take_fds(struct msghdr *mh, int *fds, unsigned max_fds, bool keep)
{
	unsigned got = 0;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (keep && got < max_fds)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	return got;
}

ssize_t sparq_wire_recv(int sock, uint8_t *buf, size_t cap, int *fds, unsigned max_fds,
			unsigned *n_fds)
{
	union {
		struct cmsghdr align;
		/* room for more than we accept, so extra descriptors arrive and get closed
		 * rather than being dropped by the kernel with MSG_CTRUNC */
		char buf[CMSG_SPACE(sizeof(int) * 16)];
	} ctl;
	struct msghdr mh = { 0 };
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	ssize_t n;

	if (n_fds)
		*n_fds = 0;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	do {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	bool ok = !(mh.msg_flags & MSG_TRUNC) && !(mh.msg_flags & MSG_CTRUNC);
	/* a truncated packet keeps none of its descriptors */
	unsigned got = take_fds(&mh, fds, fds ? max_fds : 0, ok);
	if (!ok)
		return -EMSGSIZE;
	if (n_fds)
		*n_fds = got;
	return n;
}

int sparq_wire_peer(int sock, pid_t *pid, uid_t *uid, gid_t *gid)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	if (pid)
		*pid = cr.pid;
	if (uid)
		*uid = cr.uid;
	if (gid)
		*gid = cr.gid;
	return 0;
}
