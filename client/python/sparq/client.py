"""
client.py -- the Python face of libsparq: a Client (one connection, one shared region),
Session handles, SparQ parameters, and SparqError.

Every call goes straight to the C function of the same name; this layer only checks and
converts arrays so that a wrong dtype or shape is refused here with a clear message
instead of reaching the daemon as garbage. Tensors cross as numpy arrays:
  K/V   [n_tokens][n_kv_heads][head_dim] in the session dtype: float16 (f16 sessions) or
        uint16 bit patterns (either dtype; bf16 has no numpy type); torch float16/bfloat16
        tensors are accepted too and viewed, not converted.
  q, y  float32 [n_q_heads][head_dim] per sequence (post-RoPE q).
Errors raise SparqError with .code (the positive errno) and the daemon's message.
"""
import ctypes
import errno as _errno
import os
from dataclasses import dataclass, field

import numpy as np

from . import _lib

_DTYPES = {"f16": _lib.F16, "bf16": _lib.BF16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class SparqError(Exception):
    """A libsparq call failed: .code is the errno (positive), .message the daemon's words."""

    def __init__(self, code, message, op=""):
        self.code = abs(int(code))
        self.errno = self.code
        self.message = message
        self.op = op
        self.index = -1  # attend: the failing sequence of the batch, when one is named
        name = _errno.errorcode.get(self.code, str(self.code))
        text = message or os.strerror(self.code)
        super().__init__(f"{op + ': ' if op and not text.startswith(op) else ''}{text} [{name}]")


def _invalid(op, message):
    return SparqError(_errno.EINVAL, message, op)


@dataclass(frozen=True)
class Params:
    """SparQ hyper-parameters (libsparq's sparq_attn_params). Explicit r/k/l win over ratio.

    ratio is the compression c of a target transfer 1/c (8 for 1/8); dense=True asks for
    exact attention over every position.
    """
    r: int = 0
    k: int = 0
    l: int = -1
    ratio: float = 0.0
    blend: str = "auto"
    dense: bool = False

    @classmethod
    def parse(cls, text):
        """'dense', 'ratio=1/8' (or 'ratio=8'), 'r=16,k=128,l=32,blend=off' -> Params."""
        text = text.strip()
        if text == "dense":
            return cls(dense=True)
        kw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"'{part}': expected key=value")
            key = key.strip()
            val = val.strip()
            if key == "ratio":
                num, slash, den = val.partition("/")
                c = float(den) / float(num) if slash else float(val)
                kw["ratio"] = c
            elif key in ("r", "k", "l"):
                kw[key] = int(val)
            elif key == "blend":
                kw["blend"] = val
            else:
                raise ValueError(f"'{key}': unknown SparQ parameter (r, k, l, ratio, blend)")
        return cls(**kw)

    def describe(self):
        if self.dense:
            return "dense"
        parts = []
        if self.ratio:
            parts.append(f"ratio=1/{self.ratio:g}")
        parts += [f"{n}={getattr(self, n)}" for n in ("r", "k") if getattr(self, n)]
        if self.l >= 0:
            parts.append(f"l={self.l}")
        if self.blend != "auto":
            parts.append(f"blend={self.blend}")
        return ",".join(parts) or "defaults"

    def _c(self, op="params"):
        if self.blend not in _lib.BLEND:
            raise _invalid(op, f"blend '{self.blend}': expected auto, on or off")
        for name in ("r", "k"):
            v = getattr(self, name)
            if not 0 <= v < 2**32:
                raise _invalid(op, f"{name} = {v} is outside 0..2^32-1")
        if not -1 <= self.l < 2**31:
            raise _invalid(op, f"l = {self.l} is outside -1..2^31-1")
        return _lib.AttnParams(self.r, self.k, self.l, float(self.ratio),
                               _lib.BLEND[self.blend], bool(self.dense))


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    dtype: str = "f16"


