/*
 * config.c — defaults → config file → flags, then one validation pass (config.h).
 * Each option is described once in a table: its name, its kind and where it lands, so
 * the file and the command line accept exactly the same keys with the same checks.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "shm.h"
#include "sparq.h"

enum opt_kind { OPT_PATH, OPT_SOCKET, OPT_MODE, OPT_BACKEND, OPT_U32, OPT_SIZE, OPT_SIZE32,
		OPT_FLAG, OPT_LEVEL, OPT_CONFIG, OPT_FAULT, OPT_CUDA_FAULT, OPT_READS,
		OPT_KEY_SLICE };

struct opt {
	const char *name;
	enum opt_kind kind;
	size_t off;
	uint64_t min, max;  /* numbers and sizes */
	const char *help;
};

#define OFF(f) offsetof(struct sd_config, f)

static const struct opt opts[] = {
	{ "data-dir", OPT_PATH, OFF(data_dir), 0, 0, "DIR: NVMe tier files and the default socket (./sparqd-data)" },
	{ "socket", OPT_SOCKET, OFF(socket), 0, 0, "PATH: control socket (DIR/sparqd.sock)" },
	{ "socket-mode", OPT_MODE, OFF(socket_mode), 0, 0777, "OCTAL: socket permissions (0600)" },
	{ "config", OPT_CONFIG, OFF(config_file), 0, 0, "FILE: \"key = value\" lines, keys as these options" },
	{ "backend", OPT_BACKEND, OFF(backend), 0, 0, "auto|cpu|cuda (auto)" },
	{ "key-slice", OPT_KEY_SLICE, OFF(key_slice), 0, 0, "native|int8: scoring keys as stored, or int8 with a scale per position, 0.52x the bytes at d = 128 (native)" },
	{ "threads", OPT_U32, OFF(threads), 0, 1024, "N: backend CPU threads, 0 = all CPUs (0)" },
	{ "workers", OPT_U32, OFF(workers), 1, 256, "N: request worker threads (4)" },
	{ "poll-us", OPT_U32, OFF(poll_us), 0, 100000, "N: a worker watches its client's submission ring this long after a request, 0 = off (50)" },
	{ "ram-bytes", OPT_SIZE, OFF(ram_bytes), 1ull << 20, 1ull << 50, "SIZE: host RAM tier (1G)" },
	{ "nvme-bytes", OPT_SIZE, OFF(nvme_bytes), 1ull << 20, 1ull << 56, "SIZE: NVMe tier (16G)" },
	{ "chunk-bytes", OPT_SIZE32, OFF(chunk_bytes), 4096, 64ull << 20, "SIZE: placement unit, a multiple of 4K (512K)" },
	{ "record-reads", OPT_READS, OFF(in_place), 0, 0, "in-place|copy: attend reads RAM-resident records where they lie (zero-copy on the GPU) or copies them out (in-place)" },
	{ "shm-bytes", OPT_SIZE, OFF(shm_bytes), SPARQ_SHM_DATA_MIN, SPARQ_SHM_DATA_MAX, "SIZE: default data area per client (64M)" },
	{ "ring-entries", OPT_U32, OFF(ring_entries), SPARQ_SHM_RING_MIN, SPARQ_SHM_RING_MAX, "N: ring entries, a power of two (256)" },
	{ "max-clients", OPT_U32, OFF(max_clients), 1, 65536, "N: connected clients at once (64)" },
	{ "foreground", OPT_FLAG, OFF(foreground), 0, 0, "stay attached to the terminal (always true)" },
	{ "pid-file", OPT_PATH, OFF(pid_file), 0, 0, "PATH: written with the pid once the socket accepts" },
	{ "ready-file", OPT_PATH, OFF(ready_file), 0, 0, "PATH: written (atomically, the pid) once the socket accepts" },
	{ "log-level", OPT_LEVEL, OFF(log_level), 0, 0, "error|warn|info|debug (info)" },
	{ "metrics-port", OPT_U32, OFF(metrics_port), 0, 65535, "N: Prometheus metrics on 127.0.0.1:N, 0 = off (0)" },
	{ "allow-fault-injection", OPT_FLAG, OFF(allow_fault_injection), 0, 0, "tests only: accept --nvme-fault and --cuda-fault (off)" },
	{ "nvme-fault", OPT_FAULT, OFF(nvme_fault), 0, 0, "SPEC: tests only, needs --allow-fault-injection: eio|enospc|short[:reads|:writes][:after=N][:count=M], after N good requests the next M (1) fail (off)" },
	{ "cuda-fault", OPT_CUDA_FAULT, OFF(cuda_fault), 1, UINT32_MAX, "N[:sticky]: tests only, needs --allow-fault-injection and the CUDA backend: every Nth attend with GPU work fails with a synthetic CUDA error and is served by the CPU backend; sticky: an error that degrades the backend (off)" },
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

static int bad(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int sd_config_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;
	unsigned shift = 0;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default:
		return -EINVAL;
	}
	if (*end == 'i' || *end == 'B')
		end += *end == 'i' && end[1] == 'B' ? 2 : 1;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static const struct opt *find_opt(const char *name, size_t len)
{
	for (size_t i = 0; i < N_OPTS; i++)
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	return NULL;
}

static int copy_path(char *dst, size_t cap, const char *name, const char *v, char *why,
		     size_t why_len)
{
	if (!*v)
		return bad(why, why_len, "--%s: empty path", name);
	if (strlen(v) >= cap)
		return bad(why, why_len, "--%s: path longer than %zu bytes", name, cap - 1);
	memcpy(dst, v, strlen(v) + 1);
	return 0;
}

/*
 * "eio|enospc|short[:reads|:writes][:after=N][:count=M]" into f: the kind first, then
 * the optional parts in any order; reads and writes both by default, after 0, count 1.
 */
static int parse_fault(const char *v, struct sd_nvme_fault *f, char *why, size_t why_len)
{
	char buf[64], *save = NULL, *tok;
	unsigned long long n;
	char *end;

	if (strlen(v) >= sizeof(buf))
		return bad(why, why_len, "--nvme-fault: spec longer than %zu bytes", sizeof(buf) - 1);
	memcpy(buf, v, strlen(v) + 1);
	*f = (struct sd_nvme_fault){ .count = 1 };
	tok = strtok_r(buf, ":", &save);
	if (tok && strcmp(tok, "eio") == 0)
		f->err = -EIO;
	else if (tok && strcmp(tok, "enospc") == 0)
		f->err = -ENOSPC;
	else if (tok && strcmp(tok, "short") == 0)
		f->short_io = true;
	else
		return bad(why, why_len, "--nvme-fault: '%s' does not start with eio, enospc or "
			   "short", v);
	while ((tok = strtok_r(NULL, ":", &save))) {
		uint32_t *dst = NULL;

		if (strcmp(tok, "reads") == 0) {
			f->reads = true;
			continue;
		}
		if (strcmp(tok, "writes") == 0) {
			f->writes = true;
			continue;
		}
		if (strncmp(tok, "after=", 6) == 0)
			dst = &f->after, tok += 6;
		else if (strncmp(tok, "count=", 6) == 0)
			dst = &f->count, tok += 6;
		if (!dst)
			return bad(why, why_len, "--nvme-fault: unknown part '%s' in '%s'", tok, v);
		errno = 0;
		n = strtoull(tok, &end, 10);
		if (errno || end == tok || *end || *tok == '-' || *tok == '+' || n > UINT32_MAX ||
		    (dst == &f->count && n == 0))
			return bad(why, why_len, "--nvme-fault: '%s' in '%s' is not a number (count "
				   "at least 1)", tok, v);
		*dst = (uint32_t)n;
	}
	if (!f->reads && !f->writes)
		f->reads = f->writes = true;
	return 0;
}

/* "N[:sticky]", N in [1, 2^32 - 1]: every Nth call with GPU items fails. */
static int parse_cuda_fault(const char *v, struct sd_config *cfg, char *why, size_t why_len)
{
	unsigned long long n;
	char *end;

	if (strlen(v) >= sizeof(cfg->cuda_fault))
		return bad(why, why_len, "--cuda-fault: spec longer than %zu bytes",
			   sizeof(cfg->cuda_fault) - 1);
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || end == v || *v == '-' || *v == '+' || n < 1 || n > UINT32_MAX ||
	    (*end && strcmp(end, ":sticky") != 0))
		return bad(why, why_len, "--cuda-fault: '%s' is not N or N:sticky with N in "
			   "[1, %u] (every Nth attend with GPU work fails)", v, UINT32_MAX);
	cfg->cuda_fault_every = (uint32_t)n;
	cfg->cuda_fault_sticky = *end != '\0';
	memcpy(cfg->cuda_fault, v, strlen(v) + 1);
	return 0;
}

