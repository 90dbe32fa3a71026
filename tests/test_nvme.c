/*
 * test_nvme.c — the NVMe tier's I/O engine on this machine's filesystem: config
 * validation, records and a 64 KiB block written and read back in random order through
 * both the registered staging buffer and ordinary buffers, all-or-nothing rejection of
 * misaligned descriptors, 1000 requests through a queue depth of 4, every fault the
 * injection switch offers (EIO on the third read, ENOSPC on writes, short reads and
 * writes), reads past EOF, the file table (ENOENT, bad names, EMFILE, slot reuse),
 * unlink and directory sync, and the stats after each step.
 *
 * Runs in a fresh directory under $TMPDIR (or /tmp), removed at exit whatever happens.
 * Exits 77 when the filesystem refuses O_DIRECT or the kernel refuses io_uring.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "nvme.h"

#define N_RECORDS 64u
#define BIG (64u * 1024)
#define STAGING (1u << 20)

static char tmp_root[4096];
static struct t_rng rng = { 0x6e766d65ull };

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void cleanup(void)
{
	if (tmp_root[0])
		nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void path_in(char *out, size_t cap, const char *a, const char *b)
{
	T_CHECK((size_t)snprintf(out, cap, "%s/%s", a, b) < cap, "path too long");
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static void *aligned(size_t bytes, uint8_t fill)
{
	void *p = NULL;

	T_CHECK(posix_memalign(&p, 4096, bytes) == 0, "posix_memalign %zu", bytes);
	memset(p, fill, bytes);
	return p;
}

static void fill_random(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)t_next(&rng);
}

static void shuffle(uint32_t *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		v[i] = i;
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(t_next(&rng) % i), t = v[i - 1];

		v[i - 1] = v[j];
		v[j] = t;
	}
}

static bool all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

/* The stats the test expects, updated alongside the traffic it makes. */
static void check_stats(struct tier_nvme *n, const struct tier_nvme_stats *want, const char *when)
{
	struct tier_nvme_stats got;

	tier_nvme_stats(n, &got);
#define CMP(f) T_CHECK(got.f == want->f, "%s: stats." #f " %llu, want %llu", when, \
		       (unsigned long long)got.f, (unsigned long long)want->f)
	CMP(reads);
	CMP(writes);
	CMP(syncs);
	CMP(bytes_read);
	CMP(bytes_written);
	CMP(errors);
#undef CMP
}

static struct tier_io io_of(int fid, bool write, uint64_t offset, uint32_t len, void *buf)
{
	return (struct tier_io){ .fid = fid, .write = write, .offset = offset, .len = len,
				 .buf = buf, .res = 12345 };
}

/* --- config ------------------------------------------------------------------------ */

static void expect_open_fails(const struct tier_nvme_config *cfg, int err, const char *what)
{
	struct tier_nvme *n = (struct tier_nvme *)&n;
	const char *why = NULL;
	int ret = tier_nvme_open(cfg, &n, &why);

	T_CHECK(ret == err, "%s: got %d, want %d (%s)", what, ret, err, why ? why : "-");
	T_CHECK(why && why[0], "%s: no reason given", what);
	T_CHECK(n == NULL, "%s: *out not cleared", what);
	if (cfg && cfg->dir && cfg->dir[0] && err != -ENOTDIR)
		T_CHECK(!exists(cfg->dir), "%s: left %s behind", what, cfg->dir);
}

