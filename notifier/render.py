"""The texts of a notice: plain-text and HTML email, and SMS, from notifier/templates/.

Theory of operation: every notice kind has three templates (``<kind>.txt`` whose first
line is ``Subject: ...``, ``<kind>.html`` and ``<kind>.sms.txt``) written with
``string.Template`` placeholders. ``Templates.load`` reads them all at start and refuses
any placeholder this module does not fill, so a typo fails the process at once rather
than a send later. Values come from the outbox row's parameters (order id, amounts,
product names: nothing personal) and the unsealed contact (the greeting), rendered in
memory at send time; in HTML every value is escaped. An SMS is cut at
``MAX_SMS_CHARS``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

from cli.money import format_minor
from notifier.contacts import Contact
from notifier.notices import ORDER_NOTICES, Notice

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
MAX_SMS_CHARS = 320  # two concatenated segments of plain GSM text
MAX_SUBJECT_CHARS = 200
ORDER_FIELDS = frozenset({"greeting", "order_id", "amount", "pay_by", "lines", "reason"})
STOCK_FIELDS = frozenset({"greeting", "product_id", "product_name"})
FAILURE_REASONS = {
    "declined": "the payment was declined",
    "expired": "it was not paid in time",
}


class TemplateError(ValueError):
    """A template is missing, malformed or uses a placeholder nobody fills."""


@dataclass(frozen=True, slots=True)
class Email:
    subject: str
    text: str
    html: str


def _when(ms: object) -> str:
    if not isinstance(ms, int) or ms <= 0:
        return "the deadline"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _amount(params: Mapping[str, Any]) -> str:
    amount, currency = params.get("amount_minor"), params.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str) or not currency:
        return "-"
    return format_minor(amount, currency)


def _line_texts(params: Mapping[str, Any]) -> list[str]:
    out = []
    currency = params.get("currency")
    for line in params.get("lines") or []:
        product_id, name, quantity, unit_minor = line
        price = format_minor(unit_minor, currency) if isinstance(currency, str) else "-"
        label = name if name and name != product_id else product_id
        out.append(f"{quantity} x {label} at {price}")
    return out


def values(notice: Notice, params: Mapping[str, Any], contact: Contact) -> dict[str, str]:
    """The placeholder values of a notice, unescaped."""
    greeting = f"Hello {contact.name}," if contact.name else "Hello,"
    if notice in ORDER_NOTICES:
        failure = str(params.get("failure") or "")
        return {
            "greeting": greeting,
            "order_id": str(params.get("order_id", "")),
            "amount": _amount(params),
            "pay_by": _when(params.get("pay_by_ms")),
            "lines": "\n".join(_line_texts(params)),
            "reason": FAILURE_REASONS.get(failure, failure or "the payment failed"),
        }
    product_id = str(params.get("product_id", ""))
    return {
        "greeting": greeting,
        "product_id": product_id,
        "product_name": str(params.get("product_name") or product_id),
    }


def _html_values(notice: Notice, params: Mapping[str, Any], contact: Contact) -> dict[str, str]:
    plain = values(notice, params, contact)
    escaped = {k: html.escape(v) for k, v in plain.items()}
    if "lines" in plain:
        escaped["lines"] = "\n".join(
            f"<li>{html.escape(text)}</li>" for text in _line_texts(params)
        )
    return escaped


@dataclass(frozen=True, slots=True)
class Templates:
    subject_of: dict[Notice, Template]
    text_of: dict[Notice, Template]
    html_of: dict[Notice, Template]
    sms_of: dict[Notice, Template]

    @classmethod
    def load(cls, directory: Path = TEMPLATE_DIR) -> Templates:
        """Read and check every template (``TemplateError`` naming the file)."""
        subject: dict[Notice, Template] = {}
        text: dict[Notice, Template] = {}
        html_: dict[Notice, Template] = {}
        sms: dict[Notice, Template] = {}
        for notice in Notice:
            allowed = ORDER_FIELDS if notice in ORDER_NOTICES else STOCK_FIELDS
            raw_text = _read(directory / f"{notice.value}.txt")
            first, _, body = raw_text.partition("\n")
            if not first.startswith("Subject: "):
                raise TemplateError(f"{notice.value}.txt: the first line must be 'Subject: ...'")
            parts = {
                f"{notice.value}.txt (subject)": first.removeprefix("Subject: ").strip(),
                f"{notice.value}.txt": body.lstrip("\n"),
                f"{notice.value}.html": _read(directory / f"{notice.value}.html"),
                f"{notice.value}.sms.txt": _read(directory / f"{notice.value}.sms.txt").strip(),
            }
            checked = [_checked(name, source, allowed) for name, source in parts.items()]
            subject[notice], text[notice], html_[notice], sms[notice] = checked
        return cls(subject, text, html_, sms)

    def email(self, notice: Notice, params: Mapping[str, Any], contact: Contact) -> Email:
        plain = values(notice, params, contact)
        subject = " ".join(self.subject_of[notice].substitute(plain).split())
        return Email(
            subject=subject[:MAX_SUBJECT_CHARS],
            text=self.text_of[notice].substitute(plain),
            html=self.html_of[notice].substitute(_html_values(notice, params, contact)),
        )

    def sms(self, notice: Notice, params: Mapping[str, Any], contact: Contact) -> str:
        body = " ".join(self.sms_of[notice].substitute(values(notice, params, contact)).split())
        return body if len(body) <= MAX_SMS_CHARS else body[: MAX_SMS_CHARS - 1] + "…"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path.name}: {exc.strerror or exc}") from None


def _checked(name: str, source: str, allowed: frozenset[str]) -> Template:
    template = Template(source)
    if not template.is_valid():
        raise TemplateError(f"{name}: a '$' that is no placeholder (write $$ for a dollar)")
    unknown = sorted(set(template.get_identifiers()) - allowed)
    if unknown:
        raise TemplateError(
            f"{name}: unknown placeholder(s) {', '.join(unknown)} (known: {sorted(allowed)})"
        )
    return template