@dataclass(frozen=True)
class SessionInfo:
    id: int
    geometry: Geometry
    tokens: int
    persistent: bool
    parked: bool
    open: bool
    owner_uid: int
    owner_pid: int
    label: str
    ram_records: int
    nvme_records: int


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _torch_to_numpy(x, op, what):
    """A CPU numpy view (or copy, for a GPU or non-contiguous tensor) of a torch tensor."""
    import torch  # only reached with a torch tensor in hand
    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    x = x.contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16), "bf16"
    plain = {torch.float16, torch.float32, getattr(torch, "uint16", torch.float16)}
    if x.dtype in plain:
        return x.numpy(), None
    raise _invalid(op, f"{what} is a torch {x.dtype} tensor; expected float16, bfloat16 "
                       "or float32 as the call requires")


def _kv_bits(x, g, op, what):
    """x as a C-contiguous uint16 array of the session dtype's bit patterns."""
    tag = None
    if _is_torch(x):
        x, tag = _torch_to_numpy(x, op, what)
    if not isinstance(x, np.ndarray):
        raise _invalid(op, f"{what} must be a numpy array or torch tensor, not "
                           f"{type(x).__name__}")
    if tag == "bf16" and g.dtype != "bf16":
        raise _invalid(op, f"{what} is bfloat16 but the session stores {g.dtype}")
    if x.dtype == np.float16:
        if g.dtype != "f16":
            raise _invalid(op, f"{what} is float16 but the session stores {g.dtype}: pass "
                               "bfloat16 bit patterns as uint16 (sparq.to_bf16_bits)")
        x = x.view(np.uint16)
    elif x.dtype != np.uint16:
        raise _invalid(op, f"{what} has dtype {x.dtype}; a {g.dtype} session takes "
                           + ("float16 or " if g.dtype == "f16" else "")
                           + "uint16 bit patterns (sparq.to_f16_bits/to_bf16_bits convert)")
    return np.ascontiguousarray(x)


def _f32(x, op, what, shape):
    if _is_torch(x):
        x, _ = _torch_to_numpy(x, op, what)
    if not isinstance(x, np.ndarray):
        raise _invalid(op, f"{what} must be a numpy array or torch tensor, not "
                           f"{type(x).__name__}")
    if x.dtype != np.float32:
        raise _invalid(op, f"{what} has dtype {x.dtype}; expected float32")
    if tuple(x.shape) != tuple(shape):
        raise _invalid(op, f"{what} has shape {tuple(x.shape)}; expected {tuple(shape)}")
    return np.ascontiguousarray(x)


def to_f16_bits(x):
    """float array -> uint16 float16 bit patterns (round to nearest even)."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).astype(np.float16)).view(np.uint16)


def to_bf16_bits(x):
    """float array -> uint16 bfloat16 bit patterns (round to nearest even; NaN stays NaN)."""
    u = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def from_bits(bits, dtype):
    """uint16 bit patterns of dtype ('f16' or 'bf16') -> float32."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if dtype == "f16":
        return bits.view(np.float16).astype(np.float32)
    if dtype == "bf16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"dtype '{dtype}': expected f16 or bf16")


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p) if a is not None else None


