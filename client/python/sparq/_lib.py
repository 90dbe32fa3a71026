"""
_lib.py -- the ctypes mirror of client/libsparq.h and where the shared library is found.

The binding has no C of its own: every structure here copies the layout of the one in
libsparq.h field by field (ctypes applies the same C alignment rules), and every function
gets its argtypes/restype so that a wrong Python argument fails in ctypes, not in C.
libsparq.h is the contract; when it changes, this file changes with it.

Where libsparq.so comes from, first match wins:
  1. the path given to connect(lib=...);
  2. $SPARQ_LIB;
  3. a build tree of the checkout this package sits in: <repo>/build/client/, else the
     newest <repo>/build*/client/;
  4. the system's search path (ctypes.util.find_library("sparq")).
"""
import ctypes
import ctypes.util
import glob
import os

F16 = 1
BF16 = 2
BLEND = {"auto": 0, "on": 1, "off": 2}

c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64


class Geometry(ctypes.Structure):
    _fields_ = [("n_layers", c_u32), ("n_q_heads", c_u32), ("n_kv_heads", c_u32),
                ("head_dim", c_u32), ("dtype", ctypes.c_int)]


class AttnParams(ctypes.Structure):
    _fields_ = [("r", c_u32), ("k", c_u32), ("l", ctypes.c_int32), ("ratio", ctypes.c_float),
                ("blend", ctypes.c_int), ("dense", ctypes.c_bool)]


class SessionOpts(ctypes.Structure):
    _fields_ = [("geometry", Geometry), ("defaults", AttnParams), ("persistent", ctypes.c_bool),
                ("label", ctypes.c_char_p)]


class SessionInfo(ctypes.Structure):
    _fields_ = [("id", c_u64), ("geometry", Geometry), ("tokens", c_u64),
                ("persistent", ctypes.c_bool), ("parked", ctypes.c_bool), ("open", ctypes.c_bool),
                ("owner_uid", c_u32), ("owner_pid", c_u32), ("label", ctypes.c_char * 64),
                ("ram_records", c_u64), ("nvme_records", c_u64)]


class ConfigEntry(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char * 32), ("value", ctypes.c_char * 480)]


class AttendReq(ctypes.Structure):
    _fields_ = [("session", c_u64), ("q", ctypes.c_void_p), ("y", ctypes.c_void_p),
                ("alpha", ctypes.c_void_p), ("params", ctypes.POINTER(AttnParams))]


class OpStats(ctypes.Structure):
    _fields_ = [("op", ctypes.c_char * 16), ("count", c_u64), ("errors", c_u64),
                ("p50_ns", c_u64), ("p99_ns", c_u64)]


class Stats(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_char * 16), ("backend_detail", ctypes.c_char * 160),
                ("clients", c_u32), ("sessions", c_u32), ("n_ops", c_u32),
                ("ops", OpStats * 16),
                ("ram_capacity", c_u64), ("ram_used", c_u64), ("nvme_capacity", c_u64),
                ("nvme_used", c_u64), ("ram_records_read", c_u64), ("nvme_records_read", c_u64),
                ("nvme_bytes_read", c_u64), ("nvme_bytes_written", c_u64),
                ("demotions", c_u64), ("promotions", c_u64), ("parks", c_u64),
                ("resumes", c_u64), ("checksum_failures", c_u64),
                ("read_amplification", ctypes.c_double), ("uptime_ns", c_u64)]


_P = ctypes.c_void_p
_SIGNATURES = {
    # name: (restype, argtypes)
    "sparq_connect": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.POINTER(_P)]),
    "sparq_disconnect": (None, [_P]),
    "sparq_client_error": (ctypes.c_char_p, [_P]),
    "sparq_client_backend": (ctypes.c_char_p, [_P]),
    "sparq_client_server_version": (ctypes.c_char_p, [_P]),
    "sparq_session_create": (ctypes.c_int, [_P, ctypes.POINTER(SessionOpts),
                                            ctypes.POINTER(c_u64)]),
    "sparq_session_close": (ctypes.c_int, [_P, c_u64]),
    "sparq_session_park": (ctypes.c_int, [_P, c_u64]),
    "sparq_session_resume": (ctypes.c_int, [_P, c_u64, ctypes.c_bool]),
    "sparq_session_drop": (ctypes.c_int, [_P, c_u64]),
    "sparq_session_list": (ctypes.c_int, [_P, ctypes.POINTER(SessionInfo), c_u32,
                                          ctypes.POINTER(c_u32)]),
    "sparq_append": (ctypes.c_int, [_P, c_u64, c_u32, c_u32, _P, _P]),
    "sparq_attend": (ctypes.c_int, [_P, c_u32, ctypes.POINTER(AttendReq), c_u32,
                                    ctypes.POINTER(ctypes.c_int32)]),
    "sparq_select": (ctypes.c_int, [_P, c_u64, c_u32, _P, ctypes.POINTER(AttnParams), _P,
                                    c_u32, _P, _P]),
    "sparq_gather": (ctypes.c_int, [_P, c_u64, c_u32, c_u32, _P, c_u32, _P]),
    "sparq_ping": (ctypes.c_int, [_P]),
    "sparq_stats_get": (ctypes.c_int, [_P, ctypes.POINTER(Stats)]),
    "sparq_config_get": (ctypes.c_int, [_P, ctypes.POINTER(ConfigEntry), c_u32,
                                        ctypes.POINTER(c_u32)]),
}

_loaded = {}


def _repo_candidates():
    """libsparq.so in the build trees of the checkout this file sits in: build/ (the
    README's tree) first, then the others newest first."""
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    found = glob.glob(os.path.join(repo, "build*", "client", "libsparq.so"))
    main = os.path.join(repo, "build", "client", "libsparq.so")
    return sorted(found, key=lambda p: (p != main, -os.path.getmtime(p)))


def find(path=None):
    """The library path that would be loaded (see the module comment), or None."""
    if path:
        return path
    if os.environ.get("SPARQ_LIB"):
        return os.environ["SPARQ_LIB"]
    cands = _repo_candidates()
    if cands:
        return cands[0]
    return ctypes.util.find_library("sparq")


def load(path=None):
    """The loaded library (cached per path). Raises OSError naming what was tried."""
    where = find(path)
    if not where:
        raise OSError("libsparq.so not found: pass lib=PATH, set SPARQ_LIB, or build the "
                      "'sparq' target (cmake --build build --target sparq)")
    where = os.path.abspath(where) if os.sep in where else where
    lib = _loaded.get(where)
    if lib is None:
        try:
            lib = ctypes.CDLL(where)
        except OSError as e:
            raise OSError(f"cannot load libsparq from {where}: {e}") from e
        for name, (res, args) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        lib.sparq_path = where
        _loaded[where] = lib
    return lib
