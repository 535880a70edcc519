"""The whole-network configuration: one TOML file describes HSS, P-CSCF, I-CSCF and S-CSCF.

Every function reads the same file (``imsaka run {hss|pcscf|icscf|scscf} -c imsaka.toml``),
so the routes between them (P-CSCF → I-CSCF per home domain, I-CSCF → S-CSCF list,
Diameter peers towards the HSS) are written once. The file is parsed with `tomllib` into
frozen dataclasses, validated when built; a mistake raises `ConfigError` whose one-line
message names the field as ``[section].field`` (STYLE.md §12).

The ``[hss]`` table belongs to the HSS (issue 4): it is kept as a plain dict and handed to
``imsaka.hss.server.run(config)`` with the rest of the file; only what the CSCFs need to
reach the HSS is read here (each CSCF's ``diameter.peers``).

Names follow the specs: the P-Visited-Network-ID value (TS 24.229 §7.2A.5,
TS 24.228 packet 2), Server-Name and Server-Capabilities (TS 29.228 §6.7), Path and
Service-Route (RFC 3327, RFC 3608), reg-await-auth (TS 24.229 §5.4.1.2.1), sec-agree
(RFC 3329, TS 33.203 Annex H).
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imsaka.clierror import CliError

__all__ = [
    "ConfigError",
    "DiameterConfig",
    "DiameterPeerConfig",
    "IcscfConfig",
    "ImsConfig",
    "MetricsConfig",
    "NetworkConfig",
    "PcscfConfig",
    "PcscfRoute",
    "ScscfConfig",
    "ScscfEntry",
    "load_config",
    "parse_config",
    "parse_listen",
    "split_hostport",
]

TRANSPORTS = ("udp", "tcp")
INTEGRITY_ALGORITHMS = ("hmac-sha-1-96", "hmac-md5-96")
ENCRYPTION_ALGORITHMS = ("aes-cbc", "des-ede3-cbc", "null")


class ConfigError(CliError):
    """A configuration mistake; the message starts with ``[section].field:``."""


# --------------------------------------------------------------------------- helpers


class _Table:
    """Reads one TOML table, remembering its dotted name for error messages."""

    __slots__ = ("_data", "_seen", "name")

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"[{name}]: must be a table")
        self.name = name
        self._data = data
        self._seen: set[str] = set()

    def fail(self, key: str, reason: str) -> ConfigError:
        if not self.name:  # the document itself: its keys are sections
            return ConfigError(f"[{key}]: {reason}")
        return ConfigError(f"[{self.name}].{key}: {reason}")

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if required:
                raise self.fail(key, "missing")
            return default
        return self._data[key]

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key, default, required)
        if not isinstance(value, str) or (required and not value):
            raise self.fail(key, "must be a non-empty string")
        return value

    def int(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(key, default, False)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, "must be an integer")
        if lo is not None and value < lo:
            raise self.fail(key, f"must be at least {lo}")
        if hi is not None and value > hi:
            raise self.fail(key, f"must be at most {hi}")
        return value

    def float(self, key: str, default: float, *, lo: float = 0.0, zero: bool = False) -> float:
        """A number above `lo`; `zero`: 0 too (a switch's "off")."""
        value = self._get(key, default, False)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(key, "must be a number")
        if not math.isfinite(value):
            # TOML has inf and nan; nan passes every comparison below as false
            raise self.fail(key, "must be a finite number")
        if value <= lo and not (zero and value == 0):
            raise self.fail(key, f"must be greater than {lo}" + (" or 0" if zero else ""))
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, default, False)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}")
        return value

    def strs(
        self,
        key: str,
        default: tuple[str, ...],
        *,
        choices: tuple[str, ...] | None = None,
        nonempty: bool = True,
    ) -> tuple[str, ...]:
        value = self._get(key, default, False)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of non-empty strings")
        if nonempty and not value:
            raise self.fail(key, "must not be empty")
        if len(set(value)) != len(value):
            raise self.fail(key, "has duplicates")
        if choices is not None:
            for v in value:
                if v not in choices:
                    raise self.fail(key, f"unknown value {v!r} (known: {', '.join(choices)})")
        return tuple(value)

    def ints(self, key: str, *, lo: int = 0) -> tuple[int, ...]:
        value = self._get(key, [], False)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in value
        ):
            raise self.fail(key, f"must be a list of integers ≥ {lo}")
        return tuple(value)

    def address(self, key: str, default: str = "127.0.0.1") -> str:
        value = self.str(key, default)
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise self.fail(key, f"{value!r} is not an IP address") from None
        return value

    def port(self, key: str, default: int, *, zero: bool = False) -> int:
        return self.int(key, default, lo=0 if zero else 1, hi=65535)

    def _child(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key  # the document itself: no dot

    def table(self, key: str, *, required: bool = False) -> _Table | None:
        value = self._get(key, None, required)
        if value is None:
            return None
        return _Table(self._child(key), value)

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key, [], False)
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of tables ([[...]])")
        return [_Table(f"{self._child(key)}[{i}]", item) for i, item in enumerate(value)]

    def done(self) -> None:
        """Unknown keys are mistakes (a typo must not silently fall back to a default)."""
        for key in self._data:
            if key not in self._seen:
                raise self.fail(key, "unknown field")


