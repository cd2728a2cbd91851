"""MkDocs hooks of the otel-jobs site.

* A nav entry with a glob lists the matching pages: ``- runbooks/*.md`` in ``mkdocs.yml``
  becomes one entry per runbook page, sorted, leaving out pages the nav already names, so a
  runbook added with a new alert is in the site without an edit of the nav (and the strict
  build's "page not in the nav" check keeps meaning something).
* The docstrings of the API reference use Sphinx roles (``:func:`~otel_jobs.heartbeat```),
  which mkdocstrings renders as text: each becomes the name in code, linked to its entry on
  the page when it has one.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any


def _expand(items: list[Any], docs: pathlib.Path, named: set[str]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, str) and "*" in item:
            pages = sorted(p.relative_to(docs).as_posix() for p in docs.glob(item))
            out.extend(p for p in pages if p not in named)
        elif isinstance(item, dict):
            out.append(
                {k: _expand(v, docs, named) if isinstance(v, list) else v for k, v in item.items()}
            )
        else:
            out.append(item)
    return out


def _named(items: list[Any]) -> set[str]:
    found: set[str] = set()
    for item in items:
        if isinstance(item, str):
            found.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                found |= _named(value) if isinstance(value, list) else {value}
    return found


def on_config(config: Any) -> Any:
    if config["nav"]:
        docs = pathlib.Path(config["docs_dir"])
        config["nav"] = _expand(config["nav"], docs, _named(config["nav"]))
    return config


_ROLE = re.compile(r":(?:class|func|meth|attr|data|exc|mod):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page: Any, **_: Any) -> str:
    ids = set(re.findall(r'id="([\w.]+)"', html))

    def link(m: re.Match[str]) -> str:
        target = m.group(2) if m.group(2).startswith("otel_jobs") else f"otel_jobs.{m.group(2)}"
        shown = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
        code = f"<code>{shown}</code>"
        return f'<a href="#{target}">{code}</a>' if target in ids else code

    return _ROLE.sub(link, html)
