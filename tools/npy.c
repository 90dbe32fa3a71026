/*
 * npy.c — the .npy reader of npy.h. Layout of the format (numpy.lib.format):
 *
 *   "\x93NUMPY" major minor | header length (uint16 LE for 1.0, uint32 LE for 2.0 and
 *   3.0) | header: a Python dict literal {'descr': '<f4', 'fortran_order': False,
 *   'shape': (2, 3), } padded with spaces and a newline | the data, C order.
 *
 * The header is parsed as the small subset of Python literals numpy writes (quoted
 * strings without escapes, True/False, tuples of non-negative integers), not
 * evaluated: any other text is an error. Every length and count read from the file is
 * checked before it is used to size a buffer or an offset.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c hands '<f4'/'<f2' data to the caller as is: little-endian hosts only"
#endif

#define MAGIC "\x93NUMPY"
#define MAGIC_LEN 6u
/* magic, version, and the longest (uint32) header length field */
#define PREFIX_MAX (MAGIC_LEN + 2u + 4u)
#define DESCR_MAX 32u

size_t npy_dtype_size(enum npy_dtype dt)
{
	switch (dt) {
	case NPY_F32:
		return 4;
	case NPY_F16:
		return 2;
	}
	return 0;
}

/* "path: reason" into err. */
__attribute__((format(printf, 4, 5)))
static void fail(char *err, size_t err_len, const char *path, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || err_len == 0)
		return;
	n = snprintf(err, err_len, "%s: ", path);
	if (n < 0 || (size_t)n >= err_len)
		return;
	va_start(ap, fmt);
	vsnprintf(err + n, err_len - (size_t)n, fmt, ap);
	va_end(ap);
}

/* pread until n bytes or the end of the file: bytes read, or -errno. */
static ssize_t read_full(int fd, void *buf, size_t n, uint64_t off)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* ---- the header dict ---- */

struct hparse {
	const char *p, *end;
	const char *why;     /* static reason of a parse failure */
};

static void skip_ws(struct hparse *h)
{
	while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r'))
		h->p++;
}

static bool eat(struct hparse *h, char c)
{
	skip_ws(h);
	if (h->p < h->end && *h->p == c) {
		h->p++;
		return true;
	}
	return false;
}

/* A quoted string without escapes, into out (cap bytes with the terminator). */
static int parse_str(struct hparse *h, char *out, size_t cap)
{
	char q;
	size_t n = 0;

	skip_ws(h);
	if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) {
		h->why = "expected a quoted string";
		return -EINVAL;
	}
	q = *h->p++;
	while (h->p < h->end && *h->p != q) {
		if (*h->p == '\\') {
			h->why = "escape sequences in a header string are not supported";
			return -EINVAL;
		}
		if (n + 1 >= cap) {
			h->why = "a header string is too long";
			return -EINVAL;
		}
		out[n++] = *h->p++;
	}
	if (h->p >= h->end) {
		h->why = "unterminated string";
		return -EINVAL;
	}
	h->p++;
	out[n] = '\0';
	return 0;
}

static int parse_bool(struct hparse *h, bool *out)
{
	skip_ws(h);
	if ((size_t)(h->end - h->p) >= 4 && memcmp(h->p, "True", 4) == 0) {
		h->p += 4;
		*out = true;
		return 0;
	}
	if ((size_t)(h->end - h->p) >= 5 && memcmp(h->p, "False", 5) == 0) {
		h->p += 5;
		*out = false;
		return 0;
	}
	h->why = "fortran_order is neither True nor False";
	return -EINVAL;
}

