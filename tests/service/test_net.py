"""free_port: the kernel may offer a port it offered a moment ago (once its socket is closed); two servers given
the same port then race for it, so a process never gets one port twice."""

from __future__ import annotations

import socket
from collections import OrderedDict
from types import SimpleNamespace

import pytest

from service import net


@pytest.fixture(autouse=True)
def nothing_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ports the rest of the session was given must not decide what these tests see."""
    monkeypatch.setattr(net, "_handed_out", OrderedDict())


def _kernel_repeats(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the kernel offer its first port `times` times in a row, then what it really picks; returns the offers."""
    offered: list[int] = []

    class Repeating(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            host, port = super().getsockname()
            if 0 < len(offered) < times:
                port = offered[0]
            offered.append(port)
            return host, port

    monkeypatch.setattr(net, "socket", SimpleNamespace(socket=Repeating))
    return offered


def test_a_port_the_kernel_offers_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = _kernel_repeats(monkeypatch, times=2)
    first, second = net.free_port(), net.free_port()
    assert offered[:2] == [first, first]  # the repeat was offered, and asked for again
    assert second == offered[-1] != first


def test_a_kernel_that_only_repeats_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = _kernel_repeats(monkeypatch, times=10**6)
    net.free_port()
    with pytest.raises(net.NoFreshPortError, match="only ports this process had already handed out"):
        net.free_port()
    assert len(offered) == 1 + net._ATTEMPTS


def test_ports_handed_out_in_a_row_are_all_distinct() -> None:
    # 400 draws from about 28,000 ephemeral ports repeat one with probability about 0.94 when nothing is remembered
    ports = [net.free_port() for _ in range(400)]
    assert len(set(ports)) == len(ports)


def test_a_long_lived_process_never_runs_out_of_ports() -> None:
    """Only the last _REMEMBERED ports are kept out: a test session hands out tens of thousands over its life."""
    ports = [net.free_port() for _ in range(3 * net._REMEMBERED)]
    assert len(net._handed_out) == net._REMEMBERED
    window = net._REMEMBERED
    assert all(len(set(ports[i : i + window])) == window for i in range(0, len(ports) - window, 256))
