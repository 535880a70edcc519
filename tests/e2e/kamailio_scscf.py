"""Kamailio's IMS S-CSCF (Debian `kamailio-ims-modules`, 5.6) as a real peer of our core.

Our UE, P-CSCF, I-CSCF and HSS register through Kamailio's `ims_registrar_scscf` +
`ims_auth` + `cdp`: the most deployed open-source S-CSCF, so what it needs from an HSS
(PITFALLS.md, "What Kamailio's IMS S-CSCF needs") and from a P-CSCF is checked against
the real thing, not our reading of it. The configuration is written here from the
modules' READMEs: only what a registrar needs (REGISTER with IMS AKA through MAR,
SAR on save, reg-event SUBSCRIBE/NOTIFY, RTR handled by the module).

`KamailioScscf(workdir, hss_port=…)` writes `kamailio.cfg` and the cdp XML, `start()`
runs `kamailio -DD -E` (foreground, log on stderr to a file) and waits until its SIP
port answers OPTIONS and cdp has opened the HSS connection; `stop()` ends it by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Debian's multiarch path (/usr/lib/x86_64-linux-gnu/… or /usr/lib/aarch64-linux-gnu/…)
MODULES = next(iter(sorted(Path("/usr/lib").glob("*/kamailio/modules"))), Path("/nonexistent"))
DIAMETER_HOST = "kscscf.home1.net"


def available() -> bool:
    return (
        shutil.which("kamailio") is not None
        and (MODULES / "ims_registrar_scscf.so").exists()
        and (MODULES / "presence.so").exists()
    )


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class KamailioScscf:
    workdir: Path
    hss_port: int
    hss_host: str = "localhost"
    realm: str = "home1.net"
    sip_port: int = field(default_factory=lambda: _free_port(socket.SOCK_DGRAM))
    diameter_port: int = field(default_factory=lambda: _free_port(socket.SOCK_STREAM))
    expires: int = 600000
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """Its Server-Name (and the URI its Service-Route is built from)."""
        return f"sip:{DIAMETER_HOST}:{self.sip_port}"

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
<DiameterPeer FQDN="{DIAMETER_HOST}" Realm="{self.realm}" Vendor_Id="10415"
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

    def _cfg(self) -> str:
        w = self.workdir
        return f"""#!KAMAILIO
debug=3
log_stderror=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
disable_tcp=yes
listen=udp:127.0.0.1:{self.sip_port}
alias={DIAMETER_HOST}:{self.sip_port}
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
loadmodule "rr.so"
loadmodule "ims_dialog.so"
loadmodule "presence.so"
loadmodule "cdp.so"
loadmodule "cdp_avp.so"
loadmodule "ims_usrloc_scscf.so"
loadmodule "ims_registrar_scscf.so"
loadmodule "ims_auth.so"

modparam("ctl", "binrpc", "unix:{w}/ctl.sock")
modparam("tm", "fr_timer", 10000)
modparam("ims_dialog", "dlg_flag", 2)
modparam("cdp", "config_file", "{w}/cdp.xml")
modparam("ims_usrloc_scscf", "matching_mode", 0)
modparam("ims_usrloc_scscf", "maxcontact", 5)
modparam("ims_auth", "name", "{self.name}")
modparam("ims_auth", "registration_default_algorithm", "AKAv1-MD5")
modparam("ims_auth", "cxdx_dest_realm", "{self.realm}")
modparam("ims_auth", "av_request_at_once", 1)
modparam("ims_auth", "av_request_at_sync", 1)
modparam("ims_registrar_scscf", "scscf_name", "{self.name}")
modparam("ims_registrar_scscf", "cxdx_dest_realm", "{self.realm}")
modparam("ims_registrar_scscf", "use_path", 1)
modparam("ims_registrar_scscf", "default_expires", {self.expires})
modparam("ims_registrar_scscf", "min_expires", 60)
modparam("ims_registrar_scscf", "max_expires", {self.expires})
modparam("ims_registrar_scscf", "subscription_min_expires", 60)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (!is_method("ACK")) {{
        if (t_precheck_trans()) {{
            t_check_trans();
            exit;
        }}
        t_check_trans();
    }}
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
                    "64",
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
                f"OPTIONS sip:{DIAMETER_HOST}:{self.sip_port} SIP/2.0\r\n"
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
