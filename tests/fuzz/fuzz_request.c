/*
 * fuzz_request.c — libFuzzer target for the daemon's control-packet decoder: the bytes
 * of one SOCK_SEQPACKET packet (a protobuf Request, or anything a client sends in its
 * place) through sd_req_decode_msg, exactly as the daemon's loop calls it, against the
 * synthetic client of fuzz_ctx.h.
 *
 * Each input is decoded twice: as the first packet of a connection (no hello yet, no
 * region: only a hello may pass) and after hello (the region mapped, sessions known).
 * The oracle in fuzz_ctx.h checks every result; sd_req_release runs on every path, so
 * LeakSanitizer sees a decode that forgets to free.
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_ctx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sd_req_ctx before = { .shm = NULL, .hello_done = false, .lookup = fuzz_lookup };
	struct sd_req_ctx after = { .shm = fuzz_region_get(), .hello_done = true,
				    .lookup = fuzz_lookup };
	struct sd_req r;
	int ret;

	ret = sd_req_decode_msg(&before, data, size, &r);
	fuzz_check(&r, ret, false);
	sd_req_release(&r);
	sd_req_release(&r); /* idempotent, as request.h promises */

	ret = sd_req_decode_msg(&after, data, size, &r);
	fuzz_check(&r, ret, true);
	sd_req_release(&r);
	return 0;
}
