"""Which ports the launcher takes and refuses: a port held only by a closed connection's TIME_WAIT is free for the
server (TorchServe's sockets set SO_REUSEADDR), a listening one is taken; Ray's blocks come from below the kernel's
ephemeral range and never overlap a running block."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from intgrads.launcher import ray_cluster
from intgrads.launcher.paths import LaunchError
from intgrads.launcher.tsconfig import check_ports_free, choose_ports
from intgrads.system import quiet_ports


def _listener(port: int = 0) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def _free_base(count: int, low: int = 10000, high: int = 20000) -> int:
    for base in range(low, high, 300):
        if all(ray_cluster.port_free(port) for port in range(base, base + count)):
            return base
    pytest.skip("no free ports")


def test_a_port_left_in_time_wait_by_the_server_is_free_and_a_listening_one_is_taken():
    base = _free_base(5)
    ports = choose_ports(SimpleNamespace(port=base, management_port=None, metrics_port=None))
    server = _listener(ports.grpc_management)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    accepted.close()            # the server side closes first, so its port is left in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    held = server.getsockname()[1]
    server.close()
    with socket.socket() as plain:   # the state the launcher used to refuse
        with pytest.raises(OSError):
            plain.bind(("", held))
    for host in ("127.0.0.1", "0.0.0.0"):
        check_ports_free(host, ports)
    live = _listener(held)
    try:
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(LaunchError, match=f"port {held} on {host} is taken"):
                check_ports_free(host, ports)
    finally:
        live.close()


def test_quiet_ports_end_where_the_ephemeral_range_starts(tmp_path, monkeypatch):
    range_file = tmp_path / "ip_local_port_range"
    monkeypatch.setattr("intgrads.system.EPHEMERAL_RANGE_FILE", str(range_file))
    range_file.write_text("32768\t60999\n")
    assert quiet_ports() == (20000, 32768)
    range_file.write_text("1024\t65535\n")     # no room below it: the whole default span
    assert quiet_ports() == (20000, 60000)
    range_file.unlink()
    assert quiet_ports() == (20000, 60000)


def test_a_ray_block_never_overlaps_a_running_one(monkeypatch):
    block = ray_cluster.BLOCK
    gcs = _free_base(1, 20000 + 2 * block, 30000) + block
    span = (gcs - block - 8, gcs + 2 * block + 8)
    if not all(ray_cluster.port_free(port) for port in range(span[0] - block, span[1] + block)):
        pytest.skip("ports near the block are in use")
    monkeypatch.setattr(ray_cluster, "quiet_ports", lambda: span)
    running = _listener(gcs)   # a running cluster binds its block's first port, its GCS
    try:
        bases = {ray_cluster.free_block(0).base for _ in range(40)}
    finally:
        running.close()
    assert bases and all(base <= gcs - block or base >= gcs + block for base in bases), sorted(bases)