def split_hostport(text: str, default_port: int = 5060) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a ``sip:`` URI → (host, port)."""
    rest = text
    if rest.startswith("sip:"):
        rest = rest[4:]
        if "@" in rest:
            rest = rest.split("@", 1)[1]
        rest = rest.split(";", 1)[0].split("?", 1)[0]
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"unclosed IPv6 reference in {text!r}")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ValueError(f"junk after IPv6 reference in {text!r}")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    elif ":" in rest:  # a bare IPv6 address without brackets
        host, port_text = rest, ""
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}")
        return host, int(port_text)
    return host, default_port


def _uri_host(text: str) -> str:
    """``[v6]`` brackets for an IPv6 literal inside a URI."""
    return f"[{text}]" if ":" in text else text


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """``[network]``: the operator's domains and a static host table."""

    home_domains: tuple[str, ...]
    """Home network domains served by this core (realm of the IMPUs, e.g. ``home1.net``)."""
    name: str = "imsaka"
    """A label for logs and the ladder."""
    hosts: Mapping[str, str] = field(default_factory=dict)
    """Static name → IP address table (no DNS): lets URIs carry names such as
    ``scscf1.home1.net`` (as in the seed's packets) while traffic stays on loopback."""

    def resolve(self, host: str) -> str:
        """The IP address for a host name from `hosts`, or `host` itself if it is an address."""
        mapped = self.hosts.get(host.lower())
        if mapped is not None:
            return mapped
        ipaddress.ip_address(host.strip("[]"))  # ValueError for an unknown name
        return host.strip("[]")


@dataclass(frozen=True, slots=True)
class DiameterPeerConfig:
    """One configured Diameter peer (``[[<function>.diameter.peers]]``)."""

    host: str
    """The peer's Origin-Host (DiameterIdentity), e.g. ``hss.home1.net``."""
    realm: str
    """The peer's Origin-Realm."""
    address: str
    """IP address to connect to."""
    port: int = 3868
    """TCP port (RFC 6733: 3868)."""


@dataclass(frozen=True, slots=True)
class DiameterConfig:
    """``[<function>.diameter]``: this function's Diameter identity and its peers (Cx)."""

    host: str
    """Our Origin-Host."""
    realm: str
    """Our Origin-Realm; also the Destination-Realm we put in Cx requests unless the peer's differs."""
    peers: tuple[DiameterPeerConfig, ...]
    """Configured peers only (RFC 6733 §2.1: a request from any other peer is refused).
    The first one is the HSS we send Cx requests to."""
    address: str = "127.0.0.1"
    """Local address to bind (listening and connecting)."""
    port: int = 0
    """TCP port to listen on for peers that connect to us (the HSS for RTR/PPR); 0: none."""
    timeout: float = 5.0
    """Seconds to wait for a Cx answer before treating the HSS as unreachable."""
    watchdog_interval: float = 30.0
    """Tw (RFC 3539 §3.4.1): seconds of silence before a DWR; at least 6."""
    reopen_dwas: int = 3
    """DWR/DWA exchanges in a row a peer reconnected after a watchdog failure must
    answer before it carries Cx again (RFC 3539 §3.4.1 REOPEN)."""

    @property
    def hss(self) -> DiameterPeerConfig:
        return self.peers[0]


@dataclass(frozen=True, slots=True)
class PcscfRoute:
    """``[[pcscf.routes]]``: where REGISTERs for one home domain go (DNS-free routing)."""

    domain: str
    """Home domain of the registering user (the host of the Request-URI, e.g. ``home1.net``)."""
    icscf: str | None = None
    """The home network's I-CSCF as ``sip:host:port`` (the entry point, seed step 2)."""
    scscf: str | None = None
    """An S-CSCF reached directly (P-CSCF in the home network, where configured)."""