static void test_config(void)
{
	char dir[4200], nested[4200], file[4200];
	struct tier_nvme_config good, c;
	struct tier_nvme *n;
	struct rlimit rl;
	const char *why;
	int ret, cwd, fid;

	path_in(dir, sizeof(dir), tmp_root, "cfg");
	good = (struct tier_nvme_config){ .dir = dir, .queue_depth = 8, .staging_bytes = 4096,
					  .max_files = 4 };
	expect_open_fails(NULL, -EINVAL, "NULL config");
	T_CHECK(tier_nvme_open(&good, NULL, &why) == -EINVAL, "NULL out");
	T_CHECK(!exists(dir), "NULL out created the directory");

#define BAD(field, value)                                                       \
	do {                                                                    \
		c = good;                                                       \
		c.field = value;                                                \
		expect_open_fails(&c, -EINVAL, #field " = " #value);            \
	} while (0)
	BAD(dir, NULL);
	BAD(dir, "");
	BAD(queue_depth, 0);
	BAD(queue_depth, 4097);
	BAD(staging_bytes, 0);
	BAD(staging_bytes, 512);
	BAD(staging_bytes, 4095);
	BAD(staging_bytes, 4097);
	BAD(staging_bytes, 6144);
	BAD(staging_bytes, (1u << 30) + 4096);
	BAD(staging_bytes, UINT32_MAX);
	BAD(max_files, 0);
	BAD(max_files, 65537);
#undef BAD

	/* Only the last component is created. */
	path_in(nested, sizeof(nested), tmp_root, "missing/data");
	c = good;
	c.dir = nested;
	expect_open_fails(&c, -ENOENT, "missing parent");

	path_in(file, sizeof(file), tmp_root, "plain-file");
	FILE *f = fopen(file, "w");
	T_CHECK(f && fclose(f) == 0, "create %s", file);
	c = good;
	c.dir = file;
	expect_open_fails(&c, -ENOTDIR, "dir is a file");

	/* The upper bounds are accepted (a table of 65536 needs RLIMIT_NOFILE >= 65536;
	 * below that the kernel refuses it and the reason says so). A 1 GiB staging buffer
	 * is not tried: registering it pins 1 GiB, too much for a unit test. */
	c = good;
	c.queue_depth = 4096;
	ret = tier_nvme_open(&c, &n, &why);
	if (ret == -EOPNOTSUPP) {
		printf("SKIP: %s (%s)\n", why, dir);
		exit(T_EXIT_SKIP);
	}
	T_CHECK(ret == 0, "queue_depth 4096: %d (%s)", ret, why);
	tier_nvme_close(n);
	T_CHECK(rmdir(dir) == 0, "rmdir %s", dir);

	/* A relative dir is taken from the working directory at open and kept. */
	cwd = open(".", O_RDONLY | O_DIRECTORY);
	T_CHECK(cwd >= 0 && chdir(tmp_root) == 0, "chdir %s", tmp_root);
	c = good;
	c.dir = "relative";
	ret = tier_nvme_open(&c, &n, &why);
	T_CHECK(ret == 0, "relative dir: %d (%s)", ret, why);
	T_CHECK(fchdir(cwd) == 0 && close(cwd) == 0, "chdir back");
	T_CHECK(tier_nvme_file_open(n, "in-relative", true, &fid) == 0, "open in relative dir");
	tier_nvme_file_close(n, fid);
	T_CHECK(tier_nvme_unlink(n, "in-relative") == 0, "unlink in relative dir");
	tier_nvme_close(n);
	path_in(nested, sizeof(nested), tmp_root, "relative");
	T_CHECK(rmdir(nested) == 0, "relative dir was not created under the old cwd");

	/* liburing raises the soft RLIMIT_NOFILE by the table size when the kernel says
	 * EMFILE, so below 65536 either outcome is right, as long as a refusal says why. */
	T_CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
	c = good;
	c.max_files = 65536;
	ret = tier_nvme_open(&c, &n, &why);
	if (ret == 0) {
		tier_nvme_close(n);
		T_CHECK(rmdir(dir) == 0, "rmdir %s", dir);
	} else {
		T_CHECK(rl.rlim_cur < 65536 && ret == -EMFILE && why && strstr(why, "RLIMIT_NOFILE"),
			"max_files 65536 with RLIMIT_NOFILE %llu: %d (%s)",
			(unsigned long long)rl.rlim_cur, ret, why ? why : "-");
		T_CHECK(!exists(dir), "failed open left %s behind", dir);
	}
}

/* --- round trip ---------------------------------------------------------------------- */

struct fixture {
	struct tier_nvme *n;
	struct tier_nvme_stats want;
	uint32_t rec;             /* one aligned record: max(512, alignment) */
	int fid;                  /* "records": N_RECORDS records, then BIG bytes */
	uint8_t *data;            /* [N_RECORDS * rec + BIG] what "records" holds */
	uint64_t size;
};

static uint64_t big_offset(const struct fixture *fx)
{
	return (uint64_t)N_RECORDS * fx->rec;
}

static void test_round_trip(struct fixture *fx)
{
	size_t staging_len;
	uint8_t *stage = tier_nvme_staging(fx->n, &staging_len);
	uint8_t *own[N_RECORDS + 1];
	struct tier_io ios[N_RECORDS + 1];
	uint32_t order[N_RECORDS + 1], rec = fx->rec;
	uint64_t size;
	int ret;

	fx->size = big_offset(fx) + BIG;
	T_CHECK(fx->size <= staging_len, "staging too small for the test");
	fx->data = aligned(fx->size, 0);
	fill_random(fx->data, fx->size);
	T_CHECK(tier_nvme_file_open(fx->n, "records", true, &fx->fid) == 0, "create records");

	/* Writes: even records and the big block from the staging buffer (fixed), odd ones
	 * from buffers of their own. */
	for (uint32_t i = 0; i <= N_RECORDS; i++) {
		uint64_t off = (uint64_t)i * rec;
		uint32_t len = i < N_RECORDS ? rec : BIG;
		void *buf;

		if (i % 2 == 0) {
			buf = stage + off;
			own[i] = NULL;
		} else {
			buf = own[i] = aligned(len, 0);
		}
		memcpy(buf, fx->data + off, len);
		ios[i] = io_of(fx->fid, true, off, len, buf);
	}
	ret = tier_nvme_submit(fx->n, ios, N_RECORDS + 1);
	T_CHECK(ret == 0, "write batch: %d", ret);
	for (uint32_t i = 0; i <= N_RECORDS; i++)
		T_CHECK(ios[i].res == (int)ios[i].len, "write %u: res %d", i, ios[i].res);
	fx->want.writes += N_RECORDS + 1;
	fx->want.bytes_written += fx->size;
	check_stats(fx->n, &fx->want, "after writes");

	T_CHECK(tier_nvme_file_sync(fx->n, fx->fid) == 0, "sync");
	fx->want.syncs++;
	T_CHECK(tier_nvme_file_size(fx->n, fx->fid, &size) == 0 && size == fx->size,
		"size %llu, want %llu", (unsigned long long)size, (unsigned long long)fx->size);

	/* Reads in random order; the odd positions of the order land in the staging buffer
	 * (at other places than they were written from), the even ones in fresh buffers. */
	memset(stage, 0, staging_len);
	for (uint32_t i = 1; i <= N_RECORDS; i += 2)
		memset(own[i], 0xaa, rec);
	own[N_RECORDS] = aligned(BIG, 0xaa);
	shuffle(order, N_RECORDS + 1);
	for (uint32_t k = 0; k <= N_RECORDS; k++) {
		uint32_t i = order[k];
		uint64_t off = (uint64_t)i * rec;
		uint32_t len = i < N_RECORDS ? rec : BIG;
		void *buf;

		if (k % 2)
			buf = stage + staging_len - off - len;
		else
			buf = own[i] ? own[i] : (own[i] = aligned(len, 0xaa));
		ios[k] = io_of(fx->fid, false, off, len, buf);
	}
	ret = tier_nvme_submit(fx->n, ios, N_RECORDS + 1);
	T_CHECK(ret == 0, "read batch: %d", ret);
	for (uint32_t k = 0; k <= N_RECORDS; k++) {
		T_CHECK(ios[k].res == (int)ios[k].len, "read %u: res %d", k, ios[k].res);
		T_CHECK(memcmp(ios[k].buf, fx->data + ios[k].offset, ios[k].len) == 0,
			"read %u (offset %llu, %s buffer): data differs", k,
			(unsigned long long)ios[k].offset, k % 2 ? "staging" : "own");
	}
	fx->want.reads += N_RECORDS + 1;
	fx->want.bytes_read += fx->size;
	check_stats(fx->n, &fx->want, "after reads");
	for (uint32_t i = 0; i <= N_RECORDS; i++)
		free(own[i]);

	/* Durable under another fid: close, reopen without create, read it all at once. */
	tier_nvme_file_close(fx->n, fx->fid);
	T_CHECK(tier_nvme_file_open(fx->n, "records", false, &fx->fid) == 0, "reopen records");
	memset(stage, 0, staging_len);
	ios[0] = io_of(fx->fid, false, 0, (uint32_t)fx->size, stage);
	T_CHECK(tier_nvme_submit(fx->n, ios, 1) == 0 && ios[0].res == (int)fx->size,
		"whole-file read: %d", ios[0].res);
	T_CHECK(memcmp(stage, fx->data, fx->size) == 0, "whole-file read: data differs");
	fx->want.reads++;
	fx->want.bytes_read += fx->size;
	check_stats(fx->n, &fx->want, "after reopen");
}

/* --- all-or-nothing validation -------------------------------------------------------- */

static void expect_rejected(struct fixture *fx, struct tier_io bad, const char *what)
{
	uint32_t rec = fx->rec;
	uint8_t *a = aligned(rec, 0x5a), *b = aligned(rec, 0x5a);
	struct tier_io ios[3] = {
		io_of(fx->fid, false, 0, rec, a),
		bad,
		io_of(fx->fid, false, rec, rec, b),
	};
	int ret = tier_nvme_submit(fx->n, ios, 3);

	T_CHECK(ret == -EINVAL, "%s: got %d, want -EINVAL", what, ret);
	T_CHECK(ios[1].res == -EINVAL, "%s: bad descriptor res %d", what, ios[1].res);
	T_CHECK(ios[0].res < 0 && ios[2].res < 0, "%s: good descriptors res %d %d (nothing should "
		"run)", what, ios[0].res, ios[2].res);
	T_CHECK(all_bytes(a, rec, 0x5a) && all_bytes(b, rec, 0x5a), "%s: a read was submitted",
		what);
	check_stats(fx->n, &fx->want, what);
	free(a);
	free(b);
}

static void test_rejects(struct fixture *fx)
{
	uint32_t rec = fx->rec, al = tier_nvme_align(fx->n);
	uint8_t *buf = aligned(2 * (size_t)rec, 0), *junk = aligned(rec, 0xee);
	struct tier_io ios[2];
	int closed;

	T_CHECK(tier_nvme_file_open(fx->n, "closed", true, &closed) == 0, "open closed");
	tier_nvme_file_close(fx->n, closed);

	expect_rejected(fx, io_of(fx->fid, false, al / 2, rec, buf), "misaligned offset");
	expect_rejected(fx, io_of(fx->fid, false, 1, rec, buf), "offset 1");
	expect_rejected(fx, io_of(fx->fid, false, 0, rec / 2, buf), "half-unit len");
	expect_rejected(fx, io_of(fx->fid, false, 0, rec + 1, buf), "len + 1");
	expect_rejected(fx, io_of(fx->fid, false, 0, 0, buf), "len 0");
	expect_rejected(fx, io_of(fx->fid, false, 0, rec, buf + al / 2), "misaligned buffer");
	expect_rejected(fx, io_of(fx->fid, false, 0, rec, buf + 1), "buffer + 1");
	expect_rejected(fx, io_of(fx->fid, false, 0, rec, NULL), "NULL buffer");
	expect_rejected(fx, io_of(-1, false, 0, rec, buf), "fid -1");
	expect_rejected(fx, io_of(1000000, false, 0, rec, buf), "fid past the table");
	expect_rejected(fx, io_of(closed, false, 0, rec, buf), "closed fid");
	expect_rejected(fx, io_of(fx->fid, false, UINT64_MAX - al + 1, rec, buf),
			"offset past 2^63");
	expect_rejected(fx, io_of(fx->fid, true, 0, rec, buf + 1), "misaligned write");

	/* A good write in a batch with a bad one does not happen either. */
	ios[0] = io_of(fx->fid, true, 0, rec, junk);
	ios[1] = io_of(fx->fid, true, rec, rec / 2, junk);
	T_CHECK(tier_nvme_submit(fx->n, ios, 2) == -EINVAL, "mixed write batch");
	ios[0] = io_of(fx->fid, false, 0, 2 * rec, buf);
	T_CHECK(tier_nvme_submit(fx->n, ios, 1) == 0, "read back");
	T_CHECK(memcmp(buf, fx->data, 2 * (size_t)rec) == 0, "rejected write reached the file");
	fx->want.reads++;
	fx->want.bytes_read += 2 * rec;

	T_CHECK(tier_nvme_submit(fx->n, NULL, 0) == 0, "empty batch");
	T_CHECK(tier_nvme_submit(fx->n, NULL, 1) == -EINVAL, "NULL batch");
	T_CHECK(tier_nvme_file_sync(fx->n, closed) == -EINVAL, "sync of a closed fid");
	T_CHECK(tier_nvme_file_size(fx->n, -1, &(uint64_t){ 0 }) == -EINVAL, "size of fid -1");
	tier_nvme_file_close(fx->n, -1);     /* harmless */
	tier_nvme_file_close(fx->n, closed); /* twice: harmless */
	T_CHECK(tier_nvme_unlink(fx->n, "closed") == 0, "unlink closed");
	check_stats(fx->n, &fx->want, "after rejects");
	free(buf);
	free(junk);
}

/* --- queue depth --------------------------------------------------------------------- */

static void run_depth(uint32_t qd, uint32_t count)
{
	char dir[4200], name[32];
	struct tier_nvme_config cfg = { .dir = dir, .queue_depth = qd, .staging_bytes = 64 * 1024,
					.max_files = 2 };
	struct tier_nvme_stats st;
	struct tier_nvme *n;
	struct tier_io *ios = t_alloc(count * sizeof(*ios));
	uint32_t *order = t_alloc(count * sizeof(*order)), rec;
	size_t staging_len;
	uint8_t *data, *back, *stage;
	const char *why;
	int fid, ret;

	snprintf(name, sizeof(name), "qd%u", qd);
	path_in(dir, sizeof(dir), tmp_root, name);
	ret = tier_nvme_open(&cfg, &n, &why);
	T_CHECK(ret == 0, "open qd %u: %d (%s)", qd, ret, why);
	rec = tier_nvme_align(n) < 512 ? 512 : tier_nvme_align(n);
	stage = tier_nvme_staging(n, &staging_len);
	data = aligned((size_t)count * rec, 0);
	back = aligned((size_t)count * rec, 0xaa);
	fill_random(data, (size_t)count * rec);
	T_CHECK(tier_nvme_file_open(n, "many", true, &fid) == 0, "create many");

	/* the first records go from the staging buffer, the rest from data itself */
	for (uint32_t i = 0; i < count; i++) {
		uint8_t *src = data + (size_t)i * rec;

		if ((size_t)(i + 1) * rec <= staging_len) {
			memcpy(stage + (size_t)i * rec, src, rec);
			src = stage + (size_t)i * rec;
		}
		ios[i] = io_of(fid, true, (uint64_t)i * rec, rec, src);
	}
	ret = tier_nvme_submit(n, ios, count);
	T_CHECK(ret == 0, "qd %u: %u writes: %d", qd, count, ret);
	shuffle(order, count);
	for (uint32_t k = 0; k < count; k++) {
		uint32_t i = order[k];

		ios[k] = io_of(fid, false, (uint64_t)i * rec, rec, back + (size_t)i * rec);
	}
	ret = tier_nvme_submit(n, ios, count);
	T_CHECK(ret == 0, "qd %u: %u reads: %d", qd, count, ret);
	for (uint32_t k = 0; k < count; k++)
		T_CHECK(ios[k].res == (int)rec, "qd %u: read %u res %d", qd, k, ios[k].res);
	T_CHECK(memcmp(back, data, (size_t)count * rec) == 0, "qd %u: data differs", qd);
	tier_nvme_stats(n, &st);
	T_CHECK(st.reads == count && st.writes == count && st.errors == 0 &&
		st.bytes_read == (uint64_t)count * rec && st.bytes_written == (uint64_t)count * rec,
		"qd %u stats: %llu reads %llu writes %llu errors", qd,
		(unsigned long long)st.reads, (unsigned long long)st.writes,
		(unsigned long long)st.errors);
	tier_nvme_file_close(n, fid);
	tier_nvme_close(n);
	free(data);
	free(back);
	free(ios);
	free(order);
}

/* --- faults -------------------------------------------------------------------------- */

static void test_fault_eio(struct fixture *fx)
{
	uint32_t rec = fx->rec;
	uint8_t *bufs = aligned(8 * (size_t)rec, 0xaa);
	struct tier_io ios[8];
	int ret;

	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .after = 2, .count = 1, .err = -EIO,
							   .reads = true });
	/* Writes are not selected: this one goes through and does not count. */
	memcpy(bufs, fx->data + 10 * (size_t)rec, rec);
	ios[0] = io_of(fx->fid, true, 10 * (uint64_t)rec, rec, bufs);
	T_CHECK(tier_nvme_submit(fx->n, ios, 1) == 0, "write while reads are armed");
	fx->want.writes++;
	fx->want.bytes_written += rec;

	memset(bufs, 0xaa, 8 * (size_t)rec);
	for (uint32_t i = 0; i < 8; i++)
		ios[i] = io_of(fx->fid, false, (uint64_t)i * rec, rec, bufs + (size_t)i * rec);
	ret = tier_nvme_submit(fx->n, ios, 8);
	T_CHECK(ret == -EIO, "injected EIO: submit returned %d", ret);
	for (uint32_t i = 0; i < 8; i++) {
		if (i == 2) {
			T_CHECK(ios[i].res == -EIO, "third read res %d", ios[i].res);
			T_CHECK(all_bytes(ios[i].buf, rec, 0xaa),
				"the failed read reached the device");
			continue;
		}
		T_CHECK(ios[i].res == (int)rec, "read %u res %d", i, ios[i].res);
		T_CHECK(memcmp(ios[i].buf, fx->data + (size_t)i * rec, rec) == 0, "read %u data",
			i);
	}
	fx->want.reads += 7;
	fx->want.bytes_read += 7 * (uint64_t)rec;
	fx->want.errors++;
	check_stats(fx->n, &fx->want, "after injected EIO");

	/* Armed again, then switched off before it fires: everything works. */
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .count = 5, .err = -EIO,
							   .reads = true });
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ 0 });
	memset(bufs, 0xaa, 8 * (size_t)rec);
	for (uint32_t i = 0; i < 8; i++)
		ios[i] = io_of(fx->fid, false, (uint64_t)i * rec, rec, bufs + (size_t)i * rec);
	T_CHECK(tier_nvme_submit(fx->n, ios, 8) == 0, "injection off");
	T_CHECK(memcmp(bufs, fx->data, 8 * (size_t)rec) == 0, "injection off: data");
	fx->want.reads += 8;
	fx->want.bytes_read += 8 * (uint64_t)rec;
	check_stats(fx->n, &fx->want, "after injection off");
	free(bufs);
}

