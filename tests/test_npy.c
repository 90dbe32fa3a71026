/*
 * test_npy.c — the .npy reader of sparq-bench trace (tools/npy.h): files numpy wrote
 * (their bytes, captured once, below) read back to the values numpy saved; files with
 * hand-built headers round-trip; and every malformed file the reader must refuse
 * (bad magic, truncation at each point, unsupported version, dtype or order, shape
 * overflow, data of the wrong size, headers that are not numpy's dict) fails with
 * -EINVAL (or the open's errno) and a message naming the file and the fault, never a
 * crash. No Python needed: the test writes every file itself.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "half.h"
#include "helpers.h"
#include "npy.h"

/* golden_f32_v1: numpy 2.4.6 np.lib.format.write_array of <f4 (2, 3), format 1.0 */
static const unsigned char golden_f32_v1[152] = {
	0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00, 0x76, 0x00, 0x7b, 0x27, 0x64, 0x65, 0x73, 0x63,
	0x72, 0x27, 0x3a, 0x20, 0x27, 0x3c, 0x66, 0x34, 0x27, 0x2c, 0x20, 0x27, 0x66, 0x6f, 0x72, 0x74,
	0x72, 0x61, 0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61, 0x6c, 0x73,
	0x65, 0x2c, 0x20, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a, 0x20, 0x28, 0x32, 0x2c, 0x20,
	0x33, 0x29, 0x2c, 0x20, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x0a,
	0x00, 0x00, 0x80, 0xbf, 0x00, 0x00, 0x00, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f,
	0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0xc0, 0x3f,
};
/* golden_f16_v2: numpy 2.4.6 np.lib.format.write_array of <f2 (4,), format 2.0 */
static const unsigned char golden_f16_v2[136] = {
	0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x02, 0x00, 0x74, 0x00, 0x00, 0x00, 0x7b, 0x27, 0x64, 0x65,
	0x73, 0x63, 0x72, 0x27, 0x3a, 0x20, 0x27, 0x3c, 0x66, 0x32, 0x27, 0x2c, 0x20, 0x27, 0x66, 0x6f,
	0x72, 0x74, 0x72, 0x61, 0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61,
	0x6c, 0x73, 0x65, 0x2c, 0x20, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a, 0x20, 0x28, 0x34,
	0x2c, 0x29, 0x2c, 0x20, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x0a,
	0x00, 0xbe, 0x00, 0xb8, 0x00, 0x38, 0x00, 0x3e,
};
/* golden_f32_v3: numpy 2.4.6 np.lib.format.write_array of <f4 (2, 1, 1), format 3.0 */
static const unsigned char golden_f32_v3[136] = {
	0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x03, 0x00, 0x74, 0x00, 0x00, 0x00, 0x7b, 0x27, 0x64, 0x65,
	0x73, 0x63, 0x72, 0x27, 0x3a, 0x20, 0x27, 0x3c, 0x66, 0x34, 0x27, 0x2c, 0x20, 0x27, 0x66, 0x6f,
	0x72, 0x74, 0x72, 0x61, 0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61,
	0x6c, 0x73, 0x65, 0x2c, 0x20, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a, 0x20, 0x28, 0x32,
	0x2c, 0x20, 0x31, 0x2c, 0x20, 0x31, 0x29, 0x2c, 0x20, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x0a,
	0x00, 0x00, 0xa0, 0x3f, 0x00, 0x00, 0x00, 0xc0,
};
/* golden_f16_scalar: numpy 2.4.6 np.lib.format.write_array of <f2 (), format 1.0 */
static const unsigned char golden_f16_scalar[130] = {
	0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00, 0x76, 0x00, 0x7b, 0x27, 0x64, 0x65, 0x73, 0x63,
	0x72, 0x27, 0x3a, 0x20, 0x27, 0x3c, 0x66, 0x32, 0x27, 0x2c, 0x20, 0x27, 0x66, 0x6f, 0x72, 0x74,
	0x72, 0x61, 0x6e, 0x5f, 0x6f, 0x72, 0x64, 0x65, 0x72, 0x27, 0x3a, 0x20, 0x46, 0x61, 0x6c, 0x73,
	0x65, 0x2c, 0x20, 0x27, 0x73, 0x68, 0x61, 0x70, 0x65, 0x27, 0x3a, 0x20, 0x28, 0x29, 0x2c, 0x20,
	0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
	0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20, 0x0a,
	0x00, 0x42,
};

