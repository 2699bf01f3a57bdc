"""Credentials out of URLs and out of text that quotes them.

`redact_url` and `redact_query` serve `url.full` / `url.query`: userinfo
becomes `REDACTED:REDACTED@` and the values of sensitive query parameters
(OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS, names matched case-insensitively)
become `REDACTED`; a value runs to the next `&` or `#` (so `sig=abc;rest` is
redacted whole). `redact_text` does the same inside free text such as an
exception message ("Max retries exceeded with url: /x?sig=..."), where a value
also ends at whitespace or a quote. The regexes are compiled once, at first use.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from trace_run.core import config

__all__ = ["REDACTED", "redact_url", "redact_query", "redact_text", "reset"]

REDACTED = "REDACTED"
VARIABLE = "OTEL_TRACE_RUN_SENSITIVE_QUERY_PARAMS"

# Userinfo of any URL inside text: `scheme://user:pw@` (compiled at first use, like the others).
_USERINFO_IN_TEXT = r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#@'\"<>]+)@"
_userinfo: list = []

_rules: dict = {}


def reset() -> None:
    """Forget the configured names (tests; a new instrument())."""
    _rules.clear()


def _compiled() -> tuple:
    """(regex for a query string, regex for free text), or (None, None) when redaction is off."""
    try:
        return _rules["rx"]
    except KeyError:
        pass
    names = config.get(VARIABLE)
    if len(names) == 1 and names[0].lower() == "none":
        names = []
    found: tuple = (None, None)
    if names:
        alt = "|".join(re.escape(n) for n in names)
        found = (
            # at the start of the query or after a separator; the value runs to `&` or `#`
            re.compile(r"(?i)(?<![^?&;])(%s)=[^&#]*" % alt),
            # in text: not inside a longer name (`monkey=`); the value also ends at space or a quote
            re.compile(r"(?i)(?<![\w.\-])(%s)=[^&#\s'\"<>]*" % alt),
        )
    _rules["rx"] = found
    return found


def _replace(match: re.Match) -> str:
    return match.group(1) + "=" + REDACTED


def redact_query(query: str) -> str:
    """Values of sensitive parameters become REDACTED; the rest is kept (the same object if nothing matched)."""
    if not query or "=" not in query:
        return query
    rx = _compiled()[0]
    if rx is None:
        return query
    red, n = rx.subn(_replace, query)
    return red if n else query


def redact_url(url: Any) -> str:
    """`https://REDACTED:REDACTED@host/p?X-Amz-Signature=REDACTED`: no credentials in traces."""
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    url = str(url)
    if "@" not in url and "?" not in url:  # no userinfo, no query: _redact would change nothing
        return url
    return _redact(url)


def _redact(url: str) -> str:
    scheme_end = url.find("://")
    if scheme_end >= 0:
        start = scheme_end + 3
        end = len(url)
        for sep in "/?#":
            i = url.find(sep, start)
            if 0 <= i < end:
                end = i
        at = url.rfind("@", start, end)
        if at >= 0:
            userinfo = url[start:at]
            masked = "REDACTED:REDACTED" if ":" in userinfo else REDACTED
            url = url[:start] + masked + url[at:]
    q = url.find("?")
    if q >= 0:
        frag = url.find("#", q)
        query = url[q + 1:frag] if frag >= 0 else url[q + 1:]
        red = redact_query(query)
        if red is not query:
            url = url[:q + 1] + red + (url[frag:] if frag >= 0 else "")
    return url


def _mask_userinfo(match: re.Match) -> str:
    return match.group(1) + ("REDACTED:REDACTED" if ":" in match.group(2) else REDACTED) + "@"


def redact_text(text: Optional[str]) -> str:
    """Free text with the userinfo of any URL and the values of sensitive parameters redacted."""
    if not text:
        return text or ""
    if "://" in text:
        if not _userinfo:
            _userinfo.append(re.compile(_USERINFO_IN_TEXT))
        text = _userinfo[0].sub(_mask_userinfo, text)
    if "=" in text:
        rx = _compiled()[1]
        if rx is not None:
            text = rx.sub(_replace, text)
    return text
