"""One Raft member: pysyncobj replicating the ledger, with durable storage.

Theory of operation: ``RaftNode`` is a pysyncobj ``SyncObj`` whose only replicated
method, ``apply_batch(at_ms, commands)``, applies one command batch (one Raft entry) to
the ledger on every node in log order, hands the batch's events to the feed and returns
the ledger's ``Applied`` (the leader's proposer gets it through its callback). It never
raises: a replicated method that raises is retried every tick and wedges the cluster.

pysyncobj runs on one "tick" thread, which this class drives itself (``autoTick`` off):
``start()`` runs the first tick synchronously (it loads the dump and replays the
committed journal, so the API never serves a half-loaded state), then a thread ticks
until ``stop()``, which destroys the SyncObj (journal synced and closed).

Storage (see docs/DURABILITY.md): the journal is ``node.journal.DurableJournal`` (handed
to pysyncobj's constructor in place of its FileJournal), the dump is ``node.dump.DumpFile``
(in place of its Serializer). The transport holds a follower's acknowledgements until the
end of the tick, when the tick loop syncs the journal (one fsync for everything the tick
received) and then sends them; every tick thus starts with a clean journal, and the
leader, which counts its own copy at the start of a tick, never counts an entry that is
not on its disk: an entry is on disk on a majority before it counts as committed. The
leader's fsync overlaps the followers' (it replicates before it syncs).
The load path is wrapped so that a dump newer than the journal's start realigns the
journal instead of wiping it.

What goes into a dump: pysyncobj pickles the attributes of the object that did not exist
when ``SyncObj.__init__`` recorded them. Everything of this class except the ledger is
set before that call, the ledger after it; ``dumped_attributes()`` checks it.

Threads: the ledger is changed only on the tick thread, under ``_state_lock``; the event
loop reads it under the same lock (``reading()``). Raft status is copied into an
immutable ``RaftStatus`` after every tick, so the loop never touches pysyncobj's state.
Proposals are only accepted while leader: ``_checkCommandsToApply`` refuses queued
commands on a non-leader instead of forwarding them (forwarded calls lose callbacks).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.syncobj as syncobj_module
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.transport import TCPTransport

from cluster.auth import raft_password
from cluster.config import ClusterConfig, HostPort, NodeConfig
from ledger import Applied, Ledger, Settings
from node import wire
from node.dump import DumpFile
from node.feed import Feed
from node.journal import DurableJournal
from node.log_matching import keep_matching_tail
from node.metrics import NodeMetrics

log = logging.getLogger("node.raft")

TICK_WAIT_S = 0.01  # longest wait for socket events in one tick (heartbeats stay on time)
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # above any entry: pysyncobj's entry-splitting path is buggy
SNAPSHOT_CHUNK_BYTES = 1024 * 1024  # dump bytes per message when a follower needs a snapshot
SOCKET_BUFFER_BYTES = 1024 * 1024  # Raft socket send/receive buffers
MAX_QUEUED_COMMANDS = 4096  # pysyncobj's command queue (proposals are bounded before it)
CONNECTION_RETRY_S = 0.25  # reconnect to a lost peer this often (pysyncobj default: 5 s)
LEADER_FALLBACK_FACTOR = 4  # a leader not hearing a majority for 4 max election timeouts steps down
MIN_LEADER_FALLBACK_S = 2.0
BIND_WAIT_S = 10.0  # a restarting node waits this long for its Raft port to be free
EXIT_DURABILITY_FAILURE = 70  # exit status when an fsync fails (the kernel may have lost data)
JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"


class _QuietResend(logging.Filter):
    """Drops pysyncobj's "truncating already-applied log entries" record while a resent
    append_entries whose tail node.log_matching kept is being applied (tick thread)."""

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and "already-applied" in str(record.msg))


_QUIET_RESEND = _QuietResend()
logging.getLogger(syncobj_module.__name__).addFilter(_QUIET_RESEND)

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_REPLICATED_ATTRIBUTES = frozenset({"_ledger", "_SyncObj__enabledCodeVersion"})
_construction_lock = threading.Lock()  # guards the swap of pysyncobj's journal factory


@dataclass(frozen=True, slots=True)
class PartnerStatus:
    id: str
    raft: str
    api: str | None
    connected: bool
    match_index: int | None  # known on the leader only


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """A copy of the node's Raft state, taken on the tick thread after every tick."""

    role: str  # leader | follower | candidate
    leader_id: str | None
    leader_api: str | None
    term: int
    commit_index: int
    last_applied: int
    log_size: int
    has_quorum: bool
    partners: tuple[PartnerStatus, ...]


