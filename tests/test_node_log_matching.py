"""A resent append_entries never drops entries a follower already acknowledged.

pysyncobj deletes a follower's log after ``prevLogIdx`` on every append_entries and
appends the message's entries; a resend cut at its byte limit then removes entries the
leader may have counted towards a majority. node.log_matching keeps a matching tail and
the journal turns identical re-adds into no writes (Raft's log-matching rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.journal import DurableJournal
from node.log_matching import keep_matching_tail


def entries(first: int, last: int, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(f"cmd-{i}".encode(), i, term) for i in range(first, last + 1)]


def append(prev: int, sent: list[tuple[bytes, int, int]], commit: int) -> dict[str, Any]:
    return {
        "type": "append_entries", "term": 1, "commit_index": commit,
        "entries": sent, "prevLogIdx": prev, "prevLogTerm": 1,
    }  # fmt: skip


def test_a_resend_shorter_than_the_log_keeps_the_tail_and_caps_the_commit() -> None:
    log = entries(1, 10)
    rewritten = keep_matching_tail(append(5, entries(6, 7), commit=10), log)
    assert rewritten["entries"] == entries(6, 10)  # the follower's tail stays
    assert rewritten["commit_index"] == 7  # the leader vouched for 6..7 only


def test_a_conflicting_entry_leaves_raft_truncation_alone() -> None:
    log = entries(1, 10)
    message = append(5, [*entries(6, 6), *entries(7, 7, term=2)], commit=7)
    assert keep_matching_tail(message, log) is message


def test_a_message_reaching_past_the_log_is_left_alone() -> None:
    log = entries(1, 7)
    message = append(5, entries(6, 9), commit=9)
    assert keep_matching_tail(message, log) is message


def test_a_late_heartbeat_keeps_the_tail_and_caps_the_commit() -> None:
    """A heartbeat sent when the follower had 1..5 arrives after 6..10 were appended (the
    chaos proxy's delay fault): pysyncobj would delete 6..10, acknowledged entries."""
    log = entries(1, 10)
    rewritten = keep_matching_tail(append(5, [], commit=10), log)
    assert rewritten["entries"] == entries(6, 10)
    assert rewritten["commit_index"] == 5


def test_heartbeats_at_the_end_of_the_log_or_mismatching_and_other_messages_are_left_alone() -> (
    None
):
    log = entries(1, 10)
    current = append(10, [], commit=10)
    assert keep_matching_tail(current, log) is current
    mismatch = {**append(5, [], commit=10), "prevLogTerm": 2}
    assert keep_matching_tail(mismatch, log) is mismatch
    before_log = append(0, [], commit=10)
    assert keep_matching_tail(before_log, log) is before_log
    vote = {"type": "request_vote", "term": 2}
    assert keep_matching_tail(vote, log) is vote


def test_the_journal_writes_nothing_when_a_deleted_tail_is_added_again(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path, durability="os")
    for e in entries(1, 10):
        j.add(*e)
    j.sync()
    before = path.read_bytes()
    j.deleteEntriesFrom(5)  # position 5 = index 6
    for e in entries(6, 10):
        j.add(*e)
    assert not j.dirty() and path.read_bytes() == before
    assert j[:] == entries(1, 10)


def test_the_journal_cuts_what_is_not_added_again(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path, durability="os")
    for e in entries(1, 10):
        j.add(*e)
    j.deleteEntriesFrom(5)
    for e in entries(6, 7):
        j.add(*e)
    assert len(j) == 7 and j[-1] == entries(7, 7)[0]
    j.sync()
    assert DurableJournal(path, durability="os")[:] == entries(1, 7)


def test_the_journal_replaces_from_the_first_different_entry(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path, durability="os")
    for e in entries(1, 10):
        j.add(*e)
    j.deleteEntriesFrom(5)
    j.add(*entries(6, 6)[0])
    j.add(*entries(7, 7, term=2)[0])
    assert j[:] == [*entries(1, 6), *entries(7, 7, term=2)]
    j.sync()
    assert DurableJournal(path, durability="os")[:] == [*entries(1, 6), *entries(7, 7, term=2)]


def test_the_acknowledgement_claims_only_what_the_leader_sent() -> None:
    from node.raft import SyncingTransport

    # Only the held-acknowledgement bookkeeping is exercised: no sockets are opened.
    transport = SyncingTransport.__new__(SyncingTransport)
    transport._held = [("n2", {"type": "next_node_idx", "next_node_idx": 3, "success": True})]
    mark = transport.held_count()
    leader, other = object(), object()
    transport._held += [
        (leader, {"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": True}),
        (other, {"type": "next_node_idx", "next_node_idx": 11, "success": True}),
        (leader, {"type": "next_node_idx", "next_node_idx": 6, "success": False}),
    ]
    transport.cap_acks_since(mark, leader, 8)
    assert transport._held[0][1]["next_node_idx"] == 3  # before the mark: untouched
    assert transport._held[1][1] == {
        "type": "next_node_idx", "next_node_idx": 8, "reset": False, "success": True,
    }  # fmt: skip
    assert transport._held[2][1]["next_node_idx"] == 11  # another node's
    assert transport._held[3][1]["next_node_idx"] == 6  # a refusal is left as it is
