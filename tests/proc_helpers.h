/*
 * proc_helpers.h — what the tests that run the project's programs (sparqd, sparqctl,
 * sparq-stress) share: the two check styles, reading what a child wrote to a file,
 * and turning a wait status into one exit code.
 *
 * T_REQUIRE stops the test at the first failure (for tests whose later steps depend on
 * the earlier ones); T_EXPECT counts failures in a counter the test owns and goes on,
 * so one run reports every broken promise. Header-only; needs no library besides libc,
 * so the daemon tests that do not link libsparq can use it too.
 */
#ifndef SPARQ_TEST_PROC_HELPERS_H
#define SPARQ_TEST_PROC_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define T_PROC_EXIT_FAIL 1

#define T_CHECK_REPORT(cond, ...)                                                     \
	do {                                                                          \
		fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, cond); \
		fprintf(stderr, __VA_ARGS__);                                         \
		fputc('\n', stderr);                                                  \
	} while (0)

/* Fails the test (exit 1) with the condition and a message when cond is false. */
#define T_REQUIRE(cond, ...)                                                          \
	do {                                                                          \
		if (!(cond)) {                                                        \
			T_CHECK_REPORT(#cond, __VA_ARGS__);                           \
			exit(T_PROC_EXIT_FAIL);                                       \
		}                                                                     \
	} while (0)

/* Counts a failure in failures (an int lvalue) and goes on when cond is false. */
#define T_EXPECT(failures, cond, ...)                                                 \
	do {                                                                          \
		if (!(cond)) {                                                        \
			T_CHECK_REPORT(#cond, __VA_ARGS__);                           \
			(failures)++;                                                 \
		}                                                                     \
	} while (0)

/*
 * Reads up to cap - 1 bytes of path into buf and terminates them; a file that cannot
 * be opened reads as empty (the caller's checks on the text then fail with its name).
 * Returns the bytes read.
 */
static inline size_t t_slurp(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;

	if (f) {
		n = fread(buf, 1, cap - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return n;
}

/* Lines of path that contain what (0 when path cannot be opened). */
static inline unsigned t_file_count(const char *path, const char *what)
{
	char line[1024];
	unsigned n = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, what) != NULL;
	fclose(f);
	return n;
}

/* A wait status as one code: the exit code, or 128 + the signal that ended the child. */
static inline int t_exit_code(int status)
{
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

#endif
