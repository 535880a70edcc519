"""Kamailio's IMS modules (Debian's `kamailio-ims-modules`, 5.6) as real peers of our core.

The most deployed open-source IMS CSCFs, so what they need from our HSS, P-CSCF and
S-CSCF (PITFALLS.md, "What Kamailio's IMS S-CSCF needs") is checked against the real
thing, not our reading of it. Each configuration is written here from the modules'
READMEs, with only what registration needs:

- `KamailioScscf`: `ims_auth` + `ims_registrar_scscf` + `cdp` (REGISTER with IMS AKA
  through MAR, SAR on save, reg-event SUBSCRIBE/NOTIFY, RTR handled by the module);
- `KamailioIcscf`: `ims_icscf` + `cdp` (UAR, then the REGISTER relayed to the S-CSCF
  the HSS names or, on a first registration, one of its own list by capabilities);
- `KamailioPcscf`: `ims_registrar_pcscf` (REGISTERs of UEs without sec-agree relayed
  to an I-CSCF with its Path, ck/ik taken out of the 401, the contact saved).

`start()` writes `kamailio.cfg` and the cdp XML into `workdir`, runs `kamailio -DD -E`
(foreground, its log in `workdir/kamailio.log`) and waits until its SIP port answers
OPTIONS; `stop()` ends it by PID (SIGTERM; its session killed if it lingers).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from imsaka.network import Network, NetworkOptions, _merge, make_subscribers
from imsaka.ports import free_port
from tests.polling import eventually

# Debian's multiarch path (/usr/lib/x86_64-linux-gnu/… or /usr/lib/aarch64-linux-gnu/…)
MODULES = next(iter(sorted(Path("/usr/lib").glob("*/kamailio/modules"))), Path("/nonexistent"))
# the db_text schema files Kamailio ships (its `pua` table, the `version` table)
DBTEXT = Path("/usr/share/kamailio/dbtext/kamailio")
SCSCF_HOST = "kscscf.home1.net"
ICSCF_HOST = "kicscf.home1.net"
PCSCF_HOST = "kpcscf.home1.net"


def available() -> bool:
    return (
        shutil.which("kamailio") is not None
        and (MODULES / "ims_registrar_scscf.so").exists()
        and (MODULES / "presence.so").exists()
        and (MODULES / "db_text.so").exists()
        and (MODULES / "pua.so").exists()
        and (DBTEXT / "pua").exists()
    )


@dataclass
class _Kamailio:
    """One Kamailio instance: a Diameter peer of our HSS (`host`), listening for SIP on
    UDP `sip_port` of 127.0.0.1."""

    workdir: Path
    hss_port: int
    hss_host: str = "localhost"
    realm: str = "home1.net"
    sip_port: int = field(default_factory=free_port)
    diameter_port: int = field(default_factory=lambda: free_port(udp=False, tcp=True))
    proc: subprocess.Popen | None = None
    debug: int = 3  # its log level (3: everything; 1: warnings and notices)
    shm_mb: int = 64  # its shared memory (registrations, vectors, transactions live there)
    # the host of its SIP URI when not `host` (another Kamailio resolves it with the
    # system's resolver: an address there)
    sip_host: str = ""
    host: ClassVar[str] = ""  # its Diameter identity and SIP host name

    @property
    def name(self) -> str:
        """Its SIP URI (for an S-CSCF, its Server-Name)."""
        return f"sip:{self.sip_host or self.host}:{self.sip_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "kamailio.log"

    def write(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cdp.xml").write_text(self._cdp_xml(), encoding="utf-8")
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(self._cfg(), encoding="utf-8")
        return cfg

    def _cdp_xml(self) -> str:
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<DiameterPeer FQDN="{self.host}" Realm="{self.realm}" Vendor_Id="10415"
  Product_Name="CDiameterPeer" AcceptUnknownPeers="0" DropUnknownOnDisconnect="1"
  Tc="2" Workers="2" QueueLength="32" TransactionTimeout="5" SessionsHashSize="128"
  DefaultAuthSessionTimeout="3600" MaxAuthSessionTimeout="3600">
  <Peer FQDN="{self.hss_host}" Realm="{self.realm}" port="{self.hss_port}"/>
  <Acceptor port="{self.diameter_port}" bind="127.0.0.1"/>
  <Auth id="16777216" vendor="10415"/>
  <SupportedVendor vendor="10415"/>
  <DefaultRoute FQDN="{self.hss_host}" metric="10"/>
</DiameterPeer>
"""

    # the modules of its role (`_role`: their parameters and the routes)
    modules: ClassVar[tuple[str, ...]] = ()

    def _role(self) -> str:
        raise NotImplementedError

    def _cfg(self) -> str:
        w = self.workdir
        loads = "\n".join(f'loadmodule "{m}.so"' for m in self.modules)
        return f"""#!KAMAILIO
debug={self.debug}
log_stderror=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
disable_tcp=yes
listen=udp:127.0.0.1:{self.sip_port}
alias={self.host}:{self.sip_port}
mpath="{MODULES}/"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "maxfwd.so"
loadmodule "xlog.so"
loadmodule "siputils.so"
loadmodule "kex.so"
loadmodule "tmx.so"
loadmodule "ctl.so"
loadmodule "cdp.so"
loadmodule "cdp_avp.so"
{loads}

modparam("ctl", "binrpc", "unix:{w}/ctl.sock")
modparam("tm", "fr_timer", 10000)
modparam("cdp", "config_file", "{w}/cdp.xml")
{self._role()}
route[REQINIT] {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS")) {{
        # the readiness probe of `start`
        sl_send_reply("200", "OK");
        exit;
    }}
    # a retransmission goes to its transaction
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();
            exit;
        }}
        t_check_trans();
    }}
}}
"""

    def start(self, timeout: float = 20.0) -> None:
        cfg = self.write()
        kamailio = shutil.which("kamailio")
        assert kamailio, "kamailio is not installed"
        check = subprocess.run(
            [kamailio, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"kamailio -c refused the config:\n{check.stderr[-3000:]}")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    kamailio,
                    "-DD",
                    "-E",
                    "-f",
                    str(cfg),
                    "-m",
                    str(self.shm_mb),
                    "-M",
                    "8",
                    "-P",
                    str(self.workdir / "kamailio.pid"),
                    "-Y",
                    str(self.workdir),
                    "-w",
                    str(self.workdir),  # a core dump lands here, not in /
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited ({self.proc.returncode}):\n{self.tail()}")
            if self._answers_options():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio did not answer OPTIONS in {timeout} s:\n{self.tail()}")

    def _answers_options(self) -> bool:
        branch = f"z9hG4bK{os.urandom(6).hex()}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            msg = (
                f"OPTIONS sip:{self.host}:{self.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
                "Max-Forwards: 70\r\nTo: <sip:probe@home1.net>\r\n"
                "From: <sip:probe@home1.net>;tag=1\r\n"
                f"Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            s.settimeout(0.3)
            s.sendto(msg.encode(), ("127.0.0.1", self.sip_port))
            try:
                data = s.recv(4096)
            except OSError:
                return False
            return data.startswith(b"SIP/2.0 200")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # Kamailio's main process ends its children on SIGTERM; its own session holds
        # them all, so a stuck child goes with the group.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@dataclass
class KamailioScscf(_Kamailio):
    """Kamailio as the S-CSCF (registrar, IMS AKA, reg event)."""

    expires: int = 600000
    # the qop options of its challenges (its default "auth,auth-int"; "": none, as the
    # seed's 401 and ours)
    qop: str = "auth,auth-int"
    host = SCSCF_HOST
    modules = (
        "rr",
        "ims_dialog",
        # ims_usrloc_scscf binds the presence API (for its reg-event subscriptions)
        "presence",
        "ims_usrloc_scscf",
        "ims_registrar_scscf",
        "ims_auth",
    )

    def _role(self) -> str:
        return f"""modparam("ims_dialog", "dlg_flag", 2)
modparam("ims_usrloc_scscf", "matching_mode", 0)
modparam("ims_usrloc_scscf", "maxcontact", 5)
modparam("ims_auth", "name", "{self.name}")
modparam("ims_auth", "registration_default_algorithm", "AKAv1-MD5")
modparam("ims_auth", "cxdx_dest_realm", "{self.realm}")
modparam("ims_auth", "av_request_at_once", 1)
modparam("ims_auth", "av_request_at_sync", 1)
modparam("ims_auth", "registration_qop", "{self.qop}")
modparam("ims_registrar_scscf", "scscf_name", "{self.name}")
modparam("ims_registrar_scscf", "cxdx_dest_realm", "{self.realm}")
modparam("ims_registrar_scscf", "use_path", 1)
modparam("ims_registrar_scscf", "default_expires", {self.expires})
modparam("ims_registrar_scscf", "min_expires", 60)
modparam("ims_registrar_scscf", "max_expires", {self.expires})
modparam("ims_registrar_scscf", "subscription_min_expires", 60)

request_route {{
    route(REQINIT);
    if (is_method("REGISTER")) {{
        route(REGISTER);
        exit;
    }}
    if (is_method("SUBSCRIBE") && $hdr(Event) =~ "^reg") {{
        route(SUBSCRIBE);
        exit;
    }}
    sl_send_reply("403", "Only registration here");
}}

route[REGISTER] {{
    if (!ims_www_authenticate("$td")) {{
        if ($? == -2) {{
            send_reply("403", "Authentication Failed");
        }} else if ($? == -3) {{
            send_reply("400", "Bad Request");
        }} else if ($? == -9) {{
            ims_www_resync_auth("REG_RESYNC_REPLY", "$td");
        }} else {{
            ims_www_challenge("REG_MAR_REPLY", "$td");
        }}
        exit;
    }}
    # all four arguments: 5.6.3's save() reads its flags argument even when
    # given two (a crash), fixed upstream after 5.6.3
    save("REG_SAR_REPLY", "location", "0", "0");
    exit;
}}

route[REG_MAR_REPLY] {{
    if ($avp(s:maa_return_code) != 1) {{
        xlog("L_ERR", "MAR failed: $avp(s:maa_return_code)\\n");
        send_reply("500", "MAR failed");
    }}
    exit;
}}

route[REG_RESYNC_REPLY] {{
    ims_www_challenge("REG_MAR_REPLY", "$td");
}}

route[REG_SAR_REPLY] {{
    if ($avp(s:saa_return_code) != 1) {{
        xlog("L_ERR", "SAR failed: $avp(s:saa_return_code)\\n");
    }}
    exit;
}}

route[SUBSCRIBE] {{
    if (!t_newtran()) {{
        sl_reply("500", "Could not create transaction");
        exit;
    }}
    if (!has_totag() && !can_subscribe_to_reg("location")) {{
        t_reply("403", "Forbidden to SUBSCRIBE");
        exit;
    }}
    $var(ret) = subscribe_to_reg("location");
    if ($var(ret) == -1) {{
        t_reply("500", "Server Error saving subscription");
    }}
    exit;
}}
"""


@dataclass
class KamailioIcscf(_Kamailio):
    """Kamailio as the I-CSCF: UAR for every REGISTER it has no S-CSCF list for, the
    REGISTER relayed to the S-CSCF the UAA names or, on a first registration, to one
    of `scscfs` (its database, here db_text) that has the capabilities asked for."""

    scscfs: tuple[str, ...] = ()
    host = ICSCF_HOST
    modules = ("db_text", "ims_icscf")

    def write(self) -> Path:
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "nds_trusted_domains").write_text(
            f"id(int,auto) trusted_domain(str)\n1:{self.realm}\n", encoding="utf-8"
        )
        # (db_text escapes ':' in a value)
        rows = "".join(
            f"{i}:scscf{i}:{uri.replace(':', chr(92) + ':')}\n"
            for i, uri in enumerate(self.scscfs, 1)
        )
        (db / "s_cscf").write_text(
            f"id(int,auto) name(str) s_cscf_uri(str)\n{rows}", encoding="utf-8"
        )
        (db / "s_cscf_capabilities").write_text(
            "id(int,auto) id_s_cscf(int) capability(int)\n", encoding="utf-8"
        )
        return super().write()

    def _role(self) -> str:
        return f"""modparam("ims_icscf", "db_url", "text://{self.workdir}/db")
modparam("ims_icscf", "cxdx_dest_realm", "{self.realm}")

request_route {{
    route(REQINIT);
    if (!is_method("REGISTER")) {{
        sl_send_reply("403", "Only registration here");
        exit;
    }}
    t_set_fr(5000, 5000);
    if (I_scscf_select("0")) {{
        # a list kept from the 401 of this Call-ID: no UAR (Kamailio's shortcut)
        t_on_reply("REGISTER_REPLY");
        if (!t_relay()) {{
            send_reply("500", "Error forwarding towards S-CSCF");
        }}
        exit;
    }}
    I_scscf_drop();
    if (!I_perform_user_authorization_request("UAR_REPLY", "0")) {{
        send_reply("500", "Error in Request");
    }}
    exit;
}}

route[UAR_REPLY] {{
    if ($avp(s:uaa_return_code) == 1) {{
        if (I_scscf_select("0")) {{
            t_on_reply("REGISTER_REPLY");
            if (!t_relay()) {{
                t_reply("500", "Error forwarding to S-CSCF");
            }}
        }} else {{
            I_scscf_drop();
            t_reply("500", "Server error on S-CSCF select");
        }}
    }} else if ($avp(s:uaa_return_code) == -2) {{
        t_reply("500", "UAR failed");
    }}
    exit;
}}

onreply_route[REGISTER_REPLY] {{
    if (!t_check_status("401")) {{
        I_scscf_drop();
    }}
}}
"""