static char dir[1024];

static const char *path_of(const char *name)
{
	static char buf[1300];

	snprintf(buf, sizeof(buf), "%s/%s", dir, name);
	return buf;
}

static void write_bytes(const char *path, const void *b, size_t n)
{
	FILE *f = fopen(path, "wb");

	T_CHECK(f, "cannot create %s", path);
	T_CHECK(fwrite(b, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}

/*
 * A .npy as numpy lays it out: magic, version, header length (2 bytes for 1.0, 4
 * for 2.0/3.0), the header text padded with spaces and a newline so the data starts
 * at a multiple of 64, then data_len bytes of data.
 */
static void write_npy_n(const char *name, unsigned major, const char *header, size_t hl,
			const void *data, size_t data_len)
{
	size_t lenb = major == 1 ? 2 : 4, pre = 8 + lenb;
	size_t total_h = ((pre + hl + 1 + 63) / 64) * 64 - pre;
	unsigned char *buf = t_alloc(pre + total_h + data_len);

	memcpy(buf, "\x93NUMPY", 6);
	buf[6] = (unsigned char)major;
	buf[7] = 0;
	for (size_t i = 0; i < lenb; i++)
		buf[8 + i] = (unsigned char)(total_h >> (8 * i));
	memcpy(buf + pre, header, hl);
	memset(buf + pre + hl, ' ', total_h - hl - 1);
	buf[pre + total_h - 1] = '\n';
	if (data_len)
		memcpy(buf + pre + total_h, data, data_len);
	write_bytes(path_of(name), buf, pre + total_h + data_len);
	free(buf);
}

static void write_npy(const char *name, unsigned major, const char *header, const void *data,
		      size_t data_len)
{
	write_npy_n(name, major, header, strlen(header), data, data_len);
}

/* path must fail with want and a message naming the file and containing what. */
static void expect_fail(const char *name, int want, const char *what)
{
	char err[512] = "";
	struct npy_array a;
	const char *p = path_of(name);
	int ret = npy_read(p, &a, err, sizeof(err));

	T_CHECK(ret == want, "%s: npy_read returned %d (%s), want %d", name, ret, err, want);
	T_CHECK(a.data == NULL, "%s: data left allocated after a failure", name);
	T_CHECK(strstr(err, p) == err, "%s: message does not start with the path: '%s'", name, err);
	T_CHECK(strstr(err + strlen(p), what), "%s: message '%s' does not say '%s'", name, err, what);
	/* the header-only reader refuses it the same way */
	ret = npy_read_header(p, &a, err, sizeof(err));
	T_CHECK(ret == want, "%s: npy_read_header returned %d (%s), want %d", name, ret, err, want);
}

static void test_golden(void)
{
	char err[512] = "";
	struct npy_array a;

	write_bytes(path_of("g1.npy"), golden_f32_v1, sizeof(golden_f32_v1));
	T_CHECK(npy_read(path_of("g1.npy"), &a, err, sizeof(err)) == 0, "%s", err);
	T_CHECK(a.dtype == NPY_F32 && a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 &&
		a.count == 6 && a.data_bytes == 24 && a.data_offset == 128, "g1 geometry");
	for (int i = 0; i < 6; i++)
		T_CHECK(((float *)a.data)[i] == 0.5f * (float)i - 1.0f, "g1[%d] = %g", i,
			((float *)a.data)[i]);
	npy_free(&a);

	write_bytes(path_of("g2.npy"), golden_f16_v2, sizeof(golden_f16_v2));
	T_CHECK(npy_read(path_of("g2.npy"), &a, err, sizeof(err)) == 0, "%s", err);
	T_CHECK(a.dtype == NPY_F16 && a.ndim == 1 && a.shape[0] == 4 && a.count == 4, "g2 geometry");
	for (int i = 0; i < 4; i++)
		T_CHECK(sparq_f16_to_f32(((uint16_t *)a.data)[i]) == (float)i - 1.5f, "g2[%d]", i);
	npy_free(&a);

	write_bytes(path_of("g3.npy"), golden_f32_v3, sizeof(golden_f32_v3));
	T_CHECK(npy_read(path_of("g3.npy"), &a, err, sizeof(err)) == 0, "%s", err);
	T_CHECK(a.dtype == NPY_F32 && a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 1 &&
		a.shape[2] == 1 && a.count == 2, "g3 geometry");
	T_CHECK(((float *)a.data)[0] == 1.25f && ((float *)a.data)[1] == -2.0f, "g3 values");
	npy_free(&a);

	write_bytes(path_of("g4.npy"), golden_f16_scalar, sizeof(golden_f16_scalar));
	T_CHECK(npy_read_header(path_of("g4.npy"), &a, err, sizeof(err)) == 0, "%s", err);
	T_CHECK(a.ndim == 0 && a.count == 1 && a.data == NULL, "g4 header");
	T_CHECK(npy_read(path_of("g4.npy"), &a, err, sizeof(err)) == 0, "%s", err);
	T_CHECK(sparq_f16_to_f32(*(uint16_t *)a.data) == 3.0f, "g4 value");
	npy_free(&a);
}

/* Hand-built headers in each version and spelling numpy accepts, random data back bit for bit. */
static void test_roundtrip(void)
{
	static const struct {
		unsigned major;
		const char *header;
		enum npy_dtype dt;
		uint32_t ndim;
		uint64_t shape[3];
	} c[] = {
		{ 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5, 7), }", NPY_F32, 3, { 3, 5, 7 } },
		{ 2, "{'descr': '<f2', 'fortran_order': False, 'shape': (35,), }", NPY_F16, 1, { 35 } },
		{ 3, "{\"shape\":(5,7,1),\"fortran_order\":False,\"descr\":\"<f2\"}", NPY_F16, 3, { 5, 7, 1 } },
		{ 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", NPY_F32, 2, { 0, 4 } },
		{ 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 5L), }", NPY_F32, 2, { 3, 5 } },
	};
	struct t_rng rng = { 42 };

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		uint64_t n = 1;
		for (uint32_t j = 0; j < c[i].ndim; j++)
			n *= c[i].shape[j];
		size_t bytes = (size_t)n * npy_dtype_size(c[i].dt);
		unsigned char *data = t_alloc(bytes);
		char name[32], err[512] = "";
		struct npy_array a;

		for (size_t j = 0; j < bytes; j++)
			data[j] = (unsigned char)t_next(&rng);
		snprintf(name, sizeof(name), "rt%zu.npy", i);
		write_npy(name, c[i].major, c[i].header, data, bytes);
		T_CHECK(npy_read(path_of(name), &a, err, sizeof(err)) == 0, "case %zu: %s", i, err);
		T_CHECK(a.dtype == c[i].dt && a.ndim == c[i].ndim && a.count == n &&
			a.data_bytes == bytes, "case %zu: geometry", i);
		for (uint32_t j = 0; j < c[i].ndim; j++)
			T_CHECK(a.shape[j] == c[i].shape[j], "case %zu: dim %u", i, j);
		T_CHECK(bytes == 0 || memcmp(a.data, data, bytes) == 0, "case %zu: data differs", i);
		npy_free(&a);
		free(data);
	}
}