/* Applies one option's value (NULL for a flag) to cfg, with its checks. */
static int apply(struct sd_config *cfg, const struct opt *o, const char *v, char *why,
		 size_t why_len)
{
	void *f = (char *)cfg + o->off;
	unsigned long long n;
	uint64_t size;
	char *end;

	switch (o->kind) {
	case OPT_FLAG:
		*(bool *)f = true;
		return 0;
	case OPT_PATH:
	case OPT_CONFIG:
		return copy_path(f, PATH_MAX, o->name, v, why, why_len);
	case OPT_SOCKET:
		return copy_path(f, sizeof(cfg->socket), o->name, v, why, why_len);
	case OPT_FAULT:
		if (parse_fault(v, &cfg->fault, why, why_len))
			return -EINVAL;
		memcpy(f, v, strlen(v) + 1);   /* parse_fault checked its length */
		return 0;
	case OPT_CUDA_FAULT:
		return parse_cuda_fault(v, cfg, why, why_len);
	case OPT_MODE:
		errno = 0;
		n = strtoull(v, &end, 8);
		if (errno || end == v || *end || *v == '-' || n > o->max)
			return bad(why, why_len, "--%s: '%s' is not an octal mode in 0..0777", o->name, v);
		*(unsigned *)f = (unsigned)n;
		return 0;
	case OPT_BACKEND:
		if (strcmp(v, "auto") == 0)
			cfg->backend = SD_BACKEND_AUTO;
		else if (strcmp(v, "cpu") == 0)
			cfg->backend = SD_BACKEND_CPU;
		else if (strcmp(v, "cuda") == 0)
			cfg->backend = SD_BACKEND_CUDA;
		else
			return bad(why, why_len, "--backend: '%s' is not auto, cpu or cuda", v);
		return 0;
	case OPT_READS:
		if (strcmp(v, "in-place") == 0)
			cfg->in_place = true;
		else if (strcmp(v, "copy") == 0)
			cfg->in_place = false;
		else
			return bad(why, why_len, "--record-reads: '%s' is not in-place or copy", v);
		return 0;
	case OPT_KEY_SLICE:
		if (sparq_slice_format_parse(v, f))
			return bad(why, why_len, "--key-slice: '%s' is not native or int8", v);
		return 0;
	case OPT_LEVEL:
		if (sd_log_level_parse(v, f))
			return bad(why, why_len, "--log-level: '%s' is not error, warn, info or debug", v);
		return 0;
	case OPT_U32:
		errno = 0;
		n = strtoull(v, &end, 10);
		if (errno || end == v || *end || *v == '-' || *v == '+' || n < o->min || n > o->max)
			return bad(why, why_len, "--%s: '%s' is not a number in [%llu, %llu]", o->name, v,
				   (unsigned long long)o->min, (unsigned long long)o->max);
		*(uint32_t *)f = (uint32_t)n;
		return 0;
	case OPT_SIZE:
	case OPT_SIZE32:
		if (sd_config_size(v, &size) || size < o->min || size > o->max)
			return bad(why, why_len,
				   "--%s: '%s' is not a size in [%llu, %llu] bytes (K/M/G/T suffixes)",
				   o->name, v, (unsigned long long)o->min, (unsigned long long)o->max);
		if (o->kind == OPT_SIZE32)
			*(uint32_t *)f = (uint32_t)size;
		else
			*(uint64_t *)f = size;
		return 0;
	}
	return bad(why, why_len, "--%s: unhandled option", o->name);
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int load_file(struct sd_config *cfg, const char *path, char *why, size_t why_len)
{
	char line[PATH_MAX + 64], msg[512];
	unsigned lineno = 0;
	int ret = 0;
	FILE *f = fopen(path, "r");

	if (!f) {
		ret = -errno;
		snprintf(why, why_len, "--config %s: %s", path, strerror(-ret));
		return ret;
	}
	while (!ret && fgets(line, sizeof(line), f)) {
		char *key, *val, *eq;
		const struct opt *o;

		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			ret = bad(why, why_len, "%s:%u: line too long", path, lineno);
			break;
		}
		key = trim(line);
		if (!*key || *key == '#')
			continue;
		eq = strchr(key, '=');
		if (!eq) {
			ret = bad(why, why_len, "%s:%u: expected \"key = value\"", path, lineno);
			break;
		}
		*eq = '\0';
		val = trim(eq + 1);
		key = trim(key);
		o = find_opt(key, strlen(key));
		if (!o || o->kind == OPT_CONFIG) {
			ret = bad(why, why_len, "%s:%u: unknown key '%s'", path, lineno, key);
			break;
		}
		if (o->kind == OPT_FLAG) {
			if (strcmp(val, "true") && strcmp(val, "yes") && strcmp(val, "1")) {
				if (strcmp(val, "false") && strcmp(val, "no") && strcmp(val, "0")) {
					ret = bad(why, why_len, "%s:%u: %s takes true or false", path,
						  lineno, key);
					break;
				}
				continue;
			}
			val = NULL;
		}
		ret = apply(cfg, o, val, msg, sizeof(msg));
		if (ret)
			snprintf(why, why_len, "%s:%u: %s", path, lineno, msg);
	}
	if (!ret && ferror(f))
		ret = bad(why, why_len, "%s: read error", path);
	fclose(f);
	return ret;
}

