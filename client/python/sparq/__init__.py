"""
sparq -- Python binding of libsparq, the client library of sparqd (the KV-cache offloading
daemon that answers SparQ attention). Pure Python over ctypes: the C library is the one
engines link against, so Python sees exactly what C callers see.

    import sparq
    with sparq.Client("/path/to/sparqd.sock") as c:
        s = c.create_session(n_layers=30, n_q_heads=9, n_kv_heads=3, head_dim=64)
        s.append(layer, k, v)                         # float16 [n_tokens][3][64]
        y = s.attend(layer, q, sparq.Params(ratio=8)) # q float32 [9][64]

sparq.daemon.Daemon starts a private sparqd (tests, tools/eval); sparq.hf registers the
transformers attention integration (needs torch and transformers).
"""
from .client import (Client, Geometry, Params, Session, SessionInfo, SparqError, from_bits,
                     to_bf16_bits, to_f16_bits)
from ._lib import find as find_library

__all__ = ["Client", "Geometry", "Params", "Session", "SessionInfo", "SparqError",
           "from_bits", "to_bf16_bits", "to_f16_bits", "find_library"]
__version__ = "0.1.0"
