"""Prefetchers that compute in a child process, so their work never holds the server's interpreter lock.

The engine's worker thread shares the lock with the event loop, and most of a prefetcher's work is pure Python
(the learned one's candidate features and shadow caches): in the thread it is taken from the requests. In a
child, the server's side of a call is pickling a batch of integer keys and unpickling the proposals; waiting on
the socket releases the lock.

A child (`PrefetchHost`) runs many tenants' prefetchers, each under its own id: a child that imports torch holds
about 360 MB, which a process per tenant would multiply. But a child computes on one core, so a host with cores to
spare runs a few (`PrefetchPool`): each new prefetcher goes to the child with the fewest, and tenants in different
children predict in parallel. A child is a fresh interpreter (`python -m service.prefetch.isolated FD`), not a
fork: CUDA cannot start in a forked child, a fork would copy the server's heap, and multiprocessing's spawn would
re-run the parent's main script. Messages are plain pickles (not multiprocessing's, which would pass tensors as
shared memory; tensors cross on the CPU); that is safe here because both ends are Foresight's own processes and
nobody else holds the socket pair. Every request, sending included, is bounded by a deadline: a child that
stops reading (a hung kernel, a deadlock) would otherwise block a large request's send forever, holding the socket
that all of the child's tenants share.

A child that dies, or does not answer in time (it is killed), fails the call in flight with
`PrefetcherProcessError`; the next call starts a new child, where each prefetcher is built again and reloaded from
the state its owner gives (`ProcessPrefetcher.rebuild_state`: the tenant's serving checkpoint), else starts over. A
child that fails to start makes its host refuse further starts for a while, doubling up to `MAX_START_BACKOFF_S`,
so tenants placed on it fail at once instead of each waiting out `START_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.markov import DEFAULT_MAX_KEYS
from service.prefetch.shadow import CacheModel

START_TIMEOUT_S = 120.0  # a cold child imports torch; on a loaded 2-core machine that can take most of a minute
CALL_TIMEOUT_S = 60.0  # a batch with a training round takes well under a second; longer means the child hangs
# After a child fails to start, starts are refused this long, doubling with each further failure up to the maximum.
START_BACKOFF_S = 10.0
MAX_START_BACKOFF_S = 600.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


# The child gets its settings in its first message; it needs no credential the server holds.
_WITHHELD_PREFIXES = ("FORESIGHT_", "VAULT_", "BAO_", "AWS_", "AZURE_", "GOOGLE_")


def child_environment() -> dict[str, str]:
    """The server's environment without its credentials and settings, and with this package importable first
    (so the child runs this same code whatever the working directory)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(_WITHHELD_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
    return env


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory from Linux /proc; None where there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PrefetcherProcessError(RuntimeError):
    """The child process failed a call, died, or did not start."""


_LENGTH = struct.Struct("!Q")


class _Channel:
    """Length-prefixed messages over one end of the socket pair. Given a deadline, a send or receive that has not
    finished by then raises TimeoutError, however far it got."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, payload: bytes, deadline: float | None = None) -> None:
        self._until(deadline)
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)  # one write for the usual small message

    def recv(self, deadline: float | None = None) -> bytearray:
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
        return self._read(size, deadline)

    def _read(self, size: int, deadline: float | None) -> bytearray:
        data = bytearray(size)
        with memoryview(data) as view:
            got = 0
            while got < size:
                self._until(deadline)
                n = self.sock.recv_into(view[got:])
                if n == 0:
                    raise EOFError("connection closed")
                got += n
        return data

    def _until(self, deadline: float | None) -> None:
        if deadline is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)  # sendall's timeout bounds the whole send, not each chunk

    def close(self) -> None:
        self.sock.close()


def _on_cpu(value: Any) -> Any:
    """A checkpoint's tensors moved to the CPU (the parent may have no GPU context), containers kept."""
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    to = getattr(value, "cpu", None)
    return to() if callable(to) else value


def _handle(prefetchers: dict[int, Prefetcher], ident: int, op: str, arg: Any) -> Any:
    """One request, in the child."""
    if op == "create":
        from service.prefetch import make_prefetcher

        name, lead, device, cache, max_keys = arg
        prefetchers[ident] = make_prefetcher(name, lead=lead, device=device, cache=cache, max_keys=max_keys)
        return None
    if op == "drop":
        prefetchers.pop(ident, None)
        return None
    prefetcher = prefetchers[ident]
    if op == "access":
        return [[tuple(p) for p in props] for props in prefetcher.access_batch(arg)], prefetcher.serving_arm
    if op == "state_dict":
        return _on_cpu(prefetcher.state_dict())  # type: ignore[attr-defined]
    if op == "load_state_dict":
        return prefetcher.load_state_dict(arg)  # type: ignore[attr-defined]
    if op == "retrain":
        return getattr(prefetcher, "retrain", lambda: None)()
    raise ValueError(f"unknown request {op!r}")


def _serve(channel: _Channel) -> None:
    """The child's loop: one reply per request, until the parent goes away."""
    prefetchers: dict[int, Prefetcher] = {}
    while True:
        try:
            ident, op, arg = pickle.loads(channel.recv())  # noqa: S301 - our parent, a private socket pair
        except (EOFError, OSError):
            return
        started = time.process_time()
        try:
            reply = ("ok", _handle(prefetchers, ident, op, arg), time.process_time() - started)
        except Exception as err:  # the parent raises it; the child keeps serving
            reply = ("error", f"{type(err).__name__}: {err}", time.process_time() - started)
        try:
            channel.send(pickle.dumps(reply))
        except OSError:  # the parent went away
            return


class PrefetchHost:
    """The child process and the socket to it; thread-safe, blocking (use it off the event loop)."""

    def __init__(self, start_timeout_s: float = START_TIMEOUT_S, call_timeout_s: float = CALL_TIMEOUT_S,
                 start_backoff_s: float = START_BACKOFF_S, max_start_backoff_s: float = MAX_START_BACKOFF_S) -> None:
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.start_backoff_s, self.max_start_backoff_s = start_backoff_s, max_start_backoff_s
        self._lock = threading.Lock()  # one request on the socket at a time
        self._channel: _Channel | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._created: set[int] = set()  # ids whose prefetcher exists in the current child
        self.members: set[int] = set()  # ids created and not dropped, whichever child incarnation holds them
        self.starts = 0
        # After a failed start: no new child before `_retry_at` (monotonic); the next failure waits `_backoff_s`.
        self._retry_at = 0.0
        self._backoff_s = start_backoff_s
        self._start_failure = ""
        self._stopped = ""  # why the last child stopped

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def resident_bytes(self) -> int | None:
        """The child's resident memory (Linux /proc), None while it is not running. Its tenants' models and
        tables live there, not in the server's own memory. A child that exited is reaped here (its zombie's
        memory reads 0); its socket is discarded by the next call, which fails and so counts the failure."""
        process = self._process
        if process is None or process.poll() is not None:
            return None
        return resident_bytes(process.pid)

    def create(self, ident: int, spec: tuple[Any, ...]) -> None:
        """Build prefetcher `ident` from `spec` (`make_prefetcher` arguments) in the child unless it is there."""
        with self._lock:
            self._ensure(ident, spec)
            self.members.add(ident)

    def call(self, ident: int, spec: tuple[Any, ...], op: str, arg: Any = None,
             rebuild_state: Callable[[], dict[str, Any] | None] | None = None) -> tuple[Any, float]:
        """(result, the child's CPU seconds for it) of one request for prefetcher `ident`, built first if this
        child does not have it (a new child after the last one died) and then loaded with `rebuild_state()`
        where that gives a state. Building is start-up work, not counted: importing torch is seconds of CPU,
        which a budget would make the next steps wait out many times over. A dropped prefetcher is not rebuilt:
        the call fails (a late caller would leak a fresh model in the child)."""
        with self._lock:
            if ident not in self.members:
                raise PrefetcherProcessError(f"prefetcher {ident} was closed")
            rebuilt = ident not in self._created
            self._ensure(ident, spec)
            if rebuilt and rebuild_state is not None:
                state = rebuild_state()
                if state is not None:
                    self._request(ident, "load_state_dict", state, self.call_timeout_s)
            result, cpu_s = self._request(ident, op, arg, self.call_timeout_s)
            return result, cpu_s

    def _ensure(self, ident: int, spec: tuple[Any, ...]) -> None:
        if self._channel is None:
            self._start(ident, spec)
        elif ident not in self._created:
            self._create(ident, spec)

    def _create(self, ident: int, spec: tuple[Any, ...]) -> None:
        self._request(ident, "create", spec, self.start_timeout_s)
        self._created.add(ident)

    def drop(self, ident: int) -> None:
        """Forget a prefetcher (the child frees it); a no-op when the child is gone."""
        with self._lock:
            self.members.discard(ident)
            if ident in self._created and self._channel is not None:
                self._created.discard(ident)
                with contextlib.suppress(PrefetcherProcessError):
                    self._request(ident, "drop", None, self.call_timeout_s)

    def close(self) -> None:
        """Stop the child (closing its socket ends it; killed after 5 s)."""
        with self._lock:
            self._discard()

    def interrupt(self) -> None:
        """Kill the child if a call is waiting on it (the call fails at once): for a stop that must not wait out
        a child that hangs, which a start may do for `start_timeout_s`."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return
        process = self._process
        if process is not None:
            process.kill()

    def _start(self, ident: int, spec: tuple[Any, ...]) -> None:
        """A new child, with prefetcher `ident` built in it: the first request is what shows it started. After a
        start that failed, refuses at once until the backoff has passed."""
        wait_s = self._retry_at - time.monotonic()
        if wait_s > 0:
            raise self._not_started(wait_s)
        try:
            self._spawn()
            self._create(ident, spec)
        except (PrefetcherProcessError, OSError) as err:
            if self._channel is not None:  # it serves: only this prefetcher could not be built
                self._backoff_s = self.start_backoff_s
                raise
            self._start_failure = self._stopped if isinstance(err, PrefetcherProcessError) else str(err)
            wait_s, self._backoff_s = self._backoff_s, min(2 * self._backoff_s, self.max_start_backoff_s)
            self._retry_at = time.monotonic() + wait_s
            raise self._not_started(wait_s) from err
        self._backoff_s = self.start_backoff_s

    def _not_started(self, wait_s: float) -> PrefetcherProcessError:
        return PrefetcherProcessError(f"the prefetcher process did not start ({self._start_failure}); the next try "
                                      f"is in {wait_s:.0f} s")

    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        with child:
            try:
                self._process = subprocess.Popen([sys.executable, "-m", __name__, str(child.fileno())],
                                                 pass_fds=[child.fileno()], env=child_environment(),
                                                 stdin=subprocess.DEVNULL)
            except OSError:
                parent.close()
                raise
        self._channel = _Channel(parent)
        self._created = set()
        self.starts += 1

    def _discard(self) -> None:
        channel, process = self._channel, self._process
        self._channel = self._process = None
        self._created = set()
        if channel is not None:
            channel.close()
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _request(self, ident: int, op: str, arg: Any, timeout_s: float) -> tuple[Any, float]:
        """One request and its reply, both within `timeout_s`; a child that misses it is killed."""
        channel, process = self._channel, self._process
        assert channel is not None and process is not None
        deadline = time.monotonic() + timeout_s
        try:
            channel.send(pickle.dumps((ident, op, arg)), deadline)
            status, result, cpu_s = pickle.loads(channel.recv(deadline))  # noqa: S301 - our child, a private socket pair
        except (EOFError, OSError) as err:
            if isinstance(err, TimeoutError):
                process.kill()  # hung: it may never read the rest of the request nor write a reply
                reason = f"no answer within {timeout_s:g} s"
            else:
                reason = str(err) or "connection closed"
            self._discard()
            self._stopped = f"exit code {process.returncode}, {reason}"
            raise PrefetcherProcessError(f"the prefetcher process stopped ({self._stopped}); the next call starts a "
                                         "new one") from err
        if status == "error":
            raise PrefetcherProcessError(f"{op} failed in the prefetcher process: {result}")
        return result, cpu_s


class PrefetchPool:
    """Up to `size` children; a new prefetcher goes to the child with the fewest prefetchers, and a child is
    started only when every started one has some. Place one prefetcher at a time: `host()` counts those created."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a prefetch pool needs at least one process, got {size}")
        self.size = size
        self.hosts: list[PrefetchHost] = []
        self._lock = threading.Lock()

    def host(self) -> PrefetchHost:
        """The child the next prefetcher should go to (its process starts with that prefetcher's `create`)."""
        with self._lock:
            idle = [host for host in self.hosts if not host.members]
            if not idle and len(self.hosts) < self.size:
                self.hosts.append(PrefetchHost())
            return min(self.hosts, key=lambda host: len(host.members))

    def close(self) -> None:
        """Stop every child."""
        with self._lock:
            for host in self.hosts:
                host.close()

    def interrupt(self) -> None:
        """Kill every child a call is waiting on (`PrefetchHost.interrupt`)."""
        for host in list(self.hosts):
            host.interrupt()


