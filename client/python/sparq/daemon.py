"""
daemon.py -- start a private sparqd and stop it again, for tests and tools that need a
real daemon of their own (the Python twin of tests/daemon_helpers.h).

A Daemon gets a private directory (under $SPARQ_TEST_DIR, default the system temp dir)
holding its data dir, socket, ready file and log; start() waits for the ready file with a
bounded timeout (sparqd writes it only once the socket accepts), stop() sends SIGTERM,
waits, then SIGKILLs, reaps, and removes the directory. A daemon that exits before it is
ready raises DaemonError with its log; when the log says the directory refused O_DIRECT
or io_uring, DaemonError.unsupported is True so a test can skip instead of fail.

Where sparqd comes from: the sparqd= argument, $SPARQD, or a build tree of the
checkout this package sits in (<repo>/build/daemon/sparqd, else the newest
<repo>/build*/daemon/sparqd).
"""
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time


class DaemonError(RuntimeError):
    def __init__(self, message, log="", unsupported=False):
        super().__init__(message + (f"\n---- sparqd log ----\n{log}---- end of log ----"
                                    if log else ""))
        self.log = log
        self.unsupported = unsupported


def find_sparqd(path=None):
    if path:
        return path
    if os.environ.get("SPARQD"):
        return os.environ["SPARQD"]
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    # build/ is the README's tree; other trees may be sanitizer or debug builds
    main = os.path.join(repo, "build", "daemon", "sparqd")
    if os.access(main, os.X_OK):
        return main
    found = [p for p in glob.glob(os.path.join(repo, "build*", "daemon", "sparqd"))
             if os.access(p, os.X_OK)]
    if not found:
        raise DaemonError("sparqd not found: pass sparqd=PATH, set $SPARQD, or build the "
                          "'sparqd' target")
    return max(found, key=os.path.getmtime)


class Daemon:
    """A private sparqd. Use as a context manager, or start()/stop()."""

    READY_TIMEOUT_S = 60
    STOP_TIMEOUT_S = 30

    def __init__(self, sparqd=None, args=(), ram_bytes="512M", nvme_bytes="2G", threads=0,
                 socket_mode=None):
        self.binary = find_sparqd(sparqd)
        self.extra = list(args)
        self.ram_bytes, self.nvme_bytes, self.threads = ram_bytes, nvme_bytes, threads
        self.socket_mode = socket_mode
        self.proc = None
        self.dir = None

    def start(self):
        base = os.environ.get("SPARQ_TEST_DIR") or tempfile.gettempdir()
        # short names: the socket path must fit sockaddr_un's 108 bytes
        self.dir = tempfile.mkdtemp(prefix="sqpy-", dir=base)
        self.data_dir = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "s.sock")
        self.ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "sparqd.log")
        cmd = [self.binary, "--data-dir", self.data_dir, "--socket", self.socket,
               "--ready-file", self.ready, "--ram-bytes", str(self.ram_bytes),
               "--nvme-bytes", str(self.nvme_bytes), "--threads", str(self.threads)]
        if self.socket_mode:
            cmd += ["--socket-mode", self.socket_mode]
        cmd += self.extra
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        end = time.monotonic() + self.READY_TIMEOUT_S
        while not os.path.exists(self.ready):
            rc = self.proc.poll()
            if rc is not None:
                log = self.log()
                self.proc = None
                self._remove_dir()
                raise DaemonError(f"sparqd exited with {rc} before it was ready", log,
                                  "O_DIRECT" in log or "io_uring" in log)
            if time.monotonic() > end:
                log = self.log()
                self.stop()
                raise DaemonError(f"sparqd not ready after {self.READY_TIMEOUT_S} s", log)
            time.sleep(0.01)
        return self

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns the exit code (None if it
        was not running). The directory is removed."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self.STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
            self.proc = None
        self._remove_dir()
        return rc

    def _remove_dir(self):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __del__(self):
        try:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
            self._remove_dir()
        except Exception:
            pass
