"""What the gateway needs from the cluster: the few calls of ``cluster.client.ClusterClient``.

Written as a protocol so tests can hand the gateway an in-process ledger; a running
gateway always uses a real ``ClusterClient`` (leader following, retries with the same
idempotency keys, deadlines).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from cluster.client import SubmitResult
from cluster.config import NodeConfig


class ClusterPort(Protocol):
    async def submit(
        self, commands: list[dict[str, Any]], *, deadline_s: float = 10.0
    ) -> SubmitResult: ...

    async def leader(self) -> NodeConfig | None: ...

    async def get(
        self,
        path: str,
        *,
        prefer_leader: bool = True,
        params: Mapping[str, str | int] | None = None,
        node_id: str | None = None,
        timeout_s: float | None = None,
        leader_only: bool = False,
    ) -> dict[str, Any]: ...

    async def close(self) -> None: ...
