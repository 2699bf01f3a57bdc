"""HPACK (RFC 7541), as much as a gRPC client needs: request headers encoded as literals (never
added to the server's table, never Huffman-coded), response headers and trailers decoded fully
(static and dynamic table, table size updates, integers, plain and Huffman-coded strings).
"""

from __future__ import annotations

STATIC_TABLE = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""), (b"access-control-allow-origin", b""),
    (b"age", b""), (b"allow", b""), (b"authorization", b""), (b"cache-control", b""),
    (b"content-disposition", b""), (b"content-encoding", b""), (b"content-language", b""),
    (b"content-length", b""), (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""), (b"from", b""),
    (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""),
    (b"if-range", b""), (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""),
    (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""), (b"proxy-authorization", b""),
    (b"range", b""), (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
_STATIC_NAMES: dict = {}
for _i, (_name, _value) in enumerate(STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _i)

# RFC 7541 Appendix B: the code length of each symbol (0-255, then EOS), as chr(ord("A") + length - 5).
# The code is canonical (codes of one length are consecutive, in symbol order, and the shorter
# lengths come first), so these lengths alone determine every code.
_HUFFMAN_LENGTHS = (
    "ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJB"
    "KABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRS"
    "VVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWVZ"
)
EOS = 256


class HPACKError(Exception):
    """The peer's header block cannot be decoded (a COMPRESSION_ERROR of the connection)."""


def _huffman_tables():
    """Canonical decoding tables: per code length, (the first code of that length, how many
    codes have it, where its symbols start in `symbols`)."""
    lengths = [ord(c) - ord("A") + 5 for c in _HUFFMAN_LENGTHS]
    symbols = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    first, count, start = {}, {}, {}
    code, previous = 0, lengths[symbols[0]]
    for position, symbol in enumerate(symbols):
        n = lengths[symbol]
        if position:
            code = (code + 1) << (n - previous)
        previous = n
        if n not in first:
            first[n], count[n], start[n] = code, 0, position
        count[n] += 1
    return lengths, symbols, {n: (first[n], count[n], start[n]) for n in first}


_LENGTHS, _SYMBOLS, _BY_LENGTH = _huffman_tables()
_MAX_LENGTH = max(_LENGTHS)


def huffman_decode(data: bytes) -> bytes:
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            entry = _BY_LENGTH.get(length)
            if entry is not None and 0 <= code - entry[0] < entry[1]:
                symbol = _SYMBOLS[entry[2] + code - entry[0]]
                if symbol == EOS:
                    raise HPACKError("EOS in a Huffman-coded string")
                out.append(symbol)
                code = length = 0
            elif length >= _MAX_LENGTH:
                raise HPACKError("bad Huffman code")
    # padding: fewer than 8 bits, all ones (the start of EOS)
    if length > 7 or code != (1 << length) - 1:
        raise HPACKError("bad Huffman padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """For tests and completeness: the encoder sends strings as they are."""
    codes = _codes()
    acc = bits = 0
    out = bytearray()
    for byte in data:
        code, n = codes[byte]
        acc = (acc << n) | code
        bits += n
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1
    if bits:
        out.append(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xFF)
    return bytes(out)


def _codes() -> list:
    codes = [None] * len(_LENGTHS)
    for n, (first, count, start) in _BY_LENGTH.items():
        for i in range(count):
            codes[_SYMBOLS[start + i]] = (first + i, n)
    return codes


def encode_integer(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_integer(data: bytes, pos: int, prefix_bits: int) -> tuple:
    """(value, position after it)."""
    limit = (1 << prefix_bits) - 1
    if pos >= len(data):
        raise HPACKError("truncated integer")
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HPACKError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 35:
            raise HPACKError("integer too large")


def _encode_string(value: bytes) -> bytes:
    return encode_integer(len(value), 7) + value


def _decode_string(data: bytes, pos: int) -> tuple:
    if pos >= len(data):
        raise HPACKError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = decode_integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKError("truncated string")
    raw = bytes(data[pos:end])
    return (huffman_decode(raw) if huffman else raw), end


def encode(headers) -> bytes:
    """A header block of (name, value) pairs (bytes or str; names lowercase), each a literal field
    without indexing; the name taken from the static table where it is there."""
    out = bytearray()
    for name, value in headers:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        index = _STATIC_NAMES.get(name)
        if index is not None and STATIC_TABLE[index - 1][1] == value and value:
            out += encode_integer(index, 7, 0x80)  # indexed field (":method: POST", ":scheme: http")
            continue
        if index is not None:
            out += encode_integer(index, 4)
        else:
            out += b"\x00" + _encode_string(name)
        out += _encode_string(value)
    return bytes(out)


class Decoder:
    """One per connection: the server's dynamic table lives as long as the connection."""

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 64 * 1024):
        self.max_allowed = max_table_size  # what we advertised (SETTINGS_HEADER_TABLE_SIZE)
        self.max_size = max_table_size  # what the peer set it to (size updates)
        self.max_header_list_size = max_header_list_size
        self.table: list = []  # newest first
        self.size = 0

    def _add(self, name: bytes, value: bytes) -> None:
        self.table.insert(0, (name, value))
        self.size += 32 + len(name) + len(value)
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            name, value = self.table.pop()
            self.size -= 32 + len(name) + len(value)

    def _entry(self, index: int) -> tuple:
        if index <= 0:
            raise HPACKError("index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        index -= len(STATIC_TABLE) + 1
        if index >= len(self.table):
            raise HPACKError("index beyond the dynamic table")
        return self.table[index]

    def _literal(self, data: bytes, pos: int, prefix: int) -> tuple:
        """(name, value, next position) of a literal field: its name indexed or literal, its value literal."""
        index, pos = decode_integer(data, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _decode_string(data, pos)
        value, pos = _decode_string(data, pos)
        return name, value, pos

    def decode(self, data: bytes) -> list:
        """[(name, value)] as bytes, in order."""
        headers = []
        total = 0
        pos = 0
        seen_field = False
        while pos < len(data):
            byte = data[pos]
            if byte & 0x80:  # indexed
                index, pos = decode_integer(data, pos, 7)
                name, value = self._entry(index)
            elif byte & 0x40:  # literal, incremental indexing
                name, value, pos = self._literal(data, pos, 6)
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update
                if seen_field:
                    raise HPACKError("table size update after a header field")
                size, pos = decode_integer(data, pos, 5)
                if size > self.max_allowed:
                    raise HPACKError("table size %d over the %d allowed" % (size, self.max_allowed))
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(data, pos, 4)
            seen_field = True
            total += 32 + len(name) + len(value)
            if total > self.max_header_list_size:
                raise HPACKError("header list over %d bytes" % self.max_header_list_size)
            headers.append((name, value))
        return headers
