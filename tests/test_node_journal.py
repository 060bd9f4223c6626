"""The durable Raft journal: what survives a crash, what is synced when, and the
realignment with a dump that closes pysyncobj's data-loss window."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node.journal import MAGIC, DurableJournal, JournalError, encode_record


def entries(first: int, last: int, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(f"cmd-{i}".encode(), i, term) for i in range(first, last + 1)]


def fill(journal: DurableJournal, items: list[tuple[bytes, int, int]]) -> None:
    for command, idx, term in items:
        journal.add(command, idx, term)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every fdatasync the journal makes (and still performs it)."""
    calls: list[int] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    return calls


def test_entries_survive_reopen_without_any_sync(tmp_path: Path) -> None:
    # A killed process loses nothing that add() returned from: the write is in the page cache.
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 50))
    reopened = DurableJournal(path)
    assert reopened[:] == entries(1, 50)
    assert len(reopened) == 50 and reopened[-1] == (b"cmd-50", 50, 1)


def test_sync_fsyncs_once_per_batch_of_writes_and_only_when_dirty(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    j = DurableJournal(tmp_path / "j", durability="fsync")
    before = len(fsyncs)
    fill(j, entries(1, 3))
    assert j.dirty()
    j.sync()
    assert len(fsyncs) == before + 1  # three entries, one fsync
    j.sync()
    assert len(fsyncs) == before + 1  # nothing new: no fsync
    assert not j.dirty()


def test_durability_os_never_fsyncs(tmp_path: Path, fsyncs: list[int]) -> None:
    j = DurableJournal(tmp_path / "j", durability="os")
    fill(j, entries(1, 3))
    j.sync()
    j.setCurrentTerm(3, "n1")
    assert fsyncs == []
    assert DurableJournal(tmp_path / "j", durability="os")[:] == entries(1, 3)


def test_unknown_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        DurableJournal(tmp_path / "j", durability="maybe")


def test_torn_tail_is_dropped_on_open(tmp_path: Path) -> None:
    # A record cut short by a power loss was never synced, hence never acknowledged.
    path = tmp_path / "j"
    fill(DurableJournal(path), entries(1, 5))
    with open(path, "ab") as f:
        f.write(encode_record(b"cmd-6", 6, 1)[:-2])
    j = DurableJournal(path)
    assert j[:] == entries(1, 5)
    j.add(b"cmd-6", 6, 1)
    assert DurableJournal(path)[:] == entries(1, 6)


def test_corrupt_record_ends_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    fill(DurableJournal(path), entries(1, 5))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last command: its CRC no longer matches
    path.write_bytes(bytes(data))
    assert DurableJournal(path)[:] == entries(1, 4)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b"PYSYNCOBJ\0\0\0 something else entirely")
    with pytest.raises(JournalError, match="not a flashsale journal"):
        DurableJournal(path)


def test_delete_entries_from_truncates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 10))
    j.deleteEntriesFrom(6)  # keeps positions 0..5, i.e. indexes 1..6
    fill(j, entries(7, 8, term=2))
    assert DurableJournal(path)[:] == entries(1, 6) + entries(7, 8, term=2)


def test_delete_entries_to_rewrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 10))
    j.deleteEntriesTo(7)
    assert j[:] == entries(8, 10)
    fill(j, entries(11, 12))
    assert DurableJournal(path)[:] == entries(8, 12)
    assert not (tmp_path / "j.rewrite").exists()


def test_crash_during_compaction_rewrite_leaves_the_old_journal(tmp_path: Path) -> None:
    # The rewrite goes to a side file and replaces the journal by rename: a crash before
    # the rename leaves the complete old journal, never a half-rewritten one.
    path = tmp_path / "j"
    fill(DurableJournal(path), entries(1, 10))
    (tmp_path / "j.rewrite").write_bytes(MAGIC + encode_record(b"cmd-8", 8, 1)[:5])
    j = DurableJournal(path)
    assert j[:] == entries(1, 10)
    j.deleteEntriesTo(5)
    assert DurableJournal(path)[:] == entries(6, 10)


def test_term_and_vote_are_stored_before_returning(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    before = len(fsyncs)
    j.setCurrentTerm(7, "127.0.0.1:7001")
    reopened = DurableJournal(path)
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (7, "127.0.0.1:7001")
    assert not (tmp_path / "j.meta.tmp").exists()
    assert len(fsyncs) == before  # meta uses fsync (not fdatasync) on its own file


def test_commit_index_is_stored_lazily(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    j.setRaftCommitIndex(42)
    assert DurableJournal(path).getRaftCommitIndex() == 1  # not yet: stale is safe
    j.onOneSecondTimer()
    assert DurableJournal(path).getRaftCommitIndex() == 42


def test_unreadable_meta_is_refused(tmp_path: Path) -> None:
    (tmp_path / "j.meta").write_text("{not json")
    with pytest.raises(JournalError, match="unreadable Raft meta"):
        DurableJournal(tmp_path / "j")


def test_destroy_syncs_and_stores_meta(tmp_path: Path, fsyncs: list[int]) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 2))
    j.setRaftCommitIndex(2)
    j._destroy()
    assert fsyncs
    assert DurableJournal(tmp_path / "j").getRaftCommitIndex() == 2


# -- realignment with a dump (pysyncobj's load path) --------------------------------------


def test_align_trims_to_the_dump_and_keeps_later_entries(tmp_path: Path) -> None:
    # Restart between the dump's rename and the journal's trim: the journal still starts
    # at 1, the dump ends at 20; entries 21..30 are committed and must survive.
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 30))
    assert j.align_with_snapshot((b"cmd-19", 19, 1), (b"cmd-20", 20, 1))
    assert j[:] == entries(19, 30)
    assert DurableJournal(path)[:] == entries(19, 30)


@pytest.mark.parametrize(
    ("before_last", "last"),
    [
        ((b"cmd-1", 1, 1), (b"cmd-2", 2, 1)),  # already aligned: nothing to do
        ((b"cmd-19", 19, 2), (b"cmd-20", 20, 2)),  # other term: the journal diverged there
        ((b"cmd-39", 39, 1), (b"cmd-40", 40, 1)),  # dump newer than the whole journal
    ],
)
def test_align_leaves_the_journal_when_it_does_not_hold_the_dump_entries(
    tmp_path: Path, before_last: Any, last: Any
) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 30))
    assert not j.align_with_snapshot(before_last, last)
    assert j[:] == entries(1, 30)
