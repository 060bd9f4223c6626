"""The Raft log on disk, made durable: the journal pysyncobj writes through.

Theory of operation: pysyncobj keeps the whole log in memory and tells a journal object
what to persist: ``add`` for every entry, ``deleteEntriesFrom`` when a follower drops a
conflicting suffix, ``deleteEntriesTo`` after a snapshot (the "dump") was written,
``clear`` when a snapshot replaces the log, ``setCurrentTerm`` before a vote leaves the
node. pysyncobj's own ``FileJournal`` writes through mmap and never flushes, stores the
term and vote without fsync, and rewrites itself in place on compaction (a crash in the
middle loses the tail). ``DurableJournal`` replaces it (``node.raft`` hands it to
pysyncobj) and keeps the same interface:

- ``add`` appends one record with ``pwrite`` (in the page cache at once, so a killed
  process loses nothing) and marks the journal dirty. ``sync`` makes everything written
  so far durable with one ``fdatasync`` when ``durability="fsync"``. The node syncs at
  the end of every tick, before it sends the acknowledgements held during the tick (see
  ``node.raft.SyncingTransport``), so no follower acknowledges an entry, and no leader
  counts its own copy, before the entry is on disk. One entry is one command batch, and
  all the entries a node receives in one tick share one fsync.
- Records carry a CRC32. On open, records are read up to the first torn or corrupt one
  and the file is cut there: a record past that point was never synced, hence never
  acknowledged.
- ``deleteEntriesTo`` (compaction) writes the kept suffix to a new file, syncs it and
  renames it over the journal, then syncs the directory: a crash leaves either the old
  complete journal or the new one, never a half-rewritten file.
- ``align_with_snapshot`` fixes pysyncobj's load path: when the node restarts between the
  dump's rename and the journal's trim, the journal still holds the dump's last two
  entries in the middle; pysyncobj would wipe the journal (losing every committed entry
  after the dump), so the journal is first trimmed, crash-safely, to start at the dump.
- Term, vote and commit index live in a small JSON file replaced atomically (write, fsync,
  rename, fsync of the directory): the vote is durable before the vote is sent.

``durability="os"`` skips every fsync (page cache only: survives a crash of the process,
not of the machine).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import overload

log = logging.getLogger("node.journal")

DURABILITY_MODES = ("fsync", "os")
MAGIC = b"FSJRNL01"  # file header: format name and version
_RECORD = struct.Struct("<IIQQ")  # command length, crc32, log index, term
MAX_RECORD_COMMAND_BYTES = 256 * 1024 * 1024  # a larger length field means a corrupt record

Entry = tuple[bytes, int, int]  # (command, log index, term): pysyncobj's entry shape


class JournalError(RuntimeError):
    """The journal file cannot be used (foreign or damaged header, unreadable meta)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a file creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` by ``data``: readers see the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def encode_record(command: bytes, idx: int, term: int) -> bytes:
    """One journal record: header (length, crc, index, term) then the command bytes."""
    head = struct.pack("<QQ", idx, term)
    crc = zlib.crc32(command, zlib.crc32(head))
    return _RECORD.pack(len(command), crc, idx, term) + command


class DurableJournal:
    """pysyncobj's journal interface over an append-only, checksummed, synced file."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "fsync",
        on_sync: Callable[[float], None] | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability={durability!r}: expected one of {DURABILITY_MODES}")
        self.path = path
        self.meta_path = path.with_name(path.name + ".meta")
        self.durable = durability == "fsync"
        self._on_sync = on_sync
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self._dirty = False  # written since the last sync
        # Set by deleteEntriesFrom: entries from this position on stay while the adds that
        # follow repeat them exactly (a resent append_entries, see node.log_matching);
        # the first differing add, or any other call, cuts the log there for real.
        self._replay_from: int | None = None
        self._fd = -1
        self._end = 0
        self._open_and_load()
        self._meta = self._load_meta()
        self._stored_commit_index = self._meta["commit_index"]

    # -- pysyncobj's journal interface --------------------------------------------------

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        data = command if isinstance(command, bytes) else command.encode("utf-8")
        pos = self._replay_from
        if pos is not None:
            if self._entries[pos] == (data, idx, term):
                # The same entry again: already on disk, nothing to write or cut.
                self._replay_from = pos + 1 if pos + 1 < len(self._entries) else None
                return
            self._settle()
        record = encode_record(data, idx, term)
        self._pwrite_all(record, self._end)
        self._offsets.append(self._end)
        self._entries.append((data, idx, term))
        self._end += len(record)
        self._dirty = True

    def clear(self) -> None:
        # Only called when a snapshot replaces the log; the dump was synced before its
        # rename (node.dump), so an empty journal loses nothing.
        self._replay_from = None
        self._truncate_to(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self._settle()
        if entryFrom < len(self._entries):
            self._replay_from = max(entryFrom, 0)

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._settle()
        if entryTo > 0:
            self._rewrite(self._entries[entryTo:])

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        if self._replay_from is not None:
            self._settle()
        return self._entries[item]

    def __len__(self) -> int:
        if self._replay_from is not None:
            self._settle()
        return len(self._entries)

    def _settle(self) -> None:
        """Carry out a pending deleteEntriesFrom for the entries not repeated since."""
        pos, self._replay_from = self._replay_from, None
        if pos is not None:
            self._truncate_to(pos)

    def _destroy(self) -> None:
        self._settle()
        if self._fd >= 0:
            self.sync()
            self._store_meta()
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Stored lazily (onOneSecondTimer): a stale, lower commit index is always safe.
        self._meta["commit_index"] = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        value = self._meta["commit_index"]
        assert isinstance(value, int)
        return value

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Raft: term and vote must be durable before any message reflecting them leaves.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        value = self._meta["term"]
        assert isinstance(value, int)
        return value

    def getVotedForNodeId(self) -> str | None:
        value = self._meta["voted_for"]
        assert value is None or isinstance(value, str)
        return value

    def onOneSecondTimer(self) -> None:
        if self._meta["commit_index"] != self._stored_commit_index:
            self._store_meta()

    # -- durability -----------------------------------------------------------------------

    def sync(self) -> None:
        """Make every write so far durable (one fdatasync); a no-op when nothing changed.

        An fsync that fails raises OSError: the caller must stop the node, because the
        kernel may have dropped the unsynced pages and a retry could report success.
        """
        self._settle()
        if not self._dirty:
            return
        if self.durable:
            started = time.perf_counter()
            os.fdatasync(self._fd)
            if self._on_sync is not None:
                self._on_sync(time.perf_counter() - started)
        self._dirty = False

    def dirty(self) -> bool:
        """True when something was written since the last ``sync``."""
        return self._dirty

    def align_with_snapshot(self, before_last: Entry, last: Entry) -> bool:
        """Trim the journal to start at a snapshot's last two entries, if it holds them.

        pysyncobj keeps the journal after loading a dump only when the journal starts with
        the dump's last two entries, and otherwise wipes it. After a crash between the
        dump's rename and the journal's trim, the journal holds those two entries further
        in, followed by committed entries the dump lacks; trimming here keeps them.
        Returns True when the journal was trimmed.
        """
        self._settle()
        if len(self._entries) < 2:
            return False
        first_idx = self._entries[0][1]
        pos = before_last[1] - first_idx
        if pos <= 0 or pos + 1 >= len(self._entries):
            return False
        if self._entries[pos] != tuple(before_last) or self._entries[pos + 1] != tuple(last):
            return False
        log.warning(
            "journal realigned with the dump (restart between dump and journal trim)",
            extra={"dropped_entries": pos, "kept_entries": len(self._entries) - pos},
        )
        self._rewrite(self._entries[pos:])
        return True

    # -- file handling --------------------------------------------------------------------

    def _open_and_load(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        if size == 0:
            self._pwrite_all(MAGIC, 0)
            self._end = len(MAGIC)
            self._dirty = True
            self.sync()
            if self.durable:
                fsync_dir(self.path.parent)
            return
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                os.close(self._fd)
                self._fd = -1
                raise JournalError(f"{self.path}: not a flashsale journal (bad header)")
            offset = len(MAGIC)
            prev_idx: int | None = None
            while True:
                head = f.read(_RECORD.size)
                if len(head) < _RECORD.size:
                    break
                length, crc, idx, term = _RECORD.unpack(head)
                if length > MAX_RECORD_COMMAND_BYTES:
                    break
                command = f.read(length)
                if len(command) < length:
                    break
                if zlib.crc32(command, zlib.crc32(struct.pack("<QQ", idx, term))) != crc:
                    break
                if prev_idx is not None and idx != prev_idx + 1:
                    break
                self._entries.append((command, idx, term))
                self._offsets.append(offset)
                offset += _RECORD.size + length
                prev_idx = idx
        self._end = offset
        if offset < size:
            # A torn or corrupt tail was never synced, hence never acknowledged.
            log.warning(
                "journal tail dropped (torn or corrupt record)",
                extra={"path": str(self.path), "bytes_dropped": size - offset},
            )
            os.ftruncate(self._fd, offset)
            self._dirty = True
            self.sync()

    def _pwrite_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def _truncate_to(self, position: int) -> None:
        """Drop entries from ``position`` on (the file is cut at that record)."""
        end = self._offsets[position] if position < len(self._offsets) else self._end
        os.ftruncate(self._fd, end)
        del self._entries[position:]
        del self._offsets[position:]
        self._end = end
        self._dirty = True

    def _rewrite(self, kept: list[Entry]) -> None:
        """Replace the journal by ``kept`` atomically (new file, sync, rename, dir sync)."""
        tmp = self.path.with_name(self.path.name + ".rewrite")
        offsets: list[int] = []
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            offset = len(MAGIC)
            for command, idx, term in kept:
                record = encode_record(command, idx, term)
                f.write(record)
                offsets.append(offset)
                offset += len(record)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        self.sync()  # nothing unsynced may hide behind the rename
        os.replace(tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._entries = list(kept)
        self._offsets = offsets
        self._end = offset
        self._dirty = False

    def _load_meta(self) -> dict[str, int | str | None]:
        meta: dict[str, int | str | None] = {"term": 0, "voted_for": None, "commit_index": 1}
        try:
            raw = self.meta_path.read_bytes()
        except FileNotFoundError:
            return meta
        try:
            stored = json.loads(raw)
            term, voted_for = stored["term"], stored["voted_for"]
            commit_index = stored["commit_index"]
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{self.meta_path}: unreadable Raft meta ({exc})") from None
        if not isinstance(term, int) or not isinstance(commit_index, int):
            raise JournalError(f"{self.meta_path}: term/commit_index are not integers")
        if voted_for is not None and not isinstance(voted_for, str):
            raise JournalError(f"{self.meta_path}: voted_for={voted_for!r} is not a node id")
        meta.update(term=term, voted_for=voted_for, commit_index=commit_index)
        return meta

    def _store_meta(self) -> None:
        # The commit index may only be stored once the entries it covers are durable.
        self.sync()
        data = json.dumps(self._meta, separators=(",", ":")).encode()
        write_file_atomically(self.meta_path, data, durable=self.durable)
        self._stored_commit_index = self._meta["commit_index"]
