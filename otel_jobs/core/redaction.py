"""URLs without their secrets: hosts for labels, and text that is safe to put on a span.

One rule everywhere otel-jobs writes down where a call went: a URL keeps its scheme, host,
port and path; never its user name, password, query string or fragment, where tokens live.

* :func:`format_host` / :func:`host_of`: ``host`` or ``host:port``, the ``host`` label of the
  outbound metrics (used by every outbound adapter).
* :func:`redact`: a free text (an exception's message or traceback, recorded on a run's span)
  with every URL in it cut down to ``scheme://host:port/path`` (``?***`` where a query string
  was), the query of a bare ``/path?query`` (urllib3's "Max retries exceeded with url: /v1?token=...") and the value of a
  ``password=`` / ``token=`` style pair replaced by ``***``.

Redaction is best effort on text it did not write: a secret in a path segment, or in a word
that looks like nothing above, stays. It must never raise (it runs while a run is recorded)
and is only called on the failure path, never per run.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["format_host", "host_of", "redact", "url_without_secrets"]

MASK = "***"


def format_host(host: str | bytes | None, port: int | None = None) -> str:
    """``host`` or ``host:port`` (IPv6 in brackets); ``unknown`` without a host."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not host:
        return "unknown"
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def host_of(url: object) -> str:
    """The host (and port, if given) of a URL, without credentials, path or query string.

    >>> host_of("https://user:secret@api.example.com:8443/v1/items?token=abc")
    'api.example.com:8443'
    """
    try:
        parts = urlsplit(str(url))
        return format_host(parts.hostname, parts.port)
    except ValueError:
        return "unknown"


def url_without_secrets(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no credentials, query string or fragment.

    >>> url_without_secrets("https://user:secret@api.example.com:8443/v1/items?token=abc")
    'https://api.example.com:8443/v1/items'
    """
    try:
        parts = urlsplit(url)
        host = format_host(parts.hostname, parts.port)
    except ValueError:  # a port that is no number, a bracket that does not close
        return f"{url.partition(':')[0]}://{MASK}"
    return f"{parts.scheme}://{host}{parts.path}"


# A URL with an authority, up to a blank, a quote or an angle bracket.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# Punctuation that ends a sentence or closes a bracket after a URL, not part of it.
_TRAILING = ").,;:!]}"
# A bare path with a query string ("url: /v1/items?token=abc"); not preceded by a word
# character or "/" (so not a URL's own path, which _URL took care of).
_PATH_QUERY = re.compile(r"(?<![\w/:.])(/[^\s'\"<>`?]*)\?[^\s'\"<>`]+")
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access_token|api[_-]?key|access[_-]?key)"
    r"(\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;'\")]+)"
)


def _url(match: re.Match[str]) -> str:
    text = match.group(0)
    tail = ""
    while text and text[-1] in _TRAILING:
        tail = text[-1] + tail
        text = text[:-1]
    # A reader of the message still sees that there was a query string.
    return url_without_secrets(text) + (f"?{MASK}" if "?" in text else "") + tail


def redact(text: str) -> str:
    """``text`` with the secrets of the URLs in it taken out (see the module docstring).

    >>> redact("GET https://bot:pw@api.example.com/v1?token=abc failed")
    'GET https://api.example.com/v1?*** failed'
    >>> redact("Max retries exceeded with url: /v1/items?token=abc (Caused by ...)")
    'Max retries exceeded with url: /v1/items?*** (Caused by ...)'
    """
    if "://" in text:
        text = _URL.sub(_url, text)
    if "?" in text:
        text = _PATH_QUERY.sub(lambda m: f"{m.group(1)}?{MASK}", text)
    if "=" in text:
        text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return text
