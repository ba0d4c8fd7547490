"""Loopback port helpers shared by the benchmarks, `foresight local up` and the test suite."""

from __future__ import annotations

import socket
import threading

# The kernel picks port 0's stand-in at random from the free ephemeral ports, so once the first socket is closed
# the next call can get the same one (about 1 pair in 10,000): two servers then race for one port. Each port is
# handed out once per process; a repeat is asked for again, a bounded number of times.
_ATTEMPTS = 32
_handed_out: set[int] = set()
_lock = threading.Lock()


class NoFreshPortError(OSError):
    """The kernel kept offering ports this process had already handed out."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now and that this process has not handed out before (the OS picks it; a
    race with another process stays possible)."""
    with _lock:
        for _ in range(_ATTEMPTS):
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise NoFreshPortError(
        f"the OS offered {host} only ports this process had already handed out ({_ATTEMPTS} tries, "
        f"{len(_handed_out)} handed out): free some ephemeral ports or pass explicit ones")
