"""RaftNode in-process: state survives restarts (also across the dump/trim crash window),
dumps hold only the ledger, nothing leaves a node before its journal is synced, and a
non-leader refuses proposals instead of forwarding them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.poller import createPoller
from pysyncobj.transport import TCPTransport

from cluster.config import ClusterConfig
from ledger import Applied
from ledger.codec import encode_event
from node.dump import read_dump, write_dump
from node.feed import Feed
from node.metrics import NodeMetrics
from node.raft import DUMP_FILE, RaftNode, SyncingTransport, sync_obj_conf
from tests.support.cluster import in_process_config

DEADLINE_S = 20.0


def make_config(tmp_path: Path, n_nodes: int = 1, **raft: int) -> ClusterConfig:
    return in_process_config(tmp_path, n_nodes, **raft)


@pytest.fixture
def nodes() -> Iterator[Callable[[ClusterConfig, str], RaftNode]]:
    """Starts RaftNodes in this process; stops every one of them at the end."""
    started: list[RaftNode] = []

    def start(config: ClusterConfig, node_id: str) -> RaftNode:
        node = RaftNode(
            config, node_id, feed=Feed(10_000, encode=encode_event), metrics=NodeMetrics()
        )
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        if node._tick_thread is not None and node._tick_thread.is_alive():
            node.stop()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def propose(node: RaftNode, commands: list[dict[str, Any]]) -> tuple[Any, int]:
    done = threading.Event()
    box: dict[str, Any] = {}

    def callback(result: Any, fail_reason: int) -> None:
        box.update(result=result, fail_reason=fail_reason)
        done.set()

    at_ms = int(time.time() * 1000)
    node.propose(at_ms, [{**c, "at_ms": at_ms} for c in commands], callback)
    assert done.wait(DEADLINE_S), "no callback"
    return box["result"], box["fail_reason"]


def commit(node: RaftNode, commands: list[dict[str, Any]]) -> Applied:
    result, fail_reason = propose(node, commands)
    assert fail_reason == FAIL_REASON.SUCCESS
    assert isinstance(result, Applied)
    return result


PRODUCT = {
    "type": "create_product",
    "key": "create-p1",
    "product_id": "p1",
    "name": "Lamp",
    "price_minor": 1500,
    "total_stock": 1000,
}


def reserve(n: int) -> dict[str, Any]:
    return {
        "type": "reserve",
        "key": f"r{n}",
        "user_id": f"u{n}",
        "product_id": "p1",
        "quantity": 1,
    }


def reserved(node: RaftNode) -> int:
    with node.reading() as ledger:
        product = ledger.product("p1")
        return 0 if product is None else product.reserved


def test_state_survives_a_restart(
    tmp_path: Path, nodes: Callable[[ClusterConfig, str], RaftNode]
) -> None:
    config = make_config(tmp_path)
    node = nodes(config, "n1")
    wait_until(node.is_leader, "leadership")
    commit(node, [PRODUCT])
    for n in range(20):
        commit(node, [reserve(n)])
    digest = node.digest()
    node.stop()
    again = nodes(config, "n1")
    with again.reading() as ledger:
        assert ledger.index == 21
    assert again.digest() == digest


def test_a_dump_holds_the_ledger_and_nothing_else(
    tmp_path: Path, nodes: Callable[[ClusterConfig, str], RaftNode]
) -> None:
    config = make_config(tmp_path, log_compaction_entries=10)
    node = nodes(config, "n1")
    assert node.dumped_attributes() == {"_ledger", "_SyncObj__enabledCodeVersion"}
    wait_until(node.is_leader, "leadership")
    commit(node, [PRODUCT])
    for n in range(30):
        commit(node, [reserve(n)])
    dump_path = config.node_data_dir("n1") / DUMP_FILE
    wait_until(dump_path.exists, "a dump")
    wait_until(lambda: node.status().log_size < 30, "the journal trimmed after the dump")
    state, last, before_last, _members = read_dump(dump_path)
    assert set(state) == {"_ledger", "_SyncObj__enabledCodeVersion"}
    assert last[1] == before_last[1] + 1
    node.stop()
    again = nodes(config, "n1")
    assert reserved(again) == 30


def test_restart_between_dump_and_journal_trim_keeps_committed_entries(
    tmp_path: Path, nodes: Callable[[ClusterConfig, str], RaftNode]
) -> None:
    # pysyncobj wipes the journal when it does not start with the dump's last entries:
    # a crash after the dump's rename and before the trim lost every later entry.
    config = make_config(tmp_path)
    node = nodes(config, "n1")
    wait_until(node.is_leader, "leadership")
    commit(node, [PRODUCT])
    for n in range(10):
        commit(node, [reserve(n)])
    # The dump a compaction would write now (pysyncobj's format) - but no trim follows.
    journal = node._journal
    with node.reading():
        state = {k: node.__dict__[k] for k in node.dumped_attributes()}
        data = (state, journal[-1], journal[-2], node.otherNodes | {node.selfNode})
        write_dump(config.node_data_dir("n1") / DUMP_FILE, data, durable=True)
    for n in range(10, 25):
        commit(node, [reserve(n)])
    node.stop()
    again = nodes(config, "n1")
    assert reserved(again) == 25
    assert again._journal[0] == data[2]  # realigned to start at the dump


def test_a_node_that_does_not_lead_refuses_instead_of_forwarding(
    tmp_path: Path, nodes: Callable[[ClusterConfig, str], RaftNode]
) -> None:
    config = make_config(tmp_path, n_nodes=3)
    node = nodes(config, "n1")  # alone among three: it can never lead
    result, fail_reason = propose(node, [PRODUCT])
    assert (result, fail_reason) == (None, FAIL_REASON.NOT_LEADER)
    assert reserved(node) == 0


def test_nothing_is_acknowledged_or_counted_before_it_is_on_disk(
    tmp_path: Path,
    nodes: Callable[[ClusterConfig, str], RaftNode],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A follower's acknowledgement (and any message but the leader's append_entries) must
    # find its journal synced; and every tick, at whose start the leader counts its own
    # copy towards the commit, must start with a synced journal.
    sent: list[tuple[str, str]] = []
    unsynced: list[tuple[str, str]] = []
    real_send = TCPTransport.send
    real_tick = RaftNode.doTick

    def checking_send(self: Any, node: Any, message: Any) -> Any:
        owner = self._syncObj
        entry = (owner.node_id, str(message.get("type")))
        sent.append(entry)
        if owner._journal.dirty() and entry[1] != "append_entries":
            unsynced.append(entry)
        return real_send(self, node, message)

    def checking_tick(self: Any, *args: Any) -> Any:
        if self._journal.dirty():
            unsynced.append((self.node_id, "tick"))
        return real_tick(self, *args)

    monkeypatch.setattr(TCPTransport, "send", checking_send)
    monkeypatch.setattr(RaftNode, "doTick", checking_tick)
    config = make_config(tmp_path, n_nodes=3)
    members = [nodes(config, f"n{i}") for i in (1, 2, 3)]
    wait_until(lambda: any(m.is_leader() for m in members), "a leader")
    leader = next(m for m in members if m.is_leader())
    commit(leader, [PRODUCT])
    for n in range(20):
        commit(leader, [reserve(n)])
    wait_until(lambda: len({m.digest() for m in members}) == 1, "all nodes equal")
    kinds = {kind for _, kind in sent}
    assert {"append_entries", "next_node_idx"} <= kinds
    assert unsynced == []


def test_pysyncobj_is_configured_from_cluster_toml(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        n_nodes=3,
        append_entries_period_ms=20,
        election_timeout_min_ms=200,
        election_timeout_max_ms=400,
        log_compaction_entries=123,
    )
    data_dir = config.node_data_dir("n2")
    conf = sync_obj_conf(config, "n2", journal_file=data_dir / "j", dump_file=data_dir / "d")
    assert conf.appendEntriesUseBatch is False
    assert conf.commandsWaitLeader is False
    assert conf.autoTick is False
    assert conf.dynamicMembershipChange is True
    assert (conf.appendEntriesPeriod, conf.raftMinTimeout, conf.raftMaxTimeout) == (
        0.02,
        0.2,
        0.4,
    )
    assert conf.logCompactionMinEntries == 123
    assert conf.password and len(conf.password) >= 32
    assert conf.journalFile == str(data_dir / "j") and conf.fullDumpFile == str(data_dir / "d")
    assert conf.bindAddress == str(config.node("n2").raft)


def test_acknowledgements_wait_for_the_sync_and_keep_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trace: list[str] = []

    class FakeSyncObj:
        conf = SyncObjConf(bindAddress="127.0.0.1:0")
        _poller = createPoller("select")

        def addOnTickCallback(self, callback: Any) -> None:  # pysyncobj's interface
            return None

    def recording_send(self: Any, node: Any, message: Any) -> bool:
        trace.append(f"send {message['type']} {message.get('n', '')}".strip())
        return True

    monkeypatch.setattr(TCPTransport, "send", recording_send)
    transport = SyncingTransport(FakeSyncObj(), None, [], sync=lambda: trace.append("sync"))

    transport.send("n1", {"type": "next_node_idx", "n": 1})
    transport.send("n1", {"type": "next_node_idx", "n": 2})
    assert trace == []  # held: nothing acknowledged before the journal is synced
    transport.release()
    assert trace == ["sync", "send next_node_idx 1", "send next_node_idx 2"]

    trace.clear()
    transport.send("n2", {"type": "append_entries"})
    assert trace == ["send append_entries"]  # the leader's replication: no wait

    trace.clear()
    transport.send("n1", {"type": "next_node_idx", "n": 3})
    transport.send("n1", {"type": "response_vote"})
    assert trace == ["sync", "send next_node_idx 3", "send response_vote"]
