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


def main():
    gen_shm_map()
    return 0


if __name__ == "__main__":
    sys.exit(main())
