"""The state digest: one sha256 over a canonical serialization of the ledger.

Nodes compare digests to prove they hold the same state, so the serialization must not
depend on anything but the state: sections come in a fixed order, records inside a
section are sorted by id, every item is JSON with sorted keys and no spaces, and derived
structures whose layout depends on history (the deadline heap) are left out. Items are
hashed in chunks so that a large state never has to be serialized in one piece.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from itertools import islice

from ledger.events import JSONValue

CHUNK_ITEMS = 4096  # items serialized per json.dumps call


def digest_of(sections: Iterable[tuple[str, Iterable[JSONValue]]]) -> str:
    """sha256 hex of the named sections, each an iterable of JSON-able items."""
    h = hashlib.sha256()
    for name, items in sections:
        h.update(json.dumps(name).encode())
        h.update(b"[")
        iterator = iter(items)
        while chunk := list(islice(iterator, CHUNK_ITEMS)):
            h.update(json.dumps(chunk, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"]")
    return h.hexdigest()
