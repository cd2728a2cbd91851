"""Label values as ``/metrics`` can always write them: valid UTF-8, at most 200 characters.

Job names, queues, hosts and call sites come from users and frameworks: a job named after a
file whose name is not UTF-8 (``"report-\\udcff.csv"`` from ``surrogateescape``), a name built
from a 100 KB payload. :func:`clean` is applied once where such a value becomes a label (the
cardinality caps of :mod:`otel_jobs.core.telemetry`), so the hot path and the scrape pay
nothing for it; the writers of :mod:`otel_jobs.core.textformat` and
:mod:`otel_jobs.core.multiprocess` apply it again to what did not come through a cap (another
collector's children, a forked child's snapshot), so that one bad value never fails a scrape.

Invariants: the result is a ``str`` that encodes to UTF-8 without error and has at most
:data:`MAX_LABEL_CHARS` characters; a value that already qualifies is returned as it is (the
same object); two different long values stay two different values (the marker carries a
digest of the whole value).
"""

from __future__ import annotations

import hashlib
import re

#: The longest label value written; a longer one keeps its first characters and a marker.
MAX_LABEL_CHARS = 200

_MARKER = "...#"  # then 8 hex digits of the whole value's digest
_KEPT = MAX_LABEL_CHARS - len(_MARKER) - 8
_SURROGATE = re.compile("[\ud800-\udfff]")


def needs_cleaning(value: str) -> bool:
    """Whether :func:`clean` would change ``value`` (cheap for the usual short ASCII value)."""
    if len(value) > MAX_LABEL_CHARS:
        return True
    return not value.isascii() and _SURROGATE.search(value) is not None


def utf8(text: str) -> str:
    """``text`` with its lone surrogates replaced by U+FFFD (unchanged if it has none)."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def clean(value: object) -> str:
    """``value`` as a label value: lone surrogates replaced by U+FFFD, long values cut.

    >>> clean(b"report-\\xff.csv".decode("utf-8", "surrogateescape"))
    'report-\ufffd.csv'
    """
    if not isinstance(value, str):
        value = str(value)
    if not needs_cleaning(value):
        return value
    value = utf8(value)
    if len(value) > MAX_LABEL_CHARS:
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=4).hexdigest()
        value = value[:_KEPT] + _MARKER + digest
    return value
