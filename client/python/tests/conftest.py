"""
Fixtures: one real sparqd per test module, started on a private directory and socket
and stopped (SIGTERM, checked to exit 0) when the module's tests are done; a fresh
client per test. $SPARQ_TEST_SOCKET points the suite at a daemon that already runs
instead (tests that must start their own then skip).
"""
import os

import pytest

import sparq
from sparq.daemon import Daemon, DaemonError


def start_daemon(**kw):
    try:
        return Daemon(**kw).start()
    except DaemonError as e:
        if e.unsupported:
            pytest.skip(f"the test directory refuses O_DIRECT or io_uring: {e}")
        raise


@pytest.fixture(scope="module")
def daemon():
    if os.environ.get("SPARQ_TEST_SOCKET"):
        yield None
        return
    d = start_daemon()
    yield d
    rc = d.stop()
    assert rc == 0, f"sparqd exited with {rc} after SIGTERM"


@pytest.fixture
def socket_path(daemon):
    return daemon.socket if daemon else os.environ["SPARQ_TEST_SOCKET"]


@pytest.fixture
def client(socket_path):
    c = sparq.Client(socket_path, name="pytest")
    yield c
    c.close()
