"""Every limit of the console, with its number (a limit on everything).

Each one is enforced in exactly one place and has a test in tests/test_admin_*.py.
"""

from __future__ import annotations

# Sign-in.
MIN_PASSWORD_LEN = 12  # characters; short passwords are refused at creation
MAX_PASSWORD_LEN = 1024  # characters; bounds the work scrypt does per attempt
MAX_USERNAME_LEN = 64
LOGIN_WINDOW_MS = 15 * 60 * 1000  # the sliding window both login limits count in
LOGIN_FAILURES_PER_USERNAME = 5  # failed sign-ins of one username per window, then 429
LOGIN_ATTEMPTS_PER_IP = 30  # sign-in attempts (good or bad) from one address per window
MAX_TRACKED_LOGIN_KEYS = 10_000  # usernames/addresses the limiter remembers (oldest dropped)

# Sessions.
SESSION_TTL_MS = 8 * 3600 * 1000  # absolute lifetime of a session: one working day
SESSION_IDLE_MS = 30 * 60 * 1000  # a session unused this long is over
SESSION_TOUCH_MS = 60 * 1000  # last-seen is written at most this often per session
MAX_SESSIONS_PER_OPERATOR = 20  # the oldest sessions of an operator are ended beyond this

# Requests.
MAX_FORM_BYTES = 64 * 1024  # body of one form post
MAX_AUDIT_ROWS_SHOWN = 200  # rows on the audit page
MAX_ORDERS_PER_SHOPPER_SHOWN = 50  # orders listed for one shopper search

# Live updates.
LIVE_PERIOD_MS = 1000  # the server pushes a snapshot this often
MAX_SSE_SUBSCRIBERS = 100  # open live streams; more are refused with 503
CHART_POINTS = 120  # seconds of history the sale chart keeps
STATUS_TIMEOUT_MS = 800  # one node status or gateway scrape; a slower one counts as unreachable
FEED_WAIT_MS = 1000  # long-poll of the node feed the console follows for orders per second
FEED_BATCH_EVENTS = 5000  # events per feed request
MAX_INDEXED_ORDERS = 200_000  # order ids remembered per shopper index (oldest dropped)

# Writes to the cluster.
SUBMIT_DEADLINE_S = 10.0  # an operator's write gives up (outcome unknown) after this

# Bot defences (the Bots and queue page; admin.bots_hub).
BOTS_WRITE_TIMEOUT_MS = 2000  # one change sent to one gateway; slower: reported, re-sent later
MAX_REAPPLY_OPS = 200  # list changes re-sent to one gateway per poll (the rest next poll)
MAX_BOT_LIST_ROWS_SHOWN = 200  # entries shown per block/allow list (the count says the rest)