static void usage(void)
{
	printf("usage: sparqd [options]\n\n");
	for (size_t i = 0; i < N_OPTS; i++)
		printf("  --%-13s %s\n", opts[i].name, opts[i].help);
	printf("  --help          this text\n  --version       the version\n");
}

static void defaults(struct sd_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	strcpy(cfg->data_dir, "./sparqd-data");
	cfg->socket_mode = 0600;
	cfg->backend = SD_BACKEND_AUTO;
	cfg->workers = 4;
	cfg->poll_us = 50;
	cfg->ram_bytes = 1ull << 30;
	cfg->nvme_bytes = 16ull << 30;
	cfg->chunk_bytes = 512u << 10;
	cfg->in_place = true;
	cfg->shm_bytes = 64ull << 20;
	cfg->ring_entries = 256;
	cfg->max_clients = 64;
	cfg->foreground = true;
	cfg->log_level = SD_LOG_INFO;
}

/* Splits "--name=value" / "--name value"; *i advances past what was used. */
static int next_arg(int argc, char **argv, int *i, const struct opt **o, const char **v,
		    char *why, size_t why_len)
{
	const char *a = argv[*i], *eq;

	if (strncmp(a, "--", 2) != 0)
		return bad(why, why_len, "unexpected argument '%s' (options start with --)", a);
	a += 2;
	eq = strchr(a, '=');
	*o = find_opt(a, eq ? (size_t)(eq - a) : strlen(a));
	if (!*o)
		return bad(why, why_len, "unknown option '%s' (see --help)", argv[*i]);
	if ((*o)->kind == OPT_FLAG) {
		if (eq)
			return bad(why, why_len, "--%s takes no value", (*o)->name);
		*v = NULL;
	} else if (eq) {
		*v = eq + 1;
	} else if (*i + 1 < argc) {
		*v = argv[++*i];
	} else {
		return bad(why, why_len, "--%s needs a value", (*o)->name);
	}
	return 0;
}