@dataclass(frozen=True, slots=True)
class PcscfConfig:
    """``[pcscf]``: the P-CSCF (TS 24.229 §5.2; sec-agree per RFC 3329 / TS 33.203)."""

    name: str
    """Host name the P-CSCF puts in Via and Path (``<sip:term@NAME;lr>``)."""
    address: str = "127.0.0.1"
    """IP address for the unprotected SIP port and the protected ports."""
    port: int = 5060
    """Unprotected SIP port (phase-1 REGISTER, packet 1); 0: the kernel picks (tests, lab)."""
    transports: tuple[str, ...] = ("udp", "tcp")
    """SIP transports served: ``udp``, ``tcp``."""
    port_c: int = 5062
    """Protected client port (TS 33.203 §7.1: the P-CSCF sends requests from it); 0: any."""
    port_s: int = 5063
    """Protected server port (the UE sends requests to it over the SAs); 0: any."""
    visited_network_id: str = "Visited Network Number 1"
    """Value of P-Visited-Network-ID added towards the home network (packet 2)."""
    home: bool = False
    """True when this P-CSCF is in the home network: REGISTERs go straight to a route's
    `scscf` where one is configured (issue 6 item 2)."""
    sec_agree: str = "required"
    """``required``: a REGISTER without sec-agree gets 421/494 (RFC 3329 §2.3.1);
    ``optional``: a UE without Security-Client is admitted without SAs."""
    integrity_algorithms: tuple[str, ...] = INTEGRITY_ALGORITHMS
    """ESP integrity algorithms in the operator's order of preference (never "last offer wins")."""
    encryption_algorithms: tuple[str, ...] = ENCRYPTION_ALGORITHMS
    """ESP encryption algorithms in order of preference; ``null`` allowed only if listed."""
    ipsec_backend: str = "userspace"
    """``userspace`` (ESP-in-UDP, RFC 3948) or ``xfrm`` (Linux kernel SAs)."""
    temporary_sa_lifetime: int = 240
    """Seconds the temporary SAs of a 401 live if the UE never answers (TS 33.203 §7.1)."""
    routes: tuple[PcscfRoute, ...] = ()
    """Routes per home domain."""
    subscribe_reg_event: bool = True
    """After a UE's first registration, SUBSCRIBE to the reg event of its IMPU along the
    Service-Route (TS 24.229 §5.2.3), so that a network-initiated de-registration (RTR,
    expiry at the S-CSCF) reaches the P-CSCF and it removes the UE's SAs. ``false``:
    the P-CSCF learns of an ended registration only from the UE or its own expiry."""
    max_in_flight: int = 300
    """Overload bound: with this many UE requests forwarded and not yet answered, a new
    initial REGISTER (in the clear) is answered 503 with Retry-After (RFC 3261 §21.5.4)
    instead of being forwarded; requests over an SA always pass. 0: no bound."""
    max_queue_delay: float = 0.4
    """Overload bound by delay (seconds): a new initial REGISTER is also answered 503
    while even the quickest answer from the core in the last 100 ms took longer than
    this (a standing queue; one slow request does not count). It follows the machine's
    own throughput, where a count fits one machine only. 0: off."""
    trusted_nodes: tuple[str, ...] = ()
    """Core nodes (``sip:host:port``) whose requests to UEs (a reg-event NOTIFY, anything
    along the Path) this P-CSCF takes from the start, besides its routes and the
    Service-Routes registrations bring: the S-CSCFs, so that a P-CSCF restarted under
    registered UEs knows them before the first 200 OK names one, and answers a NOTIFY
    for a UE not registered here 404, which ends that subscription (RFC 5057 §5.1),
    instead of refusing it 403 as it would a UE's request (which ends nothing). Default:
    the S-CSCFs the same document defines (``[scscf]``, ``[[icscf.scscfs]]``)."""
    state_file: str = ""
    """Where a stopping P-CSCF (SIGTERM, SIGINT) writes its registrations, SA sets with
    their ESP keys and sequence numbers, and reg-event subscriptions, and where the
    next start reads them back and deletes the file (`imsaka.cscf.pcscf_state`): UEs
    stay registered across a restart. Relative to the working directory; written
    readable by its owner only. Empty: nothing is kept (a restarted P-CSCF knows no
    UE; each registers anew at its next refresh). Needs ``ipsec_backend = "userspace"``."""
    state_store: str = ""
    """``redis://host:port/db``: the P-CSCF writes its registrations there as it runs
    (every `state_interval` s, those that changed; `imsaka.cscf.pcscf_store`) and a
    start takes them back, after a crash too: a UE registered before the last write
    stays registered over its SAs (their sequence numbers move on 2^20 past the last
    written; packets received after that write could be taken once more). Not with
    `state_file`; needs ``ipsec_backend = "userspace"``."""
    state_interval: float = 0.5
    """Seconds between two writes of `state_store`: a crash loses what changed since
    the last. A write looks only at what changed (0.3-0.4 ms of CPU when nothing did,
    whatever the number of UEs; ~50 us per registration that did)."""
    dereg_grace: float = 32.0
    """Seconds the SA set that a REGISTER's last answer left over (the 200 OK to a
    de-REGISTER, to a REGISTER of a registration the network ended, the 4xx to a failed
    challenge response) stays, over UDP, for that REGISTER's retransmissions alone:
    Timer J, 64·T1 (RFC 3261 §17.2.2), so a UE whose answer was lost gets it again over
    the same SA (TS 33.203 §7.4). 0: the set goes with the answer, as over TCP."""
    scscf_instances: tuple[tuple[str, ...], ...] = ()
    """The instances of each S-CSCF that runs as several (``[[pcscf.scscfs]]``, each
    ``instances = ["sip:host:port", ...]`` in the order tried): a request sent to one
    of them (along a Service-Route, a route set, to a notifier's Contact) that it
    leaves unanswered for `scscf_timeout` s goes to the next, as to the targets of one
    DNS SRV record (RFC 3263 §4.3; there is no DNS here). Default: the instances the
    same document defines (``[scscf]`` with its ``[[scscf.instances]]``)."""
    scscf_timeout: float = 8.0
    """Seconds an instance of `scscf_instances` may leave a request unanswered before
    the next instance gets it (the same copy, the same branch): longer than an
    S-CSCF's Cx timeout, well inside the UE's Timer F (32 s). 0: no moving."""
    scscf_down_time: float = 30.0
    """Seconds an instance that left a request unanswered is passed over for the next
    of its S-CSCF (tried first again after), when it is not probed
    (`scscf_probe_interval` 0)."""
    scscf_probe_interval: float = 5.0
    """An instance that left a request unanswered is asked with an OPTIONS every this
    many seconds and passed over until it answers one (RFC 3261 §11), as the I-CSCF
    does; 0: `scscf_down_time` instead."""

    def route_for(self, host: str) -> PcscfRoute | None:
        """The route for a REGISTER whose Request-URI host is `host`, as the P-CSCF
        core matches it: a route's `domain` matches the host itself and every name
        under it (``home1.net`` serves ``registrar.home1.net``), case-insensitively;
        when several match, the longest domain wins."""
        host = host.lower().rstrip(".")
        chosen: PcscfRoute | None = None
        for route in self.routes:
            d = route.domain.lower().rstrip(".")
            if (host == d or host.endswith("." + d)) and (
                chosen is None or len(d) > len(chosen.domain)
            ):
                chosen = route
        return chosen


