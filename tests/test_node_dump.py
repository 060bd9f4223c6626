"""The dump file: written by a forked child, synced and renamed; sent and received in
chunks; a received snapshot is never overwritten by an older local dump."""

from __future__ import annotations

import time
from pathlib import Path

from pysyncobj.config import SERIALIZER_STATE

from node.dump import DumpFile, read_dump, write_dump

DEADLINE_S = 20.0


def wait_done(dump: DumpFile) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        state, _ = dump.checkSerializing()
        if state != SERIALIZER_STATE.SERIALIZING:
            return int(state)
        assert time.monotonic() < deadline, "dump child did not finish"
        time.sleep(0.01)


def test_forked_dump_lands_complete_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    dump = DumpFile(tmp_path / "raft.dump", durable=True, chunk_bytes=1024)
    data = ({"_ledger": list(range(10_000))}, (b"x", 5, 1), (b"w", 4, 1), set())
    dump.serialize(data, 4)
    assert dump.serializing()
    assert wait_done(dump) == SERIALIZER_STATE.SUCCESS
    assert read_dump(tmp_path / "raft.dump") == data
    assert dump.deserialize() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.dump"]


def test_failed_dump_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "raft.dump"
    write_dump(path, "previous", durable=False)
    dump = DumpFile(path, durable=False, chunk_bytes=1024)
    dump.serialize((lambda: None, None, None, None), 1)  # a lambda cannot be pickled
    assert wait_done(dump) == SERIALIZER_STATE.FAILED
    assert read_dump(path) == "previous"


def test_stale_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "raft.dump.1234.tmp").write_bytes(b"half a dump")
    (tmp_path / "raft.dump.recv.tmp").write_bytes(b"half a snapshot")
    DumpFile(tmp_path / "raft.dump", durable=False, chunk_bytes=1024)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_transmission_round_trip(tmp_path: Path) -> None:
    (tmp_path / "leader").mkdir()
    (tmp_path / "follower").mkdir()
    data = {"state": "x" * 50_000, "n": list(range(1000))}
    write_dump(tmp_path / "leader" / "raft.dump", data, durable=False)
    sender = DumpFile(tmp_path / "leader" / "raft.dump", durable=False, chunk_bytes=4096)
    receiver = DumpFile(tmp_path / "follower" / "raft.dump", durable=True, chunk_bytes=4096)
    chunks = 0
    while True:
        chunk = sender.getTransmissionData("n2")
        assert chunk is not None
        chunks += 1
        if receiver.setTransmissionData(chunk):
            break
        assert chunks < 1000
    assert chunks > 1
    assert receiver.deserialize() == data
    assert not receiver.recv_path.exists()


def test_received_snapshot_is_not_overwritten_by_a_local_dump_in_progress(
    tmp_path: Path,
) -> None:
    (tmp_path / "leader").mkdir()
    write_dump(tmp_path / "leader" / "raft.dump", "from the leader", durable=False)
    sender = DumpFile(tmp_path / "leader" / "raft.dump", durable=False, chunk_bytes=1 << 20)
    local = DumpFile(tmp_path / "raft.dump", durable=False, chunk_bytes=1 << 20)
    # A big local dump, still being written when the snapshot completes.
    local.serialize(("x" * 50_000_000, None, None, None), 7)
    while not local.setTransmissionData(sender.getTransmissionData("me")):
        pass
    assert not local.serializing()
    assert local.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    time.sleep(0.2)  # had the child survived, this is when it would rename over the dump
    assert read_dump(tmp_path / "raft.dump") == "from the leader"


def test_no_transmission_while_a_dump_is_being_written(tmp_path: Path) -> None:
    dump = DumpFile(tmp_path / "raft.dump", durable=False, chunk_bytes=1024)
    dump.serialize(("y" * 20_000_000, None, None, None), 3)
    assert dump.getTransmissionData("n2") is None
    dump.close()
