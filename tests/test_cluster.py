"""The embedded cluster listens on nothing beyond this machine, and serves no HTTP unless asked."""

from __future__ import annotations

import socket
import urllib.request
import warnings

import psutil
import pytest

from pipeline.execution.cluster import connect, dashboard_address, dashboard_link
from pipeline.options import ClusterOptions


def _listening(processes: list[psutil.Process]) -> set[tuple[str, int]]:
    found = set()
    for proc in processes:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


@pytest.fixture
def port_8787_taken():
    """Another process's dashboard on 8787 (as on a shared machine); never mind if it is."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 8787))
        sock.listen()
    except OSError:
        pass  # taken already: just as good
    yield
    sock.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["threads", "processes"])
def test_no_http_server_and_nothing_on_all_interfaces(layout, port_8787_taken) -> None:
    before = _listening(_tree())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with connect(ClusterOptions(workers=1, threads_per_worker=1), layout) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            opened = _listening(_tree()) - before
            info = client.scheduler_info()
    assert not [w for w in caught if "already in use" in str(w.message)]
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in opened), opened
    assert not info["services"]
    assert all(not w["services"] for w in info["workers"].values())
    if layout == "threads":
        assert not opened  # inproc comms and no HTTP: not a single socket


@pytest.mark.timeout(120)
def test_the_dashboard_listens_on_localhost(port_8787_taken) -> None:
    before = _listening(_tree())
    with connect(ClusterOptions(dashboard_address="127.0.0.1:0"), "threads") as client:
        opened = _listening(_tree()) - before
        link = dashboard_link(client)
        with urllib.request.urlopen(link.replace("/status", "/health"), timeout=10) as resp:
            assert resp.read() == b"ok"
    assert opened and all(ip == "127.0.0.1" for ip, _ in opened), opened
    assert ClusterOptions(dashboard=True).dashboard_address is None

    assert dashboard_address(ClusterOptions(dashboard=True)) == "127.0.0.1:8787"
    assert dashboard_address(ClusterOptions()) is None
