"""The Bots and queue page: the gateways' bot defences, live, and the forms that tune them.

Everyone signed in may look; changing a setting or a list needs the ``operator`` right
(the right that changes how the sale runs), and a refusal is audited like any other.
Every change is checked (admin.bots_values), recorded and sent to every gateway by the
hub (admin.bots_hub), and audited with its outcome on each gateway. The page is drawn
from the hub's view, so it works without JavaScript; console.js then keeps it current
from ``/api/bots/live`` (Server-Sent Events), as the cluster and sale pages are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from admin import audit
from admin.app_keys import BOTS, CLOCK_MS, STORE, session_of
from admin.bots_gateways import GatewayAnswer, outcome_text
from admin.bots_hub import answers_json
from admin.bots_store import ListFull
from admin.bots_values import LIST_LABELS, LISTS, SETTINGS, entry, list_name, settings_from_form
from admin.formatting import time_ms
from admin.layout import message, page
from admin.operators import RIGHT_OPERATOR
from admin.product_forms import FormError
from admin.render import Markup, join, render, tag
from admin.security import see_other
from admin.sessions import set_flash
from admin.sse import stream

SETTING_LABELS = {
    "challenge_difficulty": "Challenge difficulty (1000..10000000)",
    "admission_rate": "Admission rate, shoppers/s (0.1..100000)",
    "block_score": "Block score (1..1000)",
}


def number(value: object) -> str:
    """A count or setting as the page writes it (the same rule as console.js)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return str(round(value, 3))


def _cell(key: str, value: object, class_: str | None = None, title: str | None = None) -> Markup:
    text = value if isinstance(value, str) else number(value)
    return tag("td", text, data_k=key, class_=class_, title=title)


def gateway_row(g: Mapping[str, Any]) -> Markup:
    up = bool(g.get("up"))
    counts = g.get("counts") or {}
    settings = g.get("settings") or {}
    return tag(
        "tr",
        [
            _cell("id", str(g.get("id"))),
            _cell("health", "up" if up else "down", "up" if up else "down", g.get("error")),
            _cell("defences", str(g.get("defences_text") or "")),
            _cell("redis", str(g.get("redis_text") or "")),
            *(_cell(d, counts.get(d)) for d in ("allowed", "limited", "challenged", "blocked")),
            _cell("queued", counts.get("queued")),
            *(_cell(s, settings.get(s)) for s in SETTINGS),
            _cell("sync", str(g.get("sync") or ""), None, g.get("error")),
        ],
        data_gateway=str(g.get("id")),
        data_up="true" if up else "false",
    )


def total_row(totals: Mapping[str, Any]) -> Markup:
    counts = totals.get("counts") or {}
    up, of = totals.get("gateways_up", 0), totals.get("gateways", 0)
    return tag(
        "tr",
        [
            _cell("id", "total"),
            _cell("health", f"{up}/{of} up"),
            tag("td", "", colspan="2"),
            *(_cell(d, counts.get(d)) for d in ("allowed", "limited", "challenged", "blocked")),
            _cell("queued", counts.get("queued")),
            tag("td", "", colspan="4"),
        ],
        data_gateway="total",
    )


