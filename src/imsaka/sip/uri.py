"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966) and generic parameters.

URIs keep their text as written (user part escaping included) and expose the parts;
`unescape` decodes %HH. IPv6 references keep their brackets in `host`
(`[5555::aaa:bbb:ccc:ddd]`), as the grammar's `IPv6reference` does; `host_ip` drops them.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from imsaka.sip.errors import SipParseError

_HEX = "0123456789abcdefABCDEF"
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# hostname = *( domainlabel "." ) toplabel [ "." ]  (we also allow "_", seen in the
# seed's "icscf1_p.home1.net")
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*\.?"
)
# user = 1*( unreserved / escaped / user-unreserved ), password similar
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_PASSWORD_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+")
# A whole parameter list without quotes or whitespace: `p[=v] *(; p[=v])` with both
# sides paramchar (the fast path of Params.parse; anything else takes the exact path).
PARAMS_FAST = (
    r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?"
    r"(?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+)?)*"
)
_PARAMS_FAST_RE = re.compile(PARAMS_FAST)
# tel: global-number-digits / local-number-digits (RFC 3966 §3)
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*")


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §25.1 `escaped`)."""
    if "%" not in text:
        return text
    if _BAD_ESCAPE_RE.search(text):
        raise SipParseError(f"bad %-escape in {text[:40]!r}")
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def split_unquoted(text: str, sep: str) -> list[str]:
    """Split at `sep` outside double quotes (backslash escapes inside quotes)."""
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    start = 0
    in_q = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == sep:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if in_q:
        raise SipParseError(f"unterminated quoted string in {text[:40]!r}")
    out.append(text[start:])
    return out


_new_object = object.__new__


class Params:
    """An ordered, immutable list of `name[=value]` parameters; values as written
    (a quoted value keeps its quotes), names compared case-insensitively."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[str, str | None], ...] = ()) -> None:
        self.items = tuple(items)

    @classmethod
    def parse(cls, text: str, sep: str = ";") -> Params:
        """Parse `a=b;c;d="x"` (no leading separator)."""
        if sep == ";" and _PARAMS_FAST_RE.fullmatch(text):
            # the common case (no quotes, no whitespace): one match validates it all
            return cls._from_plain(text)
        return cls._parse_exact(text, sep)

    @classmethod
    def _from_plain(cls, text: str) -> Params:
        """Params of a text `_PARAMS_FAST_RE` (or a pattern embedding it) matched."""
        if ";" not in text:
            # one parameter (a Via's branch, a tag): no list to build
            name, eq, value = text.partition("=")
            items: tuple = ((name, value if eq else None),)
        else:
            parts = []
            for part in text.split(";"):
                name, eq, value = part.partition("=")
                parts.append((name, value if eq else None))
            items = tuple(parts)
        new = _new_object(cls)
        new.items = items
        return new

    @classmethod
    def _parse_exact(cls, text: str, sep: str) -> Params:
        """The full grammar (quotes, whitespace, any separator); decides every error."""
        items = []
        for part in split_unquoted(text, sep):
            part = part.strip()
            if not part:
                raise SipParseError(f"empty parameter in {text[:60]!r}")
            name, eq, value = part.partition("=")
            name = name.strip()
            if not name or not _PARAM_RE.fullmatch(name):
                raise SipParseError(f"invalid parameter name {name[:30]!r}")
            if eq:
                value = value.strip()
                if not value:
                    raise SipParseError(f"parameter {name} has an empty value")
                if value[0] == '"':
                    if len(value) < 2 or value[-1] != '"':
                        raise SipParseError(f"parameter {name}: bad quoted value")
                elif not _PARAM_RE.fullmatch(value):
                    raise SipParseError(f"parameter {name}: invalid value {value[:30]!r}")
                items.append((name, value))
            else:
                items.append((name, None))
        return cls(tuple(items))

    def raw(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.items:
            if n == lname or n.lower() == lname:
                return v
        return None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value, unquoted (a flag parameter gives "")."""
        lname = name.lower()
        for n, v in self.items:
            if n == lname or n.lower() == lname:
                if v is None:
                    return ""
                if v[:1] == '"':
                    return unquote(v)
                return v
        return default

    def __contains__(self, name: str) -> bool:
        lname = name.lower()
        for n, _ in self.items:  # noqa: SIM110 - a plain loop: no generator per lookup
            if n == lname or n.lower() == lname:
                return True
        return False

    def with_param(self, name: str, value: str | None = None) -> Params:
        """A copy with `name` set (replaced in place, or appended)."""
        lname = name.lower()
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                items[i] = (n, value)
                return Params(tuple(items))
        items.append((name, value))
        return Params(tuple(items))

    def without(self, *names: str) -> Params:
        drop = {n.lower() for n in names}
        return Params(tuple(p for p in self.items if p[0].lower() not in drop))

    def to_str(self, sep: str = ";", lead: bool = True) -> str:
        parts = [n if v is None else f"{n}={v}" for n, v in self.items]
        if not parts:
            return ""
        return (sep if lead else "") + sep.join(parts)

    def __str__(self) -> str:
        return self.to_str()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Params({self.to_str(lead=False)!r})"


def unquote(value: str) -> str:
    """The content of a quoted-string, backslash escapes resolved."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        if "\\" in inner:
            return re.sub(r"\\(.)", r"\1", inner)
        return inner
    return value


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def _valid_ipv6(text: str) -> bool:
    # ipaddress is slow; the same few addresses recur in every message of a flow
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# `host[:port]` texts parsed before (valid ones only): the same few hosts recur in
# every message of a flow. Bounded: emptied when full.
_HOSTPORT_CACHE: dict[str, tuple[str, int | None]] = {}
_HOSTPORT_CACHE_MAX = 1024


def parse_hostport(text: str, what: str = "host") -> tuple[str, int | None]:
    """`host[:port]` with IPv6 references in brackets."""
    found = _HOSTPORT_CACHE.get(text)
    if found is not None:
        return found
    found = _parse_hostport(text, what)
    if len(_HOSTPORT_CACHE) >= _HOSTPORT_CACHE_MAX:
        _HOSTPORT_CACHE.clear()
    _HOSTPORT_CACHE[text] = found
    return found


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    if not text:
        raise SipParseError(f"empty {what}")
    if text[0] == "[":
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"{what}: unterminated IPv6 reference")
        host = text[: close + 1]
        if not _valid_ipv6(host[1:-1]):
            raise SipParseError(f"{what}: invalid IPv6 reference {host[:50]!r}")
        rest = text[close + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"{what}: junk after IPv6 reference")
        return host, _port(rest[1:], what)
    host, colon, port = text.partition(":")
    if not _HOSTNAME_RE.fullmatch(host):
        raise SipParseError(f"{what}: invalid host {host[:50]!r}")
    return host, (_port(port, what) if colon else None)


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or not 0 < int(text) < 65536:
        raise SipParseError(f"{what}: invalid port {text[:10]!r}")
    return int(text)


