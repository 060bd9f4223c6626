"""The history of a chaos run: every client operation and every fault, as JSON lines.

Theory of operation: a client operation is logged twice, Jepsen style: an ``invoke``
record when it starts and one completion record when it ends, sharing the operation's
``id``. The completion is ``ok`` (the system acknowledged it), ``fail`` (the system gave
a definite refusal: the request was refused, or applied as a refusal) or ``unknown``
(every attempt ended without a definite answer: the operation may or may not have taken
effect). A fault injected by the nemesis is a ``fault`` record (``phase`` ``begin`` or
``end``). Every record carries the monotonic time of the run (``mono_s``, seconds since
the history was opened), the wall time (``wall_ms``), the ``process`` (the client) and
the ``op`` kind; client operations also carry their idempotency ``key``, the
``request`` and, on completion, the ``result``.

``History`` is append-only and writes each record to its file as it is made (so a run
that dies still leaves its history behind); ``records`` keeps them in memory for the
checker. ``load_history`` reads a file back.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal

Record = dict[str, Any]
Completion = Literal["ok", "fail", "unknown"]
RECORD_TYPES = ("invoke", "ok", "fail", "unknown", "fault")


class History:
    """An append-only log of invocations, completions and faults."""

    def __init__(self, path: Path | None = None) -> None:
        self.records: list[Record] = []
        self._ids = itertools.count(1)
        self._start_mono = time.monotonic()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, record: Record) -> Record:
        record["mono_s"] = round(time.monotonic() - self._start_mono, 6)
        record["wall_ms"] = time.time_ns() // 1_000_000
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
            self._file.flush()
        return record

    def invoke(
        self,
        process: str,
        op: str,
        request: Mapping[str, Any],
        *,
        key: str | None = None,
        ledger_key: str | None = None,
    ) -> int:
        """Log the start of an operation; returns its id for ``complete``.

        ``key`` is the client's idempotency key, ``ledger_key`` the key the ledger
        records the command under (the gateway scopes client keys to the shopper).
        """
        op_id = next(self._ids)
        record: Record = {
            "type": "invoke",
            "id": op_id,
            "process": process,
            "op": op,
            "request": dict(request),
        }
        if key is not None:
            record["key"] = key
        if ledger_key is not None:
            record["ledger_key"] = ledger_key
        self._append(record)
        return op_id

    def complete(
        self,
        op_id: int,
        outcome: Completion,
        process: str,
        op: str,
        *,
        key: str | None = None,
        request: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
        status: int | None = None,
        attempts: int = 1,
        ambiguous: bool = False,
        error: str | None = None,
    ) -> Record:
        """Log how operation ``op_id`` ended. ``ambiguous``: some attempt may have
        reached the ledger without its answer reaching the client."""
        if outcome not in ("ok", "fail", "unknown"):
            raise ValueError(f"outcome={outcome!r}: expected ok, fail or unknown")
        record: Record = {
            "type": outcome,
            "id": op_id,
            "process": process,
            "op": op,
            "attempts": attempts,
            "ambiguous": ambiguous,
        }
        if key is not None:
            record["key"] = key
        if request is not None:
            record["request"] = dict(request)
        if result is not None:
            record["result"] = dict(result)
        if status is not None:
            record["status"] = status
        if error is not None:
            record["error"] = error
        return self._append(record)

    def fault(self, phase: Literal["begin", "end"], fault: str, **detail: Any) -> Record:
        """Log the beginning or the end of one injected fault."""
        return self._append(
            {"type": "fault", "process": "nemesis", "op": fault, "phase": phase, **detail}
        )


def load_history(path: Path) -> list[Record]:
    """The records of a history file, in order."""
    records: list[Record] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            value = json.loads(line)
            if not isinstance(value, dict) or value.get("type") not in RECORD_TYPES:
                raise ValueError(f"{path}:{n}: not a history record: {line[:120]!r}")
            records.append(value)
    return records