static void test_fault_enospc(struct fixture *fx)
{
	uint32_t rec = fx->rec;
	uint8_t *src = aligned(4 * (size_t)rec, 0), *back = aligned(4 * (size_t)rec, 0xaa);
	struct tier_io ios[4];
	uint64_t size;
	int fid, ret;

	fill_random(src, 4 * (size_t)rec);
	T_CHECK(tier_nvme_file_open(fx->n, "enospc", true, &fid) == 0, "create enospc");
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .count = 2, .err = -ENOSPC,
							   .writes = true });
	for (uint32_t i = 0; i < 4; i++)
		ios[i] = io_of(fid, true, (uint64_t)i * rec, rec, src + (size_t)i * rec);
	ret = tier_nvme_submit(fx->n, ios, 4);
	T_CHECK(ret == -ENOSPC, "injected ENOSPC: submit returned %d", ret);
	T_CHECK(ios[0].res == -ENOSPC && ios[1].res == -ENOSPC, "res %d %d", ios[0].res,
		ios[1].res);
	T_CHECK(ios[2].res == (int)rec && ios[3].res == (int)rec, "res %d %d", ios[2].res,
		ios[3].res);
	fx->want.writes += 2;
	fx->want.bytes_written += 2 * (uint64_t)rec;
	fx->want.errors += 2;
	check_stats(fx->n, &fx->want, "after injected ENOSPC");

	/* The failed writes never reached the file: a hole reads as zeros. */
	T_CHECK(tier_nvme_file_size(fx->n, fid, &size) == 0 && size == 4 * (uint64_t)rec,
		"size %llu", (unsigned long long)size);
	ios[0] = io_of(fid, false, 0, 4 * rec, back);
	T_CHECK(tier_nvme_submit(fx->n, ios, 1) == 0, "read enospc");
	T_CHECK(all_bytes(back, 2 * (size_t)rec, 0), "injected writes reached the file");
	T_CHECK(memcmp(back + 2 * (size_t)rec, src + 2 * (size_t)rec, 2 * (size_t)rec) == 0,
		"the writes after the fault");
	fx->want.reads++;
	fx->want.bytes_read += 4 * (uint64_t)rec;
	check_stats(fx->n, &fx->want, "after ENOSPC read-back");
	tier_nvme_file_close(fx->n, fid);
	free(src);
	free(back);
}

