"""Security agreement (RFC 3329) as profiled for IMS by TS 33.203 Annex H / TS 24.229 §7.2A.7.

Grammar (RFC 3329 §2.2 and Annex H; one mechanism per comma-separated value):

    sec-mechanism    = mechanism-name *(SEMI mech-parameters)
    mechanism-name   = "digest" / "tls" / "ipsec-ike" / "ipsec-man" / "ipsec-3gpp" / token
    mech-parameters  = preference / alg / prot / mod / ealg / spi-c / spi-s / port-c /
                       port-s / extension
    preference       = "q" EQUAL qvalue            qvalue = ("0" ["." 0*3DIGIT]) / ("1" ["." 0*3("0")])
    alg              = "alg" EQUAL ("hmac-md5-96" / "hmac-sha-1-96" / "aes-gmac" / "null")
    ealg             = "ealg" EQUAL ("des-ede3-cbc" / "aes-cbc" / "aes-gcm" / "null")
    prot             = "prot" EQUAL ("ah" / "esp")   mod = "mod" EQUAL ("trans" / "tun" / "UDP-enc-tun")
    spi-c / spi-s    = "spi-c" / "spi-s" EQUAL 10DIGIT  ; 0 to 4294967295
    port-c / port-s  = "port-c" / "port-s" EQUAL port
    extension        = generic-param

`imsaka.sip` will carry typed Security-* views; until the P-CSCF switches to them this
module's parser is the one used, and the `SecurityMechanism` it returns is what the
policy and the Security-Verify check work on.

RFC 3329 §2.3.1 (as cited by siphon-sip's sec-agree code; SPEC-Q) has the client
mirror the server's list in Security-Verify and the server check that list against
its own; TS 24.229 §5.1.1.5.1 has the UE mirror Security-Server likewise. How to
compare is left to the implementer; the decisions here:

- **Choice** (P-CSCF): among the UE's ``ipsec-3gpp`` offers, the first (alg, ealg) of the
  operator's ordered preference list that the UE offered wins; the UE's q-value only
  breaks ties between offers of the same transform, then the UE's own order. The
  position of an offer in the UE's list never decides over the operator list.
- **Security-Verify = Security-Server**: compared as parsed mechanisms. Mechanism and
  parameter names are case-insensitive tokens (RFC 3261 §7.3.1) and the order of
  parameters inside a mechanism carries no meaning, so both are order-insensitive;
  the list of mechanisms is compared as a multiset (preference is carried by q, not by
  position). Numbers compare by value (q=0.1 equals q=0.100; spi-c=0042 equals 42);
  alg/ealg/prot/mod tokens case-insensitively; every other parameter value byte-equal.
  A missing, added or changed mechanism or parameter is a downgrade attempt: 494.
- ``ealg`` absent means ``null`` (RFC 3329 lists no ealg; Annex H adds it), ``prot``
  absent means ``esp`` and ``mod`` absent means ``trans`` (Annex H defaults).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from imsaka.ipsec.algorithms import combination_allowed
from imsaka.ipsec.errors import DowngradeError, SecAgreeParseError

__all__ = [
    "IPSEC_3GPP",
    "SEC_AGREE",
    "SecAgreeDecision",
    "SecAgreePolicy",
    "SecurityMechanism",
    "answer_headers",
    "check_security_client_unchanged",
    "check_security_verify",
    "choose_mechanism",
    "format_security_header",
    "offer_mechanisms",
    "parse_security_header",
    "sec_agree_decision",
    "strip_sec_agree",
    "ue_choose_server_mechanism",
]

IPSEC_3GPP = "ipsec-3gpp"
SEC_AGREE = "sec-agree"

# RFC 3261 §25.1 token.
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_QVALUE = re.compile(r"(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)\Z")
_DIGITS = re.compile(r"\d{1,10}\Z")
_KNOWN = ("q", "alg", "ealg", "prot", "mod", "spi-c", "spi-s", "port-c", "port-s")
_TOKEN_VALUED = ("alg", "ealg", "prot", "mod")
_MAX_MECHANISMS = 32
_MAX_PARAMS = 24


@dataclass(frozen=True, slots=True)
class SecurityMechanism:
    """One entry of a Security-Client/Server/Verify header (RFC 3329 §2.2, Annex H)."""

    mechanism: str = IPSEC_3GPP
    q: int | None = None  # thousandths: q=0.1 → 100
    alg: str | None = None
    ealg: str | None = None
    prot: str | None = None
    mod: str | None = None
    spi_c: int | None = None
    spi_s: int | None = None
    port_c: int | None = None
    port_s: int | None = None
    extensions: tuple[tuple[str, str | None], ...] = field(default=())

    @property
    def effective_ealg(self) -> str:
        return self.ealg or "null"

    @property
    def transform(self) -> tuple[str | None, str]:
        return (self.alg, self.effective_ealg)

    def has_sa_parameters(self) -> bool:
        """Whether it carries what Annex H needs to set up SAs (alg, spis, ports)."""
        return None not in (self.alg, self.spi_c, self.spi_s, self.port_c, self.port_s)

    def to_header_value(self) -> str:
        parts = [self.mechanism]
        if self.q is not None:
            parts.append(f"q={_format_q(self.q)}")
        for name, value in (
            ("alg", self.alg),
            ("ealg", self.ealg),
            ("prot", self.prot),
            ("mod", self.mod),
            ("spi-c", self.spi_c),
            ("spi-s", self.spi_s),
            ("port-c", self.port_c),
            ("port-s", self.port_s),
        ):
            if value is not None:
                parts.append(f"{name}={value}")
        for name, value in self.extensions:
            parts.append(name if value is None else f"{name}={value}")
        return ";".join(parts)

    def comparison_key(self) -> tuple:
        """The value Security-Verify is compared on (see the module docstring)."""
        return (
            self.mechanism.lower(),
            self.q,
            None if self.alg is None else self.alg.lower(),
            None if self.ealg is None else self.ealg.lower(),
            None if self.prot is None else self.prot.lower(),
            None if self.mod is None else self.mod.lower(),
            self.spi_c,
            self.spi_s,
            self.port_c,
            self.port_s,
            tuple(sorted(self.extensions, key=lambda p: (p[0], p[1] or ""))),
        )


def _format_q(q: int) -> str:
    if q == 1000:
        return "1"
    return f"0.{q:03d}".rstrip("0").rstrip(".") if q else "0"


def _parse_q(value: str) -> int:
    if not _QVALUE.match(value):
        raise SecAgreeParseError(f"q: not a qvalue: {value[:20]!r}")
    whole, _, frac = value.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    out, start, quoted, i = [], 0, False, 0
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise SecAgreeParseError("security header: unterminated quoted-string")
    out.append(text[start:])
    return out


def _parse_mechanism(text: str) -> SecurityMechanism:
    pieces = [p.strip() for p in _split_outside_quotes(text, ";")]
    name = pieces[0]
    if not _TOKEN.match(name):
        raise SecAgreeParseError(f"mechanism-name: not a token: {name[:30]!r}")
    if len(pieces) > _MAX_PARAMS + 1:
        raise SecAgreeParseError("security header: too many parameters")
    values: dict[str, object] = {}
    extensions: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for piece in pieces[1:]:
        pname, eq, pvalue = piece.partition("=")
        pname = pname.strip().lower()
        pvalue = pvalue.strip()
        if not _TOKEN.match(pname):
            raise SecAgreeParseError(f"mech-parameters: bad parameter name {pname[:30]!r}")
        if pname in seen:
            raise SecAgreeParseError(f"{pname}: parameter repeated")
        seen.add(pname)
        if pname not in _KNOWN:
            if eq and not pvalue:
                raise SecAgreeParseError(f"{pname}: empty value")
            extensions.append((pname, pvalue if eq else None))
            continue
        if not pvalue:
            raise SecAgreeParseError(f"{pname}: value missing")
        if pname == "q":
            values["q"] = _parse_q(pvalue)
        elif pname in ("spi-c", "spi-s"):
            if not _DIGITS.match(pvalue) or int(pvalue) > 0xFFFFFFFF:
                raise SecAgreeParseError(f"{pname}: not a 32-bit SPI")
            values[pname.replace("-", "_")] = int(pvalue)
        elif pname in ("port-c", "port-s"):
            if not _DIGITS.match(pvalue) or not 0 < int(pvalue) <= 65535:
                raise SecAgreeParseError(f"{pname}: not a port")
            values[pname.replace("-", "_")] = int(pvalue)
        else:  # alg, ealg, prot, mod: tokens, kept as sent (compared case-insensitively)
            if not _TOKEN.match(pvalue):
                raise SecAgreeParseError(f"{pname}: not a token")
            values[pname] = pvalue
    return SecurityMechanism(mechanism=name, extensions=tuple(extensions), **values)  # type: ignore[arg-type]


def parse_security_header(values: str | Iterable[object]) -> list[SecurityMechanism]:
    """Parse one header value or several (each possibly comma-separated) into mechanisms.

    Items may also be `SecurityMechanism`s (kept) or imsaka.sip's typed Security-*
    views (``msg.security("Security-Verify")``), which are re-read from their text so
    every comparison uses this module's rules.
    """
    if isinstance(values, str):
        values = [values]
    out: list[SecurityMechanism] = []
    for value in values:
        if isinstance(value, SecurityMechanism):
            out.append(value)
            continue
        if not isinstance(value, str):
            value = str(value)  # imsaka.sip.headers.SecurityMechanism renders its text
        for item in _split_outside_quotes(value, ","):
            item = item.strip()
            if not item:
                continue
            out.append(_parse_mechanism(item))
            if len(out) > _MAX_MECHANISMS:
                raise SecAgreeParseError("security header: too many mechanisms")
    return out


def format_security_header(mechanisms: Iterable[SecurityMechanism]) -> str:
    return ", ".join(m.to_header_value() for m in mechanisms)


# --- policy and choice --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecAgreePolicy:
    """The operator's sec-agree policy at the P-CSCF (or the UE's offer list).

    `preference` is the ordered list of (alg, ealg) transforms, most preferred first;
    only these are ever chosen. `release` (if set) refuses transforms that TS 33.203
    Annex H of that release does not allow. `q` is the q-value put into
    Security-Server. `required`: sec-agree is mandatory (RFC 3329 §2.3.1, 421/494).
    """

    preference: tuple[tuple[str, str], ...] = (
        ("hmac-sha-1-96", "aes-cbc"),
        ("hmac-sha-1-96", "des-ede3-cbc"),
        ("hmac-md5-96", "aes-cbc"),
        ("hmac-md5-96", "des-ede3-cbc"),
        ("hmac-sha-1-96", "null"),
        ("hmac-md5-96", "null"),
    )
    release: int | None = None
    q: int = 100
    required: bool = True

    def __post_init__(self) -> None:
        if not self.preference:
            raise ValueError("preference: at least one (alg, ealg) pair")
        for alg, ealg in self.preference:
            if not combination_allowed(alg, ealg, self.release):
                raise ValueError(
                    f"preference: {alg}/{ealg} is not an allowed ESP transform"
                    + (f" in release {self.release}" if self.release else "")
                )
        if not 0 <= self.q <= 1000:
            raise ValueError("q: between 0 and 1000 thousandths")


def choose_mechanism(
    client: str | Iterable[object], policy: SecAgreePolicy
) -> SecurityMechanism | None:
    """The Security-Client entry the P-CSCF takes, by operator preference (module doc)."""
    client = parse_security_header(client)
    ranked: list[tuple[int, int, int, SecurityMechanism]] = []
    rank_of = {t: i for i, t in enumerate(policy.preference)}
    for position, m in enumerate(client):
        if m.mechanism.lower() != IPSEC_3GPP or m.alg is None:
            continue
        if (m.prot or "esp").lower() != "esp" or (m.mod or "trans").lower() != "trans":
            continue
        if not m.has_sa_parameters() or m.spi_c == 0 or m.spi_s == 0:
            continue
        rank = rank_of.get((m.alg.lower(), m.effective_ealg.lower()))
        if rank is None:
            continue
        q = -1 if m.q is None else m.q
        ranked.append((rank, -q, position, m))
    if not ranked:
        return None
    return min(ranked, key=lambda r: r[:3])[3]


def offer_mechanisms(
    policy: SecAgreePolicy, *, spi_c: int, spi_s: int, port_c: int, port_s: int
) -> list[SecurityMechanism]:
    """The UE's Security-Client: one ipsec-3gpp entry per transform of its policy."""
    return [
        SecurityMechanism(
            IPSEC_3GPP,
            alg=alg,
            ealg=ealg,
            prot="esp",
            mod="trans",
            spi_c=spi_c,
            spi_s=spi_s,
            port_c=port_c,
            port_s=port_s,
        )
        for alg, ealg in policy.preference
    ]


