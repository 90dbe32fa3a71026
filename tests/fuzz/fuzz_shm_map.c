/*
 * fuzz_shm_map.c — libFuzzer target for the client's side of hello: sparq_shm_map on a
 * region whose header (and size) come from the daemon, which libsparq must not trust
 * blindly either (a stale, foreign or broken daemon must give -EPROTO, not a SIGBUS in
 * the engine).
 *
 * Input: byte 0 picks the file's size (odd: the size the header claims, plus or minus
 * a few pages from byte 1; even: (byte 0 >> 1) pages), the rest is written at offset 0
 * of a memfd as the region's first bytes. When the map succeeds, the target checks
 * what the client later relies on: every part lies inside the mapped file (it touches
 * the first and last byte of each, which would SIGBUS past the file's end), the
 * completion ring refuses impossible cursors, and sparq_shm_range never hands out an
 * address outside the data area.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm.h"

#define PAGE 4096u
/* Above the largest valid region (64 GiB of data plus rings); memfd pages stay sparse. */
#define FILE_MAX (1ull << 37)

static int memfd = -1;

static void fail(const char *why)
{
	(void)!write(2, why, strlen(why));
	(void)!write(2, "\n", 1);
	abort();
}

static void touch(const volatile uint8_t *p)
{
	(void)*p;
}

/* Reads an aligned slice of the fuzz input as a uint64 (0 when short). */
static uint64_t u64_at(const uint8_t *data, size_t size, size_t at)
{
	uint64_t v = 0;

	if (at + sizeof(v) <= size)
		memcpy(&v, data + at, sizeof(v));
	return v;
}

static void check_mapped(struct sparq_shm *s, const uint8_t *data, size_t size)
{
	struct sparq_cqe cqe;
	void *p;
	int ret;

	if (s->sq_off < PAGE || s->cq_off < s->sq_off + (uint64_t)s->entries * 64 ||
	    s->data_off < s->cq_off + (uint64_t)s->entries * 64 ||
	    s->data_off + s->data_bytes != s->size)
		fail("sparq_shm_map accepted overlapping or outside parts");
	if (s->entries == 0 || (s->entries & (s->entries - 1)))
		fail("sparq_shm_map accepted a ring size that is not a power of two");
	touch(s->base + s->sq_off);
	touch(s->base + s->cq_off + (uint64_t)s->entries * 64 - 1);
	touch(s->base + s->data_off);
	touch(s->base + s->size - 1);

	/* the completion ring with whatever cursors the header holds */
	for (int i = 0; i < 4; i++) {
		ret = sparq_cq_pop(s, &cqe);
		if (ret < 0 && ret != -EPROTO)
			fail("sparq_cq_pop returned an unexpected error");
		if (ret == 1 && cqe.why[sizeof(cqe.why) - 1] != '\0')
			fail("sparq_cq_pop handed out an unterminated reason");
		if (ret <= 0)
			break;
	}

	/* bounds checks with offsets taken from the input's tail */
	for (size_t at = size >= 24 ? size - 24 : 0; at + 24 <= size; at += 24) {
		uint64_t off = u64_at(data, size, at), len = u64_at(data, size, at + 8);
		uint64_t align = 1ull << (u64_at(data, size, at + 16) & 7);

		if (sparq_shm_range(s, off, len, align, &p) == 0) {
			uint8_t *b = p;
			if (b < s->base + s->data_off || off % align ||
			    (uint64_t)(b - (s->base + s->data_off)) + len > s->data_bytes)
				fail("sparq_shm_range returned a range outside the data area");
			/* an empty range may sit at the very end: nothing to touch */
			if (len) {
				touch(b);
				touch(b + len - 1);
			}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sparq_shm_header hdr;
	struct sparq_shm s;
	const char *why = NULL;
	uint64_t file_size;
	int fd, ret;

	if (size < 2)
		return 0;
	if (memfd < 0) {
		memfd = memfd_create("fuzz-shm", MFD_CLOEXEC);
		if (memfd < 0)
			fail("memfd_create failed");
	}
	memset(&hdr, 0, sizeof(hdr));
	memcpy(&hdr, data + 1, size - 1 < sizeof(hdr) ? size - 1 : sizeof(hdr));
	if (data[0] & 1) {
		int64_t delta = (int64_t)(int8_t)data[0] >> 1;
		file_size = hdr.size + (uint64_t)(delta * (int64_t)PAGE);
	} else {
		file_size = (uint64_t)(data[0] >> 1) * PAGE;
	}
	if (file_size > FILE_MAX)
		file_size = FILE_MAX;
	/* drop the previous run's pages, then size and fill the region */
	if (ftruncate(memfd, 0) || ftruncate(memfd, (off_t)file_size))
		fail("ftruncate failed");
	if (size - 1 > file_size)
		size = (size_t)file_size + 1;
	if (size > 1 && pwrite(memfd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
		fail("pwrite failed");

	fd = dup(memfd);
	if (fd < 0)
		fail("dup failed");
	ret = sparq_shm_map(fd, &s, &why);
	if (ret == 0) {
		check_mapped(&s, data + 1, size - 1);
		sparq_shm_unmap(&s);
	} else if (!why || !*why) {
		fail("sparq_shm_map failed without a reason");
	} else if (ret != -EPROTO && ret != -EPROTONOSUPPORT && ret != -ENOMEM) {
		fail("sparq_shm_map failed with an unexpected code");
	}
	return 0;
}
