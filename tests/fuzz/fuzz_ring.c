/*
 * fuzz_ring.c — libFuzzer target for the data plane's submissions: one 64-byte ring
 * descriptor plus the contents of the client's data area (where a batched attend's
 * descriptors live) through the path the daemon runs on a doorbell.
 *
 * Input: bytes [0, 64) are the submission, the rest is copied to the start of the data
 * area (offset 12288 in this 8-entry region), so seeds point off[0] there. The
 * submission travels the real ring: the client side (a second mapping of the same
 * memfd, as libsparq holds it) pushes it, the daemon side pops it, decodes it with
 * sd_req_decode_sqe, answers with a completion carrying the error and reason, and the
 * client pops that completion and checks it echoes user_data and the result. The
 * oracle of fuzz_ctx.h checks the decoded request.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_ctx.h"

static struct sparq_shm client;
static size_t dirty;  /* bytes of the data area the previous input wrote */

static void client_map(void)
{
	const char *why = "";
	int fd;

	if (client.base)
		return;
	fd = dup(fuzz_region_get()->fd);
	if (fd < 0 || sparq_shm_map(fd, &client, &why)) {
		fprintf(stderr, "sparq_shm_map: %s\n", why);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct sparq_shm *region = fuzz_region_get();
	struct sd_req_ctx ctx = { .shm = region, .hello_done = true, .lookup = fuzz_lookup };
	struct sparq_sqe sqe, got;
	struct sparq_cqe cqe, back;
	struct sd_req r;
	size_t n_data;
	int ret;

	if (size < sizeof(sqe))
		return 0;
	client_map();
	memcpy(&sqe, data, sizeof(sqe));
	n_data = size - sizeof(sqe);
	if (n_data > region->data_bytes)
		n_data = region->data_bytes;
	/* same data area for the same input, whatever ran before */
	memset(region->base + region->data_off, 0, dirty);
	memcpy(region->base + region->data_off, data + sizeof(sqe), n_data);
	dirty = n_data;

	if (sparq_sq_push(&client, &sqe))
		fuzz_fail("client could not push into an empty ring", NULL);
	if (sparq_sq_pop(&fuzz_region, &got) != 1 || memcmp(&got, &sqe, sizeof(sqe)))
		fuzz_fail("the daemon did not pop the submission the client pushed", NULL);

	ret = sd_req_decode_sqe(&ctx, &got, &r);
	fuzz_check(&r, ret, true);
	if (!r.ring || r.id != sqe.user_data)
		fuzz_fail("ring request without its user_data", &r);

	/* the daemon's answer, as the executor would post it for a failed decode */
	memset(&cqe, 0, sizeof(cqe));
	cqe.user_data = r.id;
	cqe.res = ret;
	cqe.bad_item = ret ? r.bad_item : -1;
	snprintf(cqe.why, sizeof(cqe.why), "%s", ret ? r.why : "");
	sd_req_release(&r);
	sparq_cq_push(&fuzz_region, &cqe);
	if (sparq_cq_pop(&client, &back) != 1 || back.user_data != sqe.user_data ||
	    back.res != ret || (ret && !back.why[0]))
		fuzz_fail("the completion did not come back to the client", NULL);
	return 0;
}