static int parse_dim(struct hparse *h, uint64_t *out)
{
	uint64_t v = 0;
	const char *start;

	skip_ws(h);
	start = h->p;
	while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
		unsigned dgt = (unsigned)(*h->p - '0');
		if (v > (UINT64_MAX - dgt) / 10) {
			h->why = "a dimension of the shape overflows 64 bits";
			return -EINVAL;
		}
		v = v * 10 + dgt;
		h->p++;
	}
	if (h->p == start) {
		h->why = "the shape holds something other than non-negative integers";
		return -EINVAL;
	}
	if (h->p < h->end && *h->p == 'L')   /* Python 2's long suffix */
		h->p++;
	*out = v;
	return 0;
}

/* A tuple: (), (n,), (a, b), (a, b,) */
static int parse_shape(struct hparse *h, struct npy_array *a)
{
	bool trailing_comma = false;

	if (!eat(h, '(')) {
		h->why = "the shape is not a tuple";
		return -EINVAL;
	}
	a->ndim = 0;
	while (!eat(h, ')')) {
		if (a->ndim == NPY_DIMS_MAX) {
			h->why = "the shape has more than 8 dimensions";
			return -EINVAL;
		}
		int ret = parse_dim(h, &a->shape[a->ndim]);
		if (ret)
			return ret;
		a->ndim++;
		trailing_comma = eat(h, ',');
		if (!trailing_comma) {
			if (!eat(h, ')')) {
				h->why = "the shape tuple is malformed";
				return -EINVAL;
			}
			break;
		}
	}
	if (a->ndim == 1 && !trailing_comma) {
		h->why = "the shape (n) is an integer, not a tuple (n,)";
		return -EINVAL;
	}
	return 0;
}

/* The dict, exactly the three keys numpy writes, each once. */
static int parse_dict(struct hparse *h, struct npy_array *a, char *descr, bool *fortran)
{
	bool have_descr = false, have_fortran = false, have_shape = false;
	char key[32];
	int ret;

	if (!eat(h, '{')) {
		h->why = "the header is not a dict";
		return -EINVAL;
	}
	while (!eat(h, '}')) {
		ret = parse_str(h, key, sizeof(key));
		if (ret)
			return ret;
		if (!eat(h, ':')) {
			h->why = "expected ':' after a key";
			return -EINVAL;
		}
		if (strcmp(key, "descr") == 0 && !have_descr) {
			have_descr = true;
			skip_ws(h);
			if (h->p < h->end && *h->p != '\'' && *h->p != '"') {
				h->why = "descr is not a type string (structured dtypes are not supported)";
				return -EINVAL;
			}
			ret = parse_str(h, descr, DESCR_MAX);
		} else if (strcmp(key, "fortran_order") == 0 && !have_fortran) {
			have_fortran = true;
			ret = parse_bool(h, fortran);
		} else if (strcmp(key, "shape") == 0 && !have_shape) {
			have_shape = true;
			ret = parse_shape(h, a);
		} else {
			h->why = "the header has an unknown or repeated key";
			return -EINVAL;
		}
		if (ret)
			return ret;
		if (!eat(h, ',')) {
			if (!eat(h, '}')) {
				h->why = "expected ',' or '}' in the header dict";
				return -EINVAL;
			}
			break;
		}
	}
	skip_ws(h);
	if (h->p != h->end) {
		h->why = "text after the header dict";
		return -EINVAL;
	}
	if (!have_descr || !have_fortran || !have_shape) {
		h->why = "the header lacks one of descr, fortran_order, shape";
		return -EINVAL;
	}
	return 0;
}

static void fmt_shape(char *buf, size_t n, const struct npy_array *a)
{
	size_t o = (size_t)snprintf(buf, n, "(");

	for (uint32_t i = 0; i < a->ndim && o < n; i++)
		o += (size_t)snprintf(buf + o, n - o, "%s%" PRIu64, i ? ", " : "", a->shape[i]);
	if (o < n)
		snprintf(buf + o, n - o, "%s)", a->ndim == 1 ? "," : "");
}

/* ---- reading ---- */

