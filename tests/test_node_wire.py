"""node.wire: Raft messages framed as stored zlib streams stay readable by every peer, with
the framing or without it (a rolling upgrade in either direction)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import tcp_connection

from node import wire
from node.wire import stored
from tests.support.cluster import free_ports

REPO = Path(__file__).resolve().parent.parent


@given(st.binary(max_size=70_000))
@settings(max_examples=200, deadline=None)
def test_any_bytes_come_back_from_zlib_decompress(data: bytes) -> None:
    assert zlib.decompress(stored(data)) == data


@pytest.mark.parametrize("size", [0, 1, 65_534, 65_535, 65_536, 131_070, 131_071, 300_000])
def test_block_boundaries(size: int) -> None:
    data = os.urandom(size)
    framed = stored(data)
    assert zlib.decompress(framed) == data
    # Stored blocks: 2 bytes of header, 5 per block of at most 65,535 bytes, 4 of checksum.
    blocks = max(1, -(-size // 65_535))
    assert len(framed) == 2 + 5 * blocks + size + 4


def test_a_damaged_frame_is_refused_by_its_checksum() -> None:
    framed = bytearray(stored(b"reserve 1 unit of p1"))
    framed[10] ^= 0x01
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(framed))


def test_install_points_pysyncobj_at_the_stored_framing() -> None:
    wire.install()
    wire.install()  # idempotent
    assert wire.installed()
    message = tcp_connection.pickle.dumps({"type": "append_entries", "entries": [1, 2]})
    assert tcp_connection.zlib.compress(message, 3) == stored(message)
    assert tcp_connection.zlib.decompress(zlib.compress(message, 3)) == message


@pytest.mark.cluster
def test_peers_with_and_without_the_framing_replicate_together(tmp_path: Path) -> None:
    """Three bare pysyncobj processes, one of them framing with ``stored``: whoever leads,
    messages cross between the two framings both ways, and every counter reaches 200."""
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    framings = ["stored", "zlib", "zlib"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"peer{i}.log" for i in range(3)]
    try:
        for i, addr in enumerate(addrs):
            partners = ",".join(a for a in addrs if a != addr)
            with logs[i].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.support.counter_peer",
                            "--self",
                            addr,
                            "--partners",
                            partners,
                            "--framing",
                            framings[i],
                            "--count",
                            "200",
                            "--password",
                            "a-shared-raft-password-for-this-test",
                            "--out",
                            str(tmp_path / f"peer{i}.json"),
                        ],
                        cwd=REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        outs = [tmp_path / f"peer{i}.json" for i in range(3)]
        deadline = time.monotonic() + 60
        while not all(o.exists() for o in outs) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), _tails(logs)
            time.sleep(0.1)
        answers = [json.loads(o.read_text()) for o in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    assert [a["value"] for a in answers] == [200, 200, 200], _tails(logs)
    assert [a["stored"] for a in answers] == [True, False, False]


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"{log.name}: {log.read_text()[-2000:]}" for log in logs)
