/*
 * client_helpers.h — what the tests that drive sparqd through libsparq share: a check
 * that a call returned 0, which on failure prints the call, its code and the client's
 * last error message (the daemon's reason), and a look-up in sparq_list's answer.
 * Header-only, on top of helpers.h (T_CHECK) and libsparq.h.
 */
#ifndef SPARQ_TEST_CLIENT_HELPERS_H
#define SPARQ_TEST_CLIENT_HELPERS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "helpers.h"
#include "libsparq.h"

/* Fails the test unless call returns 0; c is the client whose error message to show. */
#define T_CHECK_OK(c, call)                                                             \
	do {                                                                            \
		int r_ = (call);                                                        \
		T_CHECK(r_ == 0, "%s = %d (%s): %s", #call, r_, strerror(-r_),          \
			sparq_client_error(c));                                         \
	} while (0)

/* The entry for session id among the n that sparq_list returned, or NULL. */
static inline const struct sparq_session_info *
t_session_find(const struct sparq_session_info *v, uint32_t n, uint64_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (v[i].id == id)
			return &v[i];
	return NULL;
}

#endif