@dataclass(frozen=True, slots=True)
class ScscfEntry:
    """``[[icscf.scscfs]]``: one S-CSCF the I-CSCF may select (TS 29.228 §6.7 capabilities)."""

    name: str
    """Its Server-Name as the HSS knows it and as the Request-URI towards it (packet 3),
    e.g. ``sip:scscf1.home1.net:5080``."""
    address: str
    """IP address to send to."""
    port: int = 5060
    """SIP port."""
    transport: str = "udp"
    """Transport towards it."""
    capabilities: tuple[int, ...] = ()
    """Capabilities it offers, matched against Mandatory-/Optional-Capability of the UAA."""


@dataclass(frozen=True, slots=True)
class IcscfConfig:
    """``[icscf]``: the I-CSCF (TS 24.229 §5.3.1)."""

    name: str
    """Host name in its Via (``icscf1_p.home1.net``, packet 3)."""
    diameter: DiameterConfig
    """Cx towards the HSS (UAR/UAA)."""
    scscfs: tuple[ScscfEntry, ...]
    """S-CSCFs it may select, in order of preference. Entries that repeat a name are
    instances of one S-CSCF (one Server-Name at the HSS, sharing a binding store), tried
    in their order as the targets of a DNS SRV record are by priority (RFC 3263 §4.4)."""
    address: str = "127.0.0.1"
    """IP address to listen on."""
    port: int = 5070
    """SIP port."""
    transports: tuple[str, ...] = ("udp", "tcp")
    """SIP transports served."""
    retry_after: int = 30
    """Retry-After (seconds) on the 480 answered while the HSS is unreachable or busy."""
    scscf_timeout: float = 8.0
    """Seconds an instance of an S-CSCF with several (`scscfs`) may leave a request
    unanswered before the next instance gets it, and an S-CSCF (its last instance) a
    REGISTER before another S-CSCF is chosen for it (UAR with capabilities): longer
    than the S-CSCF's own Cx timeout (a slow HSS is no reason to move), well inside the
    32 s of the P-CSCF's and the UE's Timer F."""
    scscf_down_time: float = 30.0
    """Seconds an instance that did not answer is tried after the others, when it is
    not probed (`scscf_probe_interval` 0)."""
    scscf_probe_interval: float = 5.0
    """An instance that did not answer is asked with an OPTIONS every this many seconds
    and tried after the others until it answers one (RFC 3261 §11), so no user's
    request waits out its silence again; 0: `scscf_down_time` instead."""

    def scscf_by_name(self, server_name: str) -> ScscfEntry | None:
        key = _server_key(server_name)
        for entry in self.scscfs:
            if _server_key(entry.name) == key:
                return entry
        return None

    def instances_of(self, server_name: str) -> tuple[ScscfEntry, ...]:
        """Every entry with this Server-Name, in configuration order."""
        key = _server_key(server_name)
        return tuple(e for e in self.scscfs if _server_key(e.name) == key)


def _server_key(name: str) -> str:
    """Server-Name comparison key: scheme and host case-insensitive, params ignored."""
    text = name.strip().strip("<>")
    if text.lower().startswith("sip:"):
        text = text[4:]
    return text.split(";", 1)[0].lower()


@dataclass(frozen=True, slots=True)
class ScscfInstance:
    """``[[scscf.instances]]``: one more process of this S-CSCF (the same Server-Name,
    the same shared binding store) at its own SIP address and with its own Diameter
    identity: two peers of one Origin-Host would take the HSS's connection from each
    other (RFC 6733 §5.6.4)."""

    port: int
    """SIP port."""
    diameter_host: str
    """Its Origin-Host."""
    address: str = "127.0.0.1"
    """IP address to listen on (SIP, and Diameter if `diameter_port`)."""
    diameter_port: int = 0
    """TCP port its Diameter node listens on (the HSS connecting to it); 0: none."""


