"""The snapshot ("dump") file, written and received crash-safely.

Theory of operation: pysyncobj compacts its log by writing the replicated state to a dump
file and then trimming the journal up to the dump's last entry; a follower too far
behind receives the leader's dump in chunks. ``DumpFile`` replaces pysyncobj's
``Serializer`` (same interface; ``node.raft`` installs it) and closes its gaps:

- ``serialize`` forks. The child (a copy-on-write image of the state at the dump's entry)
  writes ``<dump>.<pid>.tmp``, fsyncs it, renames it over the dump and fsyncs the folder,
  then exits 0. ``checkSerializing`` reports SUCCESS only after that exit, and only then
  does pysyncobj trim the journal: the trim never runs ahead of a durable dump.
- The child dies with the thread that forked it (``PR_SET_PDEATHSIG``): an orphan of a
  killed node can never rename an older dump over the newer one of its restarted self.
- A received snapshot is written to ``<dump>.recv.tmp``, synced and renamed the same way;
  a local dump still being written is killed first so it cannot overwrite the snapshot.
- ``preload`` lets the node read the dump once (to align the journal with it) and hand
  the very same value to pysyncobj's loader.

With ``durable=False`` (durability "os") the fsyncs are skipped; renames stay atomic.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import logging
import os
import pickle
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pysyncobj.config import SERIALIZER_STATE

from node.journal import fsync_dir

log = logging.getLogger("node.dump")

DUMP_COMPRESS_LEVEL = 1  # gzip level: dumps are written often and sent over loopback/LAN
PR_SET_PDEATHSIG = 1  # linux/prctl.h

Chunk = tuple[bytes, bool, bool]  # (data, is_first, is_last): pysyncobj's transmission unit


@dataclass(slots=True)
class _Transmission:
    file: IO[bytes]
    sent_bytes: int = 0


def write_dump(path: Path, data: object, *, durable: bool) -> None:
    """Write ``data`` as a dump at ``path`` through a synced temporary file and a rename."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=DUMP_COMPRESS_LEVEL) as g:
            pickle.dump(data, g, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def read_dump(path: Path) -> Any:
    """The value stored in a dump file (a pickle: only ever read from our own data dir)."""
    with open(path, "rb") as f, gzip.GzipFile(fileobj=f, mode="rb") as g:
        return pickle.load(g)


def _die_with_parent(parent_pid: int) -> None:
    """In a forked child: be killed when the forking thread dies (Linux), or exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class DumpFile:
    """pysyncobj's Serializer interface for one dump file, with synced, atomic writes."""

    def __init__(self, path: Path, *, durable: bool, chunk_bytes: int) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes={chunk_bytes}: expected > 0")
        self.path = path
        self.durable = durable
        self._chunk_bytes = chunk_bytes
        self._pid = 0  # the child writing a dump, 0 when none
        self._current_id: int | None = None
        self._transmissions: dict[object, _Transmission] = {}
        self._incoming: IO[bytes] | None = None
        self._preloaded: Any = None
        self.remove_stale_files()

    @property
    def recv_path(self) -> Path:
        return self.path.with_name(self.path.name + ".recv.tmp")

    def remove_stale_files(self) -> None:
        """Delete temporary files a crash left behind (never renamed, never used)."""
        for stale in self.path.parent.glob(self.path.name + ".*tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- writing a dump (local compaction) -------------------------------------------------

    def checkSerializing(self) -> tuple[int, int | None]:
        if self._pid == 0:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            self._pid = 0
            return SERIALIZER_STATE.FAILED, self._current_id
        if pid == 0:
            return SERIALIZER_STATE.SERIALIZING, self._current_id
        self._pid = 0
        if os.waitstatus_to_exitcode(status) != 0:
            return SERIALIZER_STATE.FAILED, self._current_id
        self._close_transmissions()  # later transmissions send the new dump
        return SERIALIZER_STATE.SUCCESS, self._current_id

    def serialize(self, data: object, entry_id: int) -> None:
        """Start writing ``data`` in a forked child (no-op while one is still writing)."""
        if self._pid != 0:
            return
        self._current_id = entry_id
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the node's code
            code = 1
            try:
                _die_with_parent(parent)
                write_dump(self.path, data, durable=self.durable)
                code = 0
            finally:
                os._exit(code)
        self._pid = pid

    def serializing(self) -> bool:
        """True while a child is writing a dump."""
        return self._pid != 0

    def cancel_serializing(self) -> None:
        """Kill a child still writing a dump; the journal is then left untrimmed."""
        if self._pid == 0:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)
        self._pid = 0

    # -- reading ----------------------------------------------------------------------------

    def preload(self, value: Any) -> None:
        """Make the next ``deserialize`` return ``value`` (already read from the dump)."""
        self._preloaded = value

    def deserialize(self) -> Any:
        if self._preloaded is not None:
            value, self._preloaded = self._preloaded, None
            return value
        return read_dump(self.path)

    # -- sending a dump to a follower ------------------------------------------------------

    def getTransmissionData(self, transmission_id: object) -> Chunk | None:
        if self._pid != 0:
            return None  # a new dump is on its way; send that one
        t = self._transmissions.get(transmission_id)
        if t is None:
            try:
                t = _Transmission(open(self.path, "rb"))  # noqa: SIM115 (kept across calls)
            except OSError:
                log.exception("cannot open the dump for a follower")
                return None
            self._transmissions[transmission_id] = t
        is_first = t.sent_bytes == 0
        try:
            data = t.file.read(self._chunk_bytes)
        except OSError:
            log.exception("cannot read the dump for a follower")
            self.cancelTransmisstion(transmission_id)
            return None
        t.sent_bytes += len(data)
        is_last = not data
        if is_last:
            self.cancelTransmisstion(transmission_id)
        return data, is_first, is_last

    def cancelTransmisstion(self, transmission_id: object) -> None:
        t = self._transmissions.pop(transmission_id, None)
        if t is not None:
            t.file.close()

    def _close_transmissions(self) -> None:
        for tid in list(self._transmissions):
            self.cancelTransmisstion(tid)

    # -- receiving a dump from the leader ----------------------------------------------------

    def setTransmissionData(self, chunk: Chunk | None) -> bool:
        """Store one received chunk; True once the whole dump is in place (synced)."""
        if chunk is None:
            return False
        data, is_first, is_last = chunk
        if is_first:
            self._drop_incoming()
            try:
                self._incoming = open(self.recv_path, "wb")  # noqa: SIM115 (kept across calls)
                os.fchmod(self._incoming.fileno(), 0o600)
            except OSError:
                log.exception("cannot store a snapshot from the leader")
                self._incoming = None
                return False
        if self._incoming is None:
            return False
        try:
            self._incoming.write(data)
            if not is_last:
                return False
            self._incoming.flush()
            if self.durable:
                os.fsync(self._incoming.fileno())
            self._incoming.close()
            self._incoming = None
            self.cancel_serializing()  # an older local dump must not land over this one
            os.replace(self.recv_path, self.path)
            if self.durable:
                fsync_dir(self.path.parent)
        except OSError:
            log.exception("cannot store a snapshot from the leader")
            self._drop_incoming()
            return False
        return True

    def _drop_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None

    def close(self) -> None:
        """Stop a running dump child and close open files (node shutdown)."""
        self.cancel_serializing()
        self._close_transmissions()
        self._drop_incoming()
