"""HTML from the string templates in admin/templates/, escaped by default.

Theory of operation: a template is an HTML file with ``$name`` placeholders
(``string.Template`` syntax). ``render`` HTML-escapes every value it substitutes unless
the value is ``Markup``: text that is already safe HTML because this module built it
(``tag``, ``join``) or a template rendered it. So untrusted text (product names, shopper
ids, error messages) can only reach a page escaped, and code that wants raw HTML has to
say so by building ``Markup``.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from string import Template

TEMPLATE_DIR = Path(__file__).parent / "templates"


class Markup(str):
    """A string that is already safe HTML."""

    __slots__ = ()


Value = str | int | float | None


def escape(value: Value | Markup) -> Markup:
    """Escape text for HTML content or a quoted attribute; Markup passes through."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Value | Markup], sep: str = "") -> Markup:
    return Markup(escape(sep).join(escape(p) for p in parts))


def tag(
    name: str,
    content: Value | Markup | Iterable[Value | Markup] = None,
    /,
    **attrs: Value | bool,
) -> Markup:
    """``<name attr="..">content</name>``, escaped; attribute ``class_`` is ``class``,
    underscores become dashes (``data_k`` -> ``data-k``), True is a bare attribute and
    False/None leave it out. Void elements (input, br, meta, link) get no content."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        if value is True:
            rendered.append(f" {attr}")
        else:
            rendered.append(f' {attr}="{escape(value)}"')
    opening = f"<{name}{''.join(rendered)}>"
    if name in ("input", "br", "meta", "link", "img", "hr"):
        return Markup(opening)
    if content is None or isinstance(content, str | int | float):
        inner = escape(content)
    else:
        inner = join(content)
    return Markup(f"{opening}{inner}</{name}>")


@functools.cache
def _template(name: str) -> Template:
    return Template((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def render(name: str, values: Mapping[str, Value | Markup]) -> Markup:
    """Fill template ``name`` (a file in admin/templates/); every placeholder must be given."""
    return Markup(_template(name).substitute({k: escape(v) for k, v in values.items()}))
