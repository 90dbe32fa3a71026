/*
 * metrics.h — sparqd's counters in the Prometheus text exposition format (0.0.4) on an
 * optional loopback HTTP listener (--metrics-port N, off when 0). The numbers are the
 * ones the Stats reply carries (request counts, errors and p50/p99 latency per
 * operation, tier capacity and use, records and bytes moved per tier, demotions,
 * promotions, parks, resumes, checksum failures, read amplification), so sparqctl and
 * a scraper never disagree.
 *
 * The listener runs on its own thread: a slow or stuck scraper costs that thread at
 * most its socket timeouts and never delays the event loop or a worker. It reads only
 * what is safe from any thread (the atomic counters, the tier manager and session
 * table through their locks). Only 127.0.0.1 is bound: the endpoint has no
 * authentication, so reaching it from elsewhere is an operator's explicit choice
 * (a proxy), never a default.
 */
#ifndef SPARQD_METRICS_H
#define SPARQD_METRICS_H

#include <stddef.h>

struct sparqd;
struct sd_metrics;

/*
 * Binds 127.0.0.1:d->cfg.metrics_port and starts serving GET /metrics. Returns 0 with
 * *out set (NULL when the port is 0: nothing to serve), or -errno with a reason in
 * *why: -EADDRINUSE when the port is taken, -EACCES for a privileged port.
 */
int sd_metrics_start(struct sparqd *d, struct sd_metrics **out, const char **why);

/* Stops the listener thread and closes its socket; NULL is a no-op. */
void sd_metrics_stop(struct sd_metrics *m);

/*
 * Renders the current exposition text into a malloc'd, NUL-terminated buffer (*text,
 * *len without the NUL). -ENOMEM.
 */
int sd_metrics_render(struct sparqd *d, char **text, size_t *len);

#endif