@dataclass
class KamailioPcscf(_Kamailio):
    """Kamailio as the P-CSCF for UEs without sec-agree (its IPsec module needs the
    kernel's XFRM, which this machine lacks): REGISTERs relayed to `icscf` with its
    Path, the 401 relayed with ck/ik taken out (in its configuration, as its sample
    does), the contact saved on the 200. With `reginfo`, it also subscribes to the
    user's reg event after the 200 (its `pua` module, on a db_text database here),
    through `icscf` (where DNS would send it in a real network; there is none here),
    and takes the NOTIFYs: a contact the reginfo ends leaves its location table."""

    icscf: str = ""  # sip:HOST:PORT of the I-CSCF, HOST an address
    reginfo: bool = False
    host = PCSCF_HOST

    @property
    def modules(self) -> tuple[str, ...]:  # type: ignore[override]
        # ims_registrar_pcscf binds the IPsec module at start, used or not; and pua,
        # when it subscribes to the reg event
        pua = ("db_text", "pua") if self.reginfo else ()
        return (*pua, "ims_usrloc_pcscf", "ims_ipsec_pcscf", "ims_registrar_pcscf")

    def write(self) -> Path:
        if self.reginfo:
            db = self.workdir / "db"
            db.mkdir(parents=True, exist_ok=True)
            for table in ("version", "pua"):  # the schema Kamailio ships for db_text
                shutil.copyfile(DBTEXT / table, db / table)
        return super().write()

    def _reginfo(self) -> str:
        if not self.reginfo:
            return 'modparam("ims_registrar_pcscf", "subscribe_to_reginfo", 0)'
        return f"""modparam("pua", "db_url", "text://{self.workdir}/db")
modparam("ims_registrar_pcscf", "subscribe_to_reginfo", 1)
modparam("ims_registrar_pcscf", "subscription_expires", 600)
modparam("ims_registrar_pcscf", "force_icscf_uri", "{self.icscf}")"""

    def _role(self) -> str:
        return f"""modparam("ims_registrar_pcscf", "pcscf_uri", "{self.name}")
{self._reginfo()}

request_route {{
    route(REQINIT);
    if (is_method("NOTIFY") && uri == myself) {{
        if (reginfo_handle_notify("location")) {{
            send_reply("200", "OK - P-CSCF processed notification");
        }} else {{
            send_reply("500", "Error encountered while processing notification");
        }}
        exit;
    }}
    if (!is_method("REGISTER")) {{
        sl_send_reply("403", "Only registration here");
        exit;
    }}
    pcscf_save_pending("location");
    append_hf("Path: <sip:term@{self.host}:{self.sip_port};lr>\r\n");
    remove_hf("Require");
    append_hf("Require: path\r\n");
    remove_hf("Supported");
    append_hf("Supported: path\r\n");
    append_hf("P-Visited-Network-ID: {self.realm}\r\n");
    $du = "{self.icscf}";
    t_on_reply("REGISTER_REPLY");
    if (!t_relay()) {{
        sl_send_reply("500", "Error forwarding to the I-CSCF");
    }}
    exit;
}}

onreply_route[REGISTER_REPLY] {{
    if (t_check_status("200")) {{
        pcscf_save("location");
    }} else if (t_check_status("401")) {{
        # (its sample configuration takes `ck="…", ` out, which leaves a ck that ends
        # the header, as in the seed's 401 and ours: the comma goes before instead)
        $var(no_ck) = $(hdr(WWW-Authenticate){{re.subst,/, *ck="[a-fA-F0-9]*"//g}});
        $var(no_ik) = $(var(no_ck){{re.subst,/, *ik="[a-fA-F0-9]*"//g}});
        remove_hf("WWW-Authenticate");
        append_hf("WWW-Authenticate: $var(no_ik)\r\n");
    }}
}}
"""

    def contacts(self) -> int:
        """The contacts in its location table (`ulpcscf.status` over its control
        socket)."""
        out = subprocess.run(
            ["kamcmd", "-s", f"unix:{self.workdir}/ctl.sock", "ulpcscf.status"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return sum(int(n) for n in re.findall(r"Records:\s*(\d+)", out))


@asynccontextmanager
async def core_with(kam: _Kamailio, extra: dict[str, Any], seed: int) -> AsyncIterator[Network]:
    """Our core built with `extra` (see `Network`) over `_peering`, three
    subscribers, then `kam` started and connected to our HSS; both stopped after, also
    on failure."""
    doc = _peering(kam)
    _merge(doc, extra)  # (as Network merges its `extra`: tables key by key)
    net = Network(make_subscribers(3, seed=seed), NetworkOptions(extra=doc))
    await net.start()
    try:
        kam.start()
        assert await eventually(lambda: kam.host in net.hss.node.open_peers, timeout=15), kam.tail()
        yield net
    finally:
        kam.stop()
        await net.stop()


def diameter(net: Network, command: str) -> list:
    """The traced Diameter messages of `command` ("MAR", "SAA" …), in order."""
    return [r for r in net.trace.messages("diameter") if r.summary.startswith(command)]


def _peering(kam: _Kamailio) -> dict[str, Any]:
    """What our core needs to peer with `kam`: its name resolved, and our HSS named
    `localhost`, since Kamailio resolves names with the system's resolver (no DNS
    here) and cdp connects to its peer's FQDN; `kam`'s Diameter identity among the
    HSS's peers, ours kept."""
    hss_peer = {
        "host": "localhost",
        "realm": kam.realm,
        "address": "127.0.0.1",
        "port": kam.hss_port,
    }
    return {
        "network": {"hosts": {kam.host: "127.0.0.1", "localhost": "127.0.0.1"}},
        "hss": {
            "diameter_port": kam.hss_port,
            "diameter_host": "localhost",
            "peers": [
                "icscf1.home1.net",
                "scscf1.home1.net",
                {"host": kam.host, "address": "127.0.0.1", "port": kam.diameter_port},
            ],
        },
        "icscf": {"diameter": {"peers": [hss_peer]}},
        "scscf": {"diameter": {"peers": [hss_peer]}},
    }
