"""Defences against bots: rate limits, proof of work, heuristics and a waiting room.

Pure decisions live here (token buckets, scoring, queue arithmetic, tickets); the
gateway's middlewares (gateway.defences, gateway.admission) apply them to requests.
docs/BOTS.md explains each defence and its numbers.
"""
