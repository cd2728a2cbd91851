"""Reading one setting's value: each parser returns the value parsed or raises
:class:`ConfigurationError` naming the setting, the value (a password never shown) and what is
accepted. Shared by the agent's settings (:mod:`otel_jobs.core.config`) and the monitor's
(:mod:`otel_jobs.monitor.settings`). Parsers take ``(setting, value)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable


class ConfigurationError(ValueError):
    """An otel-jobs setting has a value it does not accept."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        super().__init__(f"otel-jobs: {setting}={value!r} is not valid; accepted: {accepted}")


def masked_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if not (sep and at and ":" in userinfo) or "/" in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


def url_shown(text: str) -> str:
    """A URL that was refused, as its error shows it: whatever may be a password is ``***``.

    Refused URLs need not parse, so this is looser than :func:`masked_url`: what lies between
    the user name's ``:`` and the last ``@`` is hidden, with or without a scheme.
    """
    head, at, host = text.rpartition("@")
    scheme, sep, userinfo = head.partition("://")
    if not sep:
        scheme, userinfo = "", head
    user, colon, _ = userinfo.partition(":")
    if not (at and colon):
        return text
    return f"{scheme}{sep}{user}:***@{host}"


def boolean(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(setting, value, "true or false (also 1/0, yes/no, on/off)")


def _whole_number(setting: str, value: object, lowest: float, highest: float, accepted: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(str(value).strip())
    except ValueError:
        raise ConfigurationError(setting, value, accepted) from None
    if not lowest <= number <= highest:
        raise ConfigurationError(setting, value, accepted)
    return number


def port(setting: str, value: object) -> int:
    return _whole_number(
        setting, value, 0, 65535, "a TCP port from 0 to 65535 (0 picks a free port)"
    )


#: The longest a thread can wait or a socket time out here (about 292 years on 64-bit Linux):
#: a longer watchdog interval or timeout would raise OverflowError in the watchdog's thread.
MAX_WAIT = threading.TIMEOUT_MAX


def seconds(setting: str, value: object, *, allow_inf: bool = True) -> float:
    accepted = "a positive number of seconds" + (
        ' (or "inf" for no limit)' if allow_inf else f" (at most {MAX_WAIT:.0f})"
    )
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise ConfigurationError(setting, value, accepted) from None
    if math.isnan(seconds) or seconds <= 0 or (seconds > MAX_WAIT and not allow_inf):
        raise ConfigurationError(setting, value, accepted)
    return seconds


def positive_int(setting: str, value: object) -> int:
    return _whole_number(setting, value, 1, math.inf, "a whole number of at least 1")


def non_negative_int(setting: str, value: object) -> int:
    return _whole_number(setting, value, 0, math.inf, "a whole number of at least 0")


def buckets(setting: str, value: object) -> tuple[float, ...]:
    accepted = "increasing positive finite numbers of seconds, comma-separated, e.g. 1,10,60,300"
    items: Iterable[object]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ConfigurationError(setting, value, accepted)
    try:
        bounds = tuple(
            float(str(v).strip()) if not isinstance(v, (int, float)) else float(v) for v in items
        )
    except (ValueError, OverflowError):
        raise ConfigurationError(setting, value, accepted) from None
    if (
        not bounds
        or any(math.isnan(b) or math.isinf(b) or b <= 0 for b in bounds)
        or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False))
    ):
        raise ConfigurationError(setting, value, accepted)
    return bounds


def choice(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(setting: str, value: object) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigurationError(setting, value, "one of " + ", ".join(choices))
        return text

    return parse


def names(choices: tuple[str, ...]) -> Callable[[str, object], tuple[str, ...]]:
    def parse(setting: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            items: Iterable[object] = [v for v in value.split(",") if v.strip()]
        elif isinstance(value, Iterable):
            items = value
        else:
            raise ConfigurationError(setting, value, "a list of names from " + ", ".join(choices))
        names = []
        for item in items:
            name = str(item).strip().lower()
            if name not in choices:
                raise ConfigurationError(setting, value, "names from " + ", ".join(choices))
            names.append(name)
        return tuple(names)

    return parse


def address(setting: str, value: object) -> str:
    text = str(value).strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigurationError(
            setting, value, "an IP address or host name to bind, such as 127.0.0.1 or 0.0.0.0"
        )
    return text


def path(setting: str, value: object) -> str:
    text = str(value).strip()
    if not text:
        raise ConfigurationError(setting, value, "a file system path")
    return text


def basic_auth(setting: str, value: object) -> str:
    text = str(value)
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError(setting, "<hidden>", '"user:password"')
    return text


def endpoint(setting: str, value: object) -> str:
    return _url(
        setting,
        value,
        ("http://", "https://"),
        "a URL beginning http:// or https:// with a host, such as http://127.0.0.1:4318",
    )


def redis_url(setting: str, value: object) -> str:
    return _url(
        setting,
        value,
        ("redis://", "rediss://", "unix://"),
        "a Redis URL such as redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:///path)",
        hostless=("unix",),
    )


def _url(
    setting: str,
    value: object,
    schemes: tuple[str, ...],
    accepted: str,
    hostless: tuple[str, ...] = (),
) -> str:
    """``value`` if it is a URL of one of ``schemes`` (prefixes) with a host (none for a
    ``hostless`` scheme) and a valid port; the error names the value, never its password."""
    from urllib.parse import urlsplit

    text = str(value).strip()
    shown = url_shown(text)
    if not text.startswith(schemes):
        raise ConfigurationError(setting, shown, accepted)
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ConfigurationError(setting, shown, accepted) from None
    if url.scheme not in hostless and not url.hostname:
        raise ConfigurationError(setting, shown, accepted)
    return text


def check_tls(setting: str, certfile: str, keyfile: str) -> None:
    """Load the certificate and key once here, so that a bad file fails at ``instrument()``."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            setting,
            certfile,
            f"a readable PEM certificate, with its private key in prometheus_keyfile ({exc})",
        ) from None