def _opens(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return time_ms(int(value * 1000))
    return ""


def queue_row(gateway_id: str, queue: Mapping[str, Any] | None) -> Markup:
    q = queue or {}
    return tag(
        "tr",
        [
            _cell("id", gateway_id),
            _cell("issued", q.get("issued")),
            _cell("admitted", q.get("admitted")),
            _cell("waiting", q.get("waiting")),
            _cell("admission_rate", q.get("admission_rate")),
            _cell("opens_at", _opens(q.get("opens_at"))),
        ],
        data_gateway=gateway_id,
    )


def reason_row(r: Mapping[str, Any], gateway_ids: list[str]) -> Markup:
    by = r.get("by_gateway") or {}
    return tag(
        "tr",
        [
            _cell("decision", str(r.get("decision"))),
            _cell("reason", str(r.get("reason"))),
            _cell("total", r.get("total")),
            *(_cell(f"gw-{g}", by.get(g, 0)) for g in gateway_ids),
        ],
        data_reason=str(r.get("key")),
    )


def _remove_form(csrf: str, list_: str, value: str) -> Markup:
    return tag(
        "form",
        [
            tag("input", type="hidden", name="csrf_token", value=csrf),
            tag("input", type="hidden", name="list", value=list_),
            tag("input", type="hidden", name="op", value="remove"),
            tag("input", type="hidden", name="value", value=value),
            tag("button", "Remove", type="submit", class_="danger"),
        ],
        method="post",
        action="/bots/lists",
        class_="inline remove-entry",
    )


def list_table(list_: str, data: Mapping[str, Any], csrf: str | None) -> Markup:
    """One block/allow list; ``csrf`` None: no remove buttons (look-only accounts)."""
    rows = [
        tag(
            "tr",
            [
                _cell("value", str(e.get("value"))),
                _cell("state", str(e.get("state"))),
                _cell("on", ", ".join(e.get("on") or [])),
                _cell("missing", ", ".join(e.get("missing") or [])),
                tag("td", _remove_form(csrf, list_, str(e.get("value"))) if csrf else ""),
            ],
            data_value=str(e.get("value")),
        )
        for e in data.get("entries") or []
    ]
    total, shown = int(data.get("total") or 0), int(data.get("shown") or 0)
    more = f" (showing the first {shown})" if total > shown else ""
    return tag(
        "div",
        [
            tag("h3", [LIST_LABELS[list_], " ", tag("span", f"{total}{more}", class_="count")]),
            tag(
                "table",
                [
                    tag(
                        "thead",
                        tag(
                            "tr",
                            [tag("th", h) for h in ("Entry", "Decided", "On", "Missing on", "")],
                        ),
                    ),
                    tag(
                        "tbody",
                        join(rows) or Markup('<tr class="empty"><td colspan="5">empty</td></tr>'),
                    ),
                ],
                class_="grid",
            ),
        ],
        class_="bot-list",
        data_list=list_,
    )


def _may_change(request: web.Request) -> bool:
    return session_of(request).operator.may(RIGHT_OPERATOR)


def _forms(request: web.Request, view: Mapping[str, Any], form: Mapping[str, str]) -> Markup:
    if not _may_change(request):
        return message("Your account may look but not change the bot defences (right: operator).")
    current = view.get("settings") or {}
    return render(
        "bots_forms.html",
        {
            "csrf": session_of(request).csrf_token,
            **{f"{s}_label": SETTING_LABELS[s] for s in SETTINGS},
            **{f"{s}_now": number(current.get(s)) for s in SETTINGS},
            **{s: form.get(s, "") for s in SETTINGS},
            "list_options": join(
                tag("option", LIST_LABELS[n], value=n, selected=form.get("list") == n)
                for n in LISTS
            ),
            "value": form.get("value", "") if form.get("op", "add") == "add" else "",
        },
    )


def _page(
    request: web.Request,
    *,
    form: Mapping[str, str] | None = None,
    notice: Markup | None = None,
    status: int = 200,
) -> web.Response:
    view = request.app[BOTS].view()
    gateways = view["gateways"]
    ids = [str(g["id"]) for g in gateways]
    totals = view["totals"]
    csrf = session_of(request).csrf_token if _may_change(request) else None
    content = render(
        "bots.html",
        {
            "updated": time_ms(view.get("at_ms")),
            "queue_shared": "shared through Redis"
            if totals.get("queue_shared")
            else "one per gateway",
            "gateway_rows": join(gateway_row(g) for g in gateways)
            or Markup('<tr class="empty"><td colspan="14">no gateways configured</td></tr>'),
            "total_row": total_row(totals),
            "queue_rows": join(queue_row(str(g["id"]), g.get("queue")) for g in gateways),
            "queue_total": queue_row("total", totals.get("queue")),
            "gateway_heads": join(tag("th", g) for g in ids),
            "reason_rows": join(reason_row(r, ids) for r in view["reasons"])
            or Markup(
                f'<tr class="empty"><td colspan="{3 + len(ids)}">nothing counted yet</td></tr>'
            ),
            "forms": _forms(request, view, form or {}),
            "lists": join(list_table(n, view["lists"][n], csrf) for n in LISTS),
        },
    )
    return page(
        request,
        title="Bots and queue",
        page_id="bots",
        content=content,
        notice=notice,
        status=status,
    )


async def bots_page(request: web.Request) -> web.StreamResponse:
    """GET /bots."""
    return _page(request)


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str) and k != "csrf_token"}