class Client:
    """One connection to sparqd (sparq_connect). Closes on close(), `with`, or collection."""

    def __init__(self, socket=None, name="python", shm_bytes=0, lib=None):
        self._lib = _lib.load(lib)
        self._c = None
        handle = ctypes.c_void_p()
        sock = os.fsencode(socket) if socket is not None else None
        ret = self._lib.sparq_connect(sock, name.encode(), int(shm_bytes), ctypes.byref(handle))
        if ret < 0:
            where = socket or os.environ.get("SPARQD_SOCKET") or "./sparqd-data/sparqd.sock"
            raise SparqError(ret, f"cannot connect to sparqd at {where}: {os.strerror(-ret)}",
                             "connect")
        self._c = handle
        self._geometry = {}

    # -- plumbing ------------------------------------------------------------------
    def _check(self, ret, op):
        if ret < 0:
            msg = self._lib.sparq_client_error(self._c) if self._c else b""
            raise SparqError(ret, (msg or b"").decode(errors="replace"), op)
        return ret

    def _handle(self, op):
        if not self._c:
            raise SparqError(_errno.EBADF, "the client is closed", op)
        return self._c

    def close(self):
        if self._c:
            self._lib.sparq_disconnect(self._c)
            self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def closed(self):
        return not self._c

    @property
    def backend(self):
        return self._lib.sparq_client_backend(self._handle("backend")).decode()

    @property
    def server_version(self):
        return self._lib.sparq_client_server_version(self._handle("version")).decode()

    @property
    def library(self):
        """The path of the libsparq.so this client runs on."""
        return self._lib.sparq_path

    # -- sessions ------------------------------------------------------------------
    def create_session(self, n_layers, n_q_heads, n_kv_heads, head_dim, dtype="f16",
                       defaults=None, persistent=False, label=None):
        """Creates a session; returns its Session handle. defaults: Params for attends
        that pass none (default: dense)."""
        op = "session_create"
        if dtype not in _DTYPES:
            raise _invalid(op, f"dtype '{dtype}': expected 'f16' or 'bf16'")
        for name, v in (("n_layers", n_layers), ("n_q_heads", n_q_heads),
                        ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if not isinstance(v, (int, np.integer)) or not 0 <= v < 2**32:
                raise _invalid(op, f"{name} = {v!r}: expected an integer in 0..2^32-1")
        defaults = defaults if defaults is not None else Params(dense=True)
        geom = _lib.Geometry(n_layers, n_q_heads, n_kv_heads, head_dim, _DTYPES[dtype])
        opts = _lib.SessionOpts(geom, defaults._c(op), bool(persistent),
                                label.encode() if label is not None else None)
        sid = ctypes.c_uint64()
        self._check(self._lib.sparq_session_create(self._handle(op), ctypes.byref(opts),
                                                   ctypes.byref(sid)), op)
        g = Geometry(int(n_layers), int(n_q_heads), int(n_kv_heads), int(head_dim), dtype)
        self._geometry[sid.value] = g
        return Session(self, sid.value, g)

    def session(self, sid):
        """A handle for an existing session of this uid (looked up in list()): ENOENT if none."""
        g = self._geometry_of(int(sid), "session")
        return Session(self, int(sid), g)

    def _geometry_of(self, sid, op):
        g = self._geometry.get(sid)
        if g is None:
            for info in self.list():
                if info.id == sid:
                    g = info.geometry
                    break
            if g is None:
                raise SparqError(_errno.ENOENT, f"no such session: {sid}", op)
            self._geometry[sid] = g
        return g

    def close_session(self, sid):
        self._check(self._lib.sparq_session_close(self._handle("session_close"), int(sid)),
                    "session_close")
        self._geometry.pop(int(sid), None)

    def park(self, sid):
        self._check(self._lib.sparq_session_park(self._handle("park"), int(sid)), "park")

    def resume(self, sid, to_ram=False):
        self._check(self._lib.sparq_session_resume(self._handle("resume"), int(sid),
                                                   bool(to_ram)), "resume")
        return self.session(sid)

    def drop(self, sid):
        self._check(self._lib.sparq_session_drop(self._handle("drop"), int(sid)), "drop")

    def list(self):
        """SessionInfo for every session of this uid (open or parked)."""
        op = "session_list"
        h = self._handle(op)
        count = ctypes.c_uint32()
        self._check(self._lib.sparq_session_list(h, None, 0, ctypes.byref(count)), op)
        while True:
            cap = max(count.value, 1)
            arr = (_lib.SessionInfo * cap)()
            self._check(self._lib.sparq_session_list(h, arr, cap, ctypes.byref(count)), op)
            if count.value <= cap:  # sessions may appear between the two calls
                break
        out = []
        for s in arr[:count.value]:
            g = s.geometry
            out.append(SessionInfo(s.id, Geometry(g.n_layers, g.n_q_heads, g.n_kv_heads,
                                                  g.head_dim, _DTYPE_NAMES.get(g.dtype, "?")),
                                   s.tokens, s.persistent, s.parked, s.open, s.owner_uid,
                                   s.owner_pid, s.label.decode(errors="replace"),
                                   s.ram_records, s.nvme_records))
        return out

    # -- data ----------------------------------------------------------------------
    def append(self, sid, layer, k, v):
        """Appends K/V [n_tokens][n_kv_heads][head_dim] (or one token [n_kv_heads][head_dim])
        to every KV head of one layer."""
        op = "append"
        g = self._geometry_of(int(sid), op)
        kb = _kv_bits(k, g, op, "k")
        vb = _kv_bits(v, g, op, "v")
        if kb.ndim == 2:
            kb = kb[None]
        if vb.ndim == 2:
            vb = vb[None]
        want = (g.n_kv_heads, g.head_dim)
        for what, a in (("k", kb), ("v", vb)):
            if a.ndim != 3 or a.shape[1:] != want:
                raise _invalid(op, f"{what} has shape {a.shape}; expected (n_tokens, "
                                   f"{g.n_kv_heads}, {g.head_dim}) for this session")
        if kb.shape != vb.shape:
            raise _invalid(op, f"k {kb.shape} and v {vb.shape} differ in shape")
        if kb.shape[0] == 0:
            raise _invalid(op, "no tokens to append")
        self._check(self._lib.sparq_append(self._handle(op), int(sid), int(layer),
                                           kb.shape[0], _ptr(kb), _ptr(vb)), op)

    def attend(self, layer, sessions, q, params=None, alpha=False):
        """Attention of one layer for a batch of sequences in one request.

        sessions: ids (or Session handles), n of them; q: float32 [n][n_q_heads][head_dim]
        (a list of per-sequence arrays is fine when geometries differ); params: None (each
        session's defaults), one Params, or a list of n. Returns y (same layout as q), and
        alpha [n][n_q_heads] when alpha=True. On failure, SparqError.index names the
        failing sequence (-1 if none).
        """
        op = "attend"
        ids = [int(getattr(s, "id", s)) for s in sessions]
        n = len(ids)
        if n == 0:
            raise _invalid(op, "no sequences")
        if isinstance(params, (list, tuple)):
            if len(params) != n:
                raise _invalid(op, f"{len(params)} params for {n} sequences")
            plist = list(params)
        else:
            plist = [params] * n
        if not isinstance(q, (list, tuple)):
            if _is_torch(q):
                q, _ = _torch_to_numpy(q, op, "q")
            if not isinstance(q, np.ndarray) or q.ndim != 3 or q.shape[0] != n:
                raise _invalid(op, f"q must be float32 [{n}][n_q_heads][head_dim], got "
                                   f"{getattr(q, 'shape', type(q).__name__)}")
            q = list(q)
        if len(q) != n:
            raise _invalid(op, f"{len(q)} queries for {n} sequences")
        reqs = (_lib.AttendReq * n)()
        keep = []  # arrays the C call reads or writes: alive until it returns
        ys, alphas = [], []
        for i, (sid, qi, pi) in enumerate(zip(ids, q, plist)):
            try:
                g = self._geometry_of(sid, op)
                qa = _f32(qi, op, f"q[{i}]", (g.n_q_heads, g.head_dim))
            except SparqError as e:
                e.index = i
                raise
            y = np.empty((g.n_q_heads, g.head_dim), np.float32)
            al = np.empty(g.n_q_heads, np.float32) if alpha else None
            cp = ctypes.pointer(pi._c(op)) if pi is not None else None
            keep += [qa, cp]
            reqs[i] = _lib.AttendReq(sid, _ptr(qa), _ptr(y), _ptr(al), cp)
            ys.append(y)
            alphas.append(al)
        bad = ctypes.c_int32(-1)
        ret = self._lib.sparq_attend(self._handle(op), int(layer), reqs, n, ctypes.byref(bad))
        try:
            self._check(ret, op)
        except SparqError as e:
            e.index = bad.value
            raise
        same = len({y.shape for y in ys}) == 1
        y_out = np.stack(ys) if same else ys
        if alpha:
            return y_out, (np.stack(alphas) if same else alphas)
        return y_out

    def select(self, sid, layer, q, params=None, sel_cap=None):
        """SparQ selection only. Returns (positions, alpha): positions is a list of
        n_kv_heads ascending uint32 arrays, alpha float32 [n_q_heads].
        sel_cap defaults to the session's token count (every position could be selected)."""
        op = "select"
        g = self._geometry_of(int(sid), op)
        qa = _f32(q, op, "q", (g.n_q_heads, g.head_dim))
        if sel_cap is None:
            sel_cap = max([i.tokens for i in self.list() if i.id == int(sid)] + [1])
        if sel_cap <= 0:
            raise _invalid(op, f"sel_cap = {sel_cap}: must be positive")
        sel = np.empty((g.n_kv_heads, sel_cap), np.uint32)
        n_sel = np.empty(g.n_kv_heads, np.uint32)
        al = np.empty(g.n_q_heads, np.float32)
        cp = ctypes.pointer(params._c(op)) if params is not None else None
        self._check(self._lib.sparq_select(self._handle(op), int(sid), int(layer), _ptr(qa),
                                           cp, _ptr(sel), int(sel_cap), _ptr(n_sel),
                                           _ptr(al)), op)
        return [sel[h, :n_sel[h]].copy() for h in range(g.n_kv_heads)], al

    def gather(self, sid, layer, kv_head, positions):
        """Records of one stream: (k, v), each uint16 bit patterns [n][head_dim] in the
        session dtype (sparq.from_bits converts)."""
        op = "gather"
        g = self._geometry_of(int(sid), op)
        pos = np.asarray(positions)
        if pos.ndim != 1 or pos.size == 0:
            raise _invalid(op, f"positions must be a non-empty 1-D array, got shape {pos.shape}")
        if not np.issubdtype(pos.dtype, np.integer) or pos.min() < 0 or pos.max() >= 2**32:
            raise _invalid(op, "positions must be integers in 0..2^32-1")
        pos = np.ascontiguousarray(pos, dtype=np.uint32)
        out = np.empty((pos.size, 2 * g.head_dim), np.uint16)
        self._check(self._lib.sparq_gather(self._handle(op), int(sid), int(layer),
                                           int(kv_head), _ptr(pos), pos.size, _ptr(out)), op)
        return out[:, :g.head_dim].copy(), out[:, g.head_dim:].copy()

    def ping(self):
        self._check(self._lib.sparq_ping(self._handle("ping")), "ping")

    def stats(self):
        """The daemon's counters as a dict; 'ops' maps op name -> count/errors/p50/p99."""
        st = _lib.Stats()
        self._check(self._lib.sparq_stats_get(self._handle("stats"), ctypes.byref(st)), "stats")
        out = {}
        for name, _ in _lib.Stats._fields_:
            if name in ("ops", "n_ops"):
                continue
            val = getattr(st, name)
            out[name] = val.decode(errors="replace") if isinstance(val, bytes) else val
        out["ops"] = {o.op.decode(): {"count": o.count, "errors": o.errors,
                                      "p50_ns": o.p50_ns, "p99_ns": o.p99_ns}
                      for o in st.ops[:st.n_ops]}
        return out

    def config(self):
        """The daemon's effective settings as {long option name: value}."""
        op = "config"
        h = self._handle(op)
        count = ctypes.c_uint32()
        self._check(self._lib.sparq_config_get(h, None, 0, ctypes.byref(count)), op)
        cap = max(count.value, 1)
        arr = (_lib.ConfigEntry * cap)()
        self._check(self._lib.sparq_config_get(h, arr, cap, ctypes.byref(count)), op)
        return {e.key.decode(): e.value.decode(errors="replace")
                for e in arr[:min(cap, count.value)]}


@dataclass
class Session:
    """A session handle: its id, geometry and the calls that name one session."""
    client: Client
    id: int
    geometry: Geometry
    closed: bool = field(default=False)

    def append(self, layer, k, v):
        self.client.append(self.id, layer, k, v)

    def attend(self, layer, q, params=None, alpha=False):
        """Attention for this one sequence: q float32 [n_q_heads][head_dim] -> y (, alpha)."""
        out = self.client.attend(layer, [self.id], [q], params, alpha)
        if alpha:
            return out[0][0], out[1][0]
        return out[0]

    def select(self, layer, q, params=None, sel_cap=None):
        return self.client.select(self.id, layer, q, params, sel_cap)

    def gather(self, layer, kv_head, positions):
        return self.client.gather(self.id, layer, kv_head, positions)

    def info(self):
        for i in self.client.list():
            if i.id == self.id:
                return i
        raise SparqError(_errno.ENOENT, f"no such session: {self.id}", "session_info")

    def park(self):
        self.client.park(self.id)

    def drop(self):
        self.client.drop(self.id)

    def close(self):
        if not self.closed:
            self.client.close_session(self.id)
            self.closed = True
