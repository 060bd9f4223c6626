"""Chaos testing: sell through crashes, pauses and partitions, then judge the history.

``flashsale chaos run`` (``chaos.run.run_chaos``) starts a cluster (``chaos.topology``,
``chaos.launcher``, ``chaos.proxy``, ``chaos.routed_node``), drives a sale through the
gateways (``chaos.workload``) while ``chaos.nemesis`` injects faults from a seeded
schedule, records every operation (``chaos.history``) and the committed log
(``chaos.observer``), and hands both to the pure ``chaos.checker``. The scenarios are in
``chaos.scenarios``; docs/RELIABILITY.md says what a verdict proves.
"""
