/*
 * npy.h — a reader of NumPy .npy files, the format tools/eval dumps decode traces in
 * (sparq-bench trace, bench_trace.c). It reads what numpy.save writes: format versions
 * 1.0, 2.0 and 3.0, C order, little-endian float32 ('<f4') or float16 ('<f2'), the
 * shape taken from the header's dict.
 *
 * Nothing read from a file is trusted: a bad magic, a truncated header or data, a
 * header that is not the dict numpy writes, another dtype, Fortran order, a shape
 * whose size overflows or a file whose data is not exactly the shape's size each end
 * in an error whose message names the file and what is wrong.
 */
#ifndef SPARQ_TOOLS_NPY_H
#define SPARQ_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_DIMS_MAX 8u
/* numpy refuses headers above 10000 bytes unless told otherwise; so does this reader */
#define NPY_HEADER_MAX 10000u

enum npy_dtype {
	NPY_F32 = 1,   /* '<f4' */
	NPY_F16 = 2,   /* '<f2', IEEE binary16 bits */
};

struct npy_array {
	enum npy_dtype dtype;
	uint32_t ndim;                  /* 0 for a scalar */
	uint64_t shape[NPY_DIMS_MAX];
	uint64_t count;                 /* elements: the product of shape (1 for a scalar) */
	size_t data_bytes;              /* count × element size */
	uint64_t data_offset;           /* where the data starts in the file */
	void *data;                     /* [count] elements, NULL after npy_read_header */
};

/* Bytes of one element, 0 for an unknown dtype. */
size_t npy_dtype_size(enum npy_dtype dt);

/*
 * Reads and validates path's header, and checks the file's size against the shape;
 * out->data stays NULL. Returns 0, -EINVAL for a file that is not a .npy this reader
 * takes (message says why), -EIO for a failed read, or -errno of open/fstat; err
 * (err_len bytes, may be 0) receives "path: reason" on failure.
 */
int npy_read_header(const char *path, struct npy_array *out, char *err, size_t err_len);

/*
 * npy_read_header, then the data into out->data (malloc'd, free with npy_free).
 * The same errors, and -ENOMEM. On failure *out holds nothing to free.
 */
int npy_read(const char *path, struct npy_array *out, char *err, size_t err_len);

void npy_free(struct npy_array *a);

#endif
