"""What an operator may set for the gateways' bot defences, checked before it is sent.

Theory of operation (pure functions): the bounds are the gateway internal API's
(``PUT /internal/bots/settings``, docs/BOTS.md), so a value the console accepts is one
every gateway accepts. ``settings_from_form`` reads the settings form (a blank field
leaves that setting alone); ``entry`` checks one block/allow list entry and returns its
canonical text (an IP address in its compressed form, a network as ``addr/len`` with the
host bits cleared, a single-host network as the bare address), so that the console's
record and a gateway's report of the same entry compare equal. ``FormError`` names the
field and says what is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from admin.product_forms import FormError
from bots.lists import canonical_ip
from gateway.identity import MAX_USER_ID_LEN, USER_ID_PATTERN

Number = int | float

# The bounds of PUT /internal/bots/settings (the contract in docs/BOTS.md).
DIFFICULTY_MIN, DIFFICULTY_MAX = 1_000, 10_000_000
ADMISSION_RATE_MIN, ADMISSION_RATE_MAX = 0.1, 100_000.0
BLOCK_SCORE_MIN, BLOCK_SCORE_MAX = 1, 1_000
SETTINGS: Final = ("challenge_difficulty", "admission_rate", "block_score")
LISTS: Final = ("block_ips", "allow_ips", "block_shoppers", "allow_shoppers")
LIST_LABELS: Final = {
    "block_ips": "Blocked IPs and networks",
    "allow_ips": "Allowed IPs and networks",
    "block_shoppers": "Blocked shoppers",
    "allow_shoppers": "Allowed shoppers",
}
MAX_ENTRY_LEN = 64  # characters of one typed entry (an IPv6 CIDR is at most 43)


def _int(field: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise FormError(field, f"{text!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise FormError(field, f"{value} is outside {lo}..{hi}")
    return value


def _float(field: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise FormError(field, f"{text!r} is not a number") from None
    if value != value or not lo <= value <= hi:  # value != value: NaN
        raise FormError(field, f"{text} is outside {lo:g}..{hi:g}")
    return value


def setting(name: str, text: str) -> Number:
    """One setting typed as text, checked against the gateway's bounds."""
    text = text.strip()
    if name == "challenge_difficulty":
        return _int(name, text, DIFFICULTY_MIN, DIFFICULTY_MAX)
    if name == "admission_rate":
        return _float(name, text, ADMISSION_RATE_MIN, ADMISSION_RATE_MAX)
    if name == "block_score":
        return _int(name, text, BLOCK_SCORE_MIN, BLOCK_SCORE_MAX)
    raise FormError(name, f"unknown setting: expected one of {', '.join(SETTINGS)}")


def settings_from_form(form: Mapping[str, str]) -> dict[str, Number]:
    """The settings the form sets (blank fields are left out); FormError when none is."""
    out = {n: setting(n, form[n]) for n in SETTINGS if form.get(n, "").strip()}
    if not out:
        raise FormError("challenge_difficulty", "fill in at least one setting")
    return out


def list_name(text: str) -> str:
    """One of ``LISTS``."""
    if text not in LISTS:
        raise FormError("list", f"{text!r}: expected one of {', '.join(LISTS)}")
    return text


def ip_entry(text: str) -> str:
    """An IP address or network in canonical form (the gateways' own, bots.lists);
    ValueError when it is neither."""
    return canonical_ip(text)


def entry(list_: str, text: str) -> str:
    """The canonical form of one entry of ``list_``; FormError when it does not fit."""
    value = text.strip()
    if not value or len(value) > MAX_ENTRY_LEN:
        raise FormError("value", f"expected 1..{MAX_ENTRY_LEN} characters")
    if list_.endswith("_ips"):
        try:
            return ip_entry(value)
        except ValueError:
            raise FormError(
                "value", f"{value!r} is not an IP address or network (203.0.113.7, 10.0.0.0/8)"
            ) from None
    if len(value) > MAX_USER_ID_LEN or USER_ID_PATTERN.fullmatch(value) is None:
        raise FormError(
            "value",
            f"{value!r} is not a shopper id (1..{MAX_USER_ID_LEN} characters of letters, "
            "digits, '.', '_', '@', '+' or '-')",
        )
    return value


def reported_entry(list_: str, value: object) -> str | None:
    """A gateway's list entry in canonical form; None when it is not one the console
    could have sent (it is then shown as reported, never compared)."""
    if not isinstance(value, str):
        return None
    try:
        return entry(list_, value)
    except FormError:
        return None


def kind_of(value: str) -> str:
    """``ips`` when ``value`` reads as an IP address or network, else ``shoppers`` (the CLI
    takes either and picks the list)."""
    try:
        ip_entry(value.strip())
    except ValueError:
        return "shoppers"
    return "ips"


def same_setting(name: str, a: object, b: object) -> bool:
    """Whether a gateway's value of a setting is the console's (floats within rounding)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return False
    if name == "admission_rate":
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b
