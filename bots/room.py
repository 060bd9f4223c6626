"""A gateway's waiting room: tickets, admission, and where the queue lives.

Theory of operation: the arithmetic is bots.waiting_room's; this module keeps the cursor
and hands out signed tickets (bots.tickets). Without Redis the room lives in this
process (room id ``l<random>``: its tickets mean nothing to another gateway or to a
restarted one, which refuse them). With ``[bots] redis_url`` the cursor and the ticket
sequence are one hash in Redis, changed only by a Lua script that runs the same
arithmetic atomically, so every gateway hands out one sequence and admits in one order
(room id ``shared``). When Redis fails, new tickets come from the local room (the shop
keeps working, per gateway); a shared ticket cannot be looked up until Redis is back
(503), while admissions already handed out stay valid: they are signed, not stored.

An admission lasts ``admission_ttl_s`` from the moment its ticket was first seen
admitted (the room records that moment per ticket), so polling an old ticket does not
renew it: when it runs out the shopper queues again, at the back. A local room records
at most ``max_tracked_clients`` such moments, the oldest dropped first; an admitted
ticket whose record may have been dropped (numbered at or below the last one dropped)
counts as run out, never as newly admitted.

Places belong to shoppers: a ticket and its admission carry the holder (a keyed hash of
the shopper id, bots.tickets.holder_of), only that shopper may look the ticket up, and a
shopper who asks again while holding a live ticket (not admitted yet, or admitted less
than ``admission_ttl_s`` ago) gets that same ticket back: no second place in line, and
no jump to the back either. The room remembers each holder's ticket (locally at most
``max_tracked_clients`` of them, in Redis one key per holder for a ticket's lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis

from bots import waiting_room as wr
from bots.policy import BotPolicy
from bots.tickets import (
    TICKET_TTL_S,
    Admission,
    InvalidTicket,
    Ticket,
    holder_of,
    read_admission,
    read_ticket,
    sign_admission,
    sign_ticket,
)
from cluster.config import BotsConfig

log = logging.getLogger("bots.room")

SHARED_ROOM = "shared"

# KEYS[1]: the room's hash. ARGV: now, rate, opening ('' = none), op ('issue'|'fresh'|
# 'look'), seq (for 'look'), prefix of the per-ticket admission records, their lifetime
# (ms), the holder's key ('' = none), the new ticket's "<arrived_ms>:<nonce>", the
# admission lifetime (s). Mirrors bots.waiting_room.advance/issue and WaitingRoom._local
# exactly; floats travel as %.17g strings. 'issue' gives the holder's live ticket back
# (one that is not admitted, or admitted less than the admission lifetime ago) instead of
# a new one; 'fresh' always hands out a new one. Returns the ticket's "<arrived>:<nonce>".
_LUA = """
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local opening = nil
if ARGV[3] ~= '' then opening = tonumber(ARGV[3]) end
local h = redis.call('HMGET', KEYS[1], 'issued', 'credit', 'at')
local issued = tonumber(h[1]) or 0
local credit = tonumber(h[2]) or 0
local at = tonumber(h[3])
local start = at
if opening ~= nil and (start == nil or opening > start) then start = opening end
if start == nil then
  credit = issued + 1
elseif opening == nil or now >= opening then
  local dt = now - start
  if dt < 0 then dt = 0 end
  credit = math.min(issued + 1, credit + rate * dt)
end
if at == nil or now > at then at = now end
local seq = tonumber(ARGV[5])
local ident = ARGV[9]
local op = ARGV[4]
if op == 'issue' and ARGV[8] ~= '' then
  local held = redis.call('GET', ARGV[8])
  if held then
    local s, rest = string.match(held, '^(%d+):(.*)$')
    local first = redis.call('GET', ARGV[6] .. s)
    if (not first) or now - tonumber(first) < tonumber(ARGV[10]) then
      seq = tonumber(s)
      ident = rest
      op = 'look'
    end
  end
end
if op == 'issue' or op == 'fresh' then
  if opening ~= nil and now < opening then credit = math.min(credit, issued) end
  issued = issued + 1
  seq = issued
  if ARGV[8] ~= '' then
    redis.call('SET', ARGV[8], seq .. ':' .. ident, 'PX', ARGV[7])
  end
end
local fc = string.format('%.17g', credit)
local fa = string.format('%.17g', at)
redis.call('HSET', KEYS[1], 'issued', issued, 'credit', fc, 'at', fa)
local admitted = math.min(issued, math.floor(credit + 1e-9))
local admitted_at = ''
if seq >= 1 and seq <= admitted then
  local k = ARGV[6] .. seq
  redis.call('SET', k, string.format('%.17g', now), 'NX', 'PX', ARGV[7])
  admitted_at = redis.call('GET', k) or ''
