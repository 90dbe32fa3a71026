#!/usr/bin/env python3
"""gen_corpus.py — writes the fuzz targets' seed corpora into tests/fuzz-corpus/<target>/.

Seeds are what a fuzzer cannot easily guess on its own: a valid region header (magic,
version, a layout that matches its size), well-formed ring descriptors with data-area
offsets that land inside the synthetic client region, and protobuf Requests of every
kind (encoded by protoc-c --encode from text format, as tests/wire-golden is). From
there libFuzzer mutates. Rerun after changing the input format of a target; commit the
output. Standard library only (struct); needs protoc-c on PATH for the request seeds.

The layouts mirror ipc/shm.h (little-endian, 64-byte descriptors) and the harnesses'
input formats described at the top of each tests/fuzz/fuzz_<target>.c.
"""
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CORPUS = os.path.join(ROOT, "tests", "fuzz-corpus")
PAGE = 4096
MAGIC = 0x44515053
VERSION = 1


def page_up(x):
    return (x + PAGE - 1) // PAGE * PAGE


def layout(data_bytes, entries):
    """The only layout sparq_shm_map accepts (ipc/shm.c layout())."""
    sq_off = PAGE
    cq_off = sq_off + page_up(entries * 64)
    data_off = cq_off + page_up(entries * 64)
    return sq_off, cq_off, data_off, data_off + data_bytes


def shm_header(data_bytes, entries, magic=MAGIC, version=VERSION, cursors=(0, 0, 0, 0)):
    sq_off, cq_off, data_off, size = layout(data_bytes, entries)
    head = struct.pack("<IIQII4Q", magic, version, size, entries, 0,
                       sq_off, cq_off, data_off, data_bytes)
    head += b"\0" * (64 - len(head))
    for c in cursors:  # sq_head, sq_tail, cq_head, cq_tail: one cache line each
        head += struct.pack("<I", c) + b"\0" * 60
    return head


def write(target, name, blob):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


def gen_shm_map():
    # byte 0: odd = file size as the header claims (+/- pages), even = pages count
    m = 1 << 20
    write("shm_map", "valid_8", b"\x01" + shm_header(m, 8))
    write("shm_map", "valid_256", b"\x01" + shm_header(64 * m, 256))
    write("shm_map", "valid_4096", b"\x01" + shm_header(m, 4096))
    write("shm_map", "file_one_page_longer", b"\x03" + shm_header(m, 8))
    write("shm_map", "file_one_page_shorter", b"\xff" + shm_header(m, 8))
    write("shm_map", "bad_magic", b"\x01" + shm_header(m, 8, magic=0x51505344))
    write("shm_map", "version_2", b"\x01" + shm_header(m, 8, version=2))
    write("shm_map", "ring_not_pow2", b"\x01" + shm_header(m, 12))
    write("shm_map", "cq_tail_far_ahead", b"\x01" + shm_header(m, 8, cursors=(0, 0, 0, 9)))
    write("shm_map", "cq_one_completion", b"\x01" + shm_header(m, 8, cursors=(1, 1, 0, 1)))
    write("shm_map", "tiny_file", b"\x02" + shm_header(m, 8))
    write("shm_map", "empty_file", b"\x00" + shm_header(m, 8))


# The synthetic client of tests/fuzz/fuzz_ctx.h: 1 MiB data area, 8-entry rings.
DATA_OFF = layout(1 << 20, 8)[2]  # 12288
DATA_END = DATA_OFF + (1 << 20)


def encode(text):
    """A text-format sparq.v1.Request encoded by protoc-c --encode."""
    proto_dir = os.path.join(ROOT, "ipc")
    return subprocess.run(["protoc-c", "-I" + proto_dir, "--encode=sparq.v1.Request",
                           "sparq.proto"], input=text.encode(), check=True,
                          stdout=subprocess.PIPE).stdout