static void test_fault_short(struct fixture *fx)
{
	uint32_t rec = fx->rec, half = BIG / 2 / tier_nvme_align(fx->n) * tier_nvme_align(fx->n);
	uint8_t *buf = aligned(BIG, 0xaa);
	struct tier_io io;
	uint64_t size;
	int fid, ret;

	/* A short read of the 64 KiB block: half of it arrives, the rest is untouched. */
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .count = 1, .short_io = true,
							   .reads = true });
	io = io_of(fx->fid, false, big_offset(fx), BIG, buf);
	ret = tier_nvme_submit(fx->n, &io, 1);
	T_CHECK(ret == -EIO && io.res == -EIO, "short read: %d / %d", ret, io.res);
	T_CHECK(memcmp(buf, fx->data + big_offset(fx), half) == 0, "short read: first half");
	T_CHECK(all_bytes(buf + half, BIG - half, 0xaa), "short read: more than half arrived");
	fx->want.bytes_read += half;
	fx->want.errors++;
	check_stats(fx->n, &fx->want, "after short read");

	/* One alignment unit cannot be halved under O_DIRECT: nothing moves, still -EIO. */
	memset(buf, 0xaa, rec);
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .count = 1, .short_io = true,
							   .reads = true });
	io = io_of(fx->fid, false, 0, tier_nvme_align(fx->n), buf);
	T_CHECK(tier_nvme_submit(fx->n, &io, 1) == -EIO && io.res == -EIO, "short unit read");
	T_CHECK(all_bytes(buf, tier_nvme_align(fx->n), 0xaa), "short unit read moved data");
	fx->want.errors++;
	check_stats(fx->n, &fx->want, "after short unit read");

	/* A short write leaves a file of half the length. */
	T_CHECK(tier_nvme_file_open(fx->n, "short", true, &fid) == 0, "create short");
	fill_random(buf, BIG);
	tier_nvme_inject(fx->n, &(struct tier_nvme_fault){ .count = 1, .short_io = true,
							   .writes = true });
	io = io_of(fid, true, 0, BIG, buf);
	T_CHECK(tier_nvme_submit(fx->n, &io, 1) == -EIO && io.res == -EIO, "short write");
	T_CHECK(tier_nvme_file_size(fx->n, fid, &size) == 0 && size == half,
		"short write size %llu", (unsigned long long)size);
	fx->want.bytes_written += half;
	fx->want.errors++;
	check_stats(fx->n, &fx->want, "after short write");
	tier_nvme_file_close(fx->n, fid);
	T_CHECK(tier_nvme_unlink(fx->n, "short") == 0, "unlink short");
	free(buf);
}

