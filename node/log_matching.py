"""Raft's log-matching rule for append_entries, which pysyncobj 0.3.17 does not follow.

Theory of operation: a follower that receives ``append_entries(prevLogIdx, entries)``
must delete its entries only from the first one that conflicts with the leader's (same
index, other term). pysyncobj deletes everything after ``prevLogIdx`` and appends the
message's entries. The leader resends from an older index whenever an acknowledgement
moves its next index back (it does on every out-of-order ack), and its resend is cut at
``appendEntriesBatchSizeBytes``: the follower then drops entries it already
acknowledged, some of which the leader may have counted towards a majority. Until the
leader sends them again they exist on fewer nodes than promised (docs/DURABILITY.md).

``keep_matching_tail`` rewrites such a message before pysyncobj sees it: when every
entry of the message is already in the follower's log (same index, term and command) and
the log goes further, the follower's own tail is appended to the message, so pysyncobj's
delete-then-append leaves the log as it was (the journal turns the identical re-adds
into no writes at all), and the message's commit index is capped at its last entry: a
tail the leader has not vouched for in this message must not be committed by it, which
is Raft's ``commitIndex = min(leaderCommit, index of last new entry)``; for the same
reason the node lowers pysyncobj's acknowledgement to the message's last entry
(``node.raft.SyncingTransport.cap_acks_since``), so the leader never counts the kept
tail as its own entries on this follower. A message with a
conflicting entry, or one that reaches past the follower's log, is left alone:
pysyncobj's handling is right for it. A heartbeat (no entries) that arrives late, its
``prevLogIdx`` behind the follower's log, gets the same rewrite: without it pysyncobj
would drop every entry after ``prevLogIdx`` (seen under the chaos proxy's delay fault as
pysyncobj's "truncating already-applied log entries" warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, overload

Entry = tuple[bytes, int, int]  # (command, log index, term)


class LogView(Protocol):
    """What of the journal this reads: its length and its entries by position."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...


def _as_bytes(command: bytes | str) -> bytes:
    return command if isinstance(command, bytes) else command.encode("utf-8")


def keep_matching_tail(message: Mapping[str, Any], log: LogView) -> Mapping[str, Any]:
    """``message`` rewritten so that applying it never drops entries of ``log`` that
    match the leader's; the message itself when no rewrite is needed."""
    entries = message.get("entries")
    if (
        message.get("type") != "append_entries"
        or "prevLogIdx" not in message
        or "transmission" in message
        or not log
    ):
        return message
    first_idx = log[0][1]
    if not entries:
        return _keep_tail_after_heartbeat(message, log, first_idx)
    last_msg_idx = entries[-1][1]
    if log[-1][1] <= last_msg_idx:
        return message  # the message covers the whole log: nothing would be lost
    for command, idx, term in entries:
        pos = idx - first_idx
        if pos < 0 or pos >= len(log):
            return message
        mine = log[pos]
        if mine[1] != idx or mine[2] != term or mine[0] != _as_bytes(command):
            return message  # a conflict: deleting from here on is Raft's rule
    tail = log[last_msg_idx - first_idx + 1 :]
    rewritten = dict(message)
    rewritten["entries"] = [*entries, *tail]
    rewritten["commit_index"] = min(int(message["commit_index"]), last_msg_idx)
    return rewritten


def _keep_tail_after_heartbeat(
    message: Mapping[str, Any], log: LogView, first_idx: int
) -> Mapping[str, Any]:
    """A heartbeat (no entries) that matches at ``prevLogIdx`` but arrives after the log
    has grown past it: late, e.g. delayed on the network. pysyncobj would delete
    everything after ``prevLogIdx``, entries this follower acknowledged included; Raft
    keeps them (no entry of the message conflicts). Same rewrite as for a resend: the
    tail is handed back and the commit capped at what the message vouched for."""
    prev = int(message["prevLogIdx"])
    pos = prev - first_idx
    if pos < 0 or pos >= len(log) - 1:
        return message  # before the log (a snapshot follows) or nothing after it to lose
    mine = log[pos]
    if mine[1] != prev or mine[2] != message.get("prevLogTerm"):
        return message  # a mismatch: pysyncobj answers failure and the leader backs up
    rewritten = dict(message)
    rewritten["entries"] = log[pos + 1 :]
    rewritten["commit_index"] = min(int(message["commit_index"]), prev)
    return rewritten