def ue_choose_server_mechanism(
    server: str | Iterable[object], offered: Sequence[SecurityMechanism]
) -> SecurityMechanism | None:
    """UE side: the Security-Server entry with the highest q among transforms it offered.

    TS 24.229 §5.1.1.5.1: without a usable entry (missing Annex H parameters) the UE
    abandons the registration; the caller does that on None.
    """
    server = parse_security_header(server)
    offered_t = {(m.alg.lower(), m.effective_ealg.lower()) for m in offered if m.alg}
    best: tuple[int, int, SecurityMechanism] | None = None
    for position, m in enumerate(server):
        if m.mechanism.lower() != IPSEC_3GPP or not m.has_sa_parameters() or m.alg is None:
            continue
        if (m.alg.lower(), m.effective_ealg.lower()) not in offered_t:
            continue
        key = (-(m.q if m.q is not None else 0), position)
        if best is None or key < best[:2]:
            best = (key[0], key[1], m)
    return None if best is None else best[2]


# --- Security-Verify and Security-Client checks ----------------------------------------


def _same_text(kept: Sequence[object], values: str | Iterable[object]) -> bool:
    """The header text received is the very text kept (the usual case: a UE echoes what
    it got): then it parses to the very same mechanisms, and the comparison below may
    be skipped. Only for text kept as text (str items), never empty."""
    if not kept or not all(type(v) is str and v for v in kept):
        return False
    received = [values] if isinstance(values, str) else values
    if not isinstance(received, list | tuple):
        return False
    return len(received) == len(kept) and all(a == b for a, b in zip(kept, received, strict=True))