static void test_past_eof(struct fixture *fx)
{
	uint32_t rec = fx->rec;
	uint8_t *buf = aligned(2 * (size_t)rec, 0xaa);
	struct tier_io ios[2];
	int ret;

	ios[0] = io_of(fx->fid, false, fx->size, rec, buf);             /* wholly past */
	ios[1] = io_of(fx->fid, false, fx->size - rec, 2 * rec, buf);   /* straddles */
	ret = tier_nvme_submit(fx->n, ios, 2);
	T_CHECK(ret == -EIO, "read past EOF: %d", ret);
	T_CHECK(ios[0].res == -EIO && ios[1].res == -EIO, "past EOF res %d %d", ios[0].res,
		ios[1].res);
	T_CHECK(memcmp(buf, fx->data + fx->size - rec, rec) == 0, "the part before EOF");
	fx->want.bytes_read += rec;
	fx->want.errors += 2;
	check_stats(fx->n, &fx->want, "after EOF reads");
	free(buf);
}

/* --- the file table ------------------------------------------------------------------ */

static void test_names(struct fixture *fx)
{
	char long_name[256];
	int fid;

	T_CHECK(tier_nvme_file_open(fx->n, "absent", false, &fid) == -ENOENT, "missing file");
	T_CHECK(tier_nvme_file_open(fx->n, NULL, true, &fid) == -EINVAL, "NULL name");
	T_CHECK(tier_nvme_file_open(fx->n, "", true, &fid) == -EINVAL, "empty name");
	T_CHECK(tier_nvme_file_open(fx->n, ".", true, &fid) == -EINVAL, "'.'");
	T_CHECK(tier_nvme_file_open(fx->n, "..", true, &fid) == -EINVAL, "'..'");
	T_CHECK(tier_nvme_file_open(fx->n, "a/b", true, &fid) == -EINVAL, "a/b");
	T_CHECK(tier_nvme_file_open(fx->n, "/etc/passwd", false, &fid) == -EINVAL, "absolute");
	T_CHECK(tier_nvme_file_open(fx->n, "../escape", true, &fid) == -EINVAL, "../escape");
	memset(long_name, 'n', sizeof(long_name));
	long_name[201] = '\0';
	T_CHECK(tier_nvme_file_open(fx->n, long_name, true, &fid) == -EINVAL, "201 bytes");
	T_CHECK(tier_nvme_unlink(fx->n, long_name) == -EINVAL, "unlink 201 bytes");
	T_CHECK(tier_nvme_unlink(fx->n, "..") == -EINVAL, "unlink ..");
	long_name[200] = '\0';
	T_CHECK(tier_nvme_file_open(fx->n, long_name, true, &fid) == 0, "200 bytes");
	tier_nvme_file_close(fx->n, fid);
	T_CHECK(tier_nvme_unlink(fx->n, long_name) == 0, "unlink 200 bytes");
	T_CHECK(tier_nvme_file_open(fx->n, "..hidden.", true, &fid) == 0, "dots inside a name");
	tier_nvme_file_close(fx->n, fid);
	T_CHECK(tier_nvme_unlink(fx->n, "..hidden.") == 0, "unlink ..hidden.");
}

