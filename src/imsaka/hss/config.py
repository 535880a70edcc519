"""The ``[hss]`` section of the whole-network TOML, validated into `HssConfig`.

Fields (all optional except where noted; see `HssConfig` for each one's meaning)::

    [hss]
    database = "sqlite+aiosqlite:///imsaka.db"    # or "postgresql+asyncpg://user@host/db"
    diameter_host = "hss.home1.net"               # Origin-Host
    diameter_realm = "home1.net"                  # Origin-Realm
    diameter_address = "127.0.0.1"
    diameter_port = 3868
    peers = ["scscf1.home1.net", "icscf1.home1.net"]   # allowed Diameter peers (Origin-Host)
    visited_networks = ["visited1.net"]           # roaming allowed for every subscriber
    max_vectors = 5                               # cap on SIP-Number-Auth-Items
    api_address = "127.0.0.1"
    api_port = 8080                               # default 8080 when a token is set; 0: off
    api_token = "…"                               # or api_token_file / $IMSAKA_HSS_API_TOKEN
    request_timeout = 5.0                         # seconds to wait for an RTA/PPA

    [[hss.scscfs]]                                # the S-CSCF pool (TS 29.228 §6.7)
    name = "sip:scscf1.home1.net:5080"
    diameter_host = "scscf1.home1.net"
    mandatory_capabilities = [1]
    optional_capabilities = [2]

Defaults are taken from the rest of the file where it says more: the realm from
``[network].home_domains``, the allowed peers from the CSCFs' ``[*.diameter].host``,
the pool from ``[[icscf.scscfs]]`` and ``[scscf]``. A mistake raises `ConfigError`
with one line naming ``[hss].field``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imsaka.clierror import CliError

__all__ = ["HssConfig", "HssConfigError", "PeerEntry", "ScscfPoolEntry", "parse_hss_config"]

_KNOWN = {
    "database",
    "diameter_host",
    "diameter_realm",
    "diameter_address",
    "diameter_port",
    "peers",
    "visited_networks",
    "max_vectors",
    "api_address",
    "api_port",
    "api_token",
    "api_token_file",
    "request_timeout",
    "scscfs",
    "watchdog",
}


class HssConfigError(CliError):
    """A mistake in ``[hss]``: the message starts with ``[hss].field:``."""


def _finite(value: object) -> bool:
    """A TOML number that is neither a bool nor inf/nan."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fail(key: str, reason: str) -> HssConfigError:
    return HssConfigError(f"[hss].{key}: {reason}")


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A Diameter peer the HSS serves: its Origin-Host, and where to reach it (optional)."""

    host: str
    """Origin-Host of the peer (DiameterIdentity)."""
    realm: str | None = None
    """Its Origin-Realm (None: any)."""
    address: str | None = None
    """IP address to connect to for HSS-initiated requests when it has no connection open."""
    port: int = 3868
    """TCP port for that connection."""


@dataclass(frozen=True, slots=True)
class ScscfPoolEntry:
    """One S-CSCF the HSS may name in Server-Capabilities (TS 29.228 §6.7)."""

    name: str
    """Its Server-Name (SIP URI)."""
    diameter_host: str | None = None
    """Its Diameter Origin-Host (where RTR/PPR go)."""
    mandatory_capabilities: tuple[int, ...] = ()
    optional_capabilities: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HssConfig:
    """The validated ``[hss]`` section."""

    database: str = "sqlite+aiosqlite:///imsaka.db"
    """SQLAlchemy URL of the subscriber store: SQLite file (default) or PostgreSQL."""
    diameter_host: str = "hss.localdomain"
    """Origin-Host of the HSS."""
    diameter_realm: str = "localdomain"
    """Origin-Realm of the HSS; also a home network for the roaming check."""
    diameter_address: str = "127.0.0.1"
    """Address the Diameter server listens on."""
    diameter_port: int = 3868
    """TCP port of the Diameter server (RFC 6733: 3868); 0 picks a free port."""
    peers: tuple[PeerEntry, ...] = ()
    """Diameter peers allowed to talk to the HSS; any other is refused (PITFALLS, Cx)."""
    home_networks: tuple[str, ...] = ()
    """Home domains: a Visited-Network-Identifier naming one of them is never roaming."""
    visited_networks: tuple[str, ...] = ()
    """Visited networks every subscriber may register from (per-subscriber lists add to it)."""
    max_vectors: int = 5
    """Most vectors returned in one MAA (SIP-Number-Auth-Items is capped to it)."""
    api_address: str = "127.0.0.1"
    """Address of the REST provisioning API."""
    api_port: int = 0
    """Port of the REST API; 0 disables it (the default unless a token is configured)."""
    api_token: str | None = field(default=None, repr=False)
    """Bearer token the REST API requires (never logged)."""
    request_timeout: float = 5.0
    """Seconds to wait for an RTA or PPA from an S-CSCF."""
    watchdog: float = 30.0
    """Tw, the RFC 3539 watchdog interval towards peers."""
    scscfs: tuple[ScscfPoolEntry, ...] = ()
    """The S-CSCF pool named in Server-Capabilities."""
    scscf_instances: tuple[tuple[str, str], ...] = ()
    """(Server-Name, Diameter host) of every instance of the document's S-CSCF
    (``[scscf]`` and its ``[[scscf.instances]]``): an RTR or PPR the instance that last
    served a user cannot take goes to another."""

    def api_url(self) -> str:
        host = f"[{self.api_address}]" if ":" in self.api_address else self.api_address
        return f"http://{host}:{self.api_port}"


def _str(data: Mapping[str, Any], key: str, default: str | None) -> str | None:
    if key not in data:
        return default
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, "expected a non-empty string")
    return value.strip()


def _address(data: Mapping[str, Any], key: str, default: str) -> str:
    value = _str(data, key, default)
    assert value is not None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _fail(key, f"expected an IP address, got {value!r}") from None
    return value


def _port(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise _fail(key, "expected a port number 0..65535")
    return value


def _strs(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(key, "expected a list of strings")
    return tuple(v.strip() for v in value)


def _ints(data: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32 for v in value
    ):
        raise _fail(where, "expected a list of capability numbers (0..2^32-1)")
    return tuple(value)


def _peers(data: Mapping[str, Any], whole: Mapping[str, Any]) -> tuple[PeerEntry, ...]:
    if "peers" not in data:
        # Default: every CSCF of this file that speaks Diameter.
        found = []
        for section in ("icscf", "scscf"):
            d = (
                whole.get(section, {}).get("diameter", {})
                if isinstance(whole.get(section), Mapping)
                else {}
            )
            if isinstance(d, Mapping) and isinstance(d.get("host"), str):
                realm = d.get("realm") if isinstance(d.get("realm"), str) else None
                found.append(_listed_peer(d["host"], realm, d.get("address"), d.get("port", 0)))
                if section == "scscf":
                    found += _instance_peers(whole["scscf"], realm)
        return tuple(found)
    value = data["peers"]
    if not isinstance(value, list):
        raise _fail(
            "peers", "expected a list of Origin-Host names or tables {host, realm, address, port}"
        )
    out = []
    for i, item in enumerate(value):
        where = f"peers[{i}]"
        if isinstance(item, str) and item.strip():
            out.append(PeerEntry(host=item.strip()))
            continue
        if not isinstance(item, Mapping):
            raise _fail(where, "expected an Origin-Host string or a table")
        unknown = set(item) - {"host", "realm", "address", "port"}
        if unknown:
            raise _fail(f"{where}.{sorted(unknown)[0]}", "unknown field")
        host = item.get("host")
        if not isinstance(host, str) or not host.strip():
            raise _fail(f"{where}.host", "missing")
        realm = item.get("realm")
        if realm is not None and not isinstance(realm, str):
            raise _fail(f"{where}.realm", "expected a string")
        address = item.get("address")
        if address is not None:
            try:
                ipaddress.ip_address(address)
            except (ValueError, TypeError):
                raise _fail(f"{where}.address", "expected an IP address") from None
        port = item.get("port", 3868)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise _fail(f"{where}.port", "expected a port number 1..65535")
        out.append(PeerEntry(host=host.strip(), realm=realm, address=address, port=port))
    return tuple(out)


def _instance_peers(scscf: Mapping[str, Any], realm: str | None) -> list[PeerEntry]:
    """The Diameter identities of the S-CSCF's other instances (``[[scscf.instances]]``)."""
    out = []
    instances = scscf.get("instances", [])
    for item in instances if isinstance(instances, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("diameter_host"), str):
            out.append(
                _listed_peer(
                    item["diameter_host"], realm, item.get("address"), item.get("diameter_port", 0)
                )
            )
    return out


