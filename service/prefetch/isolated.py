"""A prefetcher that computes in a child process, so its work never holds the server's interpreter lock.

The engine's worker thread shares the lock with the event loop, and most of a prefetcher's work is pure Python
(the learned one's candidate features and shadow caches, about 20 us per read): in the thread it is taken from
the requests. In a child, the server's side of a call is pickling a batch of integer keys and unpickling the
proposals; waiting on the pipe releases the lock.

The child is a fresh interpreter (`python -m service.prefetch.isolated FD`), not a fork: CUDA cannot start in a
forked child, a fork would copy the server's heap, and multiprocessing's spawn would re-run the parent's main
script. It talks over a socket pair with plain pickles (not multiprocessing's, which would pass tensors as
shared memory; tensors cross on the CPU). Pickles are safe here: both ends are Foresight's own processes and
nobody else holds the socket pair. A child that dies is started afresh by the next call, with a new model; the
call that found it dead raises `PrefetcherProcessError`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.shadow import CacheModel

START_TIMEOUT_S = 120.0  # a cold child imports torch; on a loaded 2-core machine that can take most of a minute
CALL_TIMEOUT_S = 60.0  # a batch with a training round takes well under a second; longer means the child hangs


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class PrefetcherProcessError(RuntimeError):
    """The child process failed a call, died, or did not start."""


def _on_cpu(value: Any) -> Any:
    """A checkpoint's tensors moved to the CPU (the parent may have no GPU context), containers kept."""
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    to = getattr(value, "cpu", None)
    return to() if callable(to) else value


def _serve(conn: Connection) -> None:
    """The child's loop: build the prefetcher the first message names, then one reply per request, until the
    parent says close or goes away."""
    from service.prefetch import make_prefetcher

    try:
        name, lead, device, cache = pickle.loads(conn.recv_bytes())  # noqa: S301 - our parent, a private socket pair
        prefetcher = make_prefetcher(name, lead=lead, device=device, cache=cache)
    except Exception as err:  # reported to the parent, which raises it as the start's error
        conn.send_bytes(pickle.dumps(("error", f"{type(err).__name__}: {err}", 0.0)))
        return
    conn.send_bytes(pickle.dumps(("ok", None, 0.0)))
    while True:
        try:
            op, arg = pickle.loads(conn.recv_bytes())  # noqa: S301 - our parent, a private socket pair
        except EOFError:
            return
        started = time.process_time()
        try:
            if op == "access":
                result: Any = [[tuple(p) for p in props] for props in prefetcher.access_batch(arg)]
            elif op == "state_dict":
                result = _on_cpu(prefetcher.state_dict())  # type: ignore[attr-defined]
            elif op == "load_state_dict":
                result = prefetcher.load_state_dict(arg)  # type: ignore[attr-defined]
            elif op == "retrain":
                result = getattr(prefetcher, "retrain", lambda: None)()
            elif op == "close":
                return
            else:
                raise ValueError(f"unknown request {op!r}")
            reply = ("ok", result, time.process_time() - started)
        except Exception as err:  # the parent raises it; the child keeps serving
            reply = ("error", f"{type(err).__name__}: {err}", time.process_time() - started)
        try:
            conn.send_bytes(pickle.dumps(reply))
        except OSError:  # the parent went away
            return


class ProcessPrefetcher(Prefetcher):
    """`make_prefetcher(name, ...)` run in a spawned child; the same calls, thread-safe, blocking (use it off
    the event loop, as the engine does)."""

    name = "process"

    def __init__(self, inner: str, lead: int = 0, device: str = "cpu", cache: CacheModel | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        super().__init__(lead)
        self.inner = inner
        self._args = (inner, lead, device, cache)
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()  # one request on the pipe at a time
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # children started after one died
        self._child_cpu_s = 0.0
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def offloaded_cpu_s(self) -> float:
        return self._child_cpu_s

    def _start(self) -> None:
        parent, child = socket.socketpair()
        # The package's own root first, so the child imports this same code whatever the working directory.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))}
        with child:
            process = subprocess.Popen([sys.executable, "-m", __name__, str(child.fileno())], pass_fds=[child.fileno()],
                                       env=env, stdin=subprocess.DEVNULL)
        conn = Connection(parent.detach())
        self._conn, self._process = conn, process
        try:
            conn.send_bytes(pickle.dumps(self._args))
            self._reply(self._start_timeout_s)
        except (PrefetcherProcessError, OSError):
            self._discard()
            raise

    def _discard(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _reply(self, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        try:
            if not conn.poll(timeout_s):
                process.kill()
                raise EOFError(f"no answer within {timeout_s:.0f} s")
            status, result, cpu_s = pickle.loads(conn.recv_bytes())  # noqa: S301 - our child, a private socket pair
        except (EOFError, OSError) as err:
            self._discard()
            reason = str(err) or "connection closed"
            raise PrefetcherProcessError(f"the {self.inner} prefetcher process stopped (exit code "
                                         f"{process.returncode}, {reason}); the next call starts a new one") from err
        self._child_cpu_s += cpu_s
        if status == "error":
            raise PrefetcherProcessError(f"the {self.inner} prefetcher failed: {result}")
        return result

    def _call(self, op: str, arg: Any = None) -> Any:
        with self._lock:
            if self._conn is None:
                self.restarts += 1
                self._start()
            assert self._conn is not None
            with contextlib.suppress(OSError):  # a dead child: the reply's EOF says so
                self._conn.send_bytes(pickle.dumps((op, arg)))
            return self._reply()

    def access(self, key: int) -> Predictions:
        return self.access_batch([key])[0]

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        return [[Prediction(*p) for p in props] for props in self._call("access", list(keys))]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("state_dict")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)

    def retrain(self) -> None:
        self._call("retrain")

    def close(self) -> None:
        """Ask the child to exit and wait for it (killed after 5 s)."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send_bytes(pickle.dumps(("close", None)))
            self._discard()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
