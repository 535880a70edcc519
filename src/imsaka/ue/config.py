"""UE configuration: ISIM data and the P-CSCF found by configuration (TS 24.229 §9.2.1).

The ISIM holds the IMPI, the IMPUs, the home network domain name and the long-term key K
with OP or OPc (TS 31.103 §4.2; TS 33.203 §6.1); the SQN state (SQN_MS) lives beside it.
P-CSCF discovery by DHCP/PCO is out of scope: the address comes from configuration.

`ue.toml`::

    impi = "user1_private@home1.net"
    impus = ["sip:user1_public1@home1.net"]
    home_domain = "home1.net"
    k = "465b5ce8b199b49faa5f0a2ee238a6bc"
    opc = "cd63cb71954a9f4e48a5994e37a02baf"   # or op = "…" (exactly one)
    sqn = 0            # SQN_MS: highest SQN accepted so far
    pcscf = "127.0.0.1:5060"
    local_host = "127.0.0.1"
    sec_agree = true
    algorithms = ["hmac-sha-1-96"]
    encryption = ["aes-cbc", "null"]
    expires = 600000
    subscribe_reg_event = true   # reg-event SUBSCRIBE after registering (§5.1.1.3)
    recovery_base_time = 30      # register again after a failure that may pass (RFC 5626 §4.5)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imsaka.clierror import CliError

__all__ = ["UeConfig", "load_ue_config", "parse_hostport"]

INTEGRITY_ALGORITHMS = ("hmac-sha-1-96", "hmac-md5-96")
ENCRYPTION_ALGORITHMS = ("null", "aes-cbc", "des-ede3-cbc")


def parse_hostport(
    value: str, field_name: str, default_port: int = 5060, *, allow_zero: bool = False
) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` → (host, port); CliError naming the field."""
    value = value.strip()
    if not value:
        raise CliError(f"{field_name}: empty address")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise CliError(f"{field_name}: unclosed '[' in {value!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise CliError(f"{field_name}: expected [host]:port, got {value!r}")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not (0 if allow_zero else 1) <= int(port_text) < 65536:
        raise CliError(f"{field_name}: port must be 1..65535, got {port_text!r}")
    return host, int(port_text)


def _hex(name: str, value: Any, length: int) -> bytes:
    if not isinstance(value, str):
        raise CliError(f"{name}: expected {length * 2} hex digits")
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raise CliError(f"{name}: not hexadecimal") from None
    if len(raw) != length:
        raise CliError(
            f"{name}: expected {length} octets ({length * 2} hex digits), got {len(raw)}"
        )
    return raw


@dataclass(slots=True)
class UeConfig:
    """One simulated UE."""

    impi: str
    """Private user identity (TS 23.003 §13.3), the digest username."""
    impus: list[str]
    """Public user identities; the first is registered (To/From)."""
    home_domain: str
    """Home network domain name: the registrar Request-URI is sip:<registrar>."""
    k: bytes = field(repr=False)
    """Long-term key K (16 octets)."""
    op: bytes | None = field(default=None, repr=False)
    """Operator variant OP (the ISIM derives OPc), or None when `opc` is given."""
    opc: bytes | None = field(default=None, repr=False)
    """OPc = OP xor E_K(OP), or None when `op` is given."""
    sqn: int = 0
    """SQN_MS: highest sequence number accepted (TS 33.102 Annex C)."""
    amf_accept: tuple[bytes, ...] = ()
    """AMF values the ISIM accepts; empty = any with the separation bit as received."""
    pcscf: tuple[str, int] = ("127.0.0.1", 5060)
    """P-CSCF address (found by configuration) and its unprotected port."""
    local_host: str = "127.0.0.1"
    """Address the UE binds its sockets to."""
    local_port: int = 0
    """Unprotected port (0: any free port)."""
    port_c: int = 0
    """Protected client port (0: any free port)."""
    port_s: int = 0
    """Protected server port (0: any free port)."""
    registrar: str = ""
    """Host of the registrar Request-URI (default: home_domain)."""
    realm: str = ""
    """Realm of the empty first Authorization (default: registrar)."""
    sec_agree: bool = True
    """Offer Security-Client and set up IPsec; False behaves like a desk client."""
    algorithms: tuple[str, ...] = ("hmac-sha-1-96",)
    """Integrity algorithms offered in Security-Client, in preference order."""
    encryption: tuple[str, ...] = ("null",)
    """Encryption algorithms offered (ealg), in preference order."""
    expires: int = 600000
    """Expiry asked for in Contact (the seed's 600000)."""
    access_network_info: str = "3GPP-UTRAN-TDD; utran-cell-id-3gpp=234151D0FCE11"
    """P-Access-Network-Info value (TS 24.229 §7.2A.4)."""
    transport: str = "udp"
    """SIP transport towards the P-CSCF."""
    password: str | None = field(default=None, repr=False)
    """Digest password when the network challenges with plain MD5."""
    max_retries: int = 3
    """How often a REGISTER answered 480/500/503/504 with Retry-After is tried again
    (after the indicated time, RFC 3261 §20.33, §21.5.4) before the UE gives up."""
    max_retry_after: int = 1800
    """Upper bound in seconds on a Retry-After the UE is willing to wait; a longer
    one ends the attempt at once (a network must not park the UE for hours)."""
    recovery_base_time: int | None = None
    """Seconds: RFC 5626 §4.5's base-time for getting registered again after an attempt
    failed for a reason that may pass (no answer, 408, 480, 5xx, 600, each without a
    usable Retry-After): the UE starts a new initial registration after a random
    ½…1 of min(`recovery_max_time`, base-time · 2^failures in a row) seconds, as a
    phone does; a refusal of the UE itself (403, 404, a bad AUTN) ends it for good.
    The same back-off keeps the reg-event subscription up while the UE stays
    registered (one that could not be made or kept, that lapsed, or that the network
    ended with reason deactivated/timeout/probation/giveup is made anew).
    0 or None: the UE stays failed and its user decides (tests, load runs);
    ``imsaka ue register --stay`` takes 30 (RFC 5626's base-time when every flow
    failed) unless the file sets it."""
    recovery_max_time: int = 1800
    """Seconds: RFC 5626 §4.5's max-time, the longest wait between such attempts."""
    subscribe_reg_event: bool = True
    """SUBSCRIBE to the reg event of the IMPU after the 200 OK to the initial
    registration (TS 24.229 §5.1.1.3), to learn of a network-initiated de-registration
    (§5.1.1.7); False skips it (a bulk of UEs in a load test)."""

    def __post_init__(self) -> None:
        if not self.impi or "@" not in self.impi:
            raise CliError(f"impi: expected user@realm, got {self.impi!r}")
        if not self.impus:
            raise CliError("impus: at least one public user identity needed")
        for impu in self.impus:
            if not impu.startswith(("sip:", "sips:", "tel:")):
                raise CliError(f"impus: {impu!r} is not a sip:/tel: URI")
        if not self.home_domain:
            raise CliError("home_domain: required")
        if (self.op is None) == (self.opc is None):
            raise CliError("op/opc: give exactly one of op (operator variant) or opc (derived)")
        if not 0 <= self.sqn < 2**48:
            raise CliError("sqn: must be 0..2^48-1")
        for alg in self.algorithms:
            if alg not in INTEGRITY_ALGORITHMS:
                raise CliError(f"algorithms: unknown integrity algorithm {alg!r}")
        for ealg in self.encryption:
            if ealg not in ENCRYPTION_ALGORITHMS:
                raise CliError(f"encryption: unknown encryption algorithm {ealg!r}")
        if not isinstance(self.subscribe_reg_event, bool):
            raise CliError("subscribe_reg_event: expected true or false")
        if self.transport not in ("udp", "tcp"):
            raise CliError(f"transport: expected udp or tcp, got {self.transport!r}")
        for name in ("max_retries", "max_retry_after", "recovery_max_time"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CliError(f"{name}: expected a non-negative integer")
        base = self.recovery_base_time
        if base is not None and (not isinstance(base, int) or isinstance(base, bool) or base < 0):
            raise CliError("recovery_base_time: expected a non-negative integer")
        if not self.registrar:
            self.registrar = self.home_domain
        if not self.realm:
            self.realm = self.registrar

    @property
    def impu(self) -> str:
        return self.impus[0]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UeConfig:
        known = {
            "impi",
            "impus",
            "impu",
            "home_domain",
            "k",
            "op",
            "opc",
            "sqn",
            "pcscf",
            "local_host",
            "local_port",
            "port_c",
            "port_s",
            "registrar",
            "realm",
            "sec_agree",
            "algorithms",
            "encryption",
            "expires",
            "access_network_info",
            "transport",
            "password",
            "amf_accept",
            "max_retries",
            "max_retry_after",
            "recovery_base_time",
            "recovery_max_time",
            "subscribe_reg_event",
        }
        for key in data:
            if key not in known:
                raise CliError(f"{key}: unknown UE setting")
        for required in ("impi", "home_domain", "k"):
            if required not in data:
                raise CliError(f"{required}: required")
        impus = data.get("impus") or ([data["impu"]] if "impu" in data else [])
        if isinstance(impus, str):
            impus = [impus]
        kwargs: dict[str, Any] = {
            "impi": str(data["impi"]),
            "impus": [str(u) for u in impus],
            "home_domain": str(data["home_domain"]),
            "k": _hex("k", data["k"], 16),
            "op": _hex("op", data["op"], 16) if "op" in data else None,
            "opc": _hex("opc", data["opc"], 16) if "opc" in data else None,
        }
        if "sqn" in data:
            sqn = data["sqn"]
            if isinstance(sqn, str):
                try:
                    sqn = int(sqn, 16) if len(sqn) == 12 else int(sqn)
                except ValueError:
                    raise CliError("sqn: expected an integer or 12 hex digits") from None
            if not isinstance(sqn, int):
                raise CliError("sqn: expected an integer")
            kwargs["sqn"] = sqn
        if "pcscf" in data:
            kwargs["pcscf"] = parse_hostport(str(data["pcscf"]), "pcscf")
        for name in (
            "local_port",
            "port_c",
            "port_s",
            "expires",
            "max_retries",
            "max_retry_after",
            "recovery_base_time",
            "recovery_max_time",
        ):
            if name in data:
                if not isinstance(data[name], int) or data[name] < 0:
                    raise CliError(f"{name}: expected a non-negative integer")
                kwargs[name] = data[name]
        for name in (
            "local_host",
            "registrar",
            "realm",
            "access_network_info",
            "transport",
            "password",
        ):
            if name in data:
                kwargs[name] = str(data[name])
        for name in ("sec_agree", "subscribe_reg_event"):
            if name in data:
                if not isinstance(data[name], bool):
                    raise CliError(f"{name}: expected true or false")
                kwargs[name] = data[name]
        for name in ("algorithms", "encryption"):
            if name in data:
                value = data[name]
                if isinstance(value, str):
                    value = [value]
                kwargs[name] = tuple(str(v) for v in value)
        if "amf_accept" in data:
            kwargs["amf_accept"] = tuple(_hex("amf_accept", v, 2) for v in data["amf_accept"])
        return cls(**kwargs)


def load_ue_config(path: str | Path) -> UeConfig:
    """Read `ue.toml` (top level, or a `[ue]` table)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise CliError(f"-c: no such file {str(p)!r}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"-c: {p}: {exc}") from None
    if "ue" in data and isinstance(data["ue"], dict):
        data = data["ue"]
    return UeConfig.from_dict(data)