def check_security_verify(
    sent_server: Sequence[SecurityMechanism] | Sequence[str],
    verify_values: str | Iterable[object] | None,
) -> None:
    """Raise DowngradeError (494) unless Security-Verify equals the Security-Server sent
    (`sent_server`: as mechanisms, or as the header text that was sent)."""
    if verify_values is None:
        raise DowngradeError("Security-Verify: missing")
    if _same_text(sent_server, verify_values):
        return
    sent_server = parse_security_header(sent_server)
    try:
        received = parse_security_header(verify_values)
    except SecAgreeParseError as exc:
        raise DowngradeError(f"Security-Verify: does not parse ({exc.reason})") from None
    if not received:
        raise DowngradeError("Security-Verify: empty")
    if sorted(map(_key_repr, sent_server)) != sorted(map(_key_repr, received)):
        raise DowngradeError("Security-Verify: differs from the Security-Server sent")


def check_security_client_unchanged(
    first: Sequence[SecurityMechanism] | Sequence[str],
    second_values: str | Iterable[object] | None,
) -> None:
    """TS 33.203 §7.2: the protected REGISTER repeats the challenged REGISTER's
    Security-Client (`first`: as mechanisms, or as the challenged REGISTER's text)."""
    if second_values is None:
        raise DowngradeError("Security-Client: missing in the protected REGISTER")
    if _same_text(first, second_values):
        return
    first = parse_security_header(first)
    try:
        second = parse_security_header(second_values)
    except SecAgreeParseError as exc:
        raise DowngradeError(f"Security-Client: does not parse ({exc.reason})") from None
    if sorted(map(_key_repr, first)) != sorted(map(_key_repr, second)):
        raise DowngradeError("Security-Client: differs from the one in the challenged REGISTER")


