/*
 * bench_ipc.h — mode `ipc` of sparq-bench (bench_ipc.c): what going through sparqd
 * costs a decode step, next to the same call in-process, and a load run of several
 * concurrent clients.
 */
#ifndef SPARQ_BENCH_IPC_H
#define SPARQ_BENCH_IPC_H

/* Runs the mode on argv (the arguments after "ipc"); returns the exit status:
 * 0 success, 1 runtime failure, 2 usage error. */
int bench_ipc_main(int argc, char **argv);

#endif