def host_ip(host: str) -> str:
    """A host without IPv6 brackets (what sockets want)."""
    return host[1:-1] if host[:1] == "[" else host


def format_host(host: str) -> str:
    """A host for a URI or Via: IPv6 addresses get brackets."""
    if ":" in host and host[:1] != "[":
        return f"[{host}]"
    return host


class SipUri:
    """sip: / sips: URI. `user` and `password` as written (escaped); `host` with
    brackets for IPv6; `params` (uri-parameters) and `headers` (the text after ?)."""

    __slots__ = ("headers", "host", "params", "password", "port", "scheme", "user")

    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int | None = None,
        params: Params | None = None,
        headers: str | None = None,
        scheme: str = "sip",
        password: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = format_host(host)
        self.port = port
        self.params = params if params is not None else Params()
        self.headers = headers

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, colon, rest = text.partition(":")
        lscheme = scheme.lower()
        if not colon or lscheme not in ("sip", "sips"):
            raise SipParseError(f"not a sip/sips URI: {text[:60]!r}")
        headers = None
        q = rest.find("?")
        if q >= 0:
            headers = rest[q + 1 :]
            rest = rest[:q]
            if not headers:
                raise SipParseError("empty URI headers after '?'")
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            user, c, pw = userinfo.partition(":")
            if not user or not _USER_RE.fullmatch(user):
                raise SipParseError(f"invalid URI user part {user[:40]!r}")
            if c:
                if not _PASSWORD_RE.fullmatch(pw):
                    raise SipParseError("invalid URI password")
                password = pw
            unescape(user)  # validates escapes
        semi = rest.find(";")
        if semi >= 0:
            params = Params.parse(rest[semi + 1 :])
            rest = rest[:semi]
        else:
            params = Params()
        host, port = parse_hostport(rest, "URI host")
        return cls(host, user, port, params, headers, lscheme, password)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    @property
    def host_ip(self) -> str:
        return host_ip(self.host)

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    def aor(self) -> str:
        """scheme:user@host (no port, params or headers): the address-of-record form."""
        return (
            f"{self.scheme}:{self.user}@{self.host}" if self.user else f"{self.scheme}:{self.host}"
        )

    def with_params(self, params: Params) -> SipUri:
        return SipUri(
            self.host, self.user, self.port, params, self.headers, self.scheme, self.password
        )

    def __str__(self) -> str:
        s = [self.scheme, ":"]
        if self.user is not None:
            s.append(self.user)
            if self.password is not None:
                s.append(":" + self.password)
            s.append("@")
        s.append(self.host)
        if self.port is not None:
            s.append(f":{self.port}")
        s.append(str(self.params))
        if self.headers is not None:
            s.append("?" + self.headers)
        return "".join(s)

    def _key(self) -> tuple:
        return (
            self.scheme,
            self.user,
            self.password,
            self.host.lower(),
            self.port,
            self.params,
            self.headers,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SipUri) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"SipUri({str(self)!r})"