def _key_repr(m: SecurityMechanism) -> str:
    return repr(m.comparison_key())


# --- Require / Proxy-Require / Supported: 421 and 494 -----------------------------------


@dataclass(frozen=True, slots=True)
class SecAgreeDecision:
    """What a sec-agree-requiring server does with a request (RFC 3329 §2.3.1).

    status 0: go on. 421 / 494: answer with `reason`, a Security-Server listing the
    server's mechanisms and `Require: sec-agree` (`answer_headers`).
    """

    status: int
    reason: str
    detail: str = ""

    @property
    def proceed(self) -> bool:
        return self.status == 0


def _has_tag(values: Iterable[str] | None, tag: str = SEC_AGREE) -> bool:
    if not values:
        return False
    return any(t.strip().lower() == tag for value in values for t in value.split(",") if t.strip())


def sec_agree_decision(
    *,
    require: Iterable[str] | None,
    proxy_require: Iterable[str] | None,
    supported: Iterable[str] | None,
    security_client: Iterable[object] | None,
    policy: SecAgreePolicy,
) -> SecAgreeDecision:
    """RFC 3329 §2.3.1 (FACTS §3.3): 421 without the sec-agree tag, 494 with it only in
    Supported or without a usable ipsec-3gpp Security-Client; otherwise proceed."""
    if not policy.required:
        return SecAgreeDecision(0, "OK")
    in_require = _has_tag(require) or _has_tag(proxy_require)
    if not in_require and not _has_tag(supported):
        return SecAgreeDecision(421, "Extension Required", "no sec-agree option tag")
    if not in_require:
        return SecAgreeDecision(494, "Security Agreement Required", "sec-agree only in Supported")
    if not security_client:
        return SecAgreeDecision(494, "Security Agreement Required", "no Security-Client")
    try:
        offers = parse_security_header(security_client)
    except SecAgreeParseError as exc:
        return SecAgreeDecision(400, "Bad Request", f"Security-Client: {exc.reason}")
    if choose_mechanism(offers, policy) is None:
        return SecAgreeDecision(
            494, "Security Agreement Required", "no offered mechanism is acceptable"
        )
    return SecAgreeDecision(0, "OK")


def answer_headers(policy: SecAgreePolicy) -> list[tuple[str, str]]:
    """Headers for a 421/494: Security-Server with mechanism-level entries, Require.

    Before any AKA vector exists the server has no SPIs or ports to offer, so each
    entry carries only q, alg, ealg, prot and mod (one per policy transform).
    """
    server = [
        SecurityMechanism(IPSEC_3GPP, q=policy.q, alg=a, ealg=e, prot="esp", mod="trans")
        for a, e in policy.preference
    ]
    return [("Security-Server", format_security_header(server)), ("Require", SEC_AGREE)]


def strip_sec_agree(values: Iterable[str] | None) -> list[str]:
    """Require / Proxy-Require option tags without sec-agree (P-CSCF before forwarding,
    TS 24.228 R1-1c); an empty result means: remove the header."""
    if not values:
        return []
    return [
        t.strip()
        for value in values
        for t in value.split(",")
        if t.strip() and t.strip().lower() != SEC_AGREE
    ]
