"""
The binding against a real sparqd: round trips of every call, attention equal to a numpy
reference (dense: exact softmax attention; SparQ: SPARQ.md steps 1-7 in float64), and
every refusal as a SparqError with the right errno and a message that says what is wrong.
"""
import errno
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import sparq
from sparq import Params, SparqError

RNG = np.random.default_rng(7)


def make_kv(n, hk, d, scale=1.0):
    k = (RNG.standard_normal((n, hk, d)) * scale).astype(np.float16)
    v = RNG.standard_normal((n, hk, d)).astype(np.float16)
    return k, v


def dense_ref(q, K, V):
    """Exact attention, float64: q [hq][d], K/V [S][hk][d] -> y [hq][d]."""
    hq, d = q.shape
    g = hq // K.shape[1]
    y = np.empty((hq, d))
    for h in range(hq):
        Kh = K[:, h // g].astype(np.float64)
        s = Kh @ q[h].astype(np.float64) / math.sqrt(d)
        w = np.exp(s - s.max())
        y[h] = (w / w.sum()) @ V[:, h // g].astype(np.float64)
    return y


def sparq_ref(q, K, V, r, k, l):
    """SPARQ.md steps 1-7 with blend off (GQA), float64. Returns (y, selections, scores)
    where scores are the group-summed approximate logits used for the choice."""
    hq, d = q.shape
    S, hk, _ = K.shape
    g = hq // hk
    q = q.astype(np.float64)
    y = np.empty((hq, d))
    sels, zsums = [], []
    for j in range(hk):
        qs = q[j * g:(j + 1) * g]
        Kj = K[:, j].astype(np.float64)
        Vj = V[:, j].astype(np.float64)
        i1 = np.argsort(-np.abs(qs).sum(0), kind="stable")[:r]
        z = np.zeros(S)
        for qh in qs:
            tau = math.sqrt(d * np.abs(qh[i1]).sum() / np.abs(qh).sum())
            z += Kj[:, i1] @ (qh[i1] / tau)
        if S <= k:
            sel = np.arange(S)
        else:
            local = np.arange(S - l - 1, S)
            rest = np.arange(S - l - 1)
            order = rest[np.lexsort((rest, -z[rest]))]  # ties: lower position first
            sel = np.sort(np.concatenate([order[:k - l - 1], local]))
        for t, qh in enumerate(qs):
            s = Kj[sel] @ qh / math.sqrt(d)
            w = np.exp(s - s.max())
            y[j * g + t] = (w / w.sum()) @ Vj[sel]
        sels.append(sel)
        zsums.append(z)
    return y, sels, zsums


# -- connection ---------------------------------------------------------------------

def test_connect_ping_backend(client):
    client.ping()
    assert client.backend in ("cpu", "cuda")
    assert client.server_version
    assert os.path.exists(client.library) or "libsparq" in client.library


def test_connect_without_daemon_says_so(tmp_path):
    with pytest.raises(SparqError) as e:
        sparq.Client(str(tmp_path / "nobody.sock"))
    assert e.value.code in (errno.ENOENT, errno.ECONNREFUSED)
    assert "nobody.sock" in str(e.value)


def test_closed_client_refuses(socket_path):
    c = sparq.Client(socket_path)
    c.close()
    assert c.closed
    with pytest.raises(SparqError) as e:
        c.ping()
    assert e.value.code == errno.EBADF


def test_library_path_given_at_connect(socket_path):
    path = sparq.find_library()
    with sparq.Client(socket_path, lib=path) as c:
        c.ping()
    with pytest.raises(OSError, match="cannot load libsparq"):
        sparq.Client(socket_path, lib="/nonexistent/libsparq.so")


# -- sessions -----------------------------------------------------------------------

def test_session_round_trip(client):
    s = client.create_session(3, 4, 2, 64, label="round-trip")
    info = s.info()
    assert info.geometry == sparq.Geometry(3, 4, 2, 64, "f16")
    assert (info.tokens, info.label, info.open, info.parked) == (0, "round-trip", True, False)
    assert info.owner_uid == os.getuid()
    k, v = make_kv(37, 2, 64)
    for layer in range(3):
        s.append(layer, k, v)
    s.append(0, k[0], v[0])           # one decode token, [n_kv_heads][head_dim]
    gk, gv = s.gather(0, 1, np.arange(38))
    assert np.array_equal(gk[:37], k[:, 1].view(np.uint16))
    assert np.array_equal(gv[:37], v[:, 1].view(np.uint16))
    assert np.array_equal(gk[37], k[0, 1].view(np.uint16))
    assert s.info().tokens in (37, 38)  # a session's count: per its streams, as listed
    assert client.session(s.id).geometry == s.geometry
    s.close()
    assert all(i.id != s.id for i in client.list())
    with pytest.raises(SparqError) as e:
        client.close_session(s.id)
    assert e.value.code == errno.ENOENT


def test_bf16_round_trip(client):
    s = client.create_session(1, 2, 1, 16, dtype="bf16")
    x = RNG.standard_normal((5, 1, 16)).astype(np.float32)
    bits = sparq.to_bf16_bits(x)
    s.append(0, bits, bits)
    gk, gv = s.gather(0, 0, [4, 0, 2])
    assert np.array_equal(gk, bits[[4, 0, 2], 0])
    back = sparq.from_bits(gk, "bf16")
    assert np.allclose(back, x[[4, 0, 2], 0], rtol=2**-8)
    with pytest.raises(SparqError, match="float16 but the session stores bf16"):
        s.append(0, x.astype(np.float16), x.astype(np.float16))
    s.close()


def test_torch_tensors_accepted(client):
    torch = pytest.importorskip("torch")
    s = client.create_session(1, 2, 1, 16, dtype="bf16")
    kt = torch.randn(3, 1, 16).to(torch.bfloat16)
    s.append(0, kt, kt)
    gk, _ = s.gather(0, 0, [0, 1, 2])
    assert torch.equal(torch.from_numpy(sparq.from_bits(gk, "bf16")), kt[:, 0].float())
    y = s.attend(0, torch.randn(2, 16), Params(dense=True))
    assert y.shape == (2, 16) and np.isfinite(y).all()
    with pytest.raises(SparqError, match="float16 but the session stores bf16"):
        s.append(0, kt.half(), kt.half())
    s.close()


def test_park_drop_resume(socket_path):
    with sparq.Client(socket_path, name="parker") as c:
        s = c.create_session(2, 2, 1, 32, persistent=True, label="parked")
        k, v = make_kv(20, 1, 32)
        s.append(0, k, v)
        s.append(1, k, v)
        q = RNG.standard_normal((2, 32)).astype(np.float32)
        before = s.attend(1, q, Params(dense=True))
        s.park()
        assert s.info().parked
        with pytest.raises(SparqError) as e:
            s.park()
        assert e.value.code == errno.EEXIST
        s.drop()
        assert not s.info().parked
        s.park()
        sid = s.id
    # the client is gone: its persistent session stays, parked and closed
    with sparq.Client(socket_path, name="resumer") as c:
        info = [i for i in c.list() if i.id == sid][0]
        assert info.parked and not info.open
        s = c.resume(sid, to_ram=True)
        after = s.attend(1, q, Params(dense=True))
        assert np.array_equal(before, after)
        s.close()
        assert all(i.id != sid for i in c.list())
        with pytest.raises(SparqError) as e:
            c.resume(sid)
        assert e.value.code == errno.ENOENT


# -- attention ----------------------------------------------------------------------

def test_dense_attend_equals_numpy(client):
    hq, hk, d, S = 8, 2, 64, 300
    s = client.create_session(2, hq, hk, d)
    k, v = make_kv(S, hk, d)
    s.append(1, k[:250], v[:250])      # prefill, then decode tokens one by one
    for t in range(250, S):
        s.append(1, k[t], v[t])
    q = RNG.standard_normal((hq, d)).astype(np.float32)
    y = s.attend(1, q, Params(dense=True))
    np.testing.assert_allclose(y, dense_ref(q, k, v), rtol=1e-4, atol=1e-5)
    # k >= S is exact dense attention too (SPARQ.md step 4), whatever r is
    y2, alpha = s.attend(1, q, Params(r=8, k=S, l=0), alpha=True)
    np.testing.assert_allclose(y2, dense_ref(q, k, v), rtol=1e-4, atol=1e-5)
    assert np.all(alpha > 0.999)
    s.close()


def test_batched_attend_two_sessions(client):
    hq, hk, d = 4, 4, 32
    a = client.create_session(1, hq, hk, d)
    b = client.create_session(1, hq, hk, d)
    ka, va = make_kv(40, hk, d)
    kb, vb = make_kv(90, hk, d)
    a.append(0, ka, va)
    b.append(0, kb, vb)
    q = RNG.standard_normal((2, hq, d)).astype(np.float32)
    y = client.attend(0, [a, b], q, Params(dense=True))
    assert y.shape == (2, hq, d)
    np.testing.assert_allclose(y[0], dense_ref(q[0], ka, va), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y[1], dense_ref(q[1], kb, vb), rtol=1e-4, atol=1e-5)
    # a bad sequence in the batch is named by index
    with pytest.raises(SparqError) as e:
        client.attend(0, [a.id, 1 << 62], q)
    assert e.value.code == errno.ENOENT and e.value.index == 1
    a.close()
    b.close()


def test_sparq_attend_select_gather_match_reference(client):
    hq, hk, d, S = 6, 2, 64, 700
    r, k_rows, l = 16, 96, 24
    s = client.create_session(1, hq, hk, d)
    K, V = make_kv(S, hk, d, scale=2.0)
    s.append(0, K, V)
    q = (RNG.standard_normal((hq, d)) * 2).astype(np.float32)
    p = Params(r=r, k=k_rows, l=l, blend="off")
    y_ref, sel_ref, z_ref = sparq_ref(q, K, V, r, k_rows, l)
    sel, alpha = s.select(0, q, p, sel_cap=k_rows)
    for j in range(hk):
        assert len(sel[j]) == k_rows and np.all(np.diff(sel[j].astype(np.int64)) > 0)
        assert set(range(S - l - 1, S)) <= set(sel[j].tolist())   # the local window
        diff = set(sel[j].tolist()) ^ set(sel_ref[j].tolist())
        # fp32 vs float64 may swap only near-ties at the boundary of the top-k
        if diff:
            z = z_ref[j]
            edge = np.sort(z[np.array(sel_ref[j][:-(l + 1)])])[0]
            assert all(abs(z[i] - edge) < 1e-3 * max(1.0, abs(edge)) for i in diff), diff
    assert np.all((alpha > 0) & (alpha <= 1.0 + 1e-6))
    # gather the selected rows and attend over them here: equals the daemon's SparQ
    y = s.attend(0, q, p)
    g = hq // hk
    for j in range(hk):
        gk, gv = s.gather(0, j, sel[j])
        Kj = sparq.from_bits(gk, "f16").astype(np.float64)
        Vj = sparq.from_bits(gv, "f16").astype(np.float64)
        for t in range(g):
            sc = Kj @ q[j * g + t].astype(np.float64) / math.sqrt(d)
            w = np.exp(sc - sc.max())
            np.testing.assert_allclose(y[j * g + t], (w / w.sum()) @ Vj, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-3, atol=1e-4)
    s.close()


def test_ratio_params_and_parse():
    assert Params.parse("ratio=1/8") == Params(ratio=8.0)
    assert Params.parse("ratio=4") == Params(ratio=4.0)
    assert Params.parse("dense") == Params(dense=True)
    assert Params.parse("r=16, k=128, l=32, blend=off") == Params(r=16, k=128, l=32,
                                                                  blend="off")
    assert Params.parse("ratio=1/8").describe() == "ratio=1/8"
    with pytest.raises(ValueError, match="unknown SparQ parameter"):
        Params.parse("q=3")
    with pytest.raises(ValueError, match="expected key=value"):
        Params.parse("ratio")


# -- refusals -----------------------------------------------------------------------

@pytest.mark.parametrize("geom, what", [
    ((2, 3, 2, 64), "n_q_heads"),        # not a multiple of n_kv_heads
    ((2, 4, 2, 60), "head_dim"),         # not a multiple of 8
    ((2, 4, 2, 2048), "head_dim"),       # above 1024
    ((0, 4, 2, 64), "geometry"),         # no layers
])
def test_bad_geometry(client, geom, what):
    before = len(client.list())
    with pytest.raises(SparqError) as e:
        client.create_session(*geom)
    assert e.value.code == errno.EINVAL
    assert e.value.message, "the error carries the library's message"
    assert len(client.list()) == before, "nothing was created"


def test_bad_dtype_and_label(client):
    with pytest.raises(SparqError, match="dtype 'f32'"):
        client.create_session(1, 2, 1, 16, dtype="f32")
    with pytest.raises(SparqError, match="63 bytes") as e:
        client.create_session(1, 2, 1, 16, label="x" * 64)
    assert e.value.code == errno.EINVAL


def test_no_such_session(client):
    q = np.zeros((2, 16), np.float32)
    k = np.zeros((1, 1, 16), np.float16)
    for call in (lambda: client.append(424242, 0, k, k),
                 lambda: client.attend(0, [424242], q[None]),
                 lambda: client.park(424242),
                 lambda: client.drop(424242),
                 lambda: client.resume(424242),
                 lambda: client.session(424242)):
        with pytest.raises(SparqError) as e:
            call()
        assert e.value.code == errno.ENOENT


def test_wrong_dtype_and_shape_refused_and_nothing_appended(client):
    s = client.create_session(2, 4, 2, 32)
    k, v = make_kv(10, 2, 32)
    s.append(0, k, v)
    bad = [
        ((k.astype(np.float32), v), "dtype float32"),
        ((k[:, :1], v[:, :1]), "expected \\(n_tokens, 2, 32\\)"),
        ((k, v[:5]), "differ in shape"),
        ((k.reshape(10, 64), v.reshape(10, 64)), "expected \\(n_tokens, 2, 32\\)"),
        (([1, 2], [1, 2]), "numpy array or torch tensor"),
    ]
    for (kk, vv), msg in bad:
        with pytest.raises(SparqError, match=msg) as e:
            s.append(0, kk, vv)
        assert e.value.code == errno.EINVAL
    nan = k.copy()
    nan[3, 1, 7] = np.nan
    with pytest.raises(SparqError) as e:
        s.append(0, nan, v)
    assert e.value.code == errno.EINVAL and "NaN" in e.value.message
    with pytest.raises(SparqError) as e:
        s.append(5, k, v)
    assert e.value.code == errno.EINVAL and "layer" in e.value.message
    gk, _ = s.gather(0, 0, np.arange(10))
    assert np.array_equal(gk, k[:, 0].view(np.uint16))
    with pytest.raises(SparqError) as e:
        s.gather(0, 0, [10])             # one past the end: nothing was appended
    assert e.value.code == errno.ERANGE and "past the end" in e.value.message
    # q: dtype and shape
    with pytest.raises(SparqError, match="expected float32"):
        s.attend(0, np.zeros((4, 32), np.float64))
    with pytest.raises(SparqError, match="expected \\(4, 32\\)"):
        s.attend(0, np.zeros((2, 32), np.float32))
    with pytest.raises(SparqError, match="blend 'maybe'"):
        s.attend(0, np.zeros((4, 32), np.float32), Params(blend="maybe"))
    with pytest.raises(SparqError) as e:
        s.attend(0, np.zeros((4, 32), np.float32), Params(ratio=0.5))
    assert e.value.code == errno.EINVAL and "ratio" in e.value.message
    with pytest.raises(SparqError) as e:
        s.gather(0, 2, [0])               # KV head 2 of 2
    assert e.value.code == errno.EINVAL
    s.close()


FOREIGN = r"""
import errno, sys, os
import numpy as np
sys.path.insert(0, sys.argv[3])
import sparq
os.setgroups([]); os.setgid(65534); os.setuid(65534)
c = sparq.Client(sys.argv[1])
sid = int(sys.argv[2])
assert all(i.id != sid for i in c.list()), "a foreign session is listed"
for call in (lambda: c.session(sid), lambda: c.close_session(sid), lambda: c.park(sid),
             lambda: c.drop(sid),
             lambda: c.append(sid, 0, np.zeros((1, 1, 16), np.float16),
                              np.zeros((1, 1, 16), np.float16))):
    try:
        call()
    except sparq.SparqError as e:
        assert e.code == errno.ENOENT, e
    else:
        raise SystemExit("a foreign session was touched")
print("foreign: all refused with ENOENT")
"""


def test_foreign_session_is_invisible():
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    if os.environ.get("SPARQ_TEST_SOCKET"):
        pytest.skip("needs a daemon of its own (--socket-mode 0666)")
    from conftest import start_daemon
    d = start_daemon(socket_mode="0666")
    try:
        os.chmod(d.dir, 0o711)            # the other uid reaches the socket, nothing else
        with sparq.Client(d.socket) as c:
            s = c.create_session(1, 2, 1, 16)
            s.append(0, np.ones((2, 1, 16), np.float16), np.ones((2, 1, 16), np.float16))
            pkg = os.path.dirname(os.path.dirname(os.path.abspath(sparq.__file__)))
            env = dict(os.environ, SPARQ_LIB=c.library)
            r = subprocess.run([sys.executable, "-c", FOREIGN, d.socket, str(s.id), pkg],
                               capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            assert s.info().tokens == 2, "the foreign client changed nothing"
    finally:
        assert d.stop() == 0


# -- stats and config ---------------------------------------------------------------

def test_stats_and_config(client):
    s = client.create_session(1, 2, 1, 16)
    s.append(0, np.ones((3, 1, 16), np.float16), np.ones((3, 1, 16), np.float16))
    s.attend(0, np.ones((2, 16), np.float32))
    client.ping()
    st = client.stats()
    assert st["backend"] in ("cpu", "cuda")
    assert st["clients"] >= 1 and st["sessions"] >= 1
    assert st["ops"]["append"]["count"] >= 1
    assert st["ops"]["attend"]["count"] >= 1
    assert st["ram_capacity"] > 0 and st["uptime_ns"] > 0
    cfg = client.config()
    assert "ram-bytes" in cfg and "socket" in cfg
    s.close()
