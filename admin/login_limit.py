"""The sign-in rate limit: slows password guessing per username and per address.

Theory of operation: two sliding windows of ``LOGIN_WINDOW_MS``. Every attempt from an
address counts against ``LOGIN_ATTEMPTS_PER_IP``; every failed attempt for a username
counts against ``LOGIN_FAILURES_PER_USERNAME`` (a success clears that username's
failures). When either is full the attempt is refused before any password is checked,
with the time until the oldest counted attempt leaves the window. The limiter holds at
most ``MAX_TRACKED_LOGIN_KEYS`` keys per kind, dropping the least recently used: memory
stays bounded under a flood of made-up usernames. Time comes in as an argument.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from admin.limits import (
    LOGIN_ATTEMPTS_PER_IP,
    LOGIN_FAILURES_PER_USERNAME,
    LOGIN_WINDOW_MS,
    MAX_TRACKED_LOGIN_KEYS,
)


@dataclass
class _Window:
    limit: int
    entries: OrderedDict[str, deque[int]] = field(default_factory=OrderedDict)

    def _live(self, key: str, now_ms: int) -> deque[int]:
        times = self.entries.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now_ms - LOGIN_WINDOW_MS:
            times.popleft()
        return times

    def retry_after_ms(self, key: str, now_ms: int) -> int:
        """0 when another attempt is allowed; else ms until one is."""
        times = self._live(key, now_ms)
        if len(times) < self.limit:
            return 0
        return times[0] + LOGIN_WINDOW_MS - now_ms

    def add(self, key: str, now_ms: int) -> None:
        times = self._live(key, now_ms)
        times.append(now_ms)
        self.entries[key] = times
        self.entries.move_to_end(key)
        while len(self.entries) > MAX_TRACKED_LOGIN_KEYS:
            self.entries.popitem(last=False)

    def clear(self, key: str) -> None:
        self.entries.pop(key, None)


@dataclass
class LoginLimiter:
    by_ip: _Window = field(default_factory=lambda: _Window(LOGIN_ATTEMPTS_PER_IP))
    by_user: _Window = field(default_factory=lambda: _Window(LOGIN_FAILURES_PER_USERNAME))

    def check(self, ip: str, username: str, now_ms: int) -> int:
        """0 when this attempt may go ahead (and counts it); else ms until one may."""
        wait = max(
            self.by_ip.retry_after_ms(ip, now_ms),
            self.by_user.retry_after_ms(username, now_ms),
        )
        if wait == 0:
            self.by_ip.add(ip, now_ms)
        return wait

    def failed(self, username: str, now_ms: int) -> None:
        self.by_user.add(username, now_ms)

    def succeeded(self, username: str) -> None:
        self.by_user.clear(username)