end
return {issued, fc, fa, seq, admitted_at, ident}
"""


class QueueNotOpen(Exception):
    """Too early: tickets are handed out from ``queue_opens_at`` on."""

    def __init__(self, queue_opens_at: float, opens_at: float) -> None:
        super().__init__(f"the queue opens at {queue_opens_at}")
        self.queue_opens_at = queue_opens_at
        self.opens_at = opens_at


class RoomUnavailable(Exception):
    """The shared room (Redis) did not answer in time."""


class AdmissionExpired(Exception):
    """The ticket was admitted more than admission_ttl_s ago."""


@dataclass(frozen=True, slots=True)
class Place:
    """What a shopper holding a ticket is told (the body of /queue answers)."""

    ticket: str
    seq: int
    position: int
    estimated_wait_s: float
    admitted: bool
    admission: str | None
    admission_expires_ms: int | None
    opens_at: float | None

    def body(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket,
            "position": self.position,
            "estimated_wait_s": round(self.estimated_wait_s, 3),
            "admitted": self.admitted,
            "admission": self.admission,
            "admission_expires_at_ms": self.admission_expires_ms,
            "opens_at_ms": None if self.opens_at is None else int(self.opens_at * 1000),
        }


class WaitingRoom:
    """One gateway's view of the queue (see the module docstring)."""

    def __init__(
        self,
        key: bytes,
        policy: BotPolicy,
        config: BotsConfig,
        *,
        redis: Redis | None = None,
        prefix: str = "",
    ) -> None:
        self.key = key
        self.policy = policy
        self.config = config
        self.redis = redis
        self.prefix = prefix
        self.room_id = "l" + secrets.token_hex(6)
        self.cursor = wr.Cursor()  # the local room's
        self.shared = wr.Cursor()  # the shared room's, as last seen (for stats)
        self.opening: float | None = None
        self.redis_ok = redis is not None
        self._admitted_at: OrderedDict[int, float] = OrderedDict()
        self._forgotten_through = 0  # the highest ticket whose record was dropped
        self._holders: OrderedDict[str, Ticket] = OrderedDict()  # the local room's
        self._script = None if redis is None else redis.register_script(_LUA)

    # -- the two rooms -------------------------------------------------------------------

    def _local(self, op: str, seq: int, now: float, opening: float | None) -> tuple[int, float]:
        rate = self.policy.admission_rate
        if op in ("issue", "fresh"):
            self.cursor = wr.issue(self.cursor, now, rate, opening)
            seq = self.cursor.issued
        else:
            self.cursor = wr.advance(self.cursor, now, rate, opening)
        if seq > self.cursor.admitted:
            return seq, 0.0
        first = self._admitted_at.get(seq)
        if first is None:
            if seq <= self._forgotten_through:
                # Its record may have been dropped to keep the table bounded: taken as
                # run out (queue again), never as a new admission, which a shopper could
                # otherwise renew by polling an old ticket once enough others had been.
                return seq, now - self.config.admission_ttl_s
            first = self._admitted_at[seq] = now
        while len(self._admitted_at) > self.config.max_tracked_clients:
            dropped, _ = self._admitted_at.popitem(last=False)
            self._forgotten_through = max(self._forgotten_through, dropped)
        return seq, first

    async def _shared(
        self,
        op: str,
        seq: int,
        now: float,
        opening: float | None,
        holder_key: str = "",
        ident: str = "",
    ) -> tuple[int, float, str]:
        assert self._script is not None
        args = [
            repr(now),
            repr(self.policy.admission_rate),
            "" if opening is None else repr(opening),
            op,
            str(seq),
            f"{self.prefix}queue:admitted:",
            str(TICKET_TTL_S * 1000),
            holder_key,
            ident,
            repr(float(self.config.admission_ttl_s)),
        ]
        try:
            async with asyncio.timeout(self.config.redis_timeout_ms / 1000):
                answer = await self._script(keys=[f"{self.prefix}queue"], args=args)
        except Exception as exc:  # any Redis failure: the caller decides what is left
            if self.redis_ok:
                log.warning("waiting room: Redis failed", extra={"error": str(exc)})
            self.redis_ok = False
            raise RoomUnavailable(str(exc)) from exc
        self.redis_ok = True
        issued, credit, at, seq, admitted_at, held = answer
        self.shared = wr.Cursor(int(issued), float(credit), float(at))
        held = held.decode() if isinstance(held, bytes) else str(held)
        return int(seq), float(admitted_at) if admitted_at else 0.0, held

    # -- what the routes do --------------------------------------------------------------

    def _check_open(self, now: float, opening: float | None) -> None:
        self.opening = opening
        if opening is not None and now < opening - self.config.queue_opens_before_s:
            raise QueueNotOpen(opening - self.config.queue_opens_before_s, opening)

    def _place(
        self, ticket: Ticket, text: str, admitted_at: float, now: float, opening: float | None
    ) -> Place:
        cursor = self.shared if ticket.room == SHARED_ROOM else self.cursor
        rate = self.policy.admission_rate
        if ticket.seq > cursor.admitted or not admitted_at:
            return Place(
                ticket=text,
                seq=ticket.seq,
                position=wr.position(ticket.seq, cursor),
                estimated_wait_s=wr.estimated_wait_s(ticket.seq, cursor, now, rate, opening),
                admitted=False,
                admission=None,
                admission_expires_ms=None,
                opens_at=opening,
            )
        expires_ms = int((admitted_at + self.config.admission_ttl_s) * 1000)
        if expires_ms <= now * 1000:
            raise AdmissionExpired()
        return Place(
            ticket=text,
            seq=ticket.seq,
            position=0,
            estimated_wait_s=0.0,
            admitted=True,
            admission=sign_admission(self.key, ticket, expires_ms),
            admission_expires_ms=expires_ms,
            opens_at=opening,
        )

    def holder(self, user_id: str) -> str:
        """The holder field of ``user_id``'s tickets and admissions."""
        return holder_of(self.key, user_id)

    async def join(self, now: float, opening: float | None, user_id: str) -> Place:
        """``user_id``'s place: the live ticket it holds, else a new one at the back of
        the line (QueueNotOpen when too early)."""
        self._check_open(now, opening)
        fresh = Ticket(self.room_id, 0, int(now * 1000), secrets.token_hex(8),
                       self.holder(user_id))  # fmt: skip
        if self._script is not None:
            with contextlib.suppress(RoomUnavailable):
                return await self._join_shared(fresh, now, opening)
        return self._join_local(fresh, now, opening)

    def _join_local(self, fresh: Ticket, now: float, opening: float | None) -> Place:
        held = self._holders.get(fresh.holder)
        if held is not None and held.arrived_ms / 1000 + TICKET_TTL_S > now:
            _, admitted_at = self._local("look", held.seq, now, opening)
            with contextlib.suppress(AdmissionExpired):
                place = self._place(held, sign_ticket(self.key, held), admitted_at, now, opening)
                self._holders.move_to_end(fresh.holder)
                return place
        seq, admitted_at = self._local("issue", 0, now, opening)
        ticket = replace(fresh, seq=seq)
        self._holders[fresh.holder] = ticket
        self._holders.move_to_end(fresh.holder)
        while len(self._holders) > self.config.max_tracked_clients:
            self._holders.popitem(last=False)
        return self._place(ticket, sign_ticket(self.key, ticket), admitted_at, now, opening)

    async def _join_shared(self, fresh: Ticket, now: float, opening: float | None) -> Place:
        holder_key = f"{self.prefix}queue:holder:{fresh.holder}"
        ident = f"{fresh.arrived_ms}:{fresh.nonce}"
        for op in ("issue", "fresh"):  # 'fresh' only when the held admission just ran out
            seq, admitted_at, held = await self._shared(op, 0, now, opening, holder_key, ident)
            arrived, _, nonce = held.partition(":")
            if not (arrived.isdigit() and len(nonce) == len(fresh.nonce)):
                continue  # not a record of ours: hand out a new ticket
            ticket = Ticket(SHARED_ROOM, seq, int(arrived), nonce, fresh.holder)
            with contextlib.suppress(AdmissionExpired):
                return self._place(ticket, sign_ticket(self.key, ticket), admitted_at, now,
                                   opening)  # fmt: skip
        raise RoomUnavailable("the shared room gave no usable ticket")

    async def look(self, text: str, now: float, opening: float | None, user_id: str) -> Place:
        """Where ticket ``text`` stands, for its holder only (InvalidTicket,
        RoomUnavailable, AdmissionExpired)."""
        ticket = read_ticket(self.key, text, now=now)
        if ticket.holder != self.holder(user_id):
            raise InvalidTicket("this ticket is another shopper's; take your own with POST /queue")
        self.opening = opening
        if ticket.room == SHARED_ROOM and self._script is not None:
            _, admitted_at, _ = await self._shared("look", ticket.seq, now, opening)
        elif ticket.room == self.room_id:
            if ticket.seq > self.cursor.issued:
                raise InvalidTicket("not a ticket of this room")
            _, admitted_at = self._local("look", ticket.seq, now, opening)
        else:
            raise InvalidTicket("the ticket is from another gateway's queue; take a new one")
        return self._place(ticket, text, admitted_at, now, opening)

    async def refresh(self, now: float, opening: float | None) -> None:
        """Bring the numbers of ``stats`` up to date (the shared line changes at every
        gateway, the local one with time)."""
        self.opening = opening
        self.cursor = wr.advance(self.cursor, now, self.policy.admission_rate, opening)
        if self._script is not None:
            with contextlib.suppress(RoomUnavailable):
                await self._shared("look", 0, now, opening)

    def admission(self, text: str, now: float) -> Admission:
        """The admission token ``text``, checked (InvalidTicket when not good)."""
        return read_admission(self.key, text, now=now)

    def stats(self) -> dict[str, Any]:
        """The queue's numbers for the console (the shared room's when there is one)."""
        cursor = self.shared if self._script is not None and self.redis_ok else self.cursor
        return {
            "issued": cursor.issued,
            "admitted": cursor.admitted,
            "waiting": cursor.waiting,
            "opens_at": self.opening,
            "admission_rate": self.policy.admission_rate,
        }