static int validate(struct sd_config *cfg, char *why, size_t why_len)
{
	if (cfg->ring_entries & (cfg->ring_entries - 1))
		return bad(why, why_len, "--ring-entries: %u is not a power of two", cfg->ring_entries);
	if (cfg->chunk_bytes % 4096)
		return bad(why, why_len, "--chunk-bytes: %u is not a multiple of 4096", cfg->chunk_bytes);
	if (cfg->ram_bytes < cfg->chunk_bytes)
		return bad(why, why_len, "--ram-bytes: smaller than one chunk (%u bytes)",
			   cfg->chunk_bytes);
	if (cfg->nvme_bytes < cfg->chunk_bytes)
		return bad(why, why_len, "--nvme-bytes: smaller than one chunk (%u bytes)",
			   cfg->chunk_bytes);
	if (cfg->nvme_fault[0] && !cfg->allow_fault_injection)
		return bad(why, why_len, "--nvme-fault: refused; fault injection is for tests and "
			   "must be enabled at start with --allow-fault-injection");
	if (cfg->cuda_fault[0] && !cfg->allow_fault_injection)
		return bad(why, why_len, "--cuda-fault: refused; fault injection is for tests and "
			   "must be enabled at start with --allow-fault-injection");
	if (cfg->cuda_fault[0] && cfg->backend == SD_BACKEND_CPU)
		return bad(why, why_len, "--cuda-fault: the CPU backend has no CUDA work to fail "
			   "(use --backend cuda or auto)");
	if (!cfg->socket[0]) {
		int n = snprintf(cfg->socket, sizeof(cfg->socket), "%s/sparqd.sock", cfg->data_dir);
		if (n < 0 || (size_t)n >= sizeof(cfg->socket))
			return bad(why, why_len,
				   "--data-dir: %s/sparqd.sock is longer than a socket path may be "
				   "(%zu bytes); pass --socket", cfg->data_dir, sizeof(cfg->socket) - 1);
	}
	return 0;
}

