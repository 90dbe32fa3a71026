/*
 * sparqd_spawn.h — how the tools that are clients of sparqd (sparq-demo, sparq-bench
 * ipc) run one of their own: start the binary (../daemon/sparqd next to the running
 * program, or $SPARQD) on a fresh private directory under the current directory with
 * a private socket, wait for its ready file, and at the end stop it with SIGTERM,
 * check it exited 0, and remove the directory. The child dies with the tool
 * (PR_SET_PDEATHSIG), so a crashed tool leaves no daemon behind.
 *
 * Functions return 0 or a negative errno code and say why on stderr, prefixed by the
 * tool's name.
 */
#ifndef SPARQD_SPAWN_H
#define SPARQD_SPAWN_H

#include <sys/types.h>

struct sparqd_child {
	pid_t pid;              /* 0 once reaped */
	char dir[32];           /* PREFIX-XXXXXX, relative to the current directory */
	char socket[64];        /* dir/sparqd.sock: relative, so short wherever we run */
	char ready[64];         /* dir/ready */
	char bin[4096];         /* the binary started */
	double start_s;         /* from fork to ready */
};

/*
 * Starts sparqd in a fresh directory named prefix-XXXXXX (prefix at most 16 bytes)
 * with --data-dir, --socket, --ready-file and --foreground set here, then args
 * (NULL-terminated, may be NULL), and waits up to ready_s seconds for the ready file.
 * -ENOENT when no binary is found, -ECHILD when it exits first, -ETIMEDOUT.
 */
int sparqd_spawn(struct sparqd_child *d, const char *tool, const char *prefix,
		 const char *const *args, int ready_s);

/* SIGTERM, up to stop_s seconds, then SIGKILL; the exit code, 128 + signal, -1 if none. */
int sparqd_stop(struct sparqd_child *d, const char *tool, int stop_s);

/* Removes a directory tree this tool made; -EIO (said on stderr) if that fails. */
int sparqd_remove_dir(const char *dir, const char *tool);

/* Stops it if it still runs (SIGTERM) and removes its directory; -EIO if that fails. */
int sparqd_cleanup(struct sparqd_child *d, const char *tool);

#endif