@dataclass(frozen=True, slots=True)
class ScscfConfig:
    """``[scscf]``: the S-CSCF registrar and authenticator (TS 24.229 §5.4.1)."""

    name: str
    """Host name: Via, Service-Route (``<sip:orig@NAME;lr>``, packet 11)."""
    diameter: DiameterConfig
    """Cx towards the HSS (MAR/SAR; RTR/PPR from it)."""
    address: str = "127.0.0.1"
    """IP address to listen on."""
    port: int = 5080
    """SIP port."""
    transports: tuple[str, ...] = ("udp", "tcp")
    """SIP transports served."""
    server_name: str = ""
    """Server-Name in MAR/SAR (must match the I-CSCF's ``scscfs`` entry); default
    ``sip:NAME:PORT``."""
    realm: str = ""
    """Digest realm of the 401; default the first home domain."""
    reauthenticate: str = "never"
    """``never``: a re-REGISTER with integrity-protected="yes" for a live registration is
    accepted without a new AKA run (TS 24.229 §5.4.1.2.2); ``always``: challenge it."""
    reregistration_sar: str = "always"
    """``always``: every re-registration sends SAR RE_REGISTRATION to the HSS;
    ``when-needed``: a re-REGISTER accepted without AKA that only refreshes bindings this
    S-CSCF holds, with the subscription profile at hand, is answered without the SAR
    (TS 23.228 §5.2.2.4 lets the S-CSCF omit the Cx-Put/Cx-Pull on re-registration).
    Only with the memory binding store: a shared record may come from another S-CSCF."""
    vectors_per_request: int = 3
    """SIP-Number-Auth-Items asked in a MAR; spare vectors are cached per IMPI, one per challenge."""
    max_failed_attempts: int = 3
    """Failed authentications per IMPI before it is refused for `lockout` seconds; they
    count until `lockout` seconds pass without another one."""
    lockout: int = 300
    """Seconds an IMPI stays refused after `max_failed_attempts` failures."""
    binding_store: str = "memory://"
    """``memory://`` or ``redis://HOST:PORT/DB`` (bindings survive a restart and can be shared)."""
    binding_store_prefix: str = "imsaka:scscf:"
    """What the names of a Redis store's keys and channel start with: S-CSCFs sharing
    bindings have the same one; networks sharing a Redis server each their own."""
    min_expires: int = 60
    """Shortest registration granted; a shorter non-zero request gets 423 with Min-Expires."""
    max_expires: int = 600000
    """Longest registration granted (the seed grants 600000)."""
    default_expires: int = 600000
    """Granted when the REGISTER names no expiry."""
    reg_await_auth: int = 240
    """Seconds a challenge stays valid (TS 24.229 reg-await-auth, 4 min)."""
    vector_lifetime: int = 3600
    """Seconds a spare vector stays in the cache; older ones are dropped unused."""
    service_route_user: str = "orig"
    """User part of the Service-Route URI."""
    retry_after: int = 30
    """Retry-After (seconds) on the 504 answered while the HSS is unreachable
    (TS 24.229 §5.4.1.2.1); the UE sends the REGISTER again after it."""
    instances: tuple[ScscfInstance, ...] = ()
    """More processes of this S-CSCF (``imsaka run scscf --instance N``, N from 2); the
    section itself is instance 1. They need a shared binding store."""
    share_challenges: bool = False
    """With a Redis store: write each challenge under its nonce before its 401 (and
    remove it once answered here), so that an answer reaching another instance, or this
    one after a crash, is verified instead of challenged again. Two Redis round trips
    per registration (~0.24 ms of S-CSCF CPU measured here). Default: on when there are
    `instances`."""

    @property
    def service_route(self) -> str:
        return f"<sip:{self.service_route_user}@{_uri_host(self.name)}:{self.port};lr>"

    def instance(self, number: int) -> ScscfConfig:
        """The configuration instance `number` runs with (1: this one)."""
        if number == 1:
            return self
        if not 2 <= number <= len(self.instances) + 1:
            raise ValueError(
                f"--instance: {number} is not an instance of this S-CSCF "
                f"(1 to {len(self.instances) + 1}: [scscf] and its [[scscf.instances]])"
            )
        other = self.instances[number - 2]
        diameter = replace(
            self.diameter,
            host=other.diameter_host,
            address=other.address,
            port=other.diameter_port,
        )
        return replace(
            self, address=other.address, port=other.port, diameter=diameter, instances=()
        )  # (share_challenges as instance 1 has it)