def sync_obj_conf(
    config: ClusterConfig,
    node_id: str,
    *,
    journal_file: Path,
    dump_file: Path,
    on_state_changed: Callable[[int, int], None] | None = None,
) -> SyncObjConf:
    """pysyncobj's configuration for one node, from cluster.toml."""
    r = config.raft
    me = config.node(node_id)
    min_timeout_s = r.election_timeout_min_ms / 1000
    max_timeout_s = r.election_timeout_max_ms / 1000
    options: dict[str, Any] = {
        "password": raft_password(config.secret),
        "autoTick": False,
        "appendEntriesUseBatch": False,  # send each entry at once: ~1 ms commits, not ~period
        "appendEntriesPeriod": r.append_entries_period_ms / 1000,
        "raftMinTimeout": min_timeout_s,
        "raftMaxTimeout": max_timeout_s,
        "connectionTimeout": max(3.5, 2 * max_timeout_s),
        "connectionRetryTime": CONNECTION_RETRY_S,
        "leaderFallbackTimeout": max(MIN_LEADER_FALLBACK_S, LEADER_FALLBACK_FACTOR * max_timeout_s),
        "commandsWaitLeader": False,
        "commandsQueueSize": MAX_QUEUED_COMMANDS,
        "appendEntriesBatchSizeBytes": MAX_ENTRY_BYTES,
        "logCompactionBatchSize": SNAPSHOT_CHUNK_BYTES,
        "logCompactionMinEntries": r.log_compaction_entries,
        "sendBufferSize": SOCKET_BUFFER_BYTES,
        "recvBufferSize": SOCKET_BUFFER_BYTES,
        "journalFile": str(journal_file),
        "fullDumpFile": str(dump_file),
        "dynamicMembershipChange": True,
        "bindAddress": str(me.raft),
        "maxBindRetries": 1,  # the port was checked free just before (see wait_for_port)
        "onStateChanged": on_state_changed,
    }
    conf = SyncObjConf(**options)
    unknown = [k for k in options if not hasattr(conf, k)]
    if unknown:  # SyncObjConf ignores unknown keywords silently
        raise RuntimeError(f"pysyncobj does not know the options {unknown}")
    conf.validate()
    return conf


def desired_settings(config: ClusterConfig) -> Settings:
    """The ledger settings cluster.toml asks for (node.settings_sync proposes them)."""
    return Settings(
        payment_ttl_ms=config.ledger.payment_ttl_s * 1000,
        retention_ms=config.ledger.retention_s * 1000,
    )


def wait_for_port(address: HostPort, timeout_s: float) -> None:
    """Wait until ``address`` can be bound (a killed predecessor may still hold it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address.host, address.port))
                return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"Raft address {address} is not free: {exc}") from None
        time.sleep(0.1)


class SyncingTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport, with messages ordered behind the journal's fsync.

    A follower's acknowledgement (``next_node_idx``) is held back until ``release()``,
    which syncs the journal first and then sends what was held, in order. The tick loop
    releases after every tick, so all the entries a follower read in one tick share one
    fsync (group commit), and no acknowledgement leaves before what it acknowledges is on
    disk. Any other message releases the held ones first (order is kept) and is synced
    behind, except the leader's own ``append_entries``: they go out at once, so the
    leader's fsync overlaps the followers' (Raft allows it: a leader only has to be
    durable before it counts itself, which it does at the start of a tick, after the tick
    loop's release).
    """

    def __init__(
        self,
        syncObj: Any,  # pysyncobj's parameter names: it passes them positionally
        selfNode: Any,
        otherNodes: Any,
        *,
        sync: Callable[[], None],
    ) -> None:
        self._sync = sync
        self._held: list[tuple[Any, Any]] = []
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "next_node_idx":
            self._held.append((node, message))
            return True
        if kind != "append_entries" or self._held:
            self.release()
        return bool(super().send(node, message))

    def held_count(self) -> int:
        """How many acknowledgements are held (a mark for ``cap_acks_since``)."""
        return len(self._held)

    def cap_acks_since(self, mark: int, node: Any, next_index: int) -> None:
        """Lower the success acknowledgements to ``node`` held since ``mark`` so that they
        claim entries up to ``next_index - 1`` only (node.log_matching)."""
        for i in range(mark, len(self._held)):
            to, message = self._held[i]
            if (
                to is node
                and message.get("type") == "next_node_idx"
                and message.get("success")
                and message.get("next_node_idx", 0) > next_index
            ):
                self._held[i] = (to, {**message, "next_node_idx": next_index})

    def release(self) -> None:
        """Sync the journal, then send the acknowledgements held since the last release."""
        self._sync()
        held, self._held = self._held, []
        for node, message in held:
            super().send(node, message)