class TelUri:
    """tel: URI (RFC 3966): the number as written and its parameters."""

    __slots__ = ("number", "params")

    def __init__(self, number: str, params: Params | None = None) -> None:
        self.number = number
        self.params = params if params is not None else Params()

    @classmethod
    def parse(cls, text: str) -> TelUri:
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() != "tel":
            raise SipParseError(f"not a tel URI: {text[:60]!r}")
        number, semi, params = rest.partition(";")
        if not _TEL_RE.fullmatch(number):
            raise SipParseError(f"invalid telephone number {number[:30]!r}")
        return cls(number, Params.parse(params) if semi else Params())

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (RFC 3966 §5.1.1)."""
        return "".join(c for c in self.number if c not in "-.()")

    def __str__(self) -> str:
        return f"tel:{self.number}{self.params}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TelUri) and (self.digits, self.params) == (
            other.digits,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.digits, self.params))

    def __repr__(self) -> str:
        return f"TelUri({str(self)!r})"


class AbsoluteUri:
    """Any other scheme (absoluteURI): kept as text."""

    __slots__ = ("scheme", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.scheme = text.partition(":")[0].lower()

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbsoluteUri) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"AbsoluteUri({self.text!r})"


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+")


def parse_uri(text: str) -> SipUri | TelUri | AbsoluteUri:
    """Parse a URI by scheme; anything malformed raises SipParseError."""
    text = text.strip()
    lower = text[:5].lower()
    if lower.startswith(("sip:", "sips:")):
        return SipUri.parse(text)
    if lower.startswith("tel:"):
        return TelUri.parse(text)
    if not _SCHEME_RE.fullmatch(text):
        raise SipParseError(f"invalid URI {text[:60]!r}")
    return AbsoluteUri(text)