int sd_config_entry(const struct sd_config *cfg, unsigned i, const char **key, char *val,
		    size_t len)
{
	static const char *const backends[] = { "auto", "cpu", "cuda" };
	static const char *const levels[] = { "error", "warn", "info", "debug" };
	const struct opt *o;
	const void *f;
	int n;

	if (i >= N_OPTS)
		return -ENOENT;
	o = &opts[i];
	f = (const char *)cfg + o->off;
	*key = o->name;
	switch (o->kind) {
	case OPT_PATH:
	case OPT_SOCKET:
	case OPT_CONFIG:
	case OPT_FAULT:
	case OPT_CUDA_FAULT:
		n = snprintf(val, len, "%s", (const char *)f);
		break;
	case OPT_MODE:
		n = snprintf(val, len, "%04o", *(const unsigned *)f);
		break;
	case OPT_BACKEND:
		n = snprintf(val, len, "%s", backends[cfg->backend % 3]);
		break;
	case OPT_KEY_SLICE:
		n = snprintf(val, len, "%s", sparq_slice_format_name(cfg->key_slice));
		break;
	case OPT_LEVEL:
		n = snprintf(val, len, "%s", levels[cfg->log_level & 3]);
		break;
	case OPT_READS:
		n = snprintf(val, len, "%s", cfg->in_place ? "in-place" : "copy");
		break;
	case OPT_U32:
	case OPT_SIZE32:
		n = snprintf(val, len, "%u", *(const uint32_t *)f);
		break;
	case OPT_SIZE:
		n = snprintf(val, len, "%llu", (unsigned long long)*(const uint64_t *)f);
		break;
	case OPT_FLAG:
		n = snprintf(val, len, "%s", *(const bool *)f ? "true" : "false");
		break;
	default:
		return -EINVAL;
	}
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

int sd_config_parse(int argc, char **argv, struct sd_config *cfg, char *why, size_t why_len)
{
	const struct opt *o;
	const char *v;
	int ret;

	defaults(cfg);
	/* help, version and the config file first: the file sits below the flags */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage();
			return SD_CONFIG_EXIT;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("sparqd %s (protocol %u)\n", SPARQ_VERSION_STRING, SPARQ_PROTOCOL_VERSION);
			return SD_CONFIG_EXIT;
		}
	}
	for (int i = 1; i < argc; i++) {
		ret = next_arg(argc, argv, &i, &o, &v, why, why_len);
		if (ret)
			return ret;
		if (o->kind == OPT_CONFIG) {
			ret = apply(cfg, o, v, why, why_len);
			if (ret)
				return ret;
		}
	}
	if (cfg->config_file[0]) {
		ret = load_file(cfg, cfg->config_file, why, why_len);
		if (ret)
			return ret;
	}
	for (int i = 1; i < argc; i++) {
		ret = next_arg(argc, argv, &i, &o, &v, why, why_len);
		if (!ret && o->kind != OPT_CONFIG)
			ret = apply(cfg, o, v, why, why_len);
		if (ret)
			return ret;
	}
	return validate(cfg, why, why_len);
}
