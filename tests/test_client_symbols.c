/*
 * test_client_symbols.c — libsparq.so exports exactly libsparq.h (STYLE.md §10): every
 * function of the header resolves, and the internals linked into it (the ipc
 * library's wire and shm calls, the generated protobuf-c code, the client's own
 * helpers) do not, so no engine can come to depend on them. The library is opened
 * with dlopen, as a foreign runtime (the Python binding) would.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "libsparq.h"

#ifndef LIBSPARQ_PATH
#error "LIBSPARQ_PATH must name libsparq.so (tests/CMakeLists.txt passes it)"
#endif

static const char *const exported[] = {
	"sparq_connect", "sparq_disconnect", "sparq_client_error", "sparq_client_backend",
	"sparq_session_create", "sparq_session_close", "sparq_session_park",
	"sparq_session_resume", "sparq_session_drop", "sparq_session_list", "sparq_append",
	"sparq_attend", "sparq_select", "sparq_gather", "sparq_ping", "sparq_stats_get", "sparq_config_get", "sparq_client_server_version",
};

static const char *const hidden[] = {
	"sparq_shm_map", "sparq_shm_range", "sparq_sq_push", "sparq_cq_pop", "sparq_wire_send",
	"sparq_wire_recv", "sparq__v1__request__pack", "sparq__v1__response__unpack",
	"sparq_client_fail", "sparq_client_alloc", "sparq_client_submit_locked",
	"sparq_client_call_locked", "sparq_client_geometry_locked",
};

int main(void)
{
	void *h = dlopen(LIBSPARQ_PATH, RTLD_NOW | RTLD_LOCAL);

	T_CHECK(h, "dlopen %s: %s", LIBSPARQ_PATH, dlerror());
	for (size_t i = 0; i < sizeof(exported) / sizeof(exported[0]); i++)
		T_CHECK(dlsym(h, exported[i]), "%s is not exported", exported[i]);
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
		T_CHECK(!dlsym(h, hidden[i]), "%s is exported", hidden[i]);

	/* and the exported entry points work through the shared object */
	int (*connect_fn)(const char *, const char *, size_t, struct sparq_client **) =
		(int (*)(const char *, const char *, size_t, struct sparq_client **))dlsym(
			h, "sparq_connect");
	struct sparq_client *c = NULL;
	int ret = connect_fn("/nonexistent/sparqd.sock", "symbols", 0, &c);
	T_CHECK(ret == -ENOENT && !c, "connect to nothing through the .so: %d", ret);
	dlclose(h);
	printf("PASS: %zu functions exported, %zu internals hidden\n",
	       sizeof(exported) / sizeof(exported[0]), sizeof(hidden) / sizeof(hidden[0]));
	return T_EXIT_PASS;
}
