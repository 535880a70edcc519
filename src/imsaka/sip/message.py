"""SIP messages: parse and serialize requests and responses (RFC 3261 §7, §18.3, §20, §25).

Design for speed and strictness:
- one `bytes.find(b"\\r\\n\\r\\n")` for the end of the header block, one UTF-8 decode
  (surrogateescape, so any octet round-trips), one split into lines;
- each header field is kept as a `(key, value, raw)` triple: `key` is the lower-case
  long name (compact forms expanded, §7.3.3), `value` the unfolded value, `raw` the
  field exactly as received (folding and spelling kept), so unknown and untouched
  headers serialize byte for byte;
- typed views (imsaka.sip.headers) are built only when asked for and cached until
  the header is changed;
- CRLF only: a bare CR or LF, a NUL, a header name that is not a token, a
  Content-Length that is not a number or promises more body than arrived, a
  missing mandatory header (§8.1.1) or a CSeq method unlike the request's all
  raise `SipParseError` (400); more than `max_size` octets raise 513, more than
  `max_headers` fields 400. Nothing else escapes `parse_message`.
Per §18.3, octets after the body that Content-Length announces are discarded
(datagram); stream framing is imsaka.sip.framing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from operator import itemgetter

from imsaka.sip._abnf import (
    COMPACT_FORMS,
    CTL_RE,
    LIST_HEADERS,
    METHOD_RE,
    REASON_PHRASES,
    REQUEST_URI_RE,
    STATUS_RE,
    TOKEN_RE,
    VERSION_RE,
    canonical_key,
    display_name,
    long_name,
    split_commas,
)
from imsaka.sip.errors import LocalProtocolError, SipParseError
from imsaka.sip.headers import (
    CSEQ_SEEN,
    AccessNetworkInfo,
    ChargingFunctionAddresses,
    ChargingVector,
    Contact,
    ContentType,
    CSeq,
    DigestCredentials,
    NameAddr,
    SecurityMechanism,
    Via,
    VisitedNetworkId,
    option_tags,
    parse_date,
    parse_int,
    remember_via,
)
from imsaka.sip.memo import BoundedMemo
from imsaka.sip.uri import parse_uri

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_HEADERS = 256

_MANDATORY = ("via", "from", "to", "call-id", "cseq")
# Key of the serialised message in a message's view cache (not a header name: no colon
# can be in a header name).
_WIRE = ":wire"
# Key of the topmost Via's view when the others are not parsed: most messages need only
# that one (transaction matching, received/rport, where responses go), and RFC 3261
# §16.3 step 1 has a proxy leave the components it does not use as they are.
_TOP_VIA = ":top-via"
_MANDATORY_SET = frozenset(_MANDATORY)
_FIRST = itemgetter(0)
_RAW = itemgetter(2)

# Header names seen before, already validated: name as written -> key. Bounded so a
# flood of distinct names cannot grow it without limit.
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 512


# Whole header lines seen before, already split: line as received -> its (key, value,
# line) entry (immutable, so messages share it). Only lines of the headers whose value
# recurs in the messages of a node (Max-Forwards 69, CSeq 1 REGISTER, Require: path, a
# P-CSCF's Path, Content-Length 0, ...; From, To, Call-ID and Contact within a
# registration) are kept: never credentials, nor Via (a new branch each time). Emptied
# when full.
_LINES: dict[str, tuple[str, str, str]] = {}
_LINES_MAX = 2048
_SHARED_LINE_KEYS = frozenset(
    {
        "max-forwards",
        "content-length",
        "cseq",
        "require",
        "proxy-require",
        "supported",
        "allow",
        "allow-events",
        "accept",
        "expires",
        "event",
        "content-type",
        "user-agent",
        "server",
        "path",
        "service-route",
        "route",
        "record-route",
        "p-visited-network-id",
        "p-access-network-info",
        "p-charging-function-addresses",
        "date",
        "subscription-state",
        "accept-encoding",
        "accept-language",
        "privacy",
        # per dialog, but met again within a registration or dialog (request, response,
        # the next request): kept while the memo spans that
        "from",
        "to",
        "call-id",
        "contact",
    }
)


def _name_key(name: str) -> str:
    key = _NAME_CACHE.get(name)
    if key is not None:
        return key
    # HCOLON = *( SP / HTAB ) ":" SWS : whitespace before the colon is allowed
    stripped = name.rstrip(" \t")
    if not stripped or not TOKEN_RE.fullmatch(stripped):
        raise SipParseError(f"invalid header name {stripped[:40]!r}")
    key = stripped.lower()
    key = COMPACT_FORMS.get(key, key)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = key
    return key


_KEY_CACHE: dict[str, str] = {}


def _key(name: str) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        key = canonical_key(name)
        if len(_KEY_CACHE) < _NAME_CACHE_MAX:
            _KEY_CACHE[name] = key
    return key


# Header names given to `add`: name -> (key, name as we write it).
_ADD_NAMES: dict[str, tuple[str, str]] = {}


def _add_spec(name: str) -> tuple[str, str]:
    key = _key(name)
    spec = (key, display_name(key, name))
    if len(_ADD_NAMES) < _NAME_CACHE_MAX:
        _ADD_NAMES[name] = spec
    return spec


def _check_value(value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise LocalProtocolError("header value must not contain CR, LF or NUL")
    return value.strip()


def _add_lines(hs: list[tuple[str, str, str]], headers) -> set[str]:
    """`add` of each (name, value) in turn to the lines `hs`, in one pass: a line goes
    to the end unless a line of its header is already there with others after it (then
    after that header's last line, as `add` does). Returns the keys `hs` holds now."""
    append = hs.append
    names = _ADD_NAMES
    seen: set[str] = {h[0] for h in hs} if hs else set()
    for name, value in headers:
        spec = names.get(name)
        if spec is None:
            spec = _add_spec(name)
        key, shown = spec
        if type(value) is not str:
            value = str(value)
        if "\r" in value or "\n" in value or "\x00" in value:
            raise LocalProtocolError("header value must not contain CR, LF or NUL")
        value = value.strip()
        entry = (key, value, f"{shown}: {value}")
        if key not in seen:
            seen.add(key)
            append(entry)
        elif hs[-1][0] == key:
            append(entry)
        else:
            for i in range(len(hs) - 1, -1, -1):
                if hs[i][0] == key:
                    hs.insert(i + 1, entry)
                    break
    return seen


class Message:
    """Common part of Request and Response: ordered header fields and the body."""

    __slots__ = ("_cache", "_headers", "body")

    def __init__(
        self,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self._headers: list[tuple[str, str, str]] = []
        self._cache: dict | None = None
        self.body = bytes(body)
        if headers:
            _add_lines(self._headers, headers)

    # -- header access -------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """First value of header `name` (first comma element for list headers)."""
        key = _KEY_CACHE.get(name) or _key(name)
        found = None
        for h in self._headers:
            if h[0] == key:
                v = h[1]
                if key not in LIST_HEADERS:
                    return v
                if "," in v:
                    parts = split_commas(v)
                    if parts:
                        return parts[0]
                elif v:
                    return v
                found = ""  # present but empty so far: look at the next line
        return found

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name` over all its lines, split at top-level commas
        for list headers (RFC 3261 §7.3.1); one entry per line for the others."""
        key = _KEY_CACHE.get(name) or _key(name)
        if key in LIST_HEADERS:
            out: list[str] = []
            for h in self._headers:
                if h[0] == key:
                    v = h[1]  # stripped already (parse, add, set): split only at a comma
                    if "," in v:
                        out.extend(split_commas(v))
                    elif v:
                        out.append(v)
            return out
        return [h[1] for h in self._headers if h[0] == key]

    def line_values(self, keys: Collection[str]) -> dict[str, list[str]]:
        """The value of every line of each header in `keys` (lower-case long names), in
        order, by key (absent ones left out), in one pass over the lines: a node that
        reads several headers of a message scans it once instead of once each."""
        out: dict[str, list[str]] = {}
        for h in self._headers:
            key = h[0]
            if key in keys:
                values = out.get(key)
                if values is None:
                    out[key] = [h[1]]
                else:
                    values.append(h[1])
        return out

    def has(self, name: str) -> bool:
        key = _KEY_CACHE.get(name) or _key(name)
        for h in self._headers:  # noqa: SIM110 - a plain loop: no generator per call
            if h[0] == key:
                return True
        return False

    def set(self, name: str, value: str) -> None:
        """Replace every line of `name` by one line (at the place of the first)."""
        spec = _ADD_NAMES.get(name)
        if spec is None:
            spec = _add_spec(name)
        key, shown = spec
        value = _check_value(value if type(value) is str else str(value))
        line = f"{shown}: {value}"
        hs = self._headers
        at = -1
        for i, h in enumerate(hs):
            if h[0] == key:
                if at >= 0:
                    at = -2  # several lines: rebuilt below
                    break
                at = i
        if at != -2:
            # the common case (Max-Forwards, Expires): one line or none
            if at >= 0:
                hs[at] = (key, value, line)
            else:
                hs.append((key, value, line))
            self._invalidate(key)
            return
        new: list[tuple[str, str, str]] = []
        done = False
        for h in self._headers:
            if h[0] == key:
                if not done:
                    new.append((key, value, line))
                    done = True
            else:
                new.append(h)
        if not done:
            new.append((key, value, line))
        self._headers = new
        self._invalidate(key)

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add a line: before the first line of the same header when `first`
        (topmost Via, Route, Record-Route, Path), else after its last line (or at
        the end when the header is absent)."""
        spec = _ADD_NAMES.get(name)
        if spec is None:
            spec = _add_spec(name)
        key, shown = spec
        value = _check_value(value if type(value) is str else str(value))
        self._insert(key, (key, value, f"{shown}: {value}"), first)
        self._invalidate(key)

    def _insert(self, key: str, entry: tuple[str, str, str], first: bool) -> None:
        hs = self._headers
        if first:
            for i, h in enumerate(hs):
                if h[0] == key:
                    hs.insert(i, entry)
                    return
            hs.insert(0, entry)
            return
        for i in range(len(hs) - 1, -1, -1):
            if hs[i][0] == key:
                hs.insert(i + 1, entry)
                return
        hs.append(entry)

    def add_top_via(self, via: Via) -> None:
        """Put `via` (a Via view) on top of the Via lines (§16.6 step 8), keeping the
        parsed views of the Vias below."""
        text = str(via)
        remember_via(text, via)  # its response brings this very text back
        line = "Via: " + text
        self._insert("via", ("via", text, line), True)
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        else:
            wire = cache.pop(_WIRE, None)
            if wire is not None:
                # serialised already (a UAC's size check, RFC 3261 §18.1.1): the line
                # put into those octets at its place, not the message serialised again
                self._wire_with(wire, line)
            vias = cache.get("via")
            if vias is not None:
                cache["via"] = [via, *vias]
        cache[_TOP_VIA] = via

    def _wire_with(self, wire: tuple[str, bytes, bytes], line: str) -> None:
        """Cache the octets `to_bytes` gives now that `line` went in before the first
        Via (or first of all), from `wire` (start line, body, octets) as cached before:
        the line put in where the header line it precedes began, when the start line
        and the body are as they were."""
        start, body, data = wire
        if start != self.start_line() or body is not self.body:
            return
        hs = self._headers
        at = 0
        while hs[at][0] != "via":
            at += 1
        if at == 0:
            # first of all: it follows the start line
            off = len(start.encode("utf-8", "surrogateescape")) + 2
        else:
            # before the Via that was first: that line's octets begin after the CRLF
            # ending the line before, and no line holds a CR or LF, so the first match
            # is the first line with its octets (its name too: the first Via line)
            nxt = hs[at + 1][2].encode("utf-8", "surrogateescape")
            off = data.find(b"\r\n" + nxt + b"\r\n") + 2
            if off < 2:
                return
        new = line.encode("utf-8", "surrogateescape")
        self._cache[_WIRE] = (start, body, b"".join((data[:off], new, b"\r\n", data[off:])))

    def remove(self, name: str, *names: str) -> int:
        """Remove every line of `name` (and of each of `names`, in the same pass);
        returns how many lines went."""
        hs = self._headers
        if names:
            keys = {_key(n) for n in (name, *names)}
            kept = [h for h in hs if h[0] not in keys]
            if len(kept) != len(hs):
                self._headers = kept
                for key in keys:
                    self._invalidate(key)
            return len(hs) - len(kept)
        key = _key(name)
        for h in hs:
            if h[0] == key:
                break
        else:
            return 0  # absent: nothing to copy, no view to drop
        self._headers = [h for h in hs if h[0] != key]
        self._invalidate(key)
        return len(hs) - len(self._headers)

    def add_after(self, headers: Iterable[tuple[str, str]], anchors: Collection[str]) -> None:
        """`add` of each (name, value) in turn, then `move_after` of every line of their
        headers to just after the last line of any header in `anchors` (lower-case long
        names), in one pass: the same lines in the same order, the lines already there
        moved as they are (the P-CSCF's additions to a REGISTER, TS 24.228 packet 2).
        A value with a CR, LF or NUL raises LocalProtocolError before any line goes in."""
        if type(headers) is not list:
            headers = list(headers)  # read twice when some of these headers are there
        # the block of lines that goes in, built by the `add`s on their own
        block: list[tuple[str, str, str]] = []
        keys = _add_lines(block, headers)
        if not block:
            return
        hs = self._headers
        ks = list(map(_FIRST, hs))
        if keys.isdisjoint(ks):
            rest = hs  # the usual case: none of these headers there yet
        else:
            # their lines already there, in their order (`move_after` keeps it), each new
            # one added among them
            block = [h for h in hs if h[0] in keys]
            _add_lines(block, headers)
            rest = [h for h in hs if h[0] not in keys]
            ks = list(map(_FIRST, rest))
        pos = 0
        rks = None
        for a in anchors:
            if a in ks:
                if rks is None:
                    rks = ks[::-1]
                at = len(ks) - rks.index(a)  # just after its last line
                if at > pos:
                    pos = at
        rest[pos:pos] = block
        self._headers = rest
        cache = self._cache
        if cache:
            cache.pop(_WIRE, None)
            if "via" in keys:
                cache.pop(_TOP_VIA, None)
            for key in keys:
                cache.pop(key, None)

    def move_after(self, keys: Collection[str], anchors: Collection[str]) -> bool:
        """Move every line of the headers `keys` (lower-case long names), keeping their
        order, to just after the last line of any header in `anchors` (to the top when
        there is none). The lines move as they are (spelling, folding, parsed views):
        nothing is validated again. Returns whether the order changed."""
        hs = self._headers
        block = [h for h in hs if h[0] in keys]
        if not block:
            return False
        rest = [h for h in hs if h[0] not in keys]
        pos = 0
        for i, h in enumerate(rest):
            if h[0] in anchors:
                pos = i + 1
        rest[pos:pos] = block
        if rest == hs:
            return False
        self._headers = rest
        cache = self._cache
        if cache:
            cache.pop(_WIRE, None)
        return True

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a list header (topmost Via, Route),
        rewriting a line that held several comma-separated values."""
        key = _key(name)
        for i, (k, v, raw) in enumerate(self._headers):
            if k != key:
                continue
            parts = split_commas(v) if key in LIST_HEADERS else [v]
            if len(parts) <= 1:
                del self._headers[i]
            else:
                rest = ", ".join(parts[1:])
                hname = raw.partition(":")[0].rstrip()
                self._headers[i] = (key, rest, f"{hname}: {rest}")
            cache = self._cache
            if cache:
                cache.pop(_WIRE, None)
                if key == "via":
                    cache.pop(_TOP_VIA, None)
                view = cache.pop(key, None)
                if parts and type(view) is list and view:
                    # the views of the values below stay valid (Via of a relayed response)
                    cache[key] = view[1:]
            return parts[0] if parts else v
        return None

    def header_items(self) -> list[tuple[str, str]]:
        """(name as written, unfolded value) for every line, in order."""
        return [(raw.partition(":")[0].rstrip(), v) for _, v, raw in self._headers]

    def header_keys(self) -> list[str]:
        return [k for k, _, _ in self._headers]

    def _invalidate(self, key: str) -> None:
        cache = self._cache
        if cache:
            cache.pop(key, None)
            cache.pop(_WIRE, None)
            if key == "via":
                cache.pop(_TOP_VIA, None)

    def pop_top_via(self) -> Via | None:
        """Remove the topmost Via value and return it as a Via view (§16.7 step 3); the
        views of the Vias below stay parsed."""
        cache = self._cache
        top = None
        if cache:
            top = cache.get(_TOP_VIA)
            if top is None:
                vias = cache.get("via")
                top = vias[0] if vias else None
        text = self.pop_first("via")
        if text is None:
            return None
        return top if top is not None and text else Via.parse(text)

    def replace_top_via(self, via) -> None:
        """Replace the topmost Via value by `via` (a Via view), keeping the parsed
        views of the others (used to stamp received/rport, §18.2.1)."""
        _ = self.top_via  # the one replaced must parse (the others are not looked at)
        hs = self._headers
        for i, h in enumerate(hs):
            if h[0] == "via":
                if "," in h[1] or not h[1]:
                    break  # a line of several values (or none): rewritten below
                # the common case: the top line holds the top Via alone; one new line
                text = str(via)
                remember_via(text, via)  # its response brings this very text back
                hs[i] = ("via", text, "Via: " + text)
                cache = self._cache
                assert cache is not None  # self.top_via filled it
                cache.pop(_WIRE, None)
                vias = cache.get("via")
                if vias is not None:
                    cache["via"] = [via, *vias[1:]]
                cache[_TOP_VIA] = via
                return
        self.pop_first("via")
        self.add_top_via(via)

    def _view(self, key: str, build):
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        elif key in cache:
            return cache[key]
        view = build(self)
        cache[key] = view
        return view

    # -- serialization -------------------------------------------------------------

    def start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire; Content-Length always matches the body. Kept until
        a header, the start line or the body changes (a request is often serialised
        twice: to choose the transport by size, then to send it)."""
        start = self.start_line()
        body = self.body
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        else:
            wire = cache.get(_WIRE)
            if wire is not None and wire[0] == start and wire[1] is body:
                return wire[2]
        data = self._serialize(start, body)
        cache[_WIRE] = (start, body, data)
        return data

    def _serialize(self, start: str, body: bytes) -> bytes:
        blen = str(len(body))
        hs = self._headers
        keys = list(map(_FIRST, hs))
        n = keys.count("content-length")
        if n <= 1:
            # the usual case, with the line lists made in C: the raw lines as they
            # are, the one Content-Length line rewritten if the body changed
            lines = [start, *map(_RAW, hs)]
            if n:
                at = keys.index("content-length")
                value, raw = hs[at][1], hs[at][2]
                if value != blen:
                    lines[at + 1] = _length_line(raw, blen)
            else:
                lines.append("Content-Length: " + blen)
            lines.append("")
            lines.append("")
        else:
            lines = [start]
            append = lines.append
            seen_cl = False
            for key, value, raw in hs:
                if key == "content-length":
                    if seen_cl:
                        continue  # one Content-Length only
                    seen_cl = True
                    if value != blen:
                        raw = _length_line(raw, blen)
                append(raw)
            append("")
            append("")
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return data + body if body else data

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    # -- typed views (imsaka.sip.headers), parsed on first use ---------------------

    @property
    def call_id(self) -> str | None:
        return self.get("call-id")

    @property
    def via(self) -> list:
        cache = self._cache
        if cache:
            vias = cache.get("via")
            if vias is not None:
                return vias
        return self._view("via", _build_vias)

    @property
    def top_via(self):
        """The topmost Via; the others are parsed only when `via` is asked for."""
        cache = self._cache
        if cache:
            top = cache.get(_TOP_VIA)
            if top is not None:
                return top
            vias = cache.get("via")
            if vias is not None:
                if not vias:
                    raise SipParseError("missing Via")
                return vias[0]
        return self._view(_TOP_VIA, _build_top_via)

    @property
    def cseq(self):
        return self._view("cseq", _build_cseq)

    @property
    def from_(self):
        return self._view("from", _build_from)

    @property
    def to(self):
        return self._view("to", _build_to)

    @property
    def contacts(self) -> list:
        return self._view("contact", _build_contacts)

    @property
    def max_forwards(self) -> int | None:
        v = self.get("max-forwards")
        return None if v is None else parse_int(v, "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        v = self.get("expires")
        return None if v is None else parse_int(v, "Expires", 2**32 - 1)

    @property
    def retry_after(self) -> int | None:
        """Retry-After in seconds (RFC 3261 §20.33: delta-seconds, then an optional
        comment and parameters); None without one that reads so (never raises: it only
        tunes when to try again)."""
        value = self.get("retry-after")
        if value is None:
            return None
        head = value.split(";", 1)[0].split("(", 1)[0].strip()
        return int(head) if head.isdigit() and len(head) <= 10 else None

    def name_addrs(self, name: str) -> list:
        """Route, Record-Route, Path, Service-Route, P-Associated-URI,
        P-Asserted-Identity, P-Preferred-Identity as NameAddr lists."""
        key = _key(name)
        return self._view(key, lambda m: [NameAddr.parse(v) for v in m.get_all(key)])

    @property
    def route(self) -> list:
        return self.name_addrs("route")

    @property
    def record_route(self) -> list:
        return self.name_addrs("record-route")

    @property
    def path(self) -> list:
        return self.name_addrs("path")

    @property
    def service_route(self) -> list:
        return self.name_addrs("service-route")

    def security(self, name: str) -> list:
        """Security-Client / Security-Server / Security-Verify (RFC 3329) entries."""
        key = _key(name)
        return self._view(key, lambda m: [SecurityMechanism.parse(v) for v in m.get_all(key)])

    def auth(self, name: str) -> list:
        """Authorization / WWW-Authenticate / Proxy-* / Authentication-Info lines as
        DigestCredentials (one per line; the scheme absent for Authentication-Info)."""
        key = _key(name)
        info = key == "authentication-info"
        return self._view(
            key,
            lambda m: [
                DigestCredentials.parse(v, scheme_required=not info) for v in m.get_all(key)
            ],
        )

    @property
    def authorization(self):
        items = self.auth("authorization")
        return items[0] if items else None

    @property
    def www_authenticate(self):
        items = self.auth("www-authenticate")
        return items[0] if items else None

    def option_tags(self, name: str) -> list[str]:
        """Require / Proxy-Require / Supported / Unsupported option tags."""
        return option_tags(self.get_all(name))

    @property
    def access_network_info(self) -> AccessNetworkInfo | None:
        v = self.get("p-access-network-info")
        return None if v is None else AccessNetworkInfo.parse(v)

    @property
    def visited_network_id(self) -> VisitedNetworkId | None:
        v = self.get("p-visited-network-id")
        return None if v is None else VisitedNetworkId.parse(v)

    @property
    def charging_function_addresses(self) -> ChargingFunctionAddresses | None:
        v = self.get("p-charging-function-addresses")
        return None if v is None else ChargingFunctionAddresses.parse(v)

    @property
    def content_type(self) -> ContentType | None:
        v = self.get("content-type")
        return None if v is None else ContentType.parse(v)

    @property
    def date(self):
        """Date as an aware datetime (UTC), or None."""
        v = self.get("date")
        return None if v is None else parse_date(v)

    @property
    def asserted_identities(self) -> list:
        return self.name_addrs("p-asserted-identity")

    @property
    def associated_uris(self) -> list:
        return self.name_addrs("p-associated-uri")

    @property
    def charging_vector(self):
        v = self.get("p-charging-vector")
        return (
            None
            if v is None
            else self._view("p-charging-vector", lambda m: ChargingVector.parse(v))
        )


# Builders of the typed views (module functions: no closure made per access).
def _build_vias(m: Message) -> list:
    return [Via.parse(v) for v in m.get_all("via")]


def _build_top_via(m: Message) -> Via:
    v = m.get("via")  # the first value of the first line that has one
    if not v:
        raise SipParseError("missing Via")
    return Via.parse(v)


def _build_cseq(m: Message) -> CSeq:
    return CSeq.parse(_required(m, "cseq"))


def _build_from(m: Message) -> NameAddr:
    return NameAddr.parse(_required(m, "from"))


def _build_to(m: Message) -> NameAddr:
    return NameAddr.parse(_required(m, "to"))


def _build_contacts(m: Message) -> list:
    return [Contact.parse(v) for v in m.get_all("contact")]


def _required(msg: Message, key: str) -> str:
    v = msg.get(key)
    if v is None:
        raise SipParseError(f"missing {long_name(key)}")
    return v


class Request(Message):
    """A SIP request: method, Request-URI (text), version, headers, body."""

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not METHOD_RE.fullmatch(method):
            raise LocalProtocolError(f"method: not a token: {method!r}")
        if not REQUEST_URI_RE.fullmatch(uri):
            raise LocalProtocolError(f"uri: not a URI: {uri!r}")
        self.method = method
        self.uri = uri
        self.version = version
        super().__init__(headers, body)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    @property
    def request_uri(self):
        """The Request-URI parsed (SipUri | TelUri | AbsoluteUri); not cached, since
        `uri` may be rewritten (loose/strict routing)."""
        return parse_uri(self.uri)

    def copy(self) -> Request:
        new = Request.__new__(Request)
        new.method, new.uri, new.version = self.method, self.uri, self.version
        new._headers = list(self._headers)
        # the views are immutable objects in lists never changed in place: shared
        new._cache = dict(self._cache) if self._cache else None
        new.body = self.body
        return new

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.get('call-id')!r}>"


class Response(Message):
    """A SIP response: status code, reason phrase, version, headers, body."""

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 699:
            raise LocalProtocolError(f"status: must be 100..699, got {status!r}")
        self.status = status
        self.reason = (
            REASON_PHRASES.get(status, "Unknown") if reason is None else _check_value(reason)
        )
        self.version = version
        super().__init__(headers, body)

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        new = Response.__new__(Response)
        new.status, new.reason, new.version = self.status, self.reason, self.version
        new._headers = list(self._headers)
        # the views are immutable objects in lists never changed in place: shared
        new._cache = dict(self._cache) if self._cache else None
        new.body = self.body
        return new

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.get('call-id')!r}>"


# Start lines seen before, already validated: line -> (is a response, the three
# parts). A node meets the same few (REGISTER to its registrar, "SIP/2.0 200 OK"), so
# the method, Request-URI, status and reason checks run once per distinct line.
# Bounded: emptied when full.
_START_LINES_MAX = 256
_START_LINES = BoundedMemo(_START_LINES_MAX)


def _length_line(raw: str, length: str) -> str:
    """A Content-Length line rewritten to `length`, its name as written (`l` or not)."""
    return f"{raw.partition(':')[0].rstrip()}: {length}"


def _parse_start_line(first: str) -> tuple:
    """(True, version, status, reason) of a status line, (False, method, uri, version)
    of a request line (RFC 3261 §7.1, §7.2); SipParseError when it is neither."""
    # §7.1: SIP-Version is case-insensitive (sent in upper case, kept as received)
    if first[:4].upper() == "SIP/":
        parts = first.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError("malformed status line")
        version = parts[0]
        if version != "SIP/2.0" and version.upper() != "SIP/2.0":
            raise SipParseError(f"unsupported version {version[:20]!r}")
        code = parts[1]
        if len(code) != 3 or not STATUS_RE.fullmatch(code):
            raise SipParseError(f"invalid status code {code[:10]!r}")
        reason = parts[2] if len(parts) == 3 else ""
        if CTL_RE.search(reason):
            raise SipParseError("control character in reason phrase")
        return (True, version, int(code), reason)
    parts = first.split(" ")
    if len(parts) != 3:
        raise SipParseError("malformed request line")
    method, uri, version = parts
    if not METHOD_RE.fullmatch(method):
        raise SipParseError(f"invalid method {method[:20]!r}")
    if not REQUEST_URI_RE.fullmatch(uri):
        raise SipParseError(f"invalid Request-URI {uri[:60]!r}")
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if VERSION_RE.fullmatch(version):
            raise SipParseError(f"unsupported version {version[:20]!r}", 505)
        raise SipParseError(f"malformed request line version {version[:20]!r}")
    return (False, method, uri, version)


def parse_message(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> Request | Response:
    """Parse one whole SIP message (a datagram, or one message cut by the framer)."""
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise LocalProtocolError("data: bytes expected")
        data = bytes(data)
    if len(data) > max_size:
        raise SipParseError(f"message larger than {max_size} octets", 513)
    start = 0
    # §7.5: empty lines before the start line are ignored
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("no empty line after the header fields")
    head = data[start:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    # the lines end at each CRLF: a CR, LF or NUL left in them is a bare one (three
    # memchr passes over a joined copy instead of counting CRs and LFs octet by octet)
    inner = "".join(lines)
    if "\r" in inner or "\n" in inner:
        raise SipParseError("bare CR or LF in the header")
    if "\x00" in inner:
        raise SipParseError("NUL in the header")
    if len(lines) > max_headers + 1:
        raise SipParseError(f"more than {max_headers} header lines")

    first = lines[0]
    start_line = _START_LINES.get(first)
    if start_line is None:
        start_line = _START_LINES.remember(first, _parse_start_line(first))
    msg: Request | Response
    if start_line[0]:
        msg = Response.__new__(Response)
        _, msg.version, msg.status, msg.reason = start_line
    else:
        msg = Request.__new__(Request)
        _, msg.method, msg.uri, msg.version = start_line

    headers: list[tuple[str, str, str]] = []
    append = headers.append
    cache = _NAME_CACHE
    known = _LINES
    for line in lines[1:]:
        entry = known.get(line)
        if entry is not None:
            append(entry)
            continue
        # "Name: value" as we and most peers write it: the value comes without the
        # space, and strip() then returns it as it is (no copy). A cached name holds
        # no colon, so its first ": " is its first ":".
        name, colon, value = line.partition(": ")
        key = cache.get(name) if colon else None
        if key is None:
            name, colon, value = line.partition(":")
            key = cache.get(name) if colon else None
        if key is None:
            # not a name seen before (cached names are tokens: a line starting with
            # whitespace never hits the cache)
            if line[:1] in (" ", "\t"):
                # §7.3.1 continuation line: part of the previous field's value
                if not headers:
                    raise SipParseError("continuation line before the first header")
                k, v, raw = headers[-1]
                s = line.strip()
                headers[-1] = (k, f"{v} {s}" if v and s else v or s, f"{raw}\r\n{line}")
                continue
            if not colon or not name:
                raise SipParseError(f"header line without a name: {line[:40]!r}")
            key = _name_key(name)
        entry = (key, value.strip(), line)
        append(entry)
        if key in _SHARED_LINE_KEYS:
            if len(known) >= _LINES_MAX:
                known.clear()
            known[line] = entry

    # the keys in one C-level pass: membership, counts and positions below without
    # a Python loop over the fields each
    keys = list(map(_FIRST, headers))
    seen = set(keys)
    if not seen >= _MANDATORY_SET:
        for key in _MANDATORY:
            if key not in seen:
                raise SipParseError(f"missing {long_name(key)} header")
    body_start = end + 4
    cl = None
    if "content-length" in seen:
        if keys.count("content-length") == 1:
            cl_values = [headers[keys.index("content-length")][1]]
        else:
            cl_values = [h[1] for h in headers if h[0] == "content-length"]
        for value in cl_values:
            if not value.isdigit() or not value.isascii() or len(value) > 9:
                raise SipParseError(f"invalid Content-Length {value[:20]!r}")
            n = int(value)
            if cl is not None and n != cl:
                raise SipParseError("conflicting Content-Length headers")
            cl = n
    if cl is None:
        body = data[body_start:]
    else:
        body = data[body_start : body_start + cl]
        if len(body) < cl:
            raise SipParseError("body shorter than Content-Length")
    msg._headers = headers
    msg._cache = None
    msg.body = body
    if msg.__class__ is Request:
        # §8.2 / §16.3: the CSeq method must equal the request method
        cseq = headers[keys.index("cseq")][1]
        known = CSEQ_SEEN.get(cseq)
        if known is None or known.method != msg.method:
            _check_cseq(msg, cseq)
    return msg


def _check_cseq(msg: Request, cseq: str) -> None:
    """A request's CSeq (its first line's value): `1*DIGIT LWS Method` with the
    request's method (§8.2, §16.3); remembered as a view when it is."""
    sp = cseq.find(" ")
    num = cseq[:sp]
    if (
        sp < 0
        or cseq[sp + 1 :].strip() != msg.method
        or not num.isdigit()
        or not num.isascii()
        or sp > 10
        or int(num) > 2147483647
    ):
        view = msg.cseq  # raises the precise SipParseError for a bad CSeq
        if view.method != msg.method:
            raise SipParseError("CSeq method does not match the request method")
        return
    CSEQ_SEEN.remember(cseq, CSeq(int(num), msg.method))


def _to_tag_or_broken(request: Request) -> str | None:
    """The request's To tag; an unparsable To counts as tagged, so that the answer to a
    malformed request (often a 400) copies To as it came instead of failing on it."""
    try:
        return request.to.tag
    except SipParseError:
        return ""


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    copy_record_route: bool = False,
) -> Response:
    """A response to `request` (RFC 3261 §8.2.6.2): Via (all, in order), From, To,
    Call-ID and CSeq copied; `to_tag` added to To when it has no tag yet; Record-Route
    copied when asked (§12.1.1, dialog-creating 2xx/1xx)."""
    resp = Response(status, reason)
    hs = resp._headers
    to_line = None
    for entry in request._headers:
        key = entry[0]
        if key in ("via", "from", "call-id", "cseq") or (
            copy_record_route and key == "record-route"
        ):
            hs.append(entry)
        elif key == "to" and to_line is None:
            to_line = entry
            hs.append(entry)
    if to_tag is not None and to_line is not None and _to_tag_or_broken(request) is None:
        value = f"{to_line[1]};tag={to_tag}"
        name = to_line[2].partition(":")[0].rstrip()
        hs[hs.index(to_line)] = ("to", value, f"{name}: {value}")
    if headers:
        _add_lines(hs, headers)  # `add` of each, in one pass
    resp.body = bytes(body)
    return resp