class RaftNode(SyncObj):  # type: ignore[misc]
    """A Raft member holding the ledger; see the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        node_id: str,
        *,
        feed: Feed,
        metrics: NodeMetrics,
    ) -> None:
        wire.install()  # uncompressed framing of Raft messages: see node.wire
        me = config.node(node_id)
        data_dir = config.node_data_dir(node_id)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)  # journal and dump are pickles: nobody else may write them
        durable = config.durability == "fsync"
        # Set before SyncObj.__init__: recorded as not replicated, never dumped.
        self.config = config
        self.node_id = node_id
        self._me = me
        self._feed = feed
        self._metrics = metrics
        self._nodes_by_raft = {str(n.raft): n for n in config.nodes}
        self._state_lock = threading.Lock()
        self._stop_ticking = threading.Event()
        self._tick_thread: threading.Thread | None = None
        self._transport: SyncingTransport | None = None
        self._status = RaftStatus("follower", None, None, 0, 0, 0, 0, False, ())
        self._journal = DurableJournal(
            data_dir / JOURNAL_FILE,
            durability=config.durability,
            on_sync=metrics.journal_sync_seconds.observe,
        )
        self._dump = DumpFile(
            data_dir / DUMP_FILE, durable=durable, chunk_bytes=SNAPSHOT_CHUNK_BYTES
        )
        conf = sync_obj_conf(
            config,
            node_id,
            journal_file=data_dir / JOURNAL_FILE,
            dump_file=data_dir / DUMP_FILE,
            on_state_changed=self._on_state_changed,
        )
        wait_for_port(me.raft, BIND_WAIT_S)
        # The initial members: every node of the config but the joining ones (they join
        # through a membership change, which the journal or the dump then remembers).
        partners = [str(n.raft) for n in config.nodes if n.id != node_id and not n.joining]

        def transport(sync_obj: Any, self_node: Any, other_nodes: Any) -> SyncingTransport:
            self._transport = SyncingTransport(
                sync_obj, self_node, other_nodes, sync=self._sync_journal
            )
            return self._transport

        with _construction_lock:
            original = syncobj_module.createJournal
            syncobj_module.createJournal = lambda _path: self._journal
            try:
                super().__init__(str(me.raft), partners, conf, transportClass=transport)
            finally:
                syncobj_module.createJournal = original
        self._SyncObj__serializer = self._dump
        # Set after SyncObj.__init__: replicated state, pickled into every dump. A fresh
        # ledger has the default settings on every node whatever its config says (else
        # nodes with different configs would replay the same log differently);
        # cluster.toml's [ledger] reaches the state through a Configure command.
        self._ledger = Ledger(Settings())
        dumped = self.dumped_attributes()
        if dumped != _REPLICATED_ATTRIBUTES:
            raise RuntimeError(f"dumps would hold {sorted(dumped)}, not only the ledger")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load the state (dump, then committed journal entries), then tick on a thread."""
        self._sync_journal()  # pysyncobj's first no-op entry, added by its constructor
        self.doTick(0.0)
        self._release()
        self._publish_status()
        self._tick_thread = threading.Thread(
            target=self._tick_forever, name=f"raft-tick-{self.node_id}", daemon=True
        )
        self._tick_thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking, then close connections and the journal (synced)."""
        self._stop_ticking.set()
        if self._tick_thread is not None:
            self._tick_thread.join(timeout_s)
            if self._tick_thread.is_alive():
                log.error("raft tick thread did not stop", extra={"timeout_s": timeout_s})
        self._dump.close()
        self.destroy()  # autoTick is off: tears down transport and journal right here

    def _tick_forever(self) -> None:
        while not self._stop_ticking.is_set():
            try:
                self.doTick(TICK_WAIT_S)
            except Exception:
                log.exception("raft tick failed")
                time.sleep(TICK_WAIT_S)
            try:  # even after a failed tick: the next one must start with a synced journal
                self._release()
                self._publish_status()
            except Exception:
                log.exception("raft end-of-tick work failed")

    def _release(self) -> None:
        """End of a tick: journal synced, then held acknowledgements sent."""
        if self._transport is not None:
            self._transport.release()
        else:
            self._sync_journal()

    def _sync_journal(self) -> None:
        try:
            self._journal.sync()
        except OSError:
            log.critical("journal fsync failed: stopping the node", exc_info=True)
            os._exit(EXIT_DURABILITY_FAILURE)

    # -- the replicated state machine ---------------------------------------------------

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, at_ms: int, commands: list[dict[str, Any]]) -> Applied | None:
        """Apply one committed batch (runs on every node, in log order; never raises)."""
        started = time.perf_counter()
        try:
            with self._state_lock:
                applied = self._ledger.apply_encoded(at_ms, commands)
            self._feed.publish(applied.index, applied.events)
        except Exception:
            log.critical("apply raised: the batch is skipped on every node", exc_info=True)
            return None
        m = self._metrics
        m.apply_seconds.observe(time.perf_counter() - started)
        m.commits.inc()
        m.commands.inc(len(commands))
        m.batch_commands.observe(len(commands))
        return applied

    def propose(
        self,
        at_ms: int,
        commands: list[dict[str, Any]],
        callback: Callable[[Applied | None, int], None],
    ) -> None:
        """Queue one batch for the log (thread-safe). ``callback(result, fail_reason)``
        runs on the tick thread; it must not block and must not raise."""
        self.apply_batch(at_ms, commands, callback=callback)

    def change_membership(
        self, action: str, raft: str, callback: Callable[[Any, int], None]
    ) -> None:
        """Queue a membership change (``add``/``remove`` of the node at Raft address
        ``raft``); thread-safe. ``callback(None, fail_reason)`` runs on the tick thread
        when the change entry is committed or refused. The leader switches to the new
        member set when it appends the entry, the others when they receive it."""
        if action == "add":
            self.addNodeToCluster(raft, callback=callback)
        elif action == "remove":
            self.removeNodeFromCluster(raft, callback=callback)
        else:
            raise ValueError(f"action={action!r}: expected 'add' or 'remove'")

    def learn_node(self, node: NodeConfig) -> None:
        """Name the node at ``node.raft`` in the status (a node the config lacks)."""
        # Mutated in place, never reassigned: a new attribute would be dumped.
        self._nodes_by_raft.setdefault(str(node.raft), node)

    def _checkCommandsToApply(self) -> None:
        if self._isLeader():
            SyncObj._checkCommandsToApply(self)
            return
        # Never forward to the leader (forwarded calls lose their callbacks): refuse.
        pending = self._SyncObj__commandsQueue
        while True:
            try:
                _command, callback = pending.get_nowait()
            except queue.Empty:
                return
            self._SyncObj__callErrCallback(FAIL_REASON.NOT_LEADER, callback)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        # pysyncobj binds this name as its transport callback in SyncObj.__init__, so the
        # override sees every message first. A resent append_entries must not drop
        # entries this follower already acknowledged (node.log_matching).
        if isinstance(message, dict) and message.get("type") == "append_entries":
            rewritten = keep_matching_tail(message, self._journal)
            if rewritten is not message:
                self._metrics.tails_kept.inc()
                # pysyncobj still deletes and re-adds the tail (the journal writes nothing
                # for it) and would log that as a possible divergence: it is not one.
                # pysyncobj acknowledges up to the end of the entries it was handed, which
                # now include the kept tail; the leader vouched only for its own entries,
                # and the tail may still conflict with its log: acknowledge only those.
                transport = self._transport
                mark = transport.held_count() if transport is not None else 0
                _QUIET_RESEND.active = True
                try:
                    SyncObj._SyncObj__onMessageReceived(self, node, rewritten)
                finally:
                    _QUIET_RESEND.active = False
                if transport is not None:
                    sent = message["entries"]
                    vouched = sent[-1][1] if sent else int(message["prevLogIdx"])
                    transport.cap_acks_since(mark, node, vouched + 1)
                return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        if clearJournal:  # a snapshot from the leader replaces everything
            try:
                data = self._dump.deserialize()
            except Exception:
                log.critical("cannot read the snapshot received from the leader", exc_info=True)
                return
        else:  # start-up: the dump must load, and the journal must keep its entries
            data = self._dump.deserialize()
            self._journal.align_with_snapshot(data[2], data[1])
        self._dump.preload(data)
        with self._state_lock:
            SyncObj._SyncObj__loadDumpFile(self, clearJournal)  # logs and swallows errors
            index = self._ledger.index
        if self.raftLastApplied != data[1][1]:
            if not clearJournal:  # replaying the journal onto a fresh ledger would diverge
                raise RuntimeError(f"the dump {self._dump.path} could not be loaded")
            log.critical("the snapshot received from the leader could not be loaded")
            return
        self._feed.reset(index)
        log.info(
            "state loaded from a dump",
            extra={"ledger_index": index, "raft_index": data[1][1], "from_leader": clearJournal},
        )

    def dumped_attributes(self) -> set[str]:
        """The attribute names pysyncobj pickles into a dump."""
        return set(self.__dict__) - set(self._SyncObj__properies)

    # -- status and reads (any thread) ------------------------------------------------------

    def _on_state_changed(self, old: int, new: int) -> None:
        log.info(
            "raft role changed",
            extra={"from_role": _ROLES.get(old), "to_role": _ROLES.get(new)},
        )

    def _publish_status(self) -> None:
        s = self.getStatus()
        partners = []
        for node in sorted(self.otherNodes, key=lambda n: str(n.id)):
            raft_id = str(node.id)
            known = self._nodes_by_raft.get(raft_id)
            partners.append(
                PartnerStatus(
                    id=known.id if known else raft_id,
                    raft=raft_id,
                    api=str(known.api) if known else None,
                    connected=self.isNodeConnected(node),
                    match_index=s.get("match_idx_server_" + raft_id),
                )
            )
        leader = s["leader"]
        leader_node = self._nodes_by_raft.get(str(leader.id)) if leader is not None else None
        status = RaftStatus(
            role=_ROLES.get(s["state"], "follower"),
            leader_id=leader_node.id if leader_node else (str(leader.id) if leader else None),
            leader_api=str(leader_node.api) if leader_node else None,
            term=int(s["raft_term"]),
            commit_index=int(s["commit_idx"]),
            last_applied=int(s["last_applied"]),
            log_size=int(s["log_len"]),
            has_quorum=bool(s["has_quorum"]),
            partners=tuple(partners),
        )
        self._status = status

    def status(self) -> RaftStatus:
        """The Raft state as of the last tick."""
        return self._status

    def is_leader(self) -> bool:
        return self._status.role == "leader"

    def leader(self) -> NodeConfig | None:
        """The leader this node knows of, when it is a node of the config (or learned)."""
        leader_id = self._status.leader_id
        for n in list(self._nodes_by_raft.values()):
            if n.id == leader_id:
                return n
        return None

    @contextmanager
    def reading(self) -> Iterator[Ledger]:
        """The ledger, held still (the tick thread waits) for the duration of a read."""
        with self._state_lock:
            yield self._ledger

    def next_deadline_ms(self) -> int | None:
        """The ledger's earliest pending hold expiry or payment deadline."""
        with self._state_lock:
            return self._ledger.next_deadline_ms()

    def settings(self) -> Settings:
        """The ledger's current (replicated) settings."""
        with self._state_lock:
            return self._ledger.settings

    def digest(self) -> str:
        """The ledger's digest (the ledger caches it per index)."""
        with self._state_lock:
            ledger = self._ledger
            return ledger.digest()

    def data_dir(self) -> Path:
        return self.config.node_data_dir(self.node_id)