static void test_table(void)
{
	char dir[4200], path[4300], name[16];
	struct tier_nvme_config cfg = { .dir = dir, .queue_depth = 4, .staging_bytes = 4096,
					.max_files = 4 };
	struct tier_nvme *n;
	struct tier_io io;
	struct stat st;
	const char *why;
	uint8_t *buf;
	int fids[5], ret;

	path_in(dir, sizeof(dir), tmp_root, "few");
	ret = tier_nvme_open(&cfg, &n, &why);
	T_CHECK(ret == 0, "open few: %d (%s)", ret, why);
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		T_CHECK(tier_nvme_file_open(n, name, true, &fids[i]) == 0, "open %s", name);
		for (int j = 0; j < i; j++)
			T_CHECK(fids[i] != fids[j], "fid %d given twice", fids[i]);
	}
	T_CHECK(tier_nvme_file_open(n, "f4", true, &fids[4]) == -EMFILE, "a fifth file");
	path_in(path, sizeof(path), dir, "f4");
	T_CHECK(!exists(path), "-EMFILE created f4");

	/* A freed slot is reused, and I/O on it reaches the new file, not the old one. */
	tier_nvme_file_close(n, fids[1]);
	T_CHECK(tier_nvme_file_open(n, "f4", true, &fids[4]) == 0, "f4 after a close");
	buf = aligned(tier_nvme_align(n), 0x42);
	io = io_of(fids[4], true, 0, tier_nvme_align(n), buf);
	T_CHECK(tier_nvme_submit(n, &io, 1) == 0, "write f4");
	T_CHECK(tier_nvme_file_sync(n, fids[4]) == 0, "sync f4");
	T_CHECK(stat(path, &st) == 0 && st.st_size == tier_nvme_align(n), "f4 size");
	path_in(path, sizeof(path), dir, "f1");
	T_CHECK(stat(path, &st) == 0 && st.st_size == 0, "f1 was written");

	/* Unlink leaves the open file usable; the name is gone. */
	T_CHECK(tier_nvme_unlink(n, "f0") == 0, "unlink f0");
	T_CHECK(tier_nvme_sync_dir(n) == 0, "sync dir");
	path_in(path, sizeof(path), dir, "f0");
	T_CHECK(!exists(path), "f0 still there");
	T_CHECK(tier_nvme_unlink(n, "f0") == -ENOENT, "unlink f0 twice");
	io = io_of(fids[0], true, 0, tier_nvme_align(n), buf);
	T_CHECK(tier_nvme_submit(n, &io, 1) == 0, "write to the unlinked f0");
	tier_nvme_file_close(n, fids[0]);
	T_CHECK(tier_nvme_file_open(n, "f0", false, &fids[0]) == -ENOENT, "reopen f0");
	T_CHECK(tier_nvme_unlink(n, "absent") == -ENOENT, "unlink absent");
	tier_nvme_close(n);
	free(buf);
}