#define H(descr, fortran, shape) \
	"{'descr': '" descr "', 'fortran_order': " fortran ", 'shape': " shape ", }"

static void test_errors(void)
{
	static const float six[6] = { 1, 2, 3, 4, 5, 6 };
	unsigned char buf[64];

	/* open failures keep their errno */
	expect_fail("missing.npy", -ENOENT, "cannot open");
	T_CHECK(mkdir(path_of("adir.npy"), 0700) == 0, "mkdir");
	expect_fail("adir.npy", -EINVAL, "not a regular file");

	/* the prefix */
	write_bytes(path_of("empty.npy"), "", 0);
	expect_fail("empty.npy", -EINVAL, "truncated");
	write_bytes(path_of("magic4.npy"), "\x93NUM", 4);
	expect_fail("magic4.npy", -EINVAL, "truncated");
	write_bytes(path_of("badmagic.npy"), "\x93NUMPZ\x01\x00\x10\x00", 10);
	expect_fail("badmagic.npy", -EINVAL, "bad magic");
	write_bytes(path_of("text.npy"), "a,b,c\n1,2,3\n", 12);
	expect_fail("text.npy", -EINVAL, "bad magic");
	write_bytes(path_of("v4.npy"), "\x93NUMPY\x04\x00\x10\x00\x00\x00", 12);
	expect_fail("v4.npy", -EINVAL, "version 4.0");
	write_bytes(path_of("v11.npy"), "\x93NUMPY\x01\x01\x10\x00", 10);
	expect_fail("v11.npy", -EINVAL, "version 1.1");
	write_bytes(path_of("lenshort.npy"), "\x93NUMPY\x02\x00\x10\x00", 10);
	expect_fail("lenshort.npy", -EINVAL, "header length");
	write_bytes(path_of("hdrshort.npy"), "\x93NUMPY\x01\x00\x76\x00{'descr'", 17);
	expect_fail("hdrshort.npy", -EINVAL, "truncated header");
	memcpy(buf, "\x93NUMPY\x02\x00\x60\xea\x00\x00", 12); /* 60000 bytes announced */
	memset(buf + 12, ' ', sizeof(buf) - 12);
	write_bytes(path_of("hdrbig.npy"), buf, sizeof(buf));
	expect_fail("hdrbig.npy", -EINVAL, "exceeds the limit");

	/* what the header says */
	write_npy("be.npy", 1, H(">f4", "False", "(2, 3)"), six, 24);
	expect_fail("be.npy", -EINVAL, "dtype '>f4' is not supported");
	write_npy("f8.npy", 1, H("<f8", "False", "(3,)"), six, 24);
	expect_fail("f8.npy", -EINVAL, "dtype '<f8' is not supported");
	write_npy("i4.npy", 1, H("<i4", "False", "(2, 3)"), six, 24);
	expect_fail("i4.npy", -EINVAL, "dtype '<i4'");
	write_npy("fortran.npy", 1, H("<f4", "True", "(2, 3)"), six, 24);
	expect_fail("fortran.npy", -EINVAL, "fortran_order is True");
	write_npy("ovf.npy", 1, H("<f4", "False", "(4294967296, 4294967296, 2)"), six, 24);
	expect_fail("ovf.npy", -EINVAL, "overflows");
	write_npy("ovf63.npy", 1, H("<f2", "False", "(4611686018427387904,)"), six, 24);
	expect_fail("ovf63.npy", -EINVAL, "overflows");
	write_npy("ovfdim.npy", 1, H("<f4", "False", "(99999999999999999999999,)"), six, 24);
	expect_fail("ovfdim.npy", -EINVAL, "overflows 64 bits");
	write_npy("ovfzero.npy", 1, H("<f4", "False", "(4294967296, 4294967296, 4, 0)"), six, 0);
	expect_fail("ovfzero.npy", -EINVAL, "overflows");
	write_npy("dims9.npy", 1, H("<f4", "False", "(1, 1, 1, 1, 1, 1, 1, 1, 1)"), six, 4);
	expect_fail("dims9.npy", -EINVAL, "more than 8 dimensions");
	write_npy("negdim.npy", 1, H("<f4", "False", "(-2, 3)"), six, 24);
	expect_fail("negdim.npy", -EINVAL, "non-negative integers");
	write_npy("notuple.npy", 1, H("<f4", "False", "(6)"), six, 24);
	expect_fail("notuple.npy", -EINVAL, "not a tuple");
	write_npy("shapelist.npy", 1, H("<f4", "False", "[6]"), six, 24);
	expect_fail("shapelist.npy", -EINVAL, "not a tuple");
	write_npy("nokey.npy", 1, "{'descr': '<f4', 'shape': (6,), }", six, 24);
	expect_fail("nokey.npy", -EINVAL, "lacks one of");
	write_npy("extrakey.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}",
		  six, 24);
	expect_fail("extrakey.npy", -EINVAL, "unknown or repeated key");
	write_npy("dupkey.npy", 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
		  "'shape': (6,)}", six, 24);
	expect_fail("dupkey.npy", -EINVAL, "unknown or repeated key");
	write_npy("struct.npy", 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,)}",
		  six, 24);
	expect_fail("struct.npy", -EINVAL, "structured dtypes are not supported");
	write_npy("unterm.npy", 1, "{'descr': '<f4, 'fortran_order': False, 'shape': (6,)}", six, 24);
	expect_fail("unterm.npy", -EINVAL, "expected ',' or '}'");
	write_npy("escape.npy", 1, "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (6,)}",
		  six, 24);
	expect_fail("escape.npy", -EINVAL, "escape sequences");
	write_npy("bool.npy", 1, H("<f4", "0", "(6,)"), six, 24);
	expect_fail("bool.npy", -EINVAL, "neither True nor False");
	write_npy("after.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} x", six, 24);
	expect_fail("after.npy", -EINVAL, "text after the header");
	write_npy("notdict.npy", 1, "('<f4', False, (6,))", six, 24);
	expect_fail("notdict.npy", -EINVAL, "not a dict");
	static const char nul[] = "{'descr': '<f4',\0'fortran_order': False, 'shape': (6,)}";
	write_npy_n("nul.npy", 1, nul, sizeof(nul) - 1, six, 24);
	expect_fail("nul.npy", -EINVAL, "NUL byte");
	write_npy("ctrl.npy", 1, "{'descr': '<f4',\x01'fortran_order': False, 'shape': (6,)}", six, 24);
	expect_fail("ctrl.npy", -EINVAL, "expected a quoted string");

	/* data of the wrong size */
	write_npy("short.npy", 1, H("<f4", "False", "(2, 3)"), six, 20);
	expect_fail("short.npy", -EINVAL, "truncated data: 20 bytes after the header, shape (2, 3)");
	write_npy("short2.npy", 2, H("<f2", "False", "(2, 3)"), six, 0);
	expect_fail("short2.npy", -EINVAL, "truncated data");
	write_npy("long.npy", 1, H("<f4", "False", "(5,)"), six, 24);
	expect_fail("long.npy", -EINVAL, "trailing bytes");
}

/* Removes dir and what the test wrote in it: plain files and one empty directory. */
static void rm_tree(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	T_CHECK(d, "opendir %s", dir);
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlink(path_of(e->d_name)) != 0)
			rmdir(path_of(e->d_name));
	}
	closedir(d);
	T_CHECK(rmdir(dir) == 0, "rmdir %s", dir);
}

int main(void)
{
	const char *base = getenv("SPARQ_TEST_DIR");

	snprintf(dir, sizeof(dir), "%s/sparq-test-npy-XXXXXX", base && *base ? base : "/tmp");
	T_CHECK(mkdtemp(dir), "mkdtemp %s", dir);
	test_golden();
	test_roundtrip();
	test_errors();
	rm_tree();
	printf("npy: ok\n");
	return T_EXIT_PASS;
}
