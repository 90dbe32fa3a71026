/*
 * sparqd_spawn.c — a private sparqd for the tools that are its clients
 * (sparqd_spawn.h). Readiness is the ready file the daemon writes, atomically, only
 * once its socket accepts; every wait is bounded and watches for the child's exit.
 */
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sparqd_spawn.h"

#define ARGS_MAX 64

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { 0, (long)ms * 1000000L };
	nanosleep(&ts, NULL);
}

/* $SPARQD, else ../daemon/sparqd next to the running executable. */
static int find_binary(char *out, size_t cap)
{
	const char *env = getenv("SPARQD");
	char self[PATH_MAX];
	ssize_t n;

	if (env && *env)
		return (size_t)snprintf(out, cap, "%s", env) < cap ? 0 : -ENAMETOOLONG;
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return -errno;
	self[n] = '\0';
	return (size_t)snprintf(out, cap, "%s/../daemon/sparqd", dirname(self)) < cap ?
		       0 : -ENAMETOOLONG;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) ? -1 : 0;
}

int sparqd_remove_dir(const char *dir, const char *tool)
{
	if (nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS)) {
		fprintf(stderr, "%s: could not remove %s: %s\n", tool, dir, strerror(errno));
		return -EIO;
	}
	return 0;
}

int sparqd_stop(struct sparqd_child *d, const char *tool, int stop_s)
{
	int status = 0;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	for (int i = 0; i < stop_s * 100; i++) {
		pid_t r = waitpid(d->pid, &status, WNOHANG);
		if (r == d->pid) {
			d->pid = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		}
		sleep_ms(10);
	}
	fprintf(stderr, "%s: sparqd ignored SIGTERM for %d s: killing it\n", tool, stop_s);
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &status, 0);
	d->pid = 0;
	return 128 + SIGKILL;
}

int sparqd_cleanup(struct sparqd_child *d, const char *tool)
{
	int ret = 0;

	if (d->pid > 0)
		sparqd_stop(d, tool, 30);
	if (d->dir[0])
		ret = sparqd_remove_dir(d->dir, tool);
	d->dir[0] = '\0';
	return ret;
}

int sparqd_spawn(struct sparqd_child *d, const char *tool, const char *prefix,
		 const char *const *args, int ready_s)
{
	const char *argv[ARGS_MAX];
	char data[64];
	size_t argc = 0;
	double t0 = now_s();
	int ret;

	memset(d, 0, sizeof(*d));
	ret = find_binary(d->bin, sizeof(d->bin));
	if (ret) {
		fprintf(stderr, "%s: cannot locate sparqd: %s\n", tool, strerror(-ret));
		return ret;
	}
	if (access(d->bin, X_OK)) {
		fprintf(stderr, "%s: no sparqd at %s (build it, or set SPARQD)\n", tool, d->bin);
		return -ENOENT;
	}
	if (strlen(prefix) > 16)
		return -EINVAL;
	snprintf(d->dir, sizeof(d->dir), "%s-XXXXXX", prefix);
	if (!mkdtemp(d->dir)) {
		ret = -errno;
		fprintf(stderr, "%s: cannot create a directory here: %s\n", tool, strerror(errno));
		d->dir[0] = '\0';
		return ret;
	}
	snprintf(data, sizeof(data), "%s/data", d->dir);
	snprintf(d->ready, sizeof(d->ready), "%s/ready", d->dir);
	snprintf(d->socket, sizeof(d->socket), "%s/sparqd.sock", d->dir);
	argv[argc++] = d->bin;
	argv[argc++] = "--data-dir";
	argv[argc++] = data;
	argv[argc++] = "--socket";
	argv[argc++] = d->socket;
	argv[argc++] = "--ready-file";
	argv[argc++] = d->ready;
	argv[argc++] = "--foreground";
	for (size_t i = 0; args && args[i]; i++) {
		if (argc + 1 >= ARGS_MAX)
			return -E2BIG;
		argv[argc++] = args[i];
	}
	argv[argc] = NULL;

	fflush(NULL);
	pid_t parent = getpid();
	d->pid = fork();
	if (d->pid < 0) {
		ret = -errno;
		d->pid = 0;
		return ret;
	}
	if (d->pid == 0) {
		/* the daemon must not outlive a tool that crashes */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(126);
		execv(d->bin, (char *const *)argv);
		dprintf(STDERR_FILENO, "%s: exec %s: %s\n", tool, d->bin, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < ready_s * 200; i++) {
		int status;
		if (access(d->ready, F_OK) == 0) {
			d->start_s = now_s() - t0;
			return 0;
		}
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			fprintf(stderr, "%s: sparqd exited (%d) before it was ready\n", tool,
				WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
			return -ECHILD;
		}
		sleep_ms(5);
	}
	fprintf(stderr, "%s: sparqd not ready within %d s\n", tool, ready_s);
	sparqd_stop(d, tool, 10);
	return -ETIMEDOUT;
}
