"""Heuristics: a score per request from what it looks like and what its client did.

Theory of operation: ``score`` is pure. It adds the weight of every signal present
(``WEIGHTS``) and names each one in the reasons; at the policy's ``block_score`` (100 by
default) or above, the gateway refuses the request (403 ``blocked``). ``Suspicion`` is
the bounded memory behind the signals that are about the past: which shoppers an IP
carried lately, and what the challenge and queue side noted (``note``).

The weights (block_score 100), and why:

=================  ======  ==============================================================
signal             weight  meaning
=================  ======  ==============================================================
missing-ua           60    no User-Agent at all: every browser sends one
scripted-ua          60    an HTTP library or tool (curl, python-requests, Go-http-client,
                           aiohttp, ...): people use these too, so not alone
headless-ua          30    a headless browser (HeadlessChrome, PhantomJS, ...). Kept low on
                           purpose: Debian's chromium run headless (our own browser
                           tests, monitoring) says HeadlessChrome while behaving exactly
                           like a person's browser, so it only adds to other evidence
many-accounts        50    more than ``accounts_per_ip`` distinct shoppers from the IP
                           within ``accounts_window_s`` (taking a queue ticket counts, as
                           does any request with a bearer token): alone it may be a
                           household, an office or a campus behind one address
account-farm        100    more than ``2 * accounts_per_ip`` of them: replaces
                           many-accounts and blocks on its own. Places in line and
                           admissions are personal, so a farm must queue every account;
                           past this number its address is refused outright (ticket
                           polls and writes included) until the window forgets accounts
solution-replay      50    per replayed proof-of-work solution (IP or shopper), at most
                           2 counted: two replays block by themselves
fast-write           30    per write sooner than ``min_page_to_write_ms`` after its
                           challenge was issued, at most 2 counted: the page keeps a
                           solved challenge ready, so a quick click (or a test driving a
                           browser) can land inside the window; it only adds
=================  ======  ==============================================================

So one soft signal never blocks, and neither does a headless browser clicking fast (30 +
60: our browser tests); an account farm does (100), and so does a script that also spreads
over many accounts (110), a client
without a User-Agent doing the same (110), a script writing too fast twice (120), a
headless browser with many accounts writing fast (110) or two replays (100) do. Noted
signals are remembered for ``SIGNAL_MEMORY_S``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

WEIGHTS: dict[str, int] = {
    "missing-ua": 60,
    "scripted-ua": 60,
    "headless-ua": 30,
    "many-accounts": 50,
    "account-farm": 100,
    "solution-replay": 50,
    "fast-write": 30,
}
# Signals noted by other defences (Suspicion.note) and how many notes count at most.
NOTED_SIGNALS: dict[str, int] = {"solution-replay": 2, "fast-write": 2}
SIGNAL_MEMORY_S = 600.0  # a noted signal counts for this long

# Lower-case substrings of User-Agent values. Headless browsers first: "HeadlessChrome"
# must not be mistaken for a script.
HEADLESS_MARKERS = ("headless", "phantomjs", "slimerjs", "puppeteer", "playwright", "selenium",
                    "webdriver")  # fmt: skip
SCRIPTED_MARKERS = (
    "python-requests", "python-urllib", "python-httpx", "python/", "aiohttp", "httpx",
    "curl/", "wget/", "go-http-client", "java/", "okhttp", "apache-httpclient",
    "libwww-perl", "lwp::", "scrapy", "node-fetch", "axios/", "undici", "guzzlehttp",
    "ruby", "httpie", "postmanruntime", "insomnia", "powershell", "winhttp", "libcurl",
)  # fmt: skip


def user_agent_signal(user_agent: str | None) -> str | None:
    """The signal a User-Agent value gives on its own, if any."""
    if user_agent is None or not user_agent.strip():
        return "missing-ua"
    ua = user_agent.lower()
    if any(m in ua for m in HEADLESS_MARKERS):
        return "headless-ua"
    if any(m in ua for m in SCRIPTED_MARKERS):
        return "scripted-ua"
    return None


def accounts_signal(accounts_from_ip: int, accounts_per_ip: int) -> str | None:
    """The signal of ``accounts_from_ip`` distinct shoppers from one address: none up to
    ``accounts_per_ip``, "many-accounts" up to twice that, "account-farm" beyond."""
    if accounts_from_ip > 2 * accounts_per_ip:
        return "account-farm"
    if accounts_from_ip > accounts_per_ip:
        return "many-accounts"
    return None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is known about one request when it is scored."""

    user_agent: str | None
    accounts_from_ip: int  # distinct shoppers seen from its IP within the window
    noted: dict[str, int]  # noted signal -> times, within SIGNAL_MEMORY_S