static int read_header_fd(int fd, const char *path, struct npy_array *a, char *err,
			  size_t err_len)
{
	unsigned char pre[PREFIX_MAX];
	struct stat st;
	uint32_t hlen, len_bytes;
	uint64_t fsize, data_have;
	char descr[DESCR_MAX], shape[160];
	bool fortran = false;
	char *text = NULL;
	ssize_t got;
	size_t esz;
	int ret;

	memset(a, 0, sizeof(*a));
	if (fstat(fd, &st) != 0) {
		ret = -errno;
		fail(err, err_len, path, "fstat: %s", strerror(errno));
		return ret;
	}
	if (!S_ISREG(st.st_mode)) {
		fail(err, err_len, path, "not a regular file");
		return -EINVAL;
	}
	fsize = (uint64_t)st.st_size;
	got = read_full(fd, pre, sizeof(pre), 0);
	if (got < 0) {
		fail(err, err_len, path, "read: %s", strerror((int)-got));
		return -EIO;
	}
	if ((size_t)got < MAGIC_LEN + 2 || memcmp(pre, MAGIC, MAGIC_LEN) != 0) {
		fail(err, err_len, path, (size_t)got < MAGIC_LEN + 2 && memcmp(pre, MAGIC, (size_t)got) == 0
			? "truncated: the file ends inside the magic and version"
			: "bad magic: not a .npy file");
		return -EINVAL;
	}
	if (pre[6] == 1 && pre[7] == 0) {
		len_bytes = 2;
	} else if ((pre[6] == 2 || pre[6] == 3) && pre[7] == 0) {
		len_bytes = 4;
	} else {
		fail(err, err_len, path, "format version %u.%u is not supported (1.0, 2.0, 3.0)",
		     pre[6], pre[7]);
		return -EINVAL;
	}
	if ((size_t)got < MAGIC_LEN + 2 + len_bytes) {
		fail(err, err_len, path, "truncated: the file ends inside the header length");
		return -EINVAL;
	}
	hlen = pre[8] | (uint32_t)pre[9] << 8;
	if (len_bytes == 4)
		hlen |= (uint32_t)pre[10] << 16 | (uint32_t)pre[11] << 24;
	if (hlen > NPY_HEADER_MAX) {
		fail(err, err_len, path, "header of %" PRIu32 " bytes exceeds the limit of %u",
		     hlen, NPY_HEADER_MAX);
		return -EINVAL;
	}
	a->data_offset = MAGIC_LEN + 2 + len_bytes + (uint64_t)hlen;
	if (fsize < a->data_offset) {
		fail(err, err_len, path, "truncated header: %" PRIu32 " bytes announced, %" PRIu64
		     " in the file", hlen, fsize - (MAGIC_LEN + 2 + len_bytes));
		return -EINVAL;
	}
	text = malloc(hlen + 1u);
	if (!text) {
		fail(err, err_len, path, "out of memory for the header");
		return -ENOMEM;
	}
	got = read_full(fd, text, hlen, MAGIC_LEN + 2 + len_bytes);
	if (got < 0 || (size_t)got != hlen) {
		fail(err, err_len, path, got < 0 ? "read: %s" : "truncated header%s",
		     got < 0 ? strerror((int)-got) : "");
		ret = got < 0 ? -EIO : -EINVAL;
		goto out;
	}
	text[hlen] = '\0';
	if (memchr(text, '\0', hlen)) {
		fail(err, err_len, path, "bad header: it contains a NUL byte");
		ret = -EINVAL;
		goto out;
	}

	struct hparse h = { .p = text, .end = text + hlen };
	ret = parse_dict(&h, a, descr, &fortran);
	if (ret) {
		char excerpt[64];
		size_t n = 0;

		/* the text around the fault, printable: headers end in padding and '\n' */
		for (const char *c = text + (h.p - text > 24 ? h.p - text - 24 : 0);
		     c < h.end && n + 1 < sizeof(excerpt) && n < 48; c++)
			excerpt[n++] = *c >= 0x20 && *c < 0x7f ? *c : '?';
		while (n && excerpt[n - 1] == ' ')
			n--;
		excerpt[n] = '\0';
		fail(err, err_len, path, "bad header: %s (at byte %td: '%s')", h.why, h.p - text,
		     excerpt);
		goto out;
	}
	if (strcmp(descr, "<f4") == 0) {
		a->dtype = NPY_F32;
	} else if (strcmp(descr, "<f2") == 0) {
		a->dtype = NPY_F16;
	} else {
		fail(err, err_len, path, "dtype '%s' is not supported (only '<f4' and '<f2')", descr);
		ret = -EINVAL;
		goto out;
	}
	if (fortran) {
		fail(err, err_len, path, "fortran_order is True: only C order is supported");
		ret = -EINVAL;
		goto out;
	}
	esz = npy_dtype_size(a->dtype);
	fmt_shape(shape, sizeof(shape), a);
	/* the product may only be checked factor by factor: a zero dimension later on
	 * would hide an overflow of the ones before it from a check at the end */
	bool overflow = false;
	a->count = 1;
	for (uint32_t i = 0; i < a->ndim; i++) {
		if (a->shape[i] && a->count > UINT64_MAX / a->shape[i])
			overflow = true;
		a->count *= a->shape[i];
	}
	if (overflow || a->count > (uint64_t)INT64_MAX / esz || a->count > SIZE_MAX / esz) {
		fail(err, err_len, path, "shape %s overflows: its size does not fit 63 bits", shape);
		ret = -EINVAL;
		goto out;
	}
	a->data_bytes = (size_t)(a->count * esz);
	data_have = fsize - a->data_offset;
	if (data_have != a->data_bytes) {
		fail(err, err_len, path, "%s data: %" PRIu64 " bytes after the header, shape %s of "
		     "'%s' needs %zu", data_have < a->data_bytes ? "truncated" : "trailing bytes after the",
		     data_have, shape, descr, a->data_bytes);
		ret = -EINVAL;
		goto out;
	}
	ret = 0;
out:
	free(text);
	return ret;
}

