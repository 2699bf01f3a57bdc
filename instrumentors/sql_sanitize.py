"""SQL text for spans: literals out, shape kept.

`analyze(sql)` scans a statement once, left to right, and returns the text with
every literal (strings, E'' strings, numbers, hex/binary literals, dollar-quoted
bodies) replaced by `?`, comments dropped (they may hold data), whitespace
collapsed, runs of `?, ?, ?` collapsed into one `?` and repeated `(?), (?)`
tuples into one. Placeholders (`%s`, `%(name)s`, `$1`, `?`, `:name`) and quoted
identifiers stay. From the same pass it reads the operation (`SELECT`) and the
collection (`items`) used for the span name.

Every token pattern below always matches once entered (unterminated strings,
comments and quotes simply run to the end), so no input makes the scanner
backtrack: the cost is linear in the length of the text and it never raises.

With a `limit` (the value bound, see bounds.py) only the first `limit * 8`
characters are scanned, so a 7 MB statement costs what a 32 KiB one does: a
literal cut there is unterminated and still becomes `?`, so a cut never
reveals one. The text is then bounded and marked as cut.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional, Union

__all__ = ["Analysis", "analyze", "sanitize", "span_name"]

_TOKEN_PATTERN = (
    r"""
     (?P<ws>\s+)
    |(?P<lc>--[^\n]*)
    |(?P<bc>/\*)
    |(?P<estr>[eE]'(?:[^'\\]+|\\.|'')*'?)
    |(?P<str>(?:[bBxXnN]|[uU]&)?'(?:[^']+|'')*'?)
    |(?P<qid>"(?:[^"]+|"")*"?)
    |(?P<bq>`[^`]*`?)
    |(?P<dq>\$(?:[^\W\d][\w]*)?\$)
    |(?P<cast>::)
    |(?P<param>%\([^)\n]{0,200}\)s|%[sbt%]|\$\d+|\?\d*|:[^\W\d]\w*|@[^\W\d]\w*)
    |(?P<num>0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
    |(?P<word>[^\W\d][\w$]*)
    |(?P<other>.)
    """
)
_token: list = []  # the compiled _TOKEN_PATTERN, at first use: ~1.5 ms not spent while a process starts
_BLOCK_COMMENT_EDGE = re.compile(r"/\*|\*/")

# Kinds of the tokens kept in the output.
_LIT = 1  # a `?` we put in place of a literal
_WORD = 2  # keyword or plain identifier
_QID = 3  # quoted identifier
_PUNCT = 4  # anything else (operators, parentheses, placeholders)

_MAX_NAME_TOKENS = 4000  # tokens kept for reading the operation and collection
_CACHE_MAX = 1024
_CACHE_TEXT_MAX = 4096

OPERATIONS = frozenset(
    """SELECT INSERT UPDATE DELETE MERGE UPSERT REPLACE WITH CREATE DROP ALTER TRUNCATE COPY CALL DO
    EXPLAIN ANALYZE VACUUM BEGIN START COMMIT END ROLLBACK SAVEPOINT RELEASE SET RESET SHOW GRANT REVOKE
    LOCK LISTEN NOTIFY UNLISTEN PREPARE EXECUTE DEALLOCATE DECLARE FETCH MOVE CLOSE DISCARD REFRESH
    REINDEX CLUSTER COMMENT PRAGMA ATTACH DETACH VALUES TABLE""".split()
)
_TABLE_MODIFIERS = frozenset("TEMP TEMPORARY UNLOGGED GLOBAL LOCAL OR REPLACE".split())
_JOINS = frozenset(("JOIN",))


SCAN_FACTOR = 8  # characters scanned per character kept: sanitizing shrinks text (`VALUES (?), (?)` -> `(?)`)


class Analysis(NamedTuple):
    text: str
    operation: str | None
    collection: str | None
    truncated = False  # not a field: the text was cut to the limit (see _Cut)


class _Cut(Analysis):
    """An Analysis whose text was cut to the limit (and ends in bounds.MARK)."""

    __slots__ = ()
    truncated = True


def sanitize(sql: Union[str, bytes, None]) -> str:
    """The statement with every literal replaced by `?` (never raises)."""
    return analyze(sql).text


def span_name(analysis: Analysis, system: str) -> str:
    """`{operation} {collection}`, else the operation, else the system (stable DB conventions)."""
    if analysis.operation:
        if analysis.collection:
            return analysis.operation + " " + analysis.collection
        return analysis.operation
    return system


_cache: dict = {}


def analyze(sql: Union[str, bytes, None], sanitize: bool = True, limit: Optional[int] = None) -> Analysis:
    """Sanitized text, operation and collection of one statement (cached for short texts);
    with `limit`, the text is at most that long and only a bounded prefix is scanned."""
    if type(sql) is str:  # a text kept whole before (every key of an uncut text is at most a scan long)
        hit = _cache.get((sql, sanitize, limit, False))
        if hit is not None:
            return hit
    scan = None if limit is None else max(limit, 64) * SCAN_FACTOR
    cut = False
    if isinstance(sql, (bytes, bytearray, memoryview)):
        cut = scan is not None and len(sql) > scan
        sql = bytes(sql[:scan] if cut else sql).decode("utf-8", "replace")
    elif not isinstance(sql, str):
        sql = "" if sql is None else str(sql)
    if scan is not None and len(sql) > scan:
        cut = True
        sql = sql[:scan]
    short = len(sql) <= _CACHE_TEXT_MAX
    if short:
        hit = _cache.get((sql, sanitize, limit, cut))
        if hit is not None:
            return hit
    result = _scan(sql, sanitize)
    if limit is not None and (cut or len(result.text) > limit):
        from .bounds import cut as bound

        result = _Cut(bound(result.text, limit, force=cut)[0], result.operation, result.collection)
    if short:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[(sql, sanitize, limit, cut)] = result
    return result


def _scan(sql: str, sanitize: bool) -> Analysis:
    out: list = []  # output pieces; a single " " stands for any whitespace or comment
    kinds: list = []  # kind of each piece (0 for " ")
    names: list = []  # (kind, text) of the first significant tokens, for operation/collection
    depth = 0
    after_semicolon = False
    multi = False
    space = False
    pos = 0
    end = len(sql)
    if not _token:
        _token.append(re.compile(_TOKEN_PATTERN, re.S | re.X))
    match = _token[0].match
    while pos < end:
        m = match(sql, pos)
        group = m.lastgroup
        text = m.group()
        pos = m.end()
        if group == "ws":
            space = True
            continue
        if group == "lc":
            space = True
            continue
        if group == "bc":
            pos = _skip_block_comment(sql, pos)
            space = True
            continue
        if group == "dq":
            close = sql.find(text, pos)
            pos = end if close < 0 else close + len(text)
            kind = _LIT
        elif group in ("str", "estr", "num"):
            kind = _LIT
        elif group == "word":
            kind = _WORD
        elif group in ("qid", "bq"):
            kind = _QID
        else:
            kind = _PUNCT
        if after_semicolon:
            multi = True
        if len(names) < _MAX_NAME_TOKENS:
            names.append((kind, text))
        if kind == _PUNCT:
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            elif text == ";" and depth <= 0:
                after_semicolon = True
                if names and names[-1] == (_PUNCT, ";"):
                    names.pop()  # the `;` itself is not part of the statement
        if not sanitize:
            continue
        if kind == _LIT:
            # `?, ?` -> `?`
            if _tail_is(out, kinds, (_LIT, ",")):
                _drop_tail(out, kinds, 1)
                space = False
                continue
            if space and out:
                out.append(" ")
                kinds.append(0)
            space = False
            out.append("?")
            kinds.append(_LIT)
            continue
        if space and out:
            out.append(" ")
            kinds.append(0)
        space = False
        out.append(text)
        kinds.append(kind if kind != _PUNCT else text)
        if text == ")" and _tail_is(out, kinds, ("(", _LIT, ")", ",", "(", _LIT, ")")):
            # `(?), (?)` -> `(?)`
            _drop_tail(out, kinds, 4)
    operation, collection = _names(names)
    if multi:
        operation = collection = None
    return Analysis("".join(out) if sanitize else sql, operation, collection)


def _skip_block_comment(sql: str, pos: int) -> int:
    """Index after the `*/` closing a (possibly nested) block comment opened before pos."""
    depth = 1
    search = _BLOCK_COMMENT_EDGE.search
    while True:
        m = search(sql, pos)
        if m is None:
            return len(sql)
        pos = m.end()
        if m.group() == "/*":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def _tail_is(out: list, kinds: list, pattern: tuple) -> bool:
    """Do the last significant pieces (spaces skipped) match pattern (kinds or punctuation)?"""
    i = len(kinds) - 1
    for want in reversed(pattern):
        while i >= 0 and kinds[i] == 0:
            i -= 1
        if i < 0 or kinds[i] != want:
            return False
        i -= 1
    return True


def _drop_tail(out: list, kinds: list, count: int) -> None:
    """Remove the last `count` significant pieces and the spaces around them."""
    while count and kinds:
        if kinds.pop() != 0:
            count -= 1
        out.pop()
    while kinds and kinds[-1] == 0:
        kinds.pop()
        out.pop()


def _names(tokens: list) -> tuple:
    """(operation, collection) from the significant tokens of one statement."""
    i = 0
    n = len(tokens)
    while i < n and tokens[i][1] == "(":
        i += 1
    if i >= n or tokens[i][0] != _WORD:
        return None, None
    op = tokens[i][1].upper()
    if op not in OPERATIONS:
        return None, None
    i += 1
    if op == "SELECT":
        return op, _select_collection(tokens, i)
    if op in ("INSERT", "UPSERT", "REPLACE"):
        i = _skip_words(tokens, i, ("OR", "REPLACE", "IGNORE", "ABORT", "FAIL", "ROLLBACK"))
        if _is_word(tokens, i, "INTO"):
            return op, _read_name(tokens, i + 1)
        return op, None
    if op == "UPDATE":
        i = _skip_words(tokens, i, ("ONLY", "OR", "REPLACE", "IGNORE", "ABORT", "FAIL", "ROLLBACK"))
        return op, _read_name(tokens, i)
    if op == "DELETE":
        if _is_word(tokens, i, "FROM"):
            return op, _read_name(tokens, _skip_words(tokens, i + 1, ("ONLY",)))
        return op, None
    if op in ("CREATE", "DROP", "ALTER"):
        i = _skip_words(tokens, i, _TABLE_MODIFIERS)
        if not _is_word(tokens, i, "TABLE"):
            return op, None
        i = _skip_words(tokens, i + 1, ("IF", "NOT", "EXISTS", "ONLY"))
        return op, _read_name(tokens, i)
    if op == "TRUNCATE":
        return op, _read_name(tokens, _skip_words(tokens, i, ("TABLE", "ONLY")))
    if op == "COPY":
        return op, _read_name(tokens, i)
    return op, None


_NESTING = {"(": 1, ")": -1}


def _select_collection(tokens: list, i: int) -> str | None:
    depth = 0
    n = len(tokens)
    while i < n:
        kind, text = tokens[i]
        if kind == _PUNCT:
            depth += _NESTING.get(text, 0)
        elif kind == _WORD and depth == 0 and text.upper() == "FROM":
            name = _read_name(tokens, i + 1)
            if name is None:
                return None
            return name if _single_collection(tokens, i + 1) else None
        i += 1
    return None


def _single_collection(tokens: list, j: int) -> bool:
    """One collection only after FROM: not `FROM a, b` nor `FROM a JOIN b`."""
    depth = 0
    while j < len(tokens):
        kind, text = tokens[j]
        if kind == _PUNCT:
            if text == "," and depth == 0:
                return False
            depth += _NESTING.get(text, 0)
        elif kind == _WORD and depth == 0:
            up = text.upper()
            if up in _JOINS:
                return False
            if up in ("WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "UNION", "OFFSET", "FOR"):
                break
        j += 1
    return True


def _is_word(tokens: list, i: int, word: str) -> bool:
    return i < len(tokens) and tokens[i][0] == _WORD and tokens[i][1].upper() == word


def _skip_words(tokens: list, i: int, words) -> int:
    while i < len(tokens) and tokens[i][0] == _WORD and tokens[i][1].upper() in words:
        i += 1
    return i


def _read_name(tokens: list, i: int) -> str | None:
    """A possibly qualified name (`s.t`, `"Weird Table"`) starting at i, as written."""
    parts = []
    n = len(tokens)
    while i < n and tokens[i][0] in (_WORD, _QID):
        parts.append(tokens[i][1])
        if i + 1 < n and tokens[i + 1] == (_PUNCT, "."):
            i += 2
            continue
        break
    if not parts:
        return None
    return ".".join(parts)