def gen_request():
    golden = os.path.join(ROOT, "tests", "wire-golden")
    for name in sorted(os.listdir(golden)):
        if name.startswith("req_") and name.endswith(".bin"):
            with open(os.path.join(golden, name), "rb") as f:
                write("request", "golden_" + name[4:-4], f.read())
    d = DATA_OFF
    # sessions (fuzz_ctx.h): 1 = 2 layers, 4 q / 2 kv heads, d 64, f16;
    # 2 = 1 layer, 8 q / 8 kv heads, d 128, bf16; 4 answers -EBUSY
    texts = {
        "hello_v1": 'id: 1 hello { protocol_version: 1 client_name: "fuzz" }',
        "hello_v2": 'id: 1 hello { protocol_version: 2 client_name: "fuzz" }',
        "hello_no_body": 'id: 1 hello { }',
        "create_ratio": 'id: 2 create { geometry { n_layers: 2 n_q_heads: 4 n_kv_heads: 2 '
                        'head_dim: 64 dtype: DTYPE_F16 } defaults { ratio: 8 } label: "x" }',
        "create_explicit": 'id: 2 create { geometry { n_layers: 1 n_q_heads: 32 n_kv_heads: 1 '
                           'head_dim: 8 dtype: DTYPE_BF16 } defaults { r: 8 k: 16 l: 4 '
                           'l_set: true blend: BLEND_OFF } persistent: true }',
        "create_dense": 'id: 2 create { geometry { n_layers: 1 n_q_heads: 8 n_kv_heads: 8 '
                        'head_dim: 128 dtype: DTYPE_F16 } defaults { dense: true } }',
        "create_huge": 'id: 2 create { geometry { n_layers: 4294967295 n_q_heads: 4294967295 '
                       'n_kv_heads: 65536 head_dim: 4294967288 dtype: DTYPE_F16 } '
                       'defaults { ratio: 8 } }',
        "create_zero": 'id: 2 create { geometry { } defaults { ratio: 8 } }',
        "create_nan": 'id: 2 create { geometry { n_layers: 1 n_q_heads: 1 n_kv_heads: 1 '
                      'head_dim: 64 dtype: DTYPE_F16 } defaults { ratio: nan } }',
        "resume": 'id: 5 resume { session: 1 to_ram: true }',
        "close_busy": 'id: 3 close { session: 4 }',
        "append_ok": 'id: 7 append { session: 1 layer: 1 n_tokens: 4 k_off: %d v_off: %d }'
                     % (d, d + 1024),
        "append_past_end": 'id: 7 append { session: 1 layer: 0 n_tokens: 4 k_off: %d v_off: %d }'
                           % (DATA_END - 512, d),
        "append_overflow": 'id: 7 append { session: 1 layer: 0 n_tokens: 2147483648 '
                           'k_off: 18446744073709551614 v_off: %d }' % d,
        "append_misaligned": 'id: 7 append { session: 1 layer: 0 n_tokens: 1 k_off: %d '
                             'v_off: %d }' % (d + 1, d + 4096),
        "append_layer": 'id: 7 append { session: 1 layer: 2 n_tokens: 1 k_off: %d v_off: %d }'
                        % (d, d + 4096),
        "append_busy": 'id: 7 append { session: 4 n_tokens: 1 k_off: %d v_off: %d }'
                       % (d, d + 4096),
        "attend_two": 'id: 8 attend { layer: 0 entries { session: 1 q_off: %d y_off: %d '
                      'alpha_off: %d } entries { session: 2 q_off: %d y_off: %d '
                      'params { ratio: 8 } } }' % (d, d + 1024, d + 2048, d + 4096, d + 8192),
        "attend_bad_second": 'id: 8 attend { layer: 0 entries { session: 1 q_off: %d y_off: %d }'
                             ' entries { session: 1 q_off: %d y_off: 0 } }'
                             % (d, d + 1024, d + 2048),
        "attend_params": 'id: 8 attend { layer: 1 entries { session: 1 q_off: %d y_off: %d '
                         'params { r: 64 k: 1 l: 0 l_set: true } } }' % (d, d + 1024),
        "select_ok": 'id: 9 select { session: 1 layer: 1 q_off: %d sel_off: %d sel_cap: 16 '
                     'n_sel_off: %d alpha_off: %d params { r: 16 k: 32 } }'
                     % (d, d + 4096, d + 8192, d + 8448),
        "select_cap0": 'id: 9 select { session: 1 q_off: %d sel_off: %d n_sel_off: %d }'
                       % (d, d + 4096, d + 8192),
        "gather_ok": 'id: 10 gather { session: 2 layer: 0 kv_head: 7 n: 8 pos_off: %d '
                     'out_off: %d }' % (d, d + 4096),
        "gather_head": 'id: 10 gather { session: 2 kv_head: 8 n: 8 pos_off: %d out_off: %d }'
                       % (d, d + 4096),
        "gather_nosession": 'id: 10 gather { session: 99 n: 1 pos_off: %d out_off: %d }'
                            % (d, d + 4096),
    }
    for name, text in texts.items():
        write("request", name, encode(text))
    # what no encoder writes: an unknown body field (100), a truncated packet, garbage
    write("request", "unknown_body", b"\x08\x01\xa2\x06\x00")
    write("request", "config", encode("id: 3 config { }"))
    write("request", "truncated", encode(texts["attend_two"])[:17])
    write("request", "bad_varint", b"\x08" + b"\xff" * 11)


