"""What the console needs from the cluster: the few calls of ``cluster.client.ClusterClient``.

The console is written against this protocol so that its tests can hand it an
in-process cluster; in a running console it is always a real ``ClusterClient``.
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

    async def get(
        self,
        path: str,
        *,
        prefer_leader: bool = True,
        params: Mapping[str, str | int] | None = None,
        node_id: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]: ...

    async def change_membership(
        self, action: str, node: NodeConfig, *, deadline_s: float = 15.0
    ) -> dict[str, Any]: ...

    async def close(self) -> None: ...