static int open_ro(const char *path, char *err, size_t err_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		int e = errno;
		fail(err, err_len, path, "cannot open: %s", strerror(e));
		return -e;
	}
	return fd;
}

int npy_read_header(const char *path, struct npy_array *out, char *err, size_t err_len)
{
	int fd = open_ro(path, err, err_len);
	int ret;

	if (fd < 0) {
		memset(out, 0, sizeof(*out));
		return fd;
	}
	ret = read_header_fd(fd, path, out, err, err_len);
	close(fd);
	return ret;
}

int npy_read(const char *path, struct npy_array *out, char *err, size_t err_len)
{
	int fd = open_ro(path, err, err_len);
	ssize_t got;
	int ret;

	if (fd < 0) {
		memset(out, 0, sizeof(*out));
		return fd;
	}
	ret = read_header_fd(fd, path, out, err, err_len);
	if (ret)
		goto out;
	out->data = malloc(out->data_bytes ? out->data_bytes : 1);
	if (!out->data) {
		fail(err, err_len, path, "out of memory for %zu bytes of data", out->data_bytes);
		ret = -ENOMEM;
		goto out;
	}
	got = read_full(fd, out->data, out->data_bytes, out->data_offset);
	if (got < 0 || (size_t)got != out->data_bytes) {
		/* the size matched at fstat: the file shrank or the device failed */
		fail(err, err_len, path, got < 0 ? "read: %s" : "truncated data while reading%s",
		     got < 0 ? strerror((int)-got) : "");
		ret = got < 0 ? -EIO : -EINVAL;
		goto out;
	}
	ret = 0;
out:
	close(fd);
	if (ret)
		npy_free(out);
	return ret;
}

void npy_free(struct npy_array *a)
{
	free(a->data);
	memset(a, 0, sizeof(*a));
}
