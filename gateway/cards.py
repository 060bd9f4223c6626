"""Card-number detection: flashsale never accepts, stores or logs a primary account number.

Theory of operation: payment methods travel as provider tokens (``pm_...``). A request
body is scanned, before any other validation, for anything that looks like a card number:
a run of 13 to 19 digits (single spaces or dashes between digits allowed, as people type
them) that passes the Luhn check, in any string or integer value or object key at any
depth. Such a request is refused with a problem that never echoes the number, and the
body is never logged. Pure functions only.
"""

from __future__ import annotations

import re

MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19

# Runs of digits with optional single separators between them, not glued to other digits.
_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d)+(?!\d)")
_SEPARATORS = re.compile(r"[ -]")
# A tuple built once: ``int | float`` in the loop would build a union per item.
_NUMBERS = (int, float)
# For the pre-check on a body's bytes: every digit mapped to "0" and "E" to "e", so that
# digits are counted, and what makes digits appear only once decoded is found, by plain
# byte searches: a JSON escape (``\\u0034`` is "4") or a number's exponent (``1e15`` has
# 16 digits once a float). A regular expression cost more than the walk it saves.
_FOLD = bytes.maketrans(b"123456789E", b"000000000e")


def luhn_valid(digits: str) -> bool:
    """True when a string of decimal digits passes the Luhn (mod 10) check."""
    if not digits or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _candidates(run: str) -> list[str]:
    """Card-length digit windows of a run.

    A run is first taken whole; a longer run (digits of a card pasted into other digits)
    is searched for any 13..19-digit window so that padding cannot hide a number.
    """
    digits = _SEPARATORS.sub("", run)
    n = len(digits)
    if n < MIN_PAN_DIGITS:
        return []
    if n <= MAX_PAN_DIGITS:
        return [digits]
    return [
        digits[i : i + size]
        for size in range(MIN_PAN_DIGITS, MAX_PAN_DIGITS + 1)
        for i in range(n - size + 1)
    ]


def text_has_card_number(text: str) -> bool:
    """True when ``text`` contains something that looks like a card number."""
    for match in _DIGIT_RUN.finditer(text):
        run = match.group(0)
        if len(run) < MIN_PAN_DIGITS:
            continue  # fewer characters than a card has digits (ids, amounts): cheap out
        if len(run) > 4 * MAX_PAN_DIGITS:
            # A very long digit run is not a card number; refuse it anyway rather than
            # search thousands of windows: nothing in the API needs one.
            return True
        if any(luhn_valid(c) for c in _candidates(run)):
            return True
    return False


def text_may_hold_card_number(raw: bytes) -> bool:
    """False only when no value decoded from the JSON text ``raw`` can hold a card
    number: ASCII only, fewer digits than a card has, no escape and no exponent.
    Cheaper than decoding and walking it, which most bodies (a hold: two ids and a
    quantity) then skip."""
    if not raw.isascii():  # other scripts' digits: the walk's regex matches them too
        return True
    folded = raw.translate(_FOLD)
    return folded.count(b"0") >= MIN_PAN_DIGITS or b"\\" in folded or b"0e" in folded


def contains_card_number(value: object) -> bool:
    """True when any string, number or key inside a decoded JSON value looks like a card."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            # Shorter than a card has digits: nothing to find (most ids and names).
            if len(item) >= MIN_PAN_DIGITS and text_has_card_number(item):
                return True
        elif isinstance(item, dict):
            stack.extend(map(str, item))
            stack.extend(item.values())
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, _NUMBERS):
            text = repr(item)
            if len(text) >= MIN_PAN_DIGITS and text_has_card_number(text):
                return True
        elif isinstance(item, list):
            stack.extend(item)
    return False
