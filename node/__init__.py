"""One Raft member of a flashsale cluster (``python -m node --config PATH NODE_ID``).

``raft`` (pysyncobj SyncObj holding the ledger), ``journal`` and ``dump`` (durable log and
snapshots), ``proposals`` (asyncio <-> tick-thread bridge), ``feed`` (committed events),
``expiry`` and ``settings_sync`` (the leader's periodic duties), ``api`` (internal HTTP
API), ``metrics``, ``server`` (the process). See docs/DURABILITY.md.
"""
