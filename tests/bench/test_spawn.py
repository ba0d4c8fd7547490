"""A server a bench starts ends with the bench, even when the bench is SIGKILLed and runs no clean-up."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

# The bench, in a process of its own: starts a child that would run for ten minutes through the bench's own
# path, prints the child's pid, and waits to be killed.
_THROUGH_SPAWN = """
import sys, time
from service.bench.resp import spawn
child = spawn([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""
_THROUGH_SERVER_PROCESS = """
import sys, time
from service.bench.resp import server_process
from service.net import free_port
port = free_port()
server = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); time.sleep(600)" % port)
with server_process([sys.executable, "-c", server], port, "listener"):
    print("listening", flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether `pid` runs; an exited child nobody has reaped yet (a zombie) does not."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("bench", [_THROUGH_SPAWN, _THROUGH_SERVER_PROCESS], ids=["spawn", "server_process"])
def test_a_child_the_bench_started_exits_when_the_bench_is_sigkilled(bench: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", bench], stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip(), "the bench started no child"
        children = _children(parent.pid)
        assert len(children) == 1
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20  # a deadline for the child to go, not a timing being measured
        while _running(children[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(children[0]), "the child outlived the SIGKILLed bench"
    finally:
        parent.kill()
        parent.wait()
        for child in children:
            if _running(child):  # never a pid that has exited (and may be another process's by now)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
