"""Wire framing of Raft messages: stored zlib streams, not compressed ones.

pysyncobj frames every message it sends as ``zlib.compress(pickle.dumps(message), 3)``.
On a small message nearly all of that cost is zlib setting up and tearing down its
compressor (70-90 us on this project's machines, for a 170-byte message). That is paid
for every AppendEntries and every acknowledgement, and it was the largest single cost on
a busy leader's tick thread (12 % of its samples; docs/BENCHMARKS.md, "Raft messages:
what an entry costs the nodes"). Between the peers of a cluster, on a local network, the
bytes that compression saves are cheaper than that CPU.

``stored`` writes the same bytes as a zlib stream of stored (uncompressed) deflate blocks,
in about 1 us: a header, blocks of at most 65,535 bytes, the Adler-32 of the data. Any
``zlib.decompress`` reads it, so a node with this framing and a node without it still
understand each other (a rolling upgrade is safe in both directions). ``install()`` points
pysyncobj's connection module at it; receiving is unchanged.
"""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import pysyncobj.tcp_connection as tcp_connection

_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest" (header checksum ok)
_MAX_BLOCK = 0xFFFF  # a stored block holds at most 65,535 bytes
_BLOCK = struct.Struct("<BHH")  # BFINAL + BTYPE 00 (stored), LEN, NLEN
_ADLER = struct.Struct(">I")


def stored(data: bytes, level: int = 0) -> bytes:
    """``data`` as a zlib stream that ``zlib.decompress`` reads back; ``level`` is accepted
    for the signature of ``zlib.compress`` and ignored."""
    del level
    view = memoryview(data)
    parts = [_HEADER]
    start = 0
    while True:
        chunk = view[start : start + _MAX_BLOCK]
        start += len(chunk)
        final = start >= len(view)
        parts.append(_BLOCK.pack(1 if final else 0, len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(chunk.tobytes())
        if final:
            break
    parts.append(_ADLER.pack(zlib.adler32(data)))
    return b"".join(parts)


# What pysyncobj.tcp_connection calls as ``zlib``: compress is replaced, decompress is not.
_FRAMING = SimpleNamespace(compress=stored, decompress=zlib.decompress)


def install() -> None:
    """Make pysyncobj frame the messages of this process with ``stored`` (idempotent)."""
    tcp_connection.zlib = _FRAMING


def installed() -> bool:
    """Whether this process's pysyncobj connections frame messages with ``stored``."""
    return tcp_connection.zlib is _FRAMING