def sqe(op, session=0, layer=0, n=0, kv_head=0, off=(0, 0, 0), user_data=7, flags=0,
        reserved=0, reserved2=0):
    return struct.pack("<QBBHIQII3QQ", user_data, op, flags, reserved, layer, session, n,
                       kv_head, *off, reserved2)


def attend_desc(session, q, y=0, alpha=0, sel=0, n_sel=0, sel_cap=0, reserved=0,
                r=0, k=0, l=0, ratio=0.0, blend=0, dense=0, l_set=0, use_defaults=1):
    return struct.pack("<6QII", session, q, y, alpha, sel, n_sel, sel_cap, reserved) + \
        struct.pack("<IIifBBBB", r, k, l, ratio, blend, dense, l_set, use_defaults) + \
        b"\0" * 4


def gen_ring():
    APPEND, ATTEND, SELECT, GATHER, NOP = 1, 2, 3, 4, 5
    d = DATA_OFF
    q = d + 4096  # inputs and outputs after the descriptors
    write("ring", "nop", sqe(NOP))
    write("ring", "append_ok", sqe(APPEND, session=1, layer=1, n=4, off=(q, q + 1024, 0)))
    write("ring", "append_past_end", sqe(APPEND, session=1, n=4, off=(DATA_END - 8, q, 0)))
    write("ring", "append_overflow", sqe(APPEND, session=1, n=0xffffffff,
                                         off=(q, 2**64 - 4096, 0)))
    write("ring", "gather_ok", sqe(GATHER, session=2, kv_head=3, n=8, off=(q, q + 4096, 0)))
    write("ring", "gather_off0", sqe(GATHER, session=2, n=8, off=(0, q, 0)))
    two = attend_desc(1, q, q + 1024, q + 2048) + \
        attend_desc(2, q + 4096, q + 8192, use_defaults=0, ratio=8.0)
    write("ring", "attend_two", sqe(ATTEND, layer=0, n=2, off=(d, 0, 0)) + two)
    write("ring", "attend_explicit", sqe(ATTEND, layer=1, n=1, off=(d, 0, 0)) +
          attend_desc(1, q, q + 1024, use_defaults=0, r=16, k=64, l=8, l_set=1, blend=2))
    write("ring", "attend_dense", sqe(ATTEND, n=1, off=(d, 0, 0)) +
          attend_desc(2, q, q + 4096, use_defaults=0, dense=1))
    write("ring", "attend_nan", sqe(ATTEND, n=1, off=(d, 0, 0)) +
          attend_desc(1, q, q + 1024, use_defaults=0, ratio=float("nan")))
    write("ring", "attend_reserved", sqe(ATTEND, n=1, off=(d, 0, 0)) +
          attend_desc(1, q, q + 1024, reserved=1))
    write("ring", "attend_flag2", sqe(ATTEND, n=1, off=(d, 0, 0)) +
          attend_desc(1, q, q + 1024, use_defaults=2))
    write("ring", "attend_too_many", sqe(ATTEND, n=1025, off=(d, 0, 0)) + two)
    write("ring", "attend_desc_past_end", sqe(ATTEND, n=2, off=(DATA_END - 80, 0, 0)))
    write("ring", "select_ok", sqe(SELECT, layer=1, n=1, off=(d, 0, 0)) +
          attend_desc(1, q, alpha=q + 1024, sel=q + 2048, n_sel=q + 3072, sel_cap=16))
    write("ring", "bad_op", sqe(9))
    write("ring", "op_zero", sqe(0))
    write("ring", "flags", sqe(NOP, flags=1))
    write("ring", "reserved", sqe(NOP, reserved=1))
    write("ring", "reserved2", sqe(NOP, reserved2=1))


def main():
    gen_shm_map()
    gen_request()
    gen_ring()
    return 0


if __name__ == "__main__":
    sys.exit(main())
