"""Loopback port helpers shared by the benchmarks, `foresight local up` and the test suite; the open-files limit."""

from __future__ import annotations

import logging
import resource
import socket
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)

# The kernel picks port 0's stand-in at random from the free ephemeral ports, so once the first socket is closed
# the next call can get the same one (about 1 pair in 10,000): two servers then race for one port. A port handed
# out recently is not handed out again (a repeat is asked for again, a bounded number of times); "recently" is the
# last _REMEMBERED ports, far more than are ever waiting to be bound at once, and few enough that a long-lived
# process (a test session) never runs out of the ~28,000 ephemeral ports.
_ATTEMPTS = 64
_REMEMBERED = 4096
_handed_out: OrderedDict[int, None] = OrderedDict()
_lock = threading.Lock()


class NoFreshPortError(OSError):
    """The kernel kept offering ports this process had already handed out."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now and that this process has not handed out lately (the OS picks it; a
    race with another process stays possible)."""
    with _lock:
        for _ in range(_ATTEMPTS):
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out[port] = None
                if len(_handed_out) > _REMEMBERED:
                    _handed_out.popitem(last=False)
                return port
    raise NoFreshPortError(
        f"the OS offered {host} only ports this process had already handed out ({_ATTEMPTS} tries, "
        f"{len(_handed_out)} handed out): free some ephemeral ports or pass explicit ones")


def raise_nofile_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, and return the soft limit now in force.

    Every client connection holds a descriptor, and the usual soft limit (1024) is far below resp_max_clients: past
    it, accepts fail and so does every other open (an origin read, a certificate reload), for every tenant. Where
    the hard limit cannot be had (unlimited on macOS, where the kernel allows less), the soft limit stays.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("open files limit stays %d: raising it to the hard limit %s failed: %s", soft, hard, err)
            return soft
    log.info("open files limit: %d", soft)
    return soft
