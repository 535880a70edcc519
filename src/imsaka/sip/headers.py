"""Typed header views (RFC 3261 §20, §25; RFC 3327 Path; RFC 3608 Service-Route;
RFC 3329 Security-*; RFC 3310/2617 digest with TS 24.229 `ik`/`ck`/`auts`/
`integrity-protected`; RFC 7315 P-headers; RFC 3325 P-Asserted/Preferred-Identity).

Each class has `parse(text)` (raising SipParseError naming the field) and `__str__`
giving a value that parses back to an equal object. Parameter values are kept as
written: a quoted value stays quoted, a token stays a token.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from operator import itemgetter

from imsaka.sip._abnf import TOKEN_RE
from imsaka.sip.errors import SipParseError
from imsaka.sip.memo import BoundedMemo
from imsaka.sip.uri import (
    _PARAM_RE,
    PARAMS_FAST,
    AbsoluteUri,
    Params,
    SipUri,
    TelUri,
    parse_hostport,
    parse_uri,
    quote,
    split_unquoted,
    unquote,
)


def parse_qvalue(text: str | None, field: str) -> float | None:
    """A q parameter (RFC 3261 §25.1 qvalue, RFC 3329 preference): 0 to 1, or None."""
    if text is None:
        return None
    try:
        q = float(text)
    except ValueError:
        raise SipParseError(f"invalid {field} {text[:10]!r}") from None
    if not 0 <= q <= 1:
        raise SipParseError(f"invalid {field} {text[:10]!r}")
    return q


def parse_int(text: str, field: str, maximum: int) -> int:
    t = text.strip()
    if not t.isdigit() or not t.isascii() or len(t) > 10 or int(t) > maximum:
        raise SipParseError(f"invalid {field} {t[:20]!r}")
    return int(t)


_QUOTED_DISPLAY_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DISPLAY_TOKENS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*")


# A sip:/sips: URI that SipUri.parse certainly accepts: a user part of unreserved
# characters (no escapes, password or ';'/'?'), a hostname, a port, plain params, no
# headers. Anything else is parsed (and validated) at once.
_PLAIN_SIP_URI_RE = re.compile(
    r"[Ss][Ii][Pp][Ss]?:(?:[A-Za-z0-9\-_.!~*'()&=+$,/]+@)?"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?"
    r"(?::([0-9]{1,5}))?"
    r"(?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?)*"
)


# Name-addr values parsed lately, by class and text (views are never changed in
# place; `parsed_uri` only fills in what the text already says): a UE's From, To and
# Contact come back in each message of its registration. Bounded: emptied when full.
_NAME_ADDR_SEEN = BoundedMemo(256)


class NameAddr:
    """`[display-name] <URI> *(;param)` or `addr-spec *(;param)` (From, To, Contact,
    Route, Record-Route, Path, Service-Route, P-Associated-URI, P-Asserted-Identity).
    `display` is kept as written (with its quotes, if any); `uri` as text, parsed
    lazily by `parsed_uri`."""

    __slots__ = ("_uri_obj", "display", "params", "uri")

    def __init__(self, uri: str, display: str | None = None, params: Params | None = None) -> None:
        self.uri = str(uri)
        self.display = display
        self.params = params if params is not None else Params()
        self._uri_obj = None

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        key = (cls, text)
        seen = _NAME_ADDR_SEEN.get(key)
        if seen is not None:
            return seen
        return _NAME_ADDR_SEEN.remember(key, cls._parse(text))

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if not text:
            raise SipParseError("empty name-addr")
        display = None
        rest = text
        if text[0] == '"':
            m = _QUOTED_DISPLAY_RE.match(text)
            if not m:
                raise SipParseError(f"unterminated display name in {text[:40]!r}")
            display = m.group(0)
            rest = text[m.end() :].lstrip()
            if not rest.startswith("<"):
                raise SipParseError("display name without <URI>")
        lt = rest.find("<")
        if lt >= 0:
            if lt > 0:
                d = rest[:lt].strip()
                if display is not None or not _DISPLAY_TOKENS_RE.fullmatch(d):
                    raise SipParseError(f"invalid display name {d[:40]!r}")
                display = d
            gt = rest.find(">", lt)
            if gt < 0:
                raise SipParseError("unterminated <URI>")
            uri = rest[lt + 1 : gt].strip()
            tail = rest[gt + 1 :].strip()
        else:
            # addr-spec: the URI ends at the first ';' (§20.10: its params are header params)
            uri, semi, tail = rest.partition(";")
            uri = uri.strip()
            if "," in uri or "?" in uri or " " in uri:
                raise SipParseError(f"addr-spec with reserved characters: {uri[:40]!r}")
            tail = (";" + tail) if semi else ""
        if not uri:
            raise SipParseError("empty URI")
        if tail:
            if tail[0] != ";":
                raise SipParseError(f"junk after URI: {tail[:30]!r}")
            params = Params.parse(tail[1:])
        else:
            params = Params()
        obj = cls(uri, display, params)
        m = _PLAIN_SIP_URI_RE.fullmatch(uri)
        if m is None or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
            obj._uri_obj = parse_uri(uri)  # validates (raises SipParseError)
        # else: a plain sip:/sips: URI, valid by construction; parsed on first use
        return obj

    @property
    def parsed_uri(self) -> SipUri | TelUri | AbsoluteUri:
        if self._uri_obj is None:
            self._uri_obj = parse_uri(self.uri)
        return self._uri_obj

    @property
    def display_name(self) -> str | None:
        if self.display is None:
            return None
        return unquote(self.display)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        return type(self)(self.uri, self.display, self.params.with_param(name, value))

    def __str__(self) -> str:
        d = f"{self.display} " if self.display else ""
        return f"{d}<{self.uri}>{self.params}"

    def _key(self) -> tuple:
        return (self.uri, self.display, self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NameAddr) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class Contact(NameAddr):
    """A Contact value; `star` for `Contact: *` (§10.2.2 remove all bindings)."""

    __slots__ = ("star",)

    def __init__(
        self, uri: str, display: str | None = None, params: Params | None = None, star: bool = False
    ) -> None:
        super().__init__(uri, display, params)
        self.star = star

    @classmethod
    def parse(cls, text: str) -> Contact:
        if text.strip() == "*":
            return cls("*", star=True)
        return super().parse(text)

    @property
    def expires(self) -> int | None:
        v = self.params.get("expires")
        return None if v is None else parse_int(v, "Contact expires", 2**32 - 1)

    @property
    def q(self) -> float | None:
        return parse_qvalue(self.params.get("q"), "Contact q")

    def with_param(self, name: str, value: str | None = None) -> Contact:
        return Contact(self.uri, self.display, self.params.with_param(name, value), self.star)

    def __str__(self) -> str:
        return "*" if self.star else super().__str__()


_COLON_LWS_RE = re.compile(r"[ \t]*:[ \t]*")
# sent-protocol SP sent-by [; params]: tokens, one space, a sent-by without whitespace
# (with plain params, `PARAMS_FAST`, matched in the same pass; others go the exact way)
_VIA_FAST_RE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+)/([A-Za-z0-9\-.!%*_+`'~]+)/([A-Za-z0-9\-.!%*_+`'~]+) "
    r"([^;\s]+)(?:;(" + PARAMS_FAST + r"))?",
)
_NO_PARAMS = Params()
_new_object = object.__new__


class Via:
    """`SIP/2.0/transport sent-by *(;via-params)` (§20.42, RFC 3581 rport, RFC 3486 comp)."""

    # `_text`: str(self) once known (a view is never changed in place), None before;
    # a Via parsed from its own canonical text has it at once, and a Via with a param
    # appended (received, rport: RFC 3261 §18.2.1) extends it: a proxy that stamps and
    # forwards a request writes its top Via without building the text again.
    __slots__ = ("_text", "host", "params", "port", "protocol", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host if ":" not in host or host[0] == "[" else f"[{host}]"
        self.port = port
        self.params = params if params is not None else Params()
        self._text: str | None = None

    @classmethod
    def parse(cls, text: str) -> Via:
        if cls is not Via:
            return cls._parse(text)
        via = _VIA_SEEN.get(text) or _VIA_OLDER.get(text)
        if via is not None:
            return via
        via = _stamped(text)
        if via is None:
            via = cls._parse(text)
        remember_via(text, via)
        return via

    @classmethod
    def _parse(cls, text: str) -> Via:
        text = text.strip()
        m = _VIA_FAST_RE.fullmatch(text)
        if m is not None:
            # `name/version/transport sent-by[;params]` without odd whitespace: the
            # same checks as below, in fewer steps
            name, version, transport, sent_by, rest = m.groups()
            params = Params._from_plain(rest) if rest is not None else _NO_PARAMS
            host, port = parse_hostport(sent_by, "Via sent-by")
            via = _new_object(cls)
            # what __init__ does, for a host parse_hostport gave (IPv6 in brackets)
            via.protocol = "SIP/2.0" if name == "SIP" and version == "2.0" else f"{name}/{version}"
            via.transport = transport.upper()
            via.host = host
            via.port = port
            via.params = params
            # str(via) gives the text back when the transport was in upper case and
            # the port has no leading zero (the params of PARAMS_FAST rejoin as they
            # were): then it is known without building it
            via._text = (
                text
                if via.transport == transport and (port is None or sent_by[len(host) + 1] != "0")
                else None
            )
            if rest is not None:
                low = rest.lower()
                if "rport" in low or "ttl" in low:
                    for pname, _value in params.items:
                        lname = pname.lower()
                        if lname == "rport" or lname == "ttl":
                            via._check(lname)
            return via
        slash2 = -1
        s1 = text.find("/")
        if s1 > 0:
            slash2 = text.find("/", s1 + 1)
        if slash2 < 0:
            raise SipParseError(f"invalid Via sent-protocol in {text[:40]!r}")
        name = text[:s1].strip()
        version = text[s1 + 1 : slash2].strip()
        rest = text[slash2 + 1 :].lstrip()
        i = 0
        while i < len(rest) and rest[i] not in " \t":
            i += 1
        transport = rest[:i]
        rest = rest[i:].strip()
        if (
            not TOKEN_RE.fullmatch(name)
            or not TOKEN_RE.fullmatch(version)
            or not TOKEN_RE.fullmatch(transport)
        ):
            raise SipParseError(f"invalid Via sent-protocol in {text[:40]!r}")
        semi = rest.find(";")
        if semi >= 0:
            sent_by = rest[:semi].strip()
            params = Params.parse(rest[semi + 1 :])
        else:
            sent_by = rest
            params = Params()
        # a ":" with spaces around the port is allowed by the grammar (HCOLON-like LWS)
        if " " in sent_by or "\t" in sent_by:
            sent_by = _COLON_LWS_RE.sub(":", sent_by)
        host, port = parse_hostport(sent_by, "Via sent-by")
        via = cls(transport, host, port, params, f"{name}/{version}")
        for p in ("received", "rport", "ttl"):
            if p in params:
                via._check(p)
        return via

    def _check(self, name: str) -> None:
        v = self.params.get(name)
        if name == "rport" and v == "":
            return
        if name in ("rport", "ttl"):
            parse_int(v or "", f"Via {name}", 65535)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """None when absent, True for a bare `rport` (RFC 3581 request), else the port."""
        v = self.params.get("rport")
        if v is None:
            return None
        return True if v == "" else int(v)

    @property
    def comp(self) -> str | None:
        return self.params.get("comp")

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_param(self, name: str, value: str | None = None) -> Via:
        params = self.params.with_param(name, value)
        via = _new_object(Via)
        # the fields as __init__ leaves them already (transport upper case, IPv6 host
        # in brackets): copied as they are
        via.protocol = self.protocol
        via.transport = self.transport
        via.host = self.host
        via.port = self.port
        via.params = params
        text = self._text
        if text is not None and len(params.items) > len(self.params.items):
            # appended at the end (it was absent): the text grows by that param
            via._text = f"{text};{name}" if value is None else f"{text};{name}={value}"
        else:
            via._text = None
        return via

    def response_address(self) -> tuple[str, int]:
        """Where responses go (§18.2.2 + RFC 3581 §4): received/rport if present,
        else sent-by (default port 5060/5061)."""
        host = self.received or self.host
        rport = self.rport
        if isinstance(rport, int) and rport is not True:
            port = rport
        else:
            port = self.port or (5061 if self.transport == "TLS" else 5060)
        return (host[1:-1] if host[:1] == "[" else host, port)

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = f"{self.protocol}/{self.transport} {self.sent_by}{self.params}"
        return text

    def _key(self) -> tuple:
        return (self.protocol, self.transport, self.host.lower(), self.port, self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Via) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


# One plain `name[=value]` parameter (an element of PARAMS_FAST).
_ONE_PARAM_RE = re.compile(f"{_PARAM_RE.pattern}(?:={_PARAM_RE.pattern})?")


def _stamped(text: str) -> Via | None:
    """A Via we know with one plain parameter added at the end, as `Via._parse` would
    give it: our own Via in a response, where the next hop added `received` (RFC 3261
    §18.2.1). None for anything else (rport and ttl, checked values, go the exact way)."""
    base, semi, extra = text.rpartition(";")
    if not semi:
        return None
    known = _VIA_SEEN.get(base) or _VIA_OLDER.get(base)
    if known is None or not _ONE_PARAM_RE.fullmatch(extra):
        return None
    name, eq, value = extra.partition("=")
    lname = name.lower()
    if lname == "rport" or lname == "ttl":
        return None
    params = _new_object(Params)
    params.items = (*known.params.items, (name, value if eq else None))
    via = _new_object(Via)
    via.protocol = known.protocol
    via.transport = known.transport
    via.host = known.host
    via.port = known.port
    via.params = params
    # `text` is str(via) when `base` is str(known) (the param rejoins as written)
    via._text = text if known._text == base else None
    return via


# Vias parsed or sent lately, by their text. A proxy meets each Via twice: in the
# request, and again (the same text) in its response. Via views are never changed in
# place, so one object can serve both. Small and bounded: it only needs to span the
# transactions in flight. Two generations of up to _VIA_SEEN_MAX / 2 each: when the
# newer is full it becomes the older (dropping the older), so the newest half are always
# kept without evicting entry by entry (taking the oldest out of a dict scans the
# slots its earlier deletions left, more of them with every message).
_VIA_SEEN: dict[str, Via] = {}
_VIA_OLDER: dict[str, Via] = {}
_VIA_SEEN_MAX = 256


def remember_via(text: str, via: Via) -> None:
    """Note that `text` is `via` (a Via we parsed, or one we put on a message)."""
    seen = _VIA_SEEN
    if len(seen) >= _VIA_SEEN_MAX // 2:
        _VIA_OLDER.clear()
        _VIA_OLDER.update(seen)
        seen.clear()
    seen[text] = via


# CSeq values parsed lately, by their text (views are never changed in place): a
# response brings its request's value back, and "1 REGISTER" starts every
# registration. Bounded: emptied when full.
CSEQ_SEEN = BoundedMemo(512)


class CSeq:
    """`CSeq: 1*DIGIT LWS Method` (§20.16; the number is below 2**31)."""

    __slots__ = ("method", "seq")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        known = CSEQ_SEEN.get(text)
        if known is not None and cls is CSeq:
            return known
        parts = text.split()
        if len(parts) != 2 or not TOKEN_RE.fullmatch(parts[1]):
            raise SipParseError(f"invalid CSeq {text[:40]!r}")
        cseq = cls(parse_int(parts[0], "CSeq number", 2**31 - 1), parts[1])
        if cls is CSeq:
            CSEQ_SEEN.remember(text, cseq)
        return cseq

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CSeq) and (self.seq, self.method) == (other.seq, other.method)

    def __hash__(self) -> int:
        return hash((self.seq, self.method))

    def __repr__(self) -> str:
        return f"CSeq({str(self)!r})"


class AuthParam(tuple):
    """One digest auth-param: name, value (unquoted), and whether it was quoted.

    A tuple underneath (made by one C call: a challenge or credentials has a dozen),
    equal only to another AuthParam."""

    __slots__ = ()

    def __new__(cls, name: str, value: str, quoted: bool) -> AuthParam:
        return _new_tuple(cls, (name, value, quoted))

    name = property(itemgetter(0))
    value = property(itemgetter(1))
    quoted = property(itemgetter(2))

    def __str__(self) -> str:
        return f"{self[0]}={quote(self[1]) if self[2] else self[1]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuthParam) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"AuthParam({str(self)!r})"


_new_tuple = tuple.__new__


# Which digest parameters are quoted-strings when we build them (RFC 2617 §3.2,
# RFC 3310, TS 24.229 §7.2A.1 for ik/ck/integrity-protected, RFC 3310 §3.3 auts).
QUOTED_DIGEST_PARAMS = frozenset(
    {
        "realm",
        "nonce",
        "opaque",
        "domain",
        "username",
        "uri",
        "response",
        "cnonce",
        "auts",
        "ik",
        "ck",
        "integrity-protected",
        "nextnonce",
        "rspauth",
    }
)

# token68-free auth-param value: token or quoted-string
_AUTH_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_AUTH_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~/=]+")


# One auth-param and its separator: name = ( quoted-string / token ), then "," or the end.
# (The quoted-string as `[^"\\]*(?:\\.[^"\\]*)*`: the same language as `(?:[^"\\]|\\.)*`,
# matched without an alternation per character.) Group 1 is the whole item.
_DIGEST_PARAM_RE = re.compile(
    r"([ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*"
    r"(?:\"([^\"\\]*(?:\\.[^\"\\]*)*)\"|([A-Za-z0-9\-.!%*_+`'~/=]+))[ \t]*(?:,|\Z))"
)
# The same without backslash escapes in quoted-strings (the usual case): a quoted value
# is then `"[^"]*"`, which the regex engine scans without backtracking points.
_DIGEST_PLAIN_PARAM_RE = re.compile(
    r"([ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*"
    r"(?:\"([^\"]*)\"|([A-Za-z0-9\-.!%*_+`'~/=]+))[ \t]*(?:,|\Z))"
)
_FIRST = itemgetter(0)
_TO_BLANK_RE = re.compile(r"[^ \t]*")


def _digest_items(rest: str, escapes: bool) -> list[tuple[str, str, str, str]] | None:
    """(item, name, quoted, token) of each param of a well-formed challenge or
    credentials, in one regex pass; None when anything is unusual."""
    found = (_DIGEST_PARAM_RE if escapes else _DIGEST_PLAIN_PARAM_RE).findall(rest)
    # the items found cover the whole text: no octet skipped between two of them, so
    # they are the items read one after the other from the start
    if sum(map(len, map(_FIRST, found))) != len(rest):
        return None
    return found


def _digest_params_fast(rest: str) -> list[AuthParam] | None:
    """The params of a well-formed challenge or credentials in one regex pass; None
    when anything is unusual (the exact parser then decides and names the error)."""
    escapes = "\\" in rest
    found = _digest_items(rest, escapes)
    if found is None:
        return None
    params = []
    append = params.append
    for _, name, quoted, token in found:
        if token:
            append(_new_tuple(AuthParam, (name, token, False)))
        else:
            if escapes and "\\" in quoted:
                quoted = unquote(f'"{quoted}"')
            append(_new_tuple(AuthParam, (name, quoted, True)))
    return params


def digest_param(text: str, name: str) -> str | None:
    """`DigestCredentials.parse(text).get(name)` (credentials or a challenge with its
    scheme) without making the view: for a node that reads one param of a header it
    forwards (the I-CSCF's username, TS 24.229 §5.3.1.2). A well-formed header is read
    in one regex pass, all of it checked; anything else goes the exact way (and
    raises the same SipParseError)."""
    text = text.strip()
    sp = _TO_BLANK_RE.match(text).end()  # type: ignore[union-attr]
    rest = text[sp:].strip()
    if rest and rest[-1] != "," and _AUTH_NAME_RE.fullmatch(text[:sp]):
        escapes = "\\" in rest
        found = _digest_items(rest, escapes)
        if found is not None:
            lname = name.lower()
            for _, pname, quoted, token in found:
                if pname == lname or pname.lower() == lname:
                    if token:
                        return token
                    return unquote(f'"{quoted}"') if escapes and "\\" in quoted else quoted
            return None
    return DigestCredentials.parse(text).get(name)


class DigestCredentials:
    """Authorization / Proxy-Authorization credentials, WWW-/Proxy-Authenticate
    challenges and Authentication-Info (no scheme): `scheme` and ordered params.
    `cred["nonce"]` / `.get(name)` give the unquoted value; `.param(name)` the
    AuthParam with its quoting. Never holds anything but what was on the wire, yet
    `ck`/`ik` are keys: repr() hides their values."""

    __slots__ = ("_index", "params", "scheme")

    def __init__(
        self, scheme: str | None, params: tuple[AuthParam, ...] | list[AuthParam] = ()
    ) -> None:
        self.scheme = scheme
        self.params = tuple(params)
        self._index: dict[str, AuthParam] | None = None

    @classmethod
    def build(cls, scheme: str | None = "Digest", **values: str | None) -> DigestCredentials:
        """Params from keyword args (`integrity_protected` -> integrity-protected),
        quoted per the RFCs; None values are skipped."""
        params = []
        for k, v in values.items():
            if v is None:
                continue
            name = k.replace("_", "-")
            params.append(AuthParam(name, str(v), name.lower() in QUOTED_DIGEST_PARAMS))
        return cls(scheme, params)

    @classmethod
    def parse(cls, text: str, scheme_required: bool = True) -> DigestCredentials:
        text = text.strip()
        scheme = None
        rest = text
        if scheme_required:
            sp = _TO_BLANK_RE.match(text).end()  # type: ignore[union-attr]
            scheme = text[:sp]
            if not _AUTH_NAME_RE.fullmatch(scheme):
                raise SipParseError(f"invalid auth scheme {scheme[:20]!r}")
            rest = text[sp:].strip()
        if rest and rest[-1] != ",":
            fast = _digest_params_fast(rest)
            if fast is not None:
                return cls(scheme, fast)
        params = []
        if rest:
            for part in split_unquoted(rest, ","):
                part = part.strip()
                if not part:
                    raise SipParseError("empty digest parameter")
                name, eq, value = part.partition("=")
                name = name.strip()
                value = value.strip()
                if not eq or not _AUTH_NAME_RE.fullmatch(name):
                    # never echo values: ck/ik are keys (no secrets in errors)
                    shown = name[:20] if _AUTH_NAME_RE.fullmatch(name) else "?"
                    raise SipParseError(f"invalid digest parameter {shown!r} (name=value expected)")
                if value[:1] == '"':
                    if len(value) < 2 or value[-1] != '"':
                        raise SipParseError(f"digest {name}: bad quoted string")
                    params.append(AuthParam(name, unquote(value), True))
                else:
                    if not _AUTH_TOKEN_RE.fullmatch(value):
                        raise SipParseError(f"digest {name[:20]}: invalid value")
                    params.append(AuthParam(name, value, False))
        elif scheme_required:
            raise SipParseError("auth header without parameters")
        return cls(scheme, params)

    def param(self, name: str) -> AuthParam | None:
        index = self._index
        if index is None:
            # built on first use (the S-CSCF reads a dozen params of every
            # Authorization) in C: names lowered, the params zipped in reverse so that
            # the first of a repeated name is the one kept
            params = self.params
            index = self._index = dict(
                zip(map(str.lower, map(_FIRST, reversed(params))), reversed(params), strict=True)
            )
        return index.get(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:
        p = self.param(name)
        return default if p is None else p.value

    def __getitem__(self, name: str) -> str:
        p = self.param(name)
        if p is None:
            raise KeyError(name)
        return p.value

    def __contains__(self, name: str) -> bool:
        return self.param(name) is not None

    def with_param(self, name: str, value: str, quoted: bool | None = None) -> DigestCredentials:
        """A copy with `name` replaced in place (keeping its quoting unless told) or appended."""
        lname = name.lower()
        params = list(self.params)
        for i, p in enumerate(params):
            if p.name.lower() == lname:
                params[i] = AuthParam(p.name, value, p.quoted if quoted is None else quoted)
                return DigestCredentials(self.scheme, params)
        q = lname in QUOTED_DIGEST_PARAMS if quoted is None else quoted
        params.append(AuthParam(name, value, q))
        return DigestCredentials(self.scheme, params)

    def without(self, *names: str) -> DigestCredentials:
        """A copy without these params (the P-CSCF strips ck and ik, TS 24.229 §5.2.2)."""
        drop = {n.lower() for n in names}
        return DigestCredentials(
            self.scheme, [p for p in self.params if p.name.lower() not in drop]
        )

    # frequently used params
    username = property(lambda self: self.get("username"))
    realm = property(lambda self: self.get("realm"))
    nonce = property(lambda self: self.get("nonce"))
    uri = property(lambda self: self.get("uri"))
    response = property(lambda self: self.get("response"))
    algorithm = property(lambda self: self.get("algorithm"))
    qop = property(lambda self: self.get("qop"))
    nc = property(lambda self: self.get("nc"))
    cnonce = property(lambda self: self.get("cnonce"))
    opaque = property(lambda self: self.get("opaque"))
    auts = property(lambda self: self.get("auts"))
    ik = property(lambda self: self.get("ik"))
    ck = property(lambda self: self.get("ck"))
    integrity_protected = property(lambda self: self.get("integrity-protected"))

    @property
    def stale(self) -> bool:
        return (self.get("stale") or "").lower() == "true"

    def __str__(self) -> str:
        body = ", ".join(str(p) for p in self.params)
        if self.scheme is None:
            return body
        return f"{self.scheme} {body}" if body else self.scheme

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DigestCredentials) and (self.scheme, self.params) == (
            other.scheme,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.scheme, self.params))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{p.name}=<hidden>" if p.name.lower() in ("ck", "ik") else str(p) for p in self.params
        )
        return f"DigestCredentials({self.scheme} {shown})"


class SecurityMechanism:
    """One Security-Client / Security-Server / Security-Verify entry (RFC 3329 §2.2,
    TS 33.203 Annex H): `mechanism *(; param)` with q, alg, ealg, spi-c, spi-s,
    port-c, port-s, prot, mod (and d-alg/d-qop/d-ver for digest), others kept."""

    __slots__ = ("mechanism", "params")

    def __init__(self, mechanism: str, params: Params | None = None) -> None:
        self.mechanism = mechanism
        self.params = params if params is not None else Params()

    @classmethod
    def build(cls, mechanism: str = "ipsec-3gpp", **values: object) -> SecurityMechanism:
        """`spi_c=...` -> spi-c; None values skipped; q formatted as given."""
        items = []
        for k, v in values.items():
            if v is None:
                continue
            items.append((k.replace("_", "-"), str(v)))
        mech = cls(mechanism, Params(tuple(items)))
        mech.validate()
        return mech

    @classmethod
    def parse(cls, text: str) -> SecurityMechanism:
        mech, semi, rest = text.strip().partition(";")
        mech = mech.strip()
        if not TOKEN_RE.fullmatch(mech):
            raise SipParseError(f"invalid security mechanism {mech[:30]!r}")
        obj = cls(mech, Params.parse(rest) if semi else Params())
        obj.validate()
        return obj

    def validate(self) -> None:
        for name in ("spi-c", "spi-s"):
            v = self.params.get(name)
            if v is not None:
                parse_int(v, name, 2**32 - 1)
        for name in ("port-c", "port-s"):
            v = self.params.get(name)
            if v is not None and not parse_int(v, name, 65535) > 0:
                raise SipParseError(f"invalid {name} 0")
        self.q  # noqa: B018 - validates

    def _int(self, name: str) -> int | None:
        v = self.params.get(name)
        return None if v is None else int(v)

    @property
    def q(self) -> float | None:
        return parse_qvalue(self.params.get("q"), "q")

    alg = property(lambda self: self.params.get("alg"))
    ealg = property(lambda self: self.params.get("ealg"))
    prot = property(lambda self: self.params.get("prot"))
    mod = property(lambda self: self.params.get("mod"))
    spi_c = property(lambda self: self._int("spi-c"))
    spi_s = property(lambda self: self._int("spi-s"))
    port_c = property(lambda self: self._int("port-c"))
    port_s = property(lambda self: self._int("port-s"))

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def __str__(self) -> str:
        return self.mechanism + "".join(
            f";{n}" if v is None else f";{n}={v}" for n, v in self.params
        )

    def same_as(self, other: SecurityMechanism) -> bool:
        """Equal for RFC 3329 §2.3.1 comparison: mechanism and params, case-insensitive
        names, order-insensitive."""

        def norm(m: SecurityMechanism) -> tuple:
            return (
                m.mechanism.lower(),
                frozenset((n.lower(), (v or "").lower()) for n, v in m.params),
            )

        return norm(self) == norm(other)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecurityMechanism) and (self.mechanism, self.params) == (
            other.mechanism,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.mechanism, self.params))

    def __repr__(self) -> str:
        return f"SecurityMechanism({str(self)!r})"


class ParamHeader:
    """A header that is only `param *(; param)`: P-Charging-Vector (RFC 7315 §4.6,
    icid-value mandatory), P-Charging-Function-Addresses (§4.5, ccf/ecf repeated)."""

    __slots__ = ("params",)
    required: tuple[str, ...] = ()

    def __init__(self, params: Params) -> None:
        self.params = params

    @classmethod
    def parse(cls, text: str):
        params = Params.parse(text.strip())
        for name in cls.required:
            if name not in params:
                raise SipParseError(f"{cls.__name__}: missing {name}")
        return cls(params)

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [unquote(v or "") for n, v in self.params if n.lower() == lname]

    def __str__(self) -> str:
        return self.params.to_str(sep=";", lead=False)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.params == other.params

    def __hash__(self) -> int:
        return hash(self.params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class ChargingVector(ParamHeader):
    """P-Charging-Vector: icid-value, icid-generated-at, orig-ioi, term-ioi."""

    __slots__ = ()
    required = ("icid-value",)

    icid_value = property(lambda self: self.params.get("icid-value"))
    icid_generated_at = property(lambda self: self.params.get("icid-generated-at"))
    orig_ioi = property(lambda self: self.params.get("orig-ioi"))
    term_ioi = property(lambda self: self.params.get("term-ioi"))

    @classmethod
    def build(cls, icid_value: str, **more: str | None) -> ChargingVector:
        items = [("icid-value", _maybe_quote(icid_value))]
        items += [(k.replace("_", "-"), _maybe_quote(v)) for k, v in more.items() if v is not None]
        return cls(Params(tuple(items)))


class ChargingFunctionAddresses(ParamHeader):
    """P-Charging-Function-Addresses: ccf=..., ecf=... (each may repeat)."""

    __slots__ = ()

    ccf = property(lambda self: self.get_all("ccf"))
    ecf = property(lambda self: self.get_all("ecf"))


def _maybe_quote(value: str) -> str:
    return value if TOKEN_RE.fullmatch(value) else quote(value)


class AccessNetworkInfo:
    """P-Access-Network-Info (RFC 7315 §4.4): access-type *(; access-info)."""

    __slots__ = ("access_type", "params")

    def __init__(self, access_type: str, params: Params | None = None) -> None:
        self.access_type = access_type
        self.params = params if params is not None else Params()

    @classmethod
    def parse(cls, text: str) -> AccessNetworkInfo:
        at, semi, rest = text.strip().partition(";")
        at = at.strip()
        if not TOKEN_RE.fullmatch(at):
            raise SipParseError(f"invalid access-type {at[:30]!r}")
        return cls(at, Params.parse(rest) if semi else Params())

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def __str__(self) -> str:
        return self.access_type + "".join(
            f"; {n}" if v is None else f"; {n}={v}" for n, v in self.params
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccessNetworkInfo) and (self.access_type, self.params) == (
            other.access_type,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.access_type, self.params))


# P-Visited-Network-ID values parsed lately, by text (views are never changed in place).
_VISITED_SEEN = BoundedMemo(64)


class VisitedNetworkId:
    """P-Visited-Network-ID value (RFC 7315 §4.3): token or quoted-string, params."""

    __slots__ = ("params", "raw")

    def __init__(self, raw: str, params: Params | None = None) -> None:
        self.raw = raw
        self.params = params if params is not None else Params()

    @classmethod
    def parse(cls, text: str) -> VisitedNetworkId:
        # a P-CSCF names the same visited network in every REGISTER it sends
        seen = _VISITED_SEEN.get(text)
        if seen is not None and cls is VisitedNetworkId:
            return seen
        parsed = cls._parse(text)
        if cls is VisitedNetworkId:
            _VISITED_SEEN.remember(text, parsed)
        return parsed

    @classmethod
    def _parse(cls, text: str) -> VisitedNetworkId:
        parts = split_unquoted(text.strip(), ";")
        raw = parts[0].strip()
        if (
            not raw
            or (raw[0] == '"' and (len(raw) < 2 or raw[-1] != '"'))
            or (raw[0] != '"' and not TOKEN_RE.fullmatch(raw))
        ):
            raise SipParseError(f"invalid P-Visited-Network-ID {raw[:30]!r}")
        return cls(raw, Params.parse(";".join(parts[1:])) if len(parts) > 1 else Params())

    @property
    def value(self) -> str:
        return unquote(self.raw)

    def __str__(self) -> str:
        return f"{self.raw}{self.params}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VisitedNetworkId) and (self.raw, self.params) == (
            other.raw,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.raw, self.params))


class ContentType:
    """Content-Type (§20.15): type/subtype *(; param)."""

    __slots__ = ("params", "subtype", "type")

    def __init__(self, type_: str, subtype: str, params: Params | None = None) -> None:
        self.type = type_
        self.subtype = subtype
        self.params = params if params is not None else Params()

    @classmethod
    def parse(cls, text: str) -> ContentType:
        mt, semi, rest = text.strip().partition(";")
        t, slash, s = mt.strip().partition("/")
        if not slash or not TOKEN_RE.fullmatch(t.strip()) or not TOKEN_RE.fullmatch(s.strip()):
            raise SipParseError(f"invalid Content-Type {mt[:30]!r}")
        return cls(t.strip().lower(), s.strip().lower(), Params.parse(rest) if semi else Params())

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return f"{self.mime}{self.params}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContentType) and (self.type, self.subtype, self.params) == (
            other.type,
            other.subtype,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.subtype, self.params))


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DATE_RE = re.compile(
    r"(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,\s*)?(\d{1,2})\s+([A-Za-z]{3,9})\s+(\d{4})\s+"
    r"(\d{2}):(\d{2}):(\d{2})\s+GMT"
)


def parse_date(text: str) -> datetime:
    """Date (§20.17, RFC 1123 form, GMT). Full month names (as in TS 24.228's
    examples, "11 July 2001") are accepted too."""
    m = _DATE_RE.fullmatch(text.strip())
    if not m:
        raise SipParseError(f"invalid Date {text[:40]!r}")
    month = _MONTHS.get(m.group(3)[:3].lower())
    if month is None:
        raise SipParseError(f"invalid Date month {m.group(3)!r}")
    try:
        return datetime(
            int(m.group(4)),
            month,
            int(m.group(2)),
            int(m.group(5)),
            int(m.group(6)),
            int(m.group(7)),
            tzinfo=UTC,
        )
    except ValueError:
        raise SipParseError(f"invalid Date {text[:40]!r}") from None


def format_date(when: datetime) -> str:
    from email.utils import format_datetime

    return format_datetime(when.astimezone(UTC), usegmt=True)


def option_tags(values: list[str]) -> list[str]:
    """Require / Proxy-Require / Supported / Unsupported values as option tags."""
    for v in values:
        if not TOKEN_RE.fullmatch(v):
            raise SipParseError(f"invalid option tag {v[:30]!r}")
    return values


__all__ = [
    "AccessNetworkInfo",
    "AuthParam",
    "CSeq",
    "ChargingFunctionAddresses",
    "ChargingVector",
    "Contact",
    "ContentType",
    "DigestCredentials",
    "NameAddr",
    "ParamHeader",
    "SecurityMechanism",
    "Via",
    "VisitedNetworkId",
    "format_date",
    "option_tags",
    "parse_date",
    "parse_int",
]