def _audit(request: web.Request, action: str, target: str, details: Mapping[str, Any]) -> None:
    audit.record(
        request.app[STORE],
        at_ms=request.app[CLOCK_MS](),
        operator=session_of(request).operator.username,
        action=action,
        target=target,
        details=details,
        ip=request.remote or "",
    )


def _refuse(request: web.Request, action: str, target: str) -> web.HTTPForbidden:
    _audit(request, "denied", target, {"wanted": action, "right": RIGHT_OPERATOR})
    return web.HTTPForbidden(
        text="Your account lacks the right 'operator' to change the bot defences."
    )


def _done(request: web.Request, what: str, answers: list[GatewayAnswer]) -> web.Response:
    later = (
        ""
        if all(a.ok for a in answers)
        else " A gateway that did not take it gets it on the console's next poll once it "
        "answers (unless its defences are off)."
    )
    set_flash(request.app[STORE], session_of(request), f"{what}: {outcome_text(answers)}.{later}")
    return see_other("/bots")


async def change_settings(request: web.Request) -> web.StreamResponse:
    """POST /bots/settings: the settings typed (blank: unchanged), to every gateway."""
    form = await _form(request)
    if not _may_change(request):
        raise _refuse(request, "bots.settings", "gateways")
    try:
        values = settings_from_form(form)
    except FormError as exc:
        return _page(request, form=form, notice=message(f"Not changed: {exc}", "error"), status=422)
    who = session_of(request).operator.username
    answers = await request.app[BOTS].change_settings(values, by=who)
    _audit(request, "bots.settings", "gateways", {"set": values, "outcome": answers_json(answers)})
    shown = ", ".join(f"{k} = {v}" for k, v in values.items())
    return _done(request, f"Set {shown}", answers)


async def change_list(request: web.Request) -> web.StreamResponse:
    """POST /bots/lists: add an entry to a block/allow list, or remove one."""
    form = await _form(request)
    op = form.get("op", "add")
    if not _may_change(request):
        raise _refuse(request, f"bots.list.{op}", f"{form.get('list', '')}:{form.get('value', '')}")
    try:
        if op not in ("add", "remove"):
            raise FormError("op", f"{op!r}: expected add or remove")
        list_ = list_name(form.get("list", ""))
        value = entry(list_, form.get("value", ""))
    except FormError as exc:
        return _page(request, form=form, notice=message(f"Not changed: {exc}", "error"), status=422)
    who = session_of(request).operator.username
    try:
        answers = await request.app[BOTS].change_list(list_, op, value, by=who)
    except ListFull as exc:
        return _page(request, form=form, notice=message(f"Not added: {exc}", "error"), status=422)
    _audit(
        request,
        f"bots.list.{op}",
        f"{list_}:{value}",
        {"list": list_, "value": value, "outcome": answers_json(answers)},
    )
    verb = "Added" if op == "add" else "Removed"
    where = "to" if op == "add" else "from"
    return _done(request, f"{verb} {value} {where} {list_}", answers)


async def bots_api(request: web.Request) -> web.StreamResponse:
    """GET /api/bots: the page's data as JSON."""
    return web.json_response(request.app[BOTS].view())


async def bots_stream(request: web.Request) -> web.StreamResponse:
    """GET /api/bots/live: Server-Sent Events, one snapshot a poll."""
    return await stream(request, request.app[BOTS])