int main(void)
{
	const char *base = getenv("TMPDIR");
	struct tier_nvme_config cfg = { .queue_depth = 32, .staging_bytes = STAGING,
					.max_files = 16 };
	struct fixture fx = { 0 };
	char dir[4200];
	struct stat st;
	const char *why = NULL;
	size_t staging_len;
	void *stage;
	int ret;

	if (!base || !base[0])
		base = "/tmp";
	snprintf(tmp_root, sizeof(tmp_root), "%s/sparq-nvme-XXXXXX", base);
	if (!mkdtemp(tmp_root)) {
		printf("SKIP: cannot create a directory under %s: %s\n", base, strerror(errno));
		tmp_root[0] = '\0';
		return T_EXIT_SKIP;
	}
	atexit(cleanup);

	path_in(dir, sizeof(dir), tmp_root, "data");
	cfg.dir = dir;
	ret = tier_nvme_open(&cfg, &fx.n, &why);
	if (ret == -EOPNOTSUPP) {
		printf("SKIP: %s (%s)\n", why, tmp_root);
		return T_EXIT_SKIP;
	}
	T_CHECK(ret == 0, "open: %d (%s)", ret, why ? why : "-");
	T_CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700,
		"data dir mode %o", (unsigned)st.st_mode);
	T_CHECK(strcmp(tier_nvme_dir(fx.n), dir) == 0, "tier_nvme_dir");
	stage = tier_nvme_staging(fx.n, &staging_len);
	T_CHECK(staging_len == STAGING && (uintptr_t)stage % 4096 == 0, "staging %p %zu", stage,
		staging_len);
	ret = (int)tier_nvme_align(fx.n);
	T_CHECK(ret >= 512 && ret <= 65536 && !(ret & (ret - 1)), "align %d", ret);
	fx.rec = (uint32_t)ret;
	printf("nvme: %s, alignment %u, staging %zu KiB\n", tmp_root, fx.rec, staging_len >> 10);
	check_stats(fx.n, &fx.want, "fresh engine");

	test_config();
	test_round_trip(&fx);
	test_rejects(&fx);
	run_depth(4, 1000);
	run_depth(1, 100);
	test_fault_eio(&fx);
	test_fault_enospc(&fx);
	test_fault_short(&fx);
	test_past_eof(&fx);
	test_names(&fx);
	test_table();

	/* A second open of an existing directory works and leaves its files alone. */
	tier_nvme_file_close(fx.n, fx.fid);
	tier_nvme_close(fx.n);
	ret = tier_nvme_open(&cfg, &fx.n, &why);
	T_CHECK(ret == 0, "reopen the directory: %d (%s)", ret, why ? why : "-");
	T_CHECK(tier_nvme_file_open(fx.n, "records", false, &fx.fid) == 0, "records survive");
	T_CHECK(tier_nvme_file_size(fx.n, fx.fid, &(uint64_t){ 0 }) == 0, "size");
	tier_nvme_file_close(fx.n, fx.fid);
	T_CHECK(tier_nvme_unlink(fx.n, "records") == 0 && tier_nvme_unlink(fx.n, "enospc") == 0,
		"unlink");
	T_CHECK(tier_nvme_sync_dir(fx.n) == 0, "sync dir");
	tier_nvme_close(fx.n);
	T_CHECK(rmdir(dir) == 0, "data dir not empty at the end: %s", strerror(errno));
	free(fx.data);
	printf("nvme: ok\n");
	return T_EXIT_PASS;
}
