"""Endpoint URLs as trace-run prints them: credentials masked the way header values are.

`http://user:pw@host:4318/v1/traces?token=abc` is shown as
`http://user:***@host:4318/v1/traces?token=***`: the user name, scheme, host,
port, path and query keys stay, so a wrong endpoint is still recognisable; the
password (or a lone token before `@`) and every query value go. Every query
value, not only signature-like ones as in url.full: an exporter endpoint's query
string is configuration, and when it carries anything it is usually a key.
Standard library only: configuration warnings and `--info` print endpoints
before the SDK is loaded.
"""

from __future__ import annotations

from typing import Callable, List
from urllib.parse import unquote

MASK = "***"


def _authority_end(url: str, start: int) -> int:
    ends = [i for i in (url.find(c, start) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(url)


def _parts(url: str) -> tuple:
    """(start of the authority, position of '@' or -1, start of the query or -1, its end)."""
    scheme = url.find("://")
    start = scheme + 3 if scheme >= 0 else 0
    at = url.rfind("@", start, _authority_end(url, start))
    q = url.find("?")
    frag = url.find("#", q) if q >= 0 else -1
    return start, at, q, frag if frag >= 0 else len(url)


def masked(url: str) -> str:
    """The URL with its credentials replaced by `***` (see the module docstring)."""
    url = str(url)
    start, at, q, q_end = _parts(url)
    if q >= 0:
        params = url[q + 1:q_end].split("&")
        url = url[:q + 1] + "&".join(_masked_param(p) for p in params) + url[q_end:]
    if at >= 0:
        user, colon, _password = url[start:at].partition(":")
        url = url[:start] + (user + ":" + MASK if colon and user else MASK) + url[at:]
    return url


def without_userinfo(url: str) -> str:
    """The URL without its `user:password@`."""
    start, at, _q, _q_end = _parts(str(url))
    return url if at < 0 else url[:start] + url[at + 1:]


def _masked_param(param: str) -> str:
    key, eq, value = param.partition("=")
    if not eq:
        return MASK if key else key  # a bare value may be a token
    return key + "=" + (MASK if value else "")


def secrets(url: str) -> List[str]:
    """The texts masked() hides, as written and percent-decoded, longest first."""
    url = str(url)
    start, at, q, q_end = _parts(url)
    found = []
    if at >= 0:
        user, colon, password = url[start:at].partition(":")
        found.append(password if colon and user else url[start:at])
    if q >= 0:
        for param in url[q + 1:q_end].split("&"):
            key, eq, value = param.partition("=")
            found.append(value if eq else key)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrubber(*urls: str) -> Callable[[str], str]:
    """A function that masks the URLs' credentials wherever they appear in a text (error messages)."""
    hidden = sorted({s for url in urls for s in secrets(url)}, key=len, reverse=True)

    def scrub(text: str) -> str:
        text = str(text)
        for secret in hidden:
            text = text.replace(secret, MASK)
        return text

    return scrub


def scrub_logs(logger_names, *urls: str) -> None:
    """The SDK's exporters quote their URL in log messages (at debug, or for the program's own
    exporters): mask the endpoints' credentials there too."""
    import logging

    if not any(secrets(url) for url in urls):
        return
    scrub = scrubber(*urls)

    class Scrub(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            try:
                text = record.getMessage()
                clean = scrub(text)
                if clean != text:
                    record.msg, record.args = clean, None
            except Exception:
                pass
            return True

    for name in logger_names:
        logging.getLogger(name).addFilter(Scrub())

