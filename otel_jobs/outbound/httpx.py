"""httpx (``Client`` and ``AsyncClient``): calls whose timeout has a part set to None.

httpx gives every request a timeout extension, ``{"connect", "read", "write", "pool"}``, built
from the call's ``timeout=`` or the client's (default 5 s each). A call is flagged when a part
is None: ``httpx.get(url, timeout=None)``, ``httpx.Client(timeout=httpx.Timeout(None))``,
``httpx.Timeout(10, read=None)``...

* ``enforce`` replaces only the None parts by ``OTEL_JOBS_DEFAULT_TIMEOUT``; an exceeded
  enforced timeout raises httpx's own ``ConnectTimeout`` / ``ReadTimeout`` / ``PoolTimeout``.
* ``raise`` refuses the call with :class:`otel_jobs.MissingTimeoutError` before a connection
  is opened.

Spans. HTTP client spans come from opentelemetry-instrumentation-httpx. If nothing
instrumented httpx, otel-jobs does (``HTTPXClientInstrumentor().instrument()``, with
otel-jobs' tracer provider), so each call has a CLIENT span carrying the ``otel_jobs.timeout.*``
attributes; a request hook strips the ``url.full`` of these spans of credentials and query
string. Your own instrumentation always wins and is never doubled: if you instrumented httpx
first, otel-jobs leaves it alone; if you do it later (``instrument()``, ``instrument_client()``
or an ``OpenTelemetryTransport``), otel-jobs removes its own first, so there is one span per
call, with your hooks. ``uninstrument()`` removes only what otel-jobs added.

The check itself runs in httpcore's connection pool, which every httpx transport request
reaches from inside the instrumentation's span: it sees the very timeout extension the
instrumentation's request hooks see, whoever instrumented first, and leaves your hooks alone.
Caveat: a call is in its run's ``calls`` until the response headers arrive; reading a
streamed body afterwards is not tracked.

Only public names of opentelemetry-instrumentation-httpx are used: the hand-over wraps
``HTTPXClientInstrumentor.instrument`` / ``instrument_client`` and the ``__init__`` of
``SyncOpenTelemetryTransport`` / ``AsyncOpenTelemetryTransport``, the three ways to instrument
httpx (``tests/outbound/test_internals.py`` checks that they still are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.redaction import format_host, url_without_secrets
from .adapter import CallCheck, MethodAdapter, Target
from .base import Args, Kwargs, Missing

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "httpx"
HINT = (
    "pass timeout= to the call or the client (httpx.Client(timeout=10)), with no part set to None"
)
_PARTS = ("connect", "read", "write", "pool")


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    """The pool's ``handle_request(request)``: the request and its timeout's missing parts."""
    request = args[1]
    timeout = request.extensions.get("timeout")
    if not timeout:
        return request, _PARTS  # no extension: httpcore waits forever
    if None not in timeout.values():
        return request, ()
    return request, tuple(part for part in _PARTS if timeout.get(part) is None)


def _describe(args: Args, kwargs: Kwargs, request: Any) -> tuple[str, str]:
    url = request.url
    method = request.method
    return (
        method.decode("ascii", "replace") if isinstance(method, bytes) else str(method),
        format_host(url.host, url.port),
    )


def _enforce(
    args: Args, kwargs: Kwargs, request: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    timeout = dict(request.extensions.get("timeout") or {})
    for part in _PARTS:
        if timeout.get(part) is None:
            timeout[part] = default
    request.extensions["timeout"] = timeout
    return args, kwargs


CHECK = CallCheck(_timeout, _describe, _enforce)

_URL_KEYS = ("url.full", "http.url")


@errors.guarded("outbound.httpx")
def _scrub_url(span: Any, request: Any) -> None:
    """Request hook of the spans otel-jobs creates: their URL without credentials or query."""
    if not span.is_recording():
        return
    url = request.url if hasattr(request, "url") else request[1]
    if not (getattr(url, "query", 1) or getattr(url, "userinfo", 1) or getattr(url, "fragment", 1)):
        return  # an httpx.URL with nothing to take out: the span's URL is already clean
    if isinstance(url, tuple):  # the raw (bytes) form: scheme, host, port, target
        scheme, host, port, target = url
        url = f"{scheme.decode()}://{format_host(host, port)}{target.decode('ascii', 'replace')}"
    # The one rule of otel_jobs.core.redaction, on the URL as contrib writes it (str(url), its
    # path percent-encoded and its host in ASCII) with the credentials and the query taken out.
    full = url_without_secrets(str(url))
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_KEYS:
        if key in attributes:
            span.set_attribute(key, full)


async def _ascrub_url(span: Any, request: Any) -> None:
    _scrub_url(span, request)


class Adapter(MethodAdapter):
    """Checks every httpx request in httpcore's pools; instruments httpx spans if nobody did."""

    name, hint = LIBRARY, HINT

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.owns_spans = False  # otel-jobs called HTTPXClientInstrumentor().instrument()

    def targets(self) -> list[Target]:
        import httpcore

        return [
            Target(httpcore.ConnectionPool, "handle_request", CHECK),
            Target(httpcore.AsyncConnectionPool, "handle_async_request", CHECK, is_async=True),
        ]

    def install(self) -> None:
        super().install()
        with errors.guard("outbound.httpx"):
            self._install_spans()

    # --- spans: otel-jobs instruments httpx only while nobody else does -----------------

    def _install_spans(self) -> None:
        from opentelemetry import trace

        try:
            from opentelemetry.instrumentation import httpx as contrib
        except ImportError:
            return  # no instrumentation package: the check works without spans

        instrumentor = contrib.HTTPXClientInstrumentor()
        provider = getattr(self.agent, "tracer_provider", None)
        if provider is None or isinstance(self.agent.tracer, trace.NoOpTracer):
            return  # OTEL_SDK_DISABLED: no spans anyway
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=provider,
                request_hook=_scrub_url,
                async_request_hook=_ascrub_url,
            )
            self.owns_spans = instrumentor.is_instrumented_by_opentelemetry

        adapter = self

        def make_way(original: Callable[..., Any]) -> Callable[..., Any]:
            # Whatever the user instruments replaces otel-jobs' own spans (never two per call).
            def before_user_instrumentation(*args: Any, **kwargs: Any) -> Any:
                adapter._remove_own_spans()
                return original(*args, **kwargs)

            return before_user_instrumentation

        instrumentor_class = contrib.HTTPXClientInstrumentor
        self.patches.wrap(instrumentor_class, "instrument", make_way)
        self.patches.wrap(instrumentor_class, "instrument_client", make_way)  # stays a classmethod
        self.patches.wrap(contrib.SyncOpenTelemetryTransport, "__init__", make_way)
        self.patches.wrap(contrib.AsyncOpenTelemetryTransport, "__init__", make_way)

    def _remove_own_spans(self) -> None:
        if not self.owns_spans:
            return
        self.owns_spans = False
        with errors.guard("outbound.httpx"):
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            instrumentor = HTTPXClientInstrumentor()
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()

    def uninstall(self) -> None:
        super().uninstall()
        self._remove_own_spans()