def score(evidence: Evidence, accounts_per_ip: int) -> tuple[int, tuple[str, ...]]:
    """The request's score and the signals behind it (in a stable order)."""
    total = 0
    reasons: list[str] = []
    ua = user_agent_signal(evidence.user_agent)
    if ua is not None:
        total += WEIGHTS[ua]
        reasons.append(ua)
    accounts = accounts_signal(evidence.accounts_from_ip, accounts_per_ip)
    if accounts is not None:
        total += WEIGHTS[accounts]
        reasons.append(accounts)
    for signal, cap in NOTED_SIGNALS.items():
        times = min(evidence.noted.get(signal, 0), cap)
        if times:
            total += WEIGHTS[signal] * times
            reasons.append(signal)
    return total, tuple(reasons)


class Suspicion:
    """The memory behind the heuristics, bounded to ``max_clients`` entries per kind.

    Shoppers seen per IP are kept as (ip, shopper) pairs in one LRU ordered by last
    sight, so the oldest pairs both expire (``accounts_window_s``) and are evicted (past
    ``max_clients``) from its front. Noted signals are kept per IP and per shopper (a bot
    rotating IPs is caught by its shopper, one rotating accounts by its IP); a request
    counts the larger of the two.
    """

    def __init__(self, *, accounts_window_s: float, max_clients: int) -> None:
        self.accounts_window_s = accounts_window_s
        self.max_clients = max_clients
        self._pairs: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._per_ip: dict[str, int] = {}
        self._noted: OrderedDict[tuple[str, str], dict[str, deque[float]]] = OrderedDict()

    def observe(self, ip: str, shopper: str | None, now: float) -> int:
        """Record a request of ``shopper`` from ``ip``; distinct shoppers from ``ip``."""
        self._expire_pairs(now)
        if shopper is not None:
            pair = (ip, shopper)
            if pair not in self._pairs:
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            self._pairs[pair] = now
            self._pairs.move_to_end(pair)
            while len(self._pairs) > self.max_clients:
                self._forget_pair(*self._pairs.popitem(last=False)[0])
        return self._per_ip.get(ip, 0)

    def note(self, ip: str, shopper: str | None, signal: str, now: float) -> None:
        """Another defence saw ``signal`` ("solution-replay", "fast-write") from a client."""
        if signal not in NOTED_SIGNALS:
            raise ValueError(f"unknown signal {signal!r}: expected one of {list(NOTED_SIGNALS)}")
        keys = [("ip", ip)] + ([("shopper", shopper)] if shopper is not None else [])
        for key in keys:
            signals = self._noted.pop(key, None) or {}
            signals.setdefault(signal, deque(maxlen=NOTED_SIGNALS[signal])).append(now)
            self._noted[key] = signals
        while len(self._noted) > self.max_clients:
            self._noted.popitem(last=False)

    def noted(self, ip: str, shopper: str | None, now: float) -> dict[str, int]:
        """Noted signal -> times within SIGNAL_MEMORY_S, the larger of IP and shopper."""
        out: dict[str, int] = {}
        keys = [("ip", ip)] + ([("shopper", shopper)] if shopper is not None else [])
        for key in keys:
            for signal, times in self._noted.get(key, {}).items():
                recent = sum(1 for at in times if now - at < SIGNAL_MEMORY_S)
                if recent:
                    out[signal] = max(out.get(signal, 0), recent)
        return out

    def assess(
        self,
        ip: str,
        shopper: str | None,
        user_agent: str | None,
        now: float,
        accounts_per_ip: int,
    ) -> tuple[int, tuple[str, ...]]:
        """Observe the request, then score it."""
        accounts = self.observe(ip, shopper, now)
        evidence = Evidence(user_agent, accounts, self.noted(ip, shopper, now))
        return score(evidence, accounts_per_ip)

    @property
    def tracked(self) -> int:
        """Entries held (pairs plus noted clients): at most 2 * max_clients."""
        return len(self._pairs) + len(self._noted)

    def _expire_pairs(self, now: float) -> None:
        while self._pairs:
            pair, seen = next(iter(self._pairs.items()))
            if now - seen < self.accounts_window_s:
                return
            del self._pairs[pair]
            self._forget_pair(*pair)

    def _forget_pair(self, ip: str, _shopper: str) -> None:
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]