FUNCTIONS = ("hss", "pcscf", "icscf", "scscf")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: where each function's process serves Prometheus metrics
    (``GET http://HOST:PORT/metrics``, `imsaka.metrics`). Each function is its own
    process, so each has its own listener, written ``"HOST:PORT"`` (``"[v6]:PORT"``);
    port 0 lets the kernel choose (the process prints the URL). A function not listed
    serves no metrics."""

    hss: tuple[str, int] | None = None
    """``hss = "127.0.0.1:9104"``."""
    pcscf: tuple[str, int] | None = None
    """``pcscf = "127.0.0.1:9101"``."""
    icscf: tuple[str, int] | None = None
    """``icscf = "127.0.0.1:9102"``."""
    scscf: tuple[str, int] | None = None
    """``scscf = "127.0.0.1:9103"``."""

    def listen(self, function: str) -> tuple[str, int] | None:
        return getattr(self, function)


@dataclass(frozen=True, slots=True)
class ImsConfig:
    """The whole file. Sections of functions not described are None."""

    network: NetworkConfig
    """``[network]``."""
    hss: Mapping[str, Any]
    """``[hss]`` as written: its fields belong to ``imsaka.hss``."""
    pcscf: PcscfConfig | None
    """``[pcscf]``."""
    icscf: IcscfConfig | None
    """``[icscf]``."""
    scscf: ScscfConfig | None
    """``[scscf]``."""
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    """The parsed TOML (handed to ``imsaka.hss.server.run``)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """``[metrics]``: Prometheus listeners per function."""
    path: str = ""
    """Where it was read from."""


# --------------------------------------------------------------------------- parsing


def load_config(path: str | Path) -> ImsConfig:
    """Read and validate a TOML file; `ConfigError` names the field on any mistake."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"-c/--config: {p}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"-c/--config: {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"-c/--config: {p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"-c/--config: {p}: not valid TOML ({exc})") from None
    return parse_config(data, path=str(p))


def parse_config(data: Mapping[str, Any], *, path: str = "") -> ImsConfig:
    """Validate an already parsed TOML document."""
    top = _Table("", data)
    net_t = top.table("network", required=True)
    assert net_t is not None
    network = _network(net_t)
    hss = data.get("hss", {})
    top._seen.add("hss")
    if not isinstance(hss, Mapping):
        raise ConfigError("[hss]: must be a table")
    pcscf_t = top.table("pcscf")
    icscf_t = top.table("icscf")
    scscf_t = top.table("scscf")
    metrics_t = top.table("metrics")
    for key in data:
        if key not in top._seen:
            raise ConfigError(f"[{key}]: unknown section")
    pcscf = _pcscf(pcscf_t, network) if pcscf_t else None
    icscf = _icscf(icscf_t, network) if icscf_t else None
    scscf = _scscf(scscf_t, network) if scscf_t else None
    if pcscf is not None and not pcscf_t.has("trusted_nodes"):
        pcscf = replace(pcscf, trusted_nodes=_scscf_nodes(icscf, scscf))
    if pcscf is not None and not pcscf_t.has("scscfs"):
        pcscf = replace(pcscf, scscf_instances=_scscf_groups(scscf))
    return ImsConfig(
        network=network,
        hss=hss,
        pcscf=pcscf,
        icscf=icscf,
        scscf=scscf,
        raw=data,
        path=path,
        metrics=_metrics(metrics_t) if metrics_t else MetricsConfig(),
    )


def parse_listen(text: Any, field_name: str) -> tuple[str, int]:
    """``"HOST:PORT"`` / ``"[v6]:PORT"`` with HOST an IP address and PORT 0–65535 (0: the
    kernel picks) → (host, port); `ConfigError` naming `field_name` otherwise."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f'{field_name}: must be a string "HOST:PORT", e.g. "127.0.0.1:9101"')
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            sep = ""  # a bare IPv6 address: ambiguous without brackets
    if not sep or not host:
        raise ConfigError(f"{field_name}: {text!r} is not HOST:PORT (IPv6 as [ADDR]:PORT)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{field_name}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{field_name}: {port_text!r} is not a port (0-65535)")
    return host, int(port_text)


def _metrics(t: _Table) -> MetricsConfig:
    t = _rename(t, "metrics")
    listen: dict[str, tuple[str, int]] = {}
    for key in t._data:
        if key not in FUNCTIONS:
            raise t.fail(key, f"unknown field (one listener per function: {', '.join(FUNCTIONS)})")
        t._seen.add(key)
        listen[key] = parse_listen(t._data[key], f"[metrics].{key}")
    seen: dict[tuple[str, int], str] = {}
    for key, where in listen.items():
        if where[1] and where in seen:
            raise t.fail(key, f"same address as [metrics].{seen[where]} (one port per function)")
        seen[where] = key
    return MetricsConfig(**listen)


def _rename(t: _Table, name: str) -> _Table:
    t.name = name
    return t


def _network(t: _Table) -> NetworkConfig:
    t = _rename(t, "network")
    domains = tuple(d.lower() for d in t.strs("home_domains", ()))
    name = t.str("name", "imsaka")
    hosts: dict[str, str] = {}
    hosts_t = t.table("hosts")
    if hosts_t is not None:
        for host in list(hosts_t._data):
            hosts[host.lower()] = hosts_t.address(host)
    t.done()
    return NetworkConfig(home_domains=domains, name=name, hosts=hosts)


def _diameter(t: _Table, section: str, network: NetworkConfig) -> DiameterConfig:
    host = t.str("host", required=True)
    realm = t.str("realm", network.home_domains[0])
    address = t.address("address")
    port = t.port("port", 0, zero=True)
    timeout = t.float("timeout", 5.0)
    watchdog_interval = t.float("watchdog_interval", 30.0)
    if watchdog_interval < 6.0:
        raise t.fail("watchdog_interval", "must be at least 6 (RFC 3539 §3.4.1)")
    reopen_dwas = t.int("reopen_dwas", 3, lo=1, hi=10)
    peers = []
    for pt in t.tables("peers"):
        peers.append(
            DiameterPeerConfig(
                host=pt.str("host", required=True),
                realm=pt.str("realm", realm),
                address=pt.address("address"),
                port=pt.port("port", 3868),
            )
        )
        pt.done()
    if not peers:
        raise t.fail("peers", "at least one peer (the HSS) is needed")
    t.done()
    return DiameterConfig(
        host=host,
        realm=realm,
        peers=tuple(peers),
        address=address,
        port=port,
        timeout=timeout,
        watchdog_interval=watchdog_interval,
        reopen_dwas=reopen_dwas,
    )


def _routable(t: _Table, key: str, value: str, network: NetworkConfig, label: str = "") -> str:
    """`value` (``[sip:]host[:port]``, host an IP address or a [network].hosts name) as a
    ``sip:`` URI; else the field's one-line error, `label` before the reason."""
    try:
        host, _port = split_hostport(value)
        network.resolve(host)
    except ValueError as exc:
        raise t.fail(key, f"{label}{exc} (an IP address or a name from [network].hosts)") from None
    return value if value.startswith("sip:") else f"sip:{value}"


def _sip_uri(t: _Table, key: str, network: NetworkConfig) -> str | None:
    if not t.has(key):
        t._seen.add(key)
        return None
    return _routable(t, key, t.str(key, required=True), network)


def _sip_uris(t: _Table, key: str, network: NetworkConfig) -> tuple[str, ...]:
    return tuple(
        _routable(t, key, value, network, f"{value!r}: ")
        for value in t.strs(key, (), nonempty=False)
    )


def _instance_groups(t: _Table, network: NetworkConfig) -> tuple[tuple[str, ...], ...]:
    """``[[pcscf.scscfs]]``: each entry's ``instances``, two or more, no URI twice."""
    groups: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for g in t.tables("scscfs"):
        uris = _sip_uris(g, "instances", network)
        if len(uris) < 2:
            raise g.fail("instances", "two or more sip:host:port of one S-CSCF")
        for uri in uris:
            if uri in seen:
                raise g.fail("instances", f"{uri!r} is listed twice")
            seen.add(uri)
        groups.append(uris)
        g.done()
    return tuple(groups)


def _scscf_groups(scscf: ScscfConfig | None) -> tuple[tuple[str, ...], ...]:
    """The instances of the S-CSCF a whole-network document defines, as one group
    (none when it runs as one, or while a port is still 0: picked at start)."""
    if scscf is None or not scscf.instances:
        return ()
    nodes = [(scscf.address, scscf.port), *((i.address, i.port) for i in scscf.instances)]
    if not all(port for _, port in nodes):
        return ()
    return (tuple(f"sip:{a}:{p}" for a, p in nodes),)


def _scscf_nodes(icscf: IcscfConfig | None, scscf: ScscfConfig | None) -> tuple[str, ...]:
    """``sip:address:port`` of each S-CSCF a whole-network document defines, instances
    included (a port of 0, picked by the kernel at start, names no node yet)."""
    nodes = [f"sip:{e.address}:{e.port}" for e in (icscf.scscfs if icscf else ()) if e.port]
    if scscf is not None and scscf.port:
        nodes.append(f"sip:{scscf.address}:{scscf.port}")
    if scscf is not None:
        # (each instance NOTIFYs the subscribers of another that stopped)
        nodes += [f"sip:{i.address}:{i.port}" for i in scscf.instances if i.port]
    return tuple(dict.fromkeys(nodes))


def _pcscf(t: _Table, network: NetworkConfig) -> PcscfConfig:
    t = _rename(t, "pcscf")
    routes = []
    for rt in t.tables("routes"):
        domain = rt.str("domain", required=True).lower()
        icscf = _sip_uri(rt, "icscf", network)
        scscf = _sip_uri(rt, "scscf", network)
        if icscf is None and scscf is None:
            raise rt.fail("icscf", "a route needs an icscf or an scscf")
        routes.append(PcscfRoute(domain=domain, icscf=icscf, scscf=scscf))
        rt.done()
    cfg = PcscfConfig(
        name=t.str("name", required=True),
        address=t.address("address"),
        port=t.port("port", 5060, zero=True),
        transports=t.strs("transports", ("udp", "tcp"), choices=TRANSPORTS),
        port_c=t.port("port_c", 5062, zero=True),
        port_s=t.port("port_s", 5063, zero=True),
        visited_network_id=t.str("visited_network_id", "Visited Network Number 1"),
        home=t.bool("home", False),
        sec_agree=t.choice("sec_agree", "required", ("required", "optional")),
        integrity_algorithms=t.strs(
            "integrity_algorithms", INTEGRITY_ALGORITHMS, choices=INTEGRITY_ALGORITHMS
        ),
        encryption_algorithms=t.strs(
            "encryption_algorithms", ENCRYPTION_ALGORITHMS, choices=ENCRYPTION_ALGORITHMS
        ),
        ipsec_backend=t.choice("ipsec_backend", "userspace", ("userspace", "xfrm")),
        temporary_sa_lifetime=t.int("temporary_sa_lifetime", 240, lo=1),
        routes=tuple(routes),
        subscribe_reg_event=t.bool("subscribe_reg_event", True),
        max_in_flight=t.int("max_in_flight", 300, lo=0),
        max_queue_delay=t.float("max_queue_delay", 0.4, zero=True),
        dereg_grace=t.float("dereg_grace", 32.0, zero=True),
        scscf_instances=_instance_groups(t, network),
        scscf_timeout=t.float("scscf_timeout", 8.0, zero=True),
        scscf_down_time=t.float("scscf_down_time", 30.0),
        scscf_probe_interval=t.float("scscf_probe_interval", 5.0, zero=True),
        trusted_nodes=_sip_uris(t, "trusted_nodes", network),
        state_file=t.str("state_file", ""),
        state_store=t.str("state_store", ""),
        state_interval=t.float("state_interval", 0.5),
    )
    t.done()
    if cfg.state_file and cfg.state_store:
        raise t.fail("state_store", "state_file or state_store, not both")
    if cfg.state_store and not cfg.state_store.startswith(("redis://", "rediss://", "unix://")):
        raise t.fail("state_store", "a redis://host:port/db URL")
    kept = "state_file" if cfg.state_file else "state_store" if cfg.state_store else ""
    if kept and cfg.ipsec_backend != "userspace":
        # the kernel's sequence numbers and replay windows are not read out yet
        raise t.fail(kept, 'needs ipsec_backend = "userspace"')
    if kept and 0 in (cfg.port, cfg.port_c, cfg.port_s):
        # the UEs' SAs and the S-CSCF's Path name them
        raise t.fail(kept, "needs fixed port, port_c and port_s (not 0)")
    fixed = [p for p in (cfg.port, cfg.port_c, cfg.port_s) if p]
    if len(set(fixed)) != len(fixed):
        raise t.fail("port_s", "port, port_c and port_s must differ")
    if len({r.domain for r in routes}) != len(routes):
        raise t.fail("routes", "two routes for one domain")
    return cfg


def _icscf(t: _Table, network: NetworkConfig) -> IcscfConfig:
    t = _rename(t, "icscf")
    _need_domains(network)
    dt = t.table("diameter", required=True)
    assert dt is not None
    diameter = _diameter(dt, "icscf", network)
    scscfs = []
    for st in t.tables("scscfs"):
        name = st.str("name", required=True)
        if not name.startswith("sip:"):
            raise st.fail("name", "must be a SIP URI (the Server-Name), e.g. sip:scscf1.home1.net")
        try:
            host, port = split_hostport(name)
        except ValueError as exc:
            raise st.fail("name", str(exc)) from None
        address = st.str("address", "")
        if not address:
            try:
                address = network.resolve(host)
            except ValueError:
                raise st.fail(
                    "address", f"missing, and {host!r} is not in [network].hosts"
                ) from None
        else:
            address = st.address("address")
        scscfs.append(
            ScscfEntry(
                name=name,
                address=address,
                port=st.port("port", port),
                transport=st.choice("transport", "udp", TRANSPORTS),
                capabilities=st.ints("capabilities"),
            )
        )
        st.done()
        for before in scscfs[:-1]:
            if (before.address, before.port) == (scscfs[-1].address, scscfs[-1].port):
                raise st.fail("port", f"{before.address}:{before.port} is listed twice")
            if (
                _server_key(before.name) == _server_key(name)
                and before.capabilities != scscfs[-1].capabilities
            ):
                raise st.fail(
                    "capabilities", f"differ from the other instance of {name} (one S-CSCF)"
                )
    if not scscfs:
        raise t.fail("scscfs", "at least one S-CSCF is needed")
    cfg = IcscfConfig(
        name=t.str("name", required=True),
        diameter=diameter,
        scscfs=tuple(scscfs),
        address=t.address("address"),
        port=t.port("port", 5070),
        transports=t.strs("transports", ("udp", "tcp"), choices=TRANSPORTS),
        retry_after=t.int("retry_after", 30, lo=0, hi=86400),
        scscf_timeout=t.float("scscf_timeout", 8.0),
        scscf_down_time=t.float("scscf_down_time", 30.0, zero=True),
        scscf_probe_interval=t.float("scscf_probe_interval", 5.0, zero=True),
    )
    t.done()
    return cfg


def _need_domains(network: NetworkConfig) -> None:
    if not network.home_domains:
        raise ConfigError("[network].home_domains: must not be empty")


def _scscf(t: _Table, network: NetworkConfig) -> ScscfConfig:
    t = _rename(t, "scscf")
    _need_domains(network)
    dt = t.table("diameter", required=True)
    assert dt is not None
    diameter = _diameter(dt, "scscf", network)
    name = t.str("name", required=True)
    port = t.port("port", 5080)
    server_name = t.str("server_name", f"sip:{_uri_host(name)}:{port}")
    if not server_name.startswith("sip:"):
        raise t.fail("server_name", "must be a SIP URI")
    binding_store = t.str("binding_store", "memory://")
    if not (binding_store == "memory://" or binding_store.startswith(("redis://", "rediss://"))):
        raise t.fail("binding_store", "must be memory:// or redis://HOST:PORT/DB")
    min_expires = t.int("min_expires", 60, lo=1)
    max_expires = t.int("max_expires", 600000, lo=1)
    default_expires = t.int("default_expires", 600000, lo=1)
    if max_expires < min_expires:
        raise t.fail("max_expires", "must not be below min_expires")
    if not min_expires <= default_expires <= max_expires:
        raise t.fail("default_expires", "must lie between min_expires and max_expires")
    reregistration_sar = t.choice("reregistration_sar", "always", ("always", "when-needed"))
    if reregistration_sar == "when-needed" and binding_store != "memory://":
        # A shared record may have been written by another S-CSCF, which the HSS may
        # still name for the IMPU: only an SAR tells the HSS who serves it now.
        raise t.fail("reregistration_sar", '"when-needed" needs binding_store = "memory://"')
    address = t.address("address")
    instances = _scscf_instances(t, binding_store, (address, port), diameter)
    share_challenges = t.bool("share_challenges", bool(instances))
    if share_challenges and binding_store == "memory://":
        raise t.fail("share_challenges", 'needs a shared binding_store ("redis://HOST:PORT/DB")')
    cfg = ScscfConfig(
        name=name,
        diameter=diameter,
        address=address,
        port=port,
        transports=t.strs("transports", ("udp", "tcp"), choices=TRANSPORTS),
        server_name=server_name,
        realm=t.str("realm", network.home_domains[0]),
        reauthenticate=t.choice("reauthenticate", "never", ("never", "always")),
        reregistration_sar=reregistration_sar,
        vectors_per_request=t.int("vectors_per_request", 3, lo=1, hi=32),
        max_failed_attempts=t.int("max_failed_attempts", 3, lo=1),
        lockout=t.int("lockout", 300, lo=0),
        binding_store=binding_store,
        binding_store_prefix=t.str("binding_store_prefix", "imsaka:scscf:"),
        min_expires=min_expires,
        max_expires=max_expires,
        default_expires=default_expires,
        reg_await_auth=t.int("reg_await_auth", 240, lo=1),
        vector_lifetime=t.int("vector_lifetime", 3600, lo=1),
        service_route_user=t.str("service_route_user", "orig"),
        retry_after=t.int("retry_after", 30, lo=0, hi=86400),
        instances=instances,
        share_challenges=share_challenges,
    )
    t.done()
    return cfg


def _scscf_instances(
    t: _Table, binding_store: str, first: tuple[str, int], diameter: DiameterConfig
) -> tuple[ScscfInstance, ...]:
    """`[[scscf.instances]]`; `first`: the address and port of `[scscf]` itself."""
    out: list[ScscfInstance] = []
    hosts = {diameter.host.lower()}
    taken = {first}
    for it in t.tables("instances"):
        if not it.has("port"):
            raise it.fail("port", "missing (each instance has its own SIP port)")
        instance = ScscfInstance(
            port=it.port("port", 0),
            diameter_host=it.str("diameter_host", required=True),
            address=it.address("address"),
            diameter_port=it.port("diameter_port", 0, zero=True),
        )
        it.done()
        if instance.diameter_host.lower() in hosts:
            raise it.fail("diameter_host", f"{instance.diameter_host} is taken by another instance")
        hosts.add(instance.diameter_host.lower())
        if (instance.address, instance.port) in taken:
            raise it.fail(
                "port", f"{instance.address}:{instance.port} is taken by another instance"
            )
        taken.add((instance.address, instance.port))
        out.append(instance)
    if out and binding_store == "memory://":
        raise t.fail("instances", 'need a shared binding_store ("redis://HOST:PORT/DB")')
    return tuple(out)