def _listed_peer(host: str, realm: str | None, address: Any, port: Any) -> PeerEntry:
    """A CSCF of the document as a peer: connected to where it listens for Diameter (a
    port), else only accepted when it connects."""
    return PeerEntry(
        host=host,
        realm=realm,
        address=(address or "127.0.0.1") if port else None,
        port=port if isinstance(port, int) and port else 3868,
    )


def _pool(data: Mapping[str, Any], whole: Mapping[str, Any]) -> tuple[ScscfPoolEntry, ...]:
    if "scscfs" in data:
        value = data["scscfs"]
        if not isinstance(value, list):
            raise _fail("scscfs", "expected an array of tables [[hss.scscfs]]")
        out = []
        for i, item in enumerate(value):
            where = f"scscfs[{i}]"
            if not isinstance(item, Mapping):
                raise _fail(where, "expected a table")
            unknown = set(item) - {
                "name",
                "diameter_host",
                "mandatory_capabilities",
                "optional_capabilities",
            }
            if unknown:
                raise _fail(f"{where}.{sorted(unknown)[0]}", "unknown field")
            name = item.get("name")
            if not isinstance(name, str) or not name.strip().startswith(("sip:", "sips:")):
                raise _fail(f"{where}.name", "expected the S-CSCF's SIP URI (sip:host:port)")
            host = item.get("diameter_host")
            if host is not None and (not isinstance(host, str) or not host.strip()):
                raise _fail(f"{where}.diameter_host", "expected a string")
            out.append(
                ScscfPoolEntry(
                    name=name.strip(),
                    diameter_host=host,
                    mandatory_capabilities=_ints(
                        item, "mandatory_capabilities", f"{where}.mandatory_capabilities"
                    ),
                    optional_capabilities=_ints(
                        item, "optional_capabilities", f"{where}.optional_capabilities"
                    ),
                )
            )
        names = [e.name for e in out]
        if len(set(names)) != len(names):
            raise _fail("scscfs", "an S-CSCF name is listed twice")
        return tuple(out)
    # Default: the I-CSCF's list, with the S-CSCF's Diameter host where it matches.
    out = []
    icscf = whole.get("icscf")
    scscf = whole.get("scscf")
    scscf_host = None
    if isinstance(scscf, Mapping) and isinstance(scscf.get("diameter"), Mapping):
        scscf_host = scscf["diameter"].get("host")
    entries = icscf.get("scscfs", []) if isinstance(icscf, Mapping) else []
    seen: set[str] = set()
    for item in entries if isinstance(entries, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            if item["name"].lower() in seen:
                continue  # another instance of the same S-CSCF: one Server-Name
            seen.add(item["name"].lower())
            caps = item.get("capabilities", [])
            caps = tuple(c for c in caps if isinstance(c, int)) if isinstance(caps, list) else ()
            out.append(
                ScscfPoolEntry(
                    name=item["name"], diameter_host=scscf_host, optional_capabilities=caps
                )
            )
    return tuple(out)


def parse_hss_config(whole: Mapping[str, Any], *, base_dir: Path | None = None) -> HssConfig:
    """Validate ``whole["hss"]`` (the entire TOML document as a dict) into `HssConfig`."""
    data = whole.get("hss", {})
    if not isinstance(data, Mapping):
        raise HssConfigError("[hss]: must be a table")
    for key in data:
        if key not in _KNOWN:
            raise _fail(key, "unknown field")
    network = whole.get("network", {}) if isinstance(whole.get("network"), Mapping) else {}
    homes = tuple(d.lower() for d in network.get("home_domains", []) if isinstance(d, str))
    realm = _str(data, "diameter_realm", homes[0] if homes else "localdomain")
    assert realm is not None
    host = _str(data, "diameter_host", f"hss.{realm}")
    database = _str(data, "database", "sqlite+aiosqlite:///imsaka.db")
    assert database is not None and host is not None
    if "://" in database:
        scheme = database.split("://", 1)[0]
        if not scheme.startswith(("sqlite", "postgresql", "postgres")):
            raise _fail("database", f"unsupported database {scheme!r}: use sqlite or postgresql")
    diameter_address = _address(data, "diameter_address", "127.0.0.1")
    diameter_port = _port(data, "diameter_port", 3868)
    max_vectors = data.get("max_vectors", 5)
    if (
        not isinstance(max_vectors, int)
        or isinstance(max_vectors, bool)
        or not 1 <= max_vectors <= 32
    ):
        raise _fail("max_vectors", "expected an integer 1..32")
    timeout = data.get("request_timeout", 5.0)
    # TOML has inf and nan (nan passes a bound check as false)
    if not _finite(timeout) or timeout <= 0:
        raise _fail("request_timeout", "expected a positive number of seconds")
    watchdog = data.get("watchdog", 30.0)
    if not _finite(watchdog) or watchdog < 6:
        raise _fail("watchdog", "expected seconds ≥ 6 (RFC 3539 Tw)")
    api_address = _address(data, "api_address", "127.0.0.1")
    token = _str(data, "api_token", None)
    token_file = _str(data, "api_token_file", None)
    if token and token_file:
        raise _fail("api_token_file", "give api_token or api_token_file, not both")
    if token_file:
        path = Path(token_file)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise _fail("api_token_file", f"cannot read {token_file!r}: {exc.strerror}") from None
        if not token:
            raise _fail("api_token_file", "the file is empty")
    if token is None:
        token = os.environ.get("IMSAKA_HSS_API_TOKEN") or None
    # The REST API runs when a token is configured (default port 8080); api_port = 0
    # turns it off; a port without a token is a mistake, never an open API.
    api_port = _port(data, "api_port", 8080 if token else 0)
    if api_port and token is None:
        raise _fail(
            "api_token",
            "the REST API needs a bearer token (api_token, api_token_file or $IMSAKA_HSS_API_TOKEN), or api_port = 0",
        )
    if api_port and token is not None and len(token) < 8:
        raise _fail("api_token", "at least 8 characters")
    peers = _peers(data, whole)
    return HssConfig(
        database=database,
        diameter_host=host,
        diameter_realm=realm,
        diameter_address=diameter_address,
        diameter_port=diameter_port,
        peers=peers,
        home_networks=tuple(dict.fromkeys((*homes, realm.lower()))),
        visited_networks=_strs(data, "visited_networks"),
        max_vectors=max_vectors,
        api_address=api_address,
        api_port=api_port,
        api_token=token,
        request_timeout=float(timeout),
        watchdog=float(watchdog),
        scscfs=_pool(data, whole),
        scscf_instances=_scscf_instances(whole),
    )


def _scscf_instances(whole: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    scscf = whole.get("scscf")
    if not isinstance(scscf, Mapping) or not isinstance(scscf.get("instances"), list):
        return ()
    d = scscf.get("diameter")
    host = d.get("host") if isinstance(d, Mapping) else None
    name, port = scscf.get("name"), scscf.get("port", 5080)
    server_name = scscf.get("server_name") or (f"sip:{name}:{port}" if name else None)
    if not isinstance(server_name, str):
        return ()
    hosts = [host] + [i.get("diameter_host") for i in scscf["instances"] if isinstance(i, Mapping)]
    return tuple((server_name, h) for h in hosts if isinstance(h, str) and h)