_ids = itertools.count(1)


class ProcessPrefetcher(Prefetcher):
    """`make_prefetcher(inner, ...)` run in a `PrefetchHost`'s child (its own host when none is given); the same
    calls, thread-safe, blocking. Built in the child at once, so a bad name fails here."""

    name = "process"

    def __init__(self, inner: str, lead: int = 0, device: str = "cpu", cache: CacheModel | None = None,
                 host: PrefetchHost | None = None, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__(lead)
        self.inner = inner
        self.host = host or PrefetchHost()
        self._owns_host = host is None
        self._ident = next(_ids)
        self._spec = (inner, lead, device, cache, max_keys)
        self._child_cpu_s = 0.0
        self._serving_arm: str | None = None
        # What to load into the prefetcher when a new child builds it again (the old child died with its model):
        # its owner's serving checkpoint, say. Called under the host's lock, so it must not call the host.
        self.rebuild_state: Callable[[], dict[str, Any] | None] | None = None
        self.host.create(self._ident, self._spec)

    @property
    def offloaded_cpu_s(self) -> float:
        return self._child_cpu_s

    def _call(self, op: str, arg: Any = None) -> Any:
        result, cpu_s = self.host.call(self._ident, self._spec, op, arg, self.rebuild_state)
        self._child_cpu_s += cpu_s
        return result

    @property
    def serving_arm(self) -> str | None:
        """The child's prefetcher's serving arm, as of the last batch."""
        return self._serving_arm

    def access(self, key: int) -> Predictions:
        return self.access_batch([key])[0]

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        proposals, self._serving_arm = self._call("access", list(keys))
        return [[Prediction(*p) for p in props] for props in proposals]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("state_dict")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call("load_state_dict", state)

    def retrain(self) -> None:
        self._call("retrain")

    def close(self) -> None:
        """Free the prefetcher in the child, and stop the child if this prefetcher started it."""
        self.host.drop(self._ident)
        if self._owns_host:
            self.host.close()


if __name__ == "__main__":
    _serve(_Channel(socket.socket(fileno=int(sys.argv[1]))))
