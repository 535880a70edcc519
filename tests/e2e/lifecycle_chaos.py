"""Seeded lifecycle runs under loss: the registration lifecycle of issue 7 (TS 24.229
§5.1.1.4–5.1.1.7, §5.2.2, §5.4.1; TS 33.203 §7.4) with 20 % of the UDP datagrams lost
on every SIP leg (`test_faults._lose_a_fifth`), for many seeds.

Each run starts the whole core in process with its own settings drawn from the seed
(the S-CSCF's `reauthenticate` and `reregistration_sar`), then each of N UEs takes M
random steps at once with the others: register when not registered; else refresh,
de-register, or have the HSS de-register it (RTR) once its reg-event subscription is
up and wait for its terminated NOTIFY. Every step must succeed. At the end the
registered UEs de-register and nothing may be left: no SA set, registration, binding,
challenge, subscription or open transaction in any function (`census()`), no SA set at
any UE.

    python -m tests.e2e.lifecycle_chaos [--seeds 1-20] [--ues 5] [--steps 6] [--traces DIR]
                                        [--expires S] [--scscf-restarts REDIS_URL]
                                        [--hss-restarts] [--icscf-restarts]
                                        [--pcscf-restarts [--pcscf-store REDIS_URL]]
                                        [--pcscf-handoffs] [--devices 2] [--scscf-moves]

`--expires S` grants every registration and subscription at most S seconds, so the
UEs re-register, and the UEs and the P-CSCF refresh their reg-event subscriptions, by
themselves in the middle of the steps (TS 24.229 §5.1.1.4, §5.1.1.3, §5.2.3). With S up
to 60 a step may also restart a UE: it loses its state and registers afresh from new
ports while the network still holds its registration (its old contact lapses at the
S-CSCF within the run).

`--scscf-restarts redis://…` keeps the S-CSCF's bindings and reg-event subscriptions in
Redis (a prefix of the run's own, removed after it) and restarts the S-CSCF every 3 to
12 s while the UEs go through their steps (its UDP legs stay lossy): registrations,
challenges and subscriptions meet a restart at every point of their lives. Half of
the restarts drain first (SIGTERM-like), half are a crash (what was under way goes).
Open challenges survive both (`share_challenges`: written to Redis as they are made),
so `reg_await_auth` is 30 s: one the UE no longer answers has lapsed at the end. An RTR the
HSS could not deliver (the S-CSCF down at that instant) is not a failure: the UE stays
registered.

`--hss-restarts` runs the HSS as its own ``imsaka run hss`` process and kills it
(SIGKILL) every 5 to 15 s, starting it again 0.5 to 4 s later on the same database:
the I-CSCF and the S-CSCF answer 480/504 with Retry-After 1 meanwhile, the UEs wait and
try again (up to 30 times), and the Diameter clients reconnect by themselves. The HSS
is then out of this process, so no step asks it for an RTR; `reg_await_auth` is 30 s,
so that challenges the UEs gave up on in an outage have lapsed at the end.

`--icscf-restarts` stops the I-CSCF at once (what it had under way is lost, as in a
crash) every 3 to 12 s and starts a new one on the same port 0 to 1 s later: the
P-CSCF's retransmissions meet the new one.

`--pcscf-restarts` does the same to the P-CSCF every 10 to 25 s (the first 1 to 6 s
after the start): its SAs, registrations and subscriptions (all in memory) go with it. What the UEs send over
their old SAs is lost; a refresh then runs out (Timer F) and the UE registers anew
(TS 24.229 §5.1.1.4.1); a de-REGISTER that runs out leaves its binding to lapse; an
RTR whose NOTIFY cannot reach the UE (no registration at the new P-CSCF yet) is seen
by the UE at its next refresh. Grants are then at most 60 s (`--expires 60` unless
shorter), so that what a lost de-REGISTER left lapses within the end's wait.

`--pcscf-handoffs` stops the P-CSCF as SIGTERM does instead (`PcscfServer.drain`, with
``[pcscf].state_file`` in a folder of the run's own) every 3 to 12 s: the new one
takes back the registrations, SA sets and subscriptions, and the steps are held to what
they are without restarts (no second attempt, every RTR seen by its UE): what was under
way at the stop is finished by the retransmissions through the new process.

`--pcscf-store redis://…` keeps the P-CSCF's registrations in Redis as it runs
(``[pcscf].state_store``, written every 0.5 s) under `--pcscf-restarts`: the crashed
P-CSCF's successor takes back what was written, so only what happened in the last half
second before a crash is lost (the steps keep the crash allowances).

`--scscf-long-downs` (with `--scscf-instances`): one restart in four keeps its
instance stopped 10 to 20 s, longer than the run's
`TAKE_OVER_AFTER` (6 s): the others take its reg-event subscriptions over (their
refreshes then go there) and the I-CSCF probes it with OPTIONS until it is back.

`--devices 2`: each subscription gets a second IMPI (a tablet, TS 23.228 §4.3.3.4)
sharing its IMPUs, with a UE of its own: two devices register the same IMPUs, each
with its own contact and SAs, and an RTR step ends that device's registration alone
(the HSS's delete of one IMPI). Not with `--hss-restarts` (provisioned in process).

`--scscf-moves`: a second S-CSCF of its own Server-Name (`two_scscfs.TwoScscfs`), and
every 2 to 8 s the I-CSCF loses its way to one of the two for 3 to 10 s (its Diameter
and its way to the P-CSCF stay): a REGISTER of a user served there goes to the other
after the I-CSCF's `scscf_timeout` (2 s here), is challenged there, and the HSS takes
the registration from the first (RTR NEW_SERVER_ASSIGNED); the subscriptions follow.
With `--devices 2` the other device of a moved subscription is told to register again
(`deactivated`) and follows. Not with `--scscf-restarts`.

`--scscf-store-cuts` (with `--scscf-instances`): each instance reaches Redis through a
TCP proxy of its own, and about one event in two cuts one instance off for 3 to
15 s instead of restarting it: alive but out of reach of the store, it fences itself
(SUBSCRIBEs and REGISTERs answered 503, which the P-CSCF and the I-CSCF take to
another instance; NOTIFYs held) and drops what the others took meanwhile once back.

Prints one JSON line per seed (with `scscf_seen` and `pcscf_seen`: what the restarts
and instances made the S-CSCF and the P-CSCF do, their counters summed over all of
them; `icscf_seen`: the last I-CSCF's failovers and probes; `ue_drops`: what the UEs
running at the end dropped, by reason) and a summary; exits 1
when a run failed. With `--traces`, the ladder of each failed UE (SIP and Diameter, by
time) is written there. Not a test of the suite (a run
takes a minute or more): it found the defects fixed in d9c7eb2, f205b12, fd308eb,
aa938fa, 0267196 and 1c69cb8."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import random
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from imsaka.network import Network, NetworkOptions, make_subscribers
from imsaka.ue.client import UeClient
from imsaka.ue.core import NOT_HELD, RegisteringAnew, UeState
from tests.e2e.test_faults import _lose_a_fifth, note_lost
from tests.e2e.two_scscfs import Partition, TwoScscfs
from tests.polling import eventually
from tests.tcp_proxy import CuttableProxy, redis_target

# A UE's registration with a request of its own open.
_UNDER_WAY = (
    UeState.UNPROTECTED_SENT,
    UeState.RESPONSE_SENT,
    UeState.REREGISTERING,
    UeState.WAITING_RETRY,
)

# With --scscf-long-downs: how long an instance is stopped before the others take its
# subscriptions over (the product's 30 s would outlast most long downs of a run).
LONG_DOWN_TAKE_OVER = 6.0

# census entries that may stay after every UE de-registered: spare authentication
# vectors cached per IMPI (not a binding, SA or transaction)
ALLOWED = ("cached_vectors",)


def _leftovers(net: Network, ues: list[UeClient]) -> dict[str, int]:
    left: dict[str, int] = {}
    servers = [("p", net.pcscf), ("i", net.icscf), ("s", net.scscf)]
    servers += [(f"s{n}", other) for n, other in enumerate(net.scscf_others, start=2)]
    second = getattr(net, "second", None)  # (`--scscf-moves`: another Server-Name's)
    if second is not None:
        servers.append(("scscf2", second))
    for name, server in servers:
        for key, value in server.census().items():
            if value and key not in ALLOWED:
                left[f"{name}.{key}"] = value
    sets = sum(len(u.table.sets()) for u in ues)
    if sets:
        left["ue.sa_sets"] = sets
    return left


# Log lines every ladder carries, whoever they name: the runner's own (restarts), and
# what the SIP endpoints and the I-CSCF dropped (their lines name no subscriber).
_EVERY_LADDER = ("lifecycle_chaos:", "imsaka.sip.endpoint:", "imsaka.cscf.icscf:")


# S-CSCF counters each run reports (`Network.scscf_counters`): what the restarts and
# instances made it do.
_SCSCF_SEEN = (
    "challenge_taken_from_store",
    "challenge_restored",
    "retransmission_answered_from_store",
    "answer_to_unknown_challenge",
    "vectors_fresh_for_foreign_nonce",
    "auth_timeout_registered_elsewhere",
    "ended_elsewhere_notified",
    "ended_while_down_notified",
    "ended_for_stopped_notifier",
    "changed_for_stopped_notifier",
    "taken_from_stopped_notifier",
    "refresh_taken_from_stopped_notifier",
    "final_notify_sent_again",
    "changed_elsewhere_notified",
    "subscription_restored",
    "store_cut_off",
    "subscription_taken_while_cut_off",
    "subscribe_refused_cut_off",
    "subscribe_refused_store_unavailable",
    "cx_refused_cut_off",
    "changes_caught_up",
    "register_refused_store_unavailable",
    "register_refused_store_write_failed",
    "notify_held_cut_off",
    "expiry_held_store_unavailable",
    "expiry_refreshed_elsewhere",
    "removal_held_store_unavailable",
    "removal_changed_elsewhere",
    "publication_held_store_unavailable",
    "publication_superseded",
)

# The P-CSCF's (`Network.pcscf_counters`): what its restarts made it do.
_PCSCF_SEEN = (
    "established-by-later-register",
    "downgrade-refused",
    "answered-again-in-grace",
    "retransmission-answered",
    "notify-unknown-subscription",
    "state-store-write-failed",
    "reg-subscription-audited",
    "audit-found-not-registered",
    "scscf-instance-failover",
    "scscf-instance-503",
    "superseded-set-held-for-open-transaction",
    "challenge-of-an-ended-registration",
)


# The I-CSCF's (the one running at the end): how it passed over instances and probed them.
_ICSCF_SEEN = (
    "scscf_silent",
    "scscf_retry",
    "scscf_instance_down",
    "scscf_instance_failover",
    "scscf_probe_sent",
    "scscf_probe_answered",
    "scscf_instance_up",
    "scscf_down",
    "scscf_passed_over",
    "scscf_back_again",
)


class _Logs(logging.Handler):
    """The UE's, the P-CSCF's, the I-CSCF's and the SIP endpoints' INFO lines (what
    they dropped and why), kept for the ladders of failed UEs."""

    LOGGERS = (
        "imsaka.ue",
        "imsaka.cscf.pcscf",
        "imsaka.cscf.icscf",
        "imsaka.cscf.scscf",
        "imsaka.sip.endpoint",
        "imsaka.ipsec",
        "lifecycle_chaos",
    )

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 500_000:
            self.lines.append((record.created, f"{record.name}: {record.getMessage()}"))

    def __enter__(self) -> _Logs:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def _lossy(send: Any, rng: random.Random, dropped: dict[str, int], who: str = "") -> Any:
    """`send` losing a fifth of what it is given, as `_lose_a_fifth` does."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if rng.random() < 0.2:
            dropped["n"] += 1
            note_lost(who, args)
            return True
        return send(*args, **kwargs)

    return wrapper


def _lossy_ue(ue: UeClient, rng: random.Random, dropped: dict[str, int]) -> None:
    """A fifth of a (restarted) UE's datagrams lost."""
    ue.send_clear = _lossy(ue.send_clear, rng, dropped, ue.name)  # type: ignore[method-assign]
    ue.send_protected = _lossy(  # type: ignore[method-assign]
        ue.send_protected, rng, dropped, f"{ue.name} (ESP)"
    )


def _lossy_socket(
    transport: Any, rng: random.Random, dropped: dict[str, int], who: str = ""
) -> None:
    """A fifth of a (restarted) function's UDP datagrams lost below its SIP transport."""
    transport._transport.sendto = _lossy(transport._transport.sendto, rng, dropped, who)


def _ladder(net: Network, impi: str, ue_name: str, logs: _Logs) -> str:
    """The messages of one subscriber's UE (`userN_`), and the log lines naming it or
    its IMPI, by time."""
    # (a tablet's, `--devices 2`: its subscription's, whose IMPUs its messages carry)
    user = impi.removeprefix("tablet.").split("_", 1)[0] + "_"
    named = re.compile(rf"\b{ue_name}\b").search  # the UE's own lines, its ESP layer's too
    lines = [
        f"{t:.3f} log {text}"
        for t, text in logs.lines
        if user in text or named(text) or text.startswith(_EVERY_LADDER)
    ]
    for rec in net.trace.messages("sip") + net.trace.messages("diameter"):
        if any(user in v for _, v in rec.headers) or user in str(rec.diameter):
            h = dict(rec.headers)
            lines.append(
                f"{rec.time:.3f} {rec.src_name}->{rec.dst_name} spi={rec.esp_spi} "
                f"{rec.summary} | {h.get('CSeq', '')} | {h.get('Via', '')[:90]}"
                + _notify_says(h, rec.payload)
                + _diameter_says(rec)
            )
    return "\n".join(sorted(lines)) + "\n"


def _diameter_says(rec: Any) -> str:
    """A Diameter request's User-Name and the port it went to: which device an RTR
    names, and which S-CSCF (of two on one host) it reached."""
    if rec.protocol != "diameter" or not rec.diameter.get("request"):
        return ""
    return f" | User-Name {rec.diameter.get('user_name', '-')} to :{rec.dst[1]}"


_REGINFO_CONTACT = re.compile(
    rb'<contact [^>]*?state="(\w+)"[^>]*?event="(\w+)"[^>]*>\s*<uri>([^<]*)</uri>'
)


def _notify_says(headers: dict[str, str], payload: bytes) -> str:
    """A reg-event NOTIFY's Subscription-State and its reginfo's registration and
    contacts (state/event uri), for the ladder: what the UE and the P-CSCF were told."""
    state = headers.get("Subscription-State")
    if state is None:
        return ""
    body = payload.partition(b"\r\n\r\n")[2]
    reg = re.search(rb'<registration [^>]*?state="(\w+)"', body)
    contacts = ", ".join(
        f"{m[1].decode()}/{m[2].decode()} {m[3].decode()}" for m in _REGINFO_CONTACT.finditer(body)
    )
    told = f"reg {reg[1].decode()}: {contacts}" if reg else "no reginfo"
    return f" | {state} | {told}"


async def run(
    seed: int,
    n_ues: int,
    steps: int,
    traces: Path | None,
    expires: int = 0,
    redis_url: str = "",
    hss_restarts: bool = False,
    icscf_restarts: bool = False,
    pcscf_restarts: bool = False,
    pcscf_handoffs: bool = False,
    pcscf_store: str = "",
    scscf_instances: int = 1,
    scscf_long_downs: bool = False,
    scscf_store_cuts: bool = False,
    devices: int = 1,
    scscf_moves: bool = False,
) -> dict[str, Any]:
    rng = random.Random(seed)
    if pcscf_restarts and not 0 < expires <= 60:
        expires = 60
    scscf: dict[str, Any] = {}
    if pcscf_restarts:
        # A challenge whose answer went with a P-CSCF (the UE then starts again under a
        # new Call-ID) stays until reg-await-auth: short, as with --hss-restarts.
        scscf["reg_await_auth"] = 30
    if rng.random() < 0.4:
        scscf["reauthenticate"] = "always"
    if rng.random() < 0.4:
        scscf["reregistration_sar"] = "when-needed"
    ue_extra: dict[str, Any] = {}
    if expires:
        # every grant that short: registrations and subscriptions (the UEs' and the
        # P-CSCF's) refresh by themselves between and during the steps
        scscf.update(min_expires=1, max_expires=expires, default_expires=expires)
        ue_extra["expires"] = expires
        if expires <= 60:
            # A registration may lapse while its refresh is challenged and every copy of
            # the 401 lost (seed 10404, --devices 2): the UE registers anew, and the
            # challenge it never answered stays until reg-await-auth (4 min by default,
            # past the end's wait): short here, so that it has lapsed at the end.
            scscf["reg_await_auth"] = 30
    subs = make_subscribers(n_ues, seed=seed % 1000 + 1)
    restarts = None
    if redis_url:
        scscf["binding_store"] = redis_url
        scscf["share_challenges"] = True  # (on by itself with several instances)
        scscf.pop("reregistration_sar", None)  # "when-needed" needs the memory store
        restarts = _Restarts(redis_url, seed, scscf_instances, scscf_long_downs, scscf_store_cuts)
        # (the instances read the run's own prefix from the document)
        scscf["binding_store_prefix"] = restarts.prefix
        # Open challenges outlive a restart (kept at the stop): one the UE no longer
        # answers (a retransmitted REGISTER met the new S-CSCF, which challenged it
        # anew, and the UE answered that one) stays until reg-await-auth: short.
        scscf["reg_await_auth"] = 30
    options = NetworkOptions(extra={"scscf": scscf}, scscf_instances=scscf_instances)
    if scscf_instances > 1 or scscf_moves:
        # an instance (or S-CSCF) that does not answer is passed over well inside the
        # UE's Timer F
        options.extra["icscf"] = {"scscf_timeout": 2.0}
    handoff_dir = None
    if pcscf_handoffs:
        handoff_dir = tempfile.TemporaryDirectory(prefix="imsaka-handoff-")
        state_file = str(Path(handoff_dir.name) / "pcscf.state")
        options.extra["pcscf"] = {"state_file": state_file}
    if pcscf_store:
        options.extra["pcscf"] = {"state_store": pcscf_store, "state_interval": 0.5}
    if scscf_instances > 1:
        # a request along a Service-Route to a stopped instance moves to another as
        # soon as the I-CSCF's would
        options.extra.setdefault("pcscf", {})["scscf_timeout"] = 2.0
    if hss_restarts:
        # answers that tell the UE to wait a second, and Cx timeouts that say so soon
        fast = {"retry_after": 1, "diameter": {"timeout": 1.0}}
        scscf.update(fast)
        # A challenge whose REGISTER the UE gave up on in an outage (it then starts
        # again with a new one) stays until reg-await-auth: short here, so that it
        # has lapsed when the end counts what is left.
        scscf["reg_await_auth"] = 30
        options = NetworkOptions(
            hss_process=True,
            extra={
                **options.extra,
                "scscf": scscf,
                "icscf": {**options.extra.get("icscf", {}), **fast},
            },
            scscf_instances=scscf_instances,
        )
        ue_extra["max_retries"] = 30
    import imsaka.cscf.scscf as scscf_module

    take_over_after = scscf_module.TAKE_OVER_AFTER
    if restarts is not None and restarts.long_downs:
        scscf_module.TAKE_OVER_AFTER = LONG_DOWN_TAKE_OVER
    try:
        with _Logs() as logs:
            return await _run(
                seed,
                n_ues,
                steps,
                traces,
                options,
                ue_extra,
                subs,
                logs,
                restarts,
                hss_restarts,
                icscf_restarts,
                pcscf_restarts,
                pcscf_handoffs,
                devices,
                scscf_moves,
            )
    finally:
        scscf_module.TAKE_OVER_AFTER = take_over_after
        if restarts is not None:
            await restarts.clear()
        if handoff_dir is not None:
            handoff_dir.cleanup()


class _Restarts:
    """The S-CSCF restarted on its Redis store at random moments (`--scscf-restarts`);
    with several instances (`--scscf-instances`) one of them at a time, down for up to
    4 s, so that the I-CSCF passes over it; with `long_downs` one restart in four
    keeps the instance down 10-20 s, past `LONG_DOWN_TAKE_OVER`
    (the run's TAKE_OVER_AFTER), so that the others take its subscriptions over and
    the I-CSCF probes it until it is back. With `store_cuts` each instance reaches
    Redis through a proxy of its own, and about one event in two instead cuts one
    instance off from Redis for 3-15 s (alive, the others reaching it: it fences
    itself, and they may take its subscriptions)."""

    def __init__(
        self,
        url: str,
        seed: int,
        instances: int = 1,
        long_downs: bool = False,
        store_cuts: bool = False,
    ) -> None:
        self.url = url
        self.instances = instances
        self.long_downs = long_downs and instances > 1
        self.store_cuts = store_cuts and instances > 1
        self.cut_rng = random.Random(seed + 23)  # (the other draws as without it)
        self.proxies: dict[int, CuttableProxy] = {}
        self.cuts = 0
        self.prefix = f"imsaka:chaos:{seed}:{random.getrandbits(32):08x}:"
        self.rng = random.Random(seed + 13)
        self.long_rng = random.Random(seed + 17)  # (the other draws as without it)
        self.done = 0
        self.crashes = 0
        self.long = 0

    def store(self, instance: int = 1) -> Any:
        from imsaka.cscf.registrar import RedisBindingStore

        proxy = self.proxies.get(instance)
        if proxy is None:
            return RedisBindingStore(self.url, prefix=self.prefix)
        _, db = redis_target(self.url)
        return RedisBindingStore(f"redis://127.0.0.1:{proxy.port}/{db}", prefix=self.prefix)

    async def setup(self, net: Network) -> None:
        """Every instance on the run's own prefix (with `store_cuts`, each through its
        own proxy)."""
        if self.store_cuts:
            target, _ = redis_target(self.url)
            for n in range(1, self.instances + 1):
                self.proxies[n] = CuttableProxy(target)
                await self.proxies[n].start()
                await net.restart_scscf(self.store(n), instance=n)
        else:
            await net.restart_scscf(self.store())

    async def _cut(self) -> None:
        instance = self.cut_rng.randint(1, self.instances)
        length = self.cut_rng.uniform(3.0, 15.0)
        log = logging.getLogger("lifecycle_chaos")
        log.info("S-CSCF #%d cut off from Redis for %.1f s", instance, length)
        proxy = self.proxies[instance]
        await proxy.cut()
        try:
            await asyncio.sleep(length)
        finally:
            await proxy.mend()
        self.cuts += 1
        log.info("S-CSCF #%d reaches Redis again", instance)

    async def loop(self, net: Network, lossy_scscf: Any) -> None:
        log = logging.getLogger("lifecycle_chaos")
        while True:
            await asyncio.sleep(self.rng.uniform(3.0, 12.0))
            if self.store_cuts and self.cut_rng.random() < 0.5:
                await self._cut()
                continue
            # half of them a crash: nothing drained, no challenges listed at the stop
            crash = self.rng.random() < 0.5
            instance = self.rng.randint(1, self.instances)
            down = self.rng.uniform(0.0, 4.0) if self.instances > 1 else 0.0
            if self.long_downs and self.long_rng.random() < 0.25:
                down = self.long_rng.uniform(10.0, 20.0)
                self.long += 1
            log.info(
                "S-CSCF #%d restart: %s, down %.1f s",
                instance,
                "crash" if crash else "draining",
                down,
            )
            await net.restart_scscf(self.store(instance), crash=crash, instance=instance, down=down)
            lossy_scscf(instance)
            self.done += 1
            self.crashes += crash
            log.info("S-CSCF restart: the new one is up")

    async def clear(self) -> None:
        from imsaka.cscf.registrar import RedisBindingStore

        for proxy in self.proxies.values():
            await proxy.close()
        store = RedisBindingStore(self.url, prefix=self.prefix)  # (not through a proxy)
        await store.clear()
        await store.close()


async def _hss_restarts(net: Network, rng: random.Random, done: dict[str, int]) -> None:
    """`--hss-restarts`: the HSS process killed and started again, over and over."""
    log = logging.getLogger("lifecycle_chaos")
    while True:
        await asyncio.sleep(rng.uniform(5.0, 15.0))
        log.info("HSS killed (SIGKILL)")
        net.kill_hss()
        await asyncio.sleep(rng.uniform(0.5, 4.0))
        await net.start_hss_process()
        done["hss-restart"] = done.get("hss-restart", 0) + 1
        log.info("HSS started again")


class _Crashes:
    """`--icscf-restarts`, `--pcscf-restarts`: the function `name` ("icscf", "pcscf")
    stopped at once (what it holds in memory lost, as in a crash) every `every` s and
    started again 0-1 s later on the same ports (`Network.restart_<name>`), its UDP
    legs made as lossy as before by `lossy()`; `done["<name>-restart"]` counts them."""

    def __init__(
        self,
        net: Network,
        name: str,
        every: tuple[float, float],
        rng: random.Random,
        done: dict[str, int],
        lossy: Any,
        first: tuple[float, float] | None = None,
        planned: bool = False,
    ) -> None:
        self.net, self.name, self.every, self.rng = net, name, every, rng
        self.done, self.lossy = done, lossy
        self.first = first or every
        restart = getattr(net, f"restart_{name}")
        # `planned`: stopped as SIGTERM stops it (`--pcscf-handoffs`), counted apart
        self.restart = functools.partial(restart, planned=True) if planned else restart
        self.key = f"{name}-handoff" if planned else f"{name}-restart"
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        log = logging.getLogger("lifecycle_chaos")
        label = self.name.upper().replace("CSCF", "-CSCF")
        key = self.key
        every = self.first
        while True:
            await asyncio.sleep(self.rng.uniform(*every))
            every = self.every
            log.info("%s stopped", label)
            await self.restart(self.rng.uniform(0.0, 1.0))
            self.lossy()
            self.done[key] = self.done.get(key, 0) + 1
            log.info("%s started again", label)

    async def stop(self) -> None:
        """No more crashes; one cancelled while the function was down starts it again
        for the end."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if getattr(self.net, self.name) is None:
            await self.restart()
            self.lossy()


async def _run(
    seed: int,
    n_ues: int,
    steps: int,
    traces: Path | None,
    options: NetworkOptions,
    ue_extra: dict[str, Any],
    subs: list,
    logs: _Logs,
    restarts: _Restarts | None = None,
    hss_restarts: bool = False,
    icscf_restarts: bool = False,
    pcscf_restarts: bool = False,
    pcscf_handoffs: bool = False,
    devices: int = 1,
    scscf_moves: bool = False,
) -> dict[str, Any]:
    scscf = options.extra["scscf"]
    net = TwoScscfs(subs, options) if scscf_moves else Network(subs, options)
    await net.start()
    partition = Partition()
    if scscf_moves:
        assert isinstance(net, TwoScscfs)
        await net.start_second()
        partition.install(net)
    if devices > 1:
        subs = [*subs, *await _second_devices(net, subs)]
    if restarts is not None:
        await restarts.setup(net)  # on the run's own prefix
    ues = [
        UeClient(net.ue_config(s, **ue_extra), observers=[net.trace], name=f"ue{i}")
        for i, s in enumerate(subs)
    ]
    bad: list[Any] = []
    done = 0
    ops: dict[str, int] = {}  # steps done, by kind
    # With short grants a UE may also restart (its old contact lapses at the S-CSCF
    # within the run, so the end's census can still ask for nothing left).
    restart = ["restart"] if ue_extra.get("expires", 0) and ue_extra["expires"] <= 60 else []
    loss_rng = random.Random(seed + 7)
    dropped: dict[str, int] = {"n": 0}  # (a restarted UE's; `_lose_a_fifth` counts the rest)

    def write_ladder(i: int) -> None:
        if traces is not None:
            traces.mkdir(parents=True, exist_ok=True)
            (traces / f"seed{seed}-ue{i}.txt").write_text(
                _ladder(net, subs[i].impi, f"ue{i}", logs)
            )

    def failed(i: int, what: str, detail: str) -> None:
        bad.append({"ue": i, "step": what, "detail": detail[:300]})
        write_ladder(i)

    # With the CSCFs or the HSS restarting under loss, a REGISTER transaction can run
    # out (Timer F, 32 s) with every copy lost or met by a restart, or an attempt meet
    # three S-CSCF restarts: the UE registers again, once, as a UE does after a failed
    # attempt. A UE in the HSS's outages waits out its Retry-Afters too, so its bound
    # is longer, as is one whose refresh runs out over SAs a P-CSCF restart took
    # (Timer F, then a new registration).
    crashes = icscf_restarts or pcscf_restarts or (restarts is not None and hss_restarts)
    bound = 120 if hss_restarts or pcscf_restarts else 60

    # With P-CSCF restarts a UE may register again twice: a restart takes the
    # temporary set of an attempt under way, and the attempt then runs out (Timer F)
    # whatever else happens; with the other crashes and 20 % loss on every leg, two
    # attempts in a row were seen to go so (seeds 9005, 9105: three copies of an answer
    # lost, then a P-CSCF restart).
    tries = 2 if pcscf_restarts else 1

    async def register(ue: UeClient, op: str) -> tuple[str, Any]:
        result = await ue.register(bound)
        for n in range(tries):
            if not (crashes and not result.ok and result.status in (401, 408)):
                break
            # (401: its third challenge in one attempt, each lost with the S-CSCF that
            # made it, a draining one too: the UE's bound)
            op = f"{op.split('-again')[0]}-again" + ("" if n == 0 else f"-{n + 1}")
            result = await ue.register(bound)
        return op, result

    def behind_a_restarted_pcscf(i: int) -> bool:
        """The UE's registration was made through a P-CSCF that has restarted since:
        the new one knows nothing of it, so neither the NOTIFYs of its subscription nor
        the network's end reach it until its next refresh runs out and it registers
        anew (`--pcscf-restarts`)."""
        pcscf = net.pcscf  # (None while one is down)
        return pcscf_restarts and (pcscf is None or subs[i].impi not in pcscf.core.registrations)

    async def network_deregisters(i: int, ue: UeClient) -> tuple[str, bool, str]:
        """The HSS de-registers the UE (RTR) once its subscription is up; the UE must
        see the terminated NOTIFY."""
        before = ops.get("pcscf-restart", 0)
        if not await ue.wait_subscribed(40):
            if behind_a_restarted_pcscf(i) or ops.get("pcscf-restart", 0) != before:
                return "rtr-skipped-pcscf-restarted", True, ""
            return "rtr", False, "the reg-event subscription never came up"
        behind = behind_a_restarted_pcscf(i)
        before = ops.get("pcscf-restart", 0)
        # The UE may learn of the end otherwise than by a NOTIFY: its subscription had
        # not yet followed it to the S-CSCF it just moved to when the RTR reached that
        # one, and its new SUBSCRIBE there is refused "not registered" (480).
        refused: list[RegisteringAnew] = []
        ue.on_event = lambda ev: (
            refused.append(ev) if type(ev) is RegisteringAnew and ev.what == NOT_HELD else None
        )
        # (an event of before, e.g. "deactivated" after another device's move, whose
        # new registration the UE made by itself, would read as this RTR's: seed 11142)
        ue.network_event = ""
        try:
            # (with two devices, that device's registration alone: the other stays)
            answer = await net.hss.deregister_impi(subs[i].impi, this_impi_only=devices > 1)
            if restarts is not None and not answer.get("ok"):
                # the S-CSCF was down at that instant: nothing was ended
                return "rtr-undelivered", True, ""
            await eventually(lambda: bool(ue.network_event or refused), 60)
        finally:
            ue.on_event = None
        event = ue.network_event
        if not event and refused:
            return "rtr-learnt-from-a-refused-subscribe", True, ""
        if not event and (behind or ops.get("pcscf-restart", 0) != before):
            # the new P-CSCF answers the NOTIFY 404 (no registration to take it over)
            return "rtr-unseen-after-pcscf-restart", True, ""
        return "rtr", bool(event), f"RTR {answer}, UE saw {event!r}"

    async def life(i: int, ue: UeClient) -> None:
        nonlocal done
        r = random.Random(seed * 100 + i)
        for _ in range(steps):
            await asyncio.sleep(r.random() * 1.5)
            if ue.core.state is not UeState.REGISTERED:
                ue.network_event = ""
                op, result = await register(ue, "register")
                ok, detail = result.ok, str(result)
            else:
                rtr = [] if hss_restarts else ["rtr"]  # (the HSS is not in this process)
                op = r.choice(["refresh", "refresh", "deregister", *rtr, *restart])
                if op == "restart":
                    # the UE reboots: its state is gone, and it registers afresh from
                    # new ports while the network still holds its registration
                    await ue.close()
                    ue = UeClient(
                        net.ue_config(subs[i], **ue_extra), observers=[net.trace], name=f"ue{i}"
                    )
                    await ue.start()
                    _lossy_ue(ue, loss_rng, dropped)
                    ues[i] = ue
                    op, result = await register(ue, "restart")
                    ok, detail = result.ok, str(result)
                elif op == "refresh":
                    result = await ue.reregister(bound)
                    if crashes and not result.ok and result.status == 408:
                        # (the refresh ran out over lost SAs and the initial
                        # registration after it too: a P-CSCF restart took its
                        # temporary set as well)
                        op, result = await register(ue, "refresh-then-register-again")
                    elif (
                        (crashes or scscf_moves)
                        and not result.ok
                        and result.reason.endswith("(expired)")
                    ):
                        # Every copy of the refresh lost or met by a restart until the
                        # registration's own end (30 s grants): the S-CSCF's NOTIFY
                        # told the UE it expired (seed 9711: its 504 lost twice, then
                        # three restarted I-CSCFs and an HSS kill; --scscf-moves seed
                        # 11205: moved off a cut S-CSCF, then its 401 lost four times
                        # in a row). It registers anew.
                        op, result = await register(ue, "refresh-lapsed-then-register-again")
                    ok, detail = result.ok, str(result)
                elif op == "deregister":
                    result = await ue.deregister(bound)
                    ok, detail = result.ok, str(result)
                    if ok and result.status >= 300:
                        # refused (a failover's 503, say) after the NOTIFY of its end
                        op = "deregister-done-by-notify"
                    elif crashes and result.status == 408:
                        # Every copy lost or met by a restart (or its retry after a 480,
                        # its first 200 lost, dropped over the sets the network's end
                        # released: seed 8017). The UE ends its side either way; the
                        # end's census checks the network's.
                        op, ok = "deregister-timed-out", True
                    elif icscf_restarts and result.status == 403:
                        # Its 200 lost, then an I-CSCF restart: the new one's UAR finds
                        # the identity no longer registered (TS 29.228: the HSS answers
                        # DIAMETER_ERROR_IDENTITY_NOT_REGISTERED) and answers 403. The
                        # de-registration took effect; the end's census checks that.
                        op, ok = "deregister-answered-403", True
                else:
                    op, ok, detail = await network_deregisters(i, ue)
            if not ok:
                failed(i, op, detail)
                return
            done += 1
            ops[op] = ops.get(op, 0) + 1

    restarter: asyncio.Task | None = None
    hss_restarter: asyncio.Task | None = None
    mover: asyncio.Future | None = None
    crashes_of: list[_Crashes] = []  # the I-CSCF's and the P-CSCF's
    try:
        for ue in ues:
            await ue.start()
        lost_first = _lose_a_fifth(net, ues, seed)
        if scscf_moves:
            assert isinstance(net, TwoScscfs) and net.second is not None
            loss_rng5 = random.Random(seed + 37)
            for transport in net.second.endpoint.transports:
                if transport.name == "udp":
                    _lossy_socket(transport, loss_rng5, dropped, "S-CSCF 2")
            mover = asyncio.ensure_future(_moves(net, partition, random.Random(seed + 41), ops))
        if restarts is not None:
            loss_rng2 = random.Random(seed + 11)

            def lossy_scscf(instance: int) -> None:
                # the new S-CSCF's UDP legs as lossy as the old one's
                server = net.scscf if instance == 1 else net.scscf_others[instance - 2]
                for transport in server.endpoint.transports:
                    if transport.name == "udp":
                        _lossy_socket(transport, loss_rng2, dropped, f"S-CSCF#{instance}")

            restarter = asyncio.ensure_future(restarts.loop(net, lossy_scscf))
        if hss_restarts:
            hss_restarter = asyncio.ensure_future(_hss_restarts(net, random.Random(seed + 17), ops))
        if icscf_restarts:
            loss_rng3 = random.Random(seed + 19)

            def lossy_icscf() -> None:
                for transport in net.icscf.endpoint.transports:
                    if transport.name == "udp":
                        _lossy_socket(transport, loss_rng3, dropped, "I-CSCF")
                if scscf_moves:  # (the new one as cut off as the old one was)
                    partition.install(net)

            crashes_of.append(
                _Crashes(net, "icscf", (3.0, 12.0), random.Random(seed + 23), ops, lossy_icscf)
            )
        if pcscf_restarts or pcscf_handoffs:
            loss_rng4 = random.Random(seed + 29)

            def lossy_pcscf() -> None:
                # the new P-CSCF's Gm (clear and ESP) and Mw legs as lossy as the old one's
                _lossy_socket(net.pcscf.udp, loss_rng4, dropped, "P-CSCF")
                net.pcscf.send_protected = _lossy(
                    net.pcscf.send_protected, loss_rng4, dropped, "P-CSCF (ESP)"
                )

            crashes_of.append(
                # the first within the steps (five UEs' six steps take 10 s or so when
                # nothing goes wrong: a first crash after 10-25 s missed most seeds)
                _Crashes(
                    net,
                    "pcscf",
                    # (a handoff loses nothing a UE sees: as often as the I-CSCF's crashes)
                    (3.0, 12.0) if pcscf_handoffs else (10.0, 25.0),
                    random.Random(seed + 31),
                    ops,
                    lossy_pcscf,
                    first=(1.0, 6.0),
                    planned=pcscf_handoffs,
                )
            )
        await asyncio.gather(*(life(i, ue) for i, ue in enumerate(ues)))
        if mover is not None:
            mover.cancel()
            await asyncio.gather(mover, return_exceptions=True)
            partition.heal()  # (for the end's de-registrations)
            ops["scscf-partition-lost"] = partition.lost
        if restarter is not None:
            restarter.cancel()
            await asyncio.gather(restarter, return_exceptions=True)
            ops["scscf-restart"] = restarts.done
            ops["scscf-crash"] = restarts.crashes
            if restarts.long_downs:
                ops["scscf-long-down"] = restarts.long
            if restarts.store_cuts:
                ops["scscf-store-cut"] = restarts.cuts
            # one cancelled while it was down is started again, for the end's steps
            for n in range(1, restarts.instances + 1):
                if (net.scscf if n == 1 else net.scscf_others[n - 2]) is None:
                    await net.restart_scscf(restarts.store(n), instance=n)
                    lossy_scscf(n)
        for c in crashes_of:
            await c.stop()
        if hss_restarter is not None:
            hss_restarter.cancel()
            await asyncio.gather(hss_restarter, return_exceptions=True)
            if net.hss_proc is None:  # killed when the steps ended: back for the end
                await net.start_hss_process()
        for i, ue in enumerate(ues):
            # a refresh the UE started by itself (short grants) ends first; after a
            # P-CSCF restart it runs out (Timer F) and a new registration follows
            wait = 80 if pcscf_restarts else 40
            if not await eventually(lambda ue=ue: ue.core.state not in _UNDER_WAY, wait):
                failed(i, "final deregister", f"still {ue.core.state.value} after {wait} s")
                continue
            if ue.core.state is UeState.REGISTERED:
                result = await ue.deregister(60)
                # (a de-REGISTER run out under crashes: its binding lapses, as in a step)
                if not result.ok and not (crashes and result.status == 408):
                    failed(i, "final deregister", str(result))
            elif ue.core.state is UeState.FAILED:
                if crashes and "timeout" in ue.core.failure:
                    # (a registration it started by itself ran out in the crashes: it
                    # registers again, once, as after a failed step)
                    again = await ue.register(bound)
                    if again.ok:
                        result = await ue.deregister(60)
                        if result.ok or result.status == 408:
                            continue
                failed(i, "final deregister", f"failed: {ue.core.failure}")
        # a restarted UE's old contact lapses at the S-CSCF within a grant
        settle = max(45.0, ue_extra.get("expires", 0) + 35.0) if restart else 45.0
        if not bad and not await eventually(lambda: not _leftovers(net, ues), settle):
            # the P-CSCF's records hold SA parameters, never CK/IK
            records = [repr(r) for r in net.pcscf.core.registrations.values()]
            core = net.scscf.scscf.core if net.scscf and net.scscf.scscf else None
            bindings = {
                impu: sorted(reg.contacts)
                for impu, reg in (core.registrations if core else {}).items()
            }
            bad.append(
                {
                    "left": _leftovers(net, ues),
                    "pcscf_records": records,
                    "scscf_bindings": bindings,
                    # whose challenges are left (IMPI: how many)
                    "scscf_challenges": {
                        impi: len(nonces)
                        for impi, nonces in (core._challenges_by_impi if core else {}).items()
                        if nonces
                    },
                }
            )
            for i in range(n_ues):
                write_ladder(i)
        lost = lost_first["n"] + dropped["n"]
        # what the S-CSCF did across its restarts and instances (where it is in process)
        counted = net.scscf_counters()
        second = getattr(net, "second", None)
        if second is not None and second.scscf is not None:
            counted.update(second.scscf.core.counters)
        seen = {k: counted[k] for k in _SCSCF_SEEN if counted[k]}
        counted = net.pcscf_counters()
        pcscf_seen = {k: counted[k] for k in _PCSCF_SEEN if counted[k]}
        # (the running I-CSCF's only: a restarted one starts from nothing)
        counted = net.icscf.icscf.counters if net.icscf and net.icscf.icscf else {}
        icscf_seen = {k: counted[k] for k in _ICSCF_SEEN if counted.get(k)}
        # what the running P-CSCF dropped, by reason (a message it took and let go
        # shows here, not in the ladders, which carry what was sent)
        pcscf_drops = dict(net.pcscf.core.drops) if net.pcscf and net.pcscf.core else {}
        if net.pcscf is not None:  # and what its edge could not send or took from ESP
            edge = net.pcscf.stats()
            pcscf_drops.update(edge["esp_drops"])
            if edge["replies_not_sent"]:
                pcscf_drops["replies-not-sent"] = edge["replies_not_sent"]
        # what the UEs running at the end dropped, by reason (a restarted UE's are gone)
        ue_drops: dict[str, int] = {}
        for ue in ues:
            for reason, n in (ue.core.drops if ue.core is not None else {}).items():
                ue_drops[reason] = ue_drops.get(reason, 0) + n
        return {
            "seed": seed, "scscf": scscf, "steps": done, "ops": ops, "lost": lost, "bad": bad,
            "scscf_seen": seen, "pcscf_seen": pcscf_seen, "icscf_seen": icscf_seen,
            "pcscf_drops": pcscf_drops, "ue_drops": ue_drops,
        }  # fmt: skip
    finally:
        for task in (restarter, hss_restarter, mover, *(c.task for c in crashes_of)):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for ue in ues:
            await ue.close()
        await net.stop()
        cfg = net.config.pcscf if net.config is not None else None
        if cfg is not None and cfg.state_store:  # the run's records, not left behind
            from imsaka.cscf.pcscf_store import PcscfStateStore

            store = PcscfStateStore(cfg.state_store, f"{cfg.name}@{cfg.address}:{cfg.port}")
            await store.clear()
            await store.close()


async def _moves(net: TwoScscfs, partition: Partition, rng: random.Random, ops: dict) -> None:
    """`--scscf-moves`: every 2-8 s the I-CSCF loses its way to one of the two S-CSCFs
    for 3-10 s (both keep their Diameter to the HSS and their way to the P-CSCF): the
    REGISTERs of the users served there move to the other (`[icscf].scscf_timeout`)."""
    log = logging.getLogger("lifecycle_chaos")
    ports = (net.config.scscf.port, net.second_port)
    while True:
        await asyncio.sleep(rng.uniform(2.0, 8.0))
        port = rng.choice(ports)
        partition.cut(port)
        ops["scscf-partition"] = ops.get("scscf-partition", 0) + 1
        log.info("partition: the I-CSCF cut off from the S-CSCF on port %d", port)
        await asyncio.sleep(rng.uniform(3.0, 10.0))
        partition.heal()
        log.info("partition healed")


async def _second_devices(net: Network, subs: list) -> list:
    """A second IMPI (``tablet.`` before the first's) for each subscription of `subs`,
    sharing its IMPUs and credentials: the tablets' subscribers, in `subs`' order."""
    from dataclasses import replace

    from imsaka.hss.subscriber import validate_subscriber

    tablets = []
    for phone in subs:
        tablet = replace(phone, impi=f"tablet.{phone.impi}")
        spec = validate_subscriber(
            impi=tablet.impi,
            impus=list(tablet.impus),
            k=tablet.k.hex(),
            **({"opc": tablet.opc.hex()} if tablet.opc else {"op": tablet.op.hex()}),
        )
        await net.hss.store.add_impi(phone.impi, spec)
        tablets.append(tablet)
    return tablets


def _seeds(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


async def main_async(args: argparse.Namespace) -> int:
    failures = 0
    seeds = _seeds(args.seeds)
    for seed in seeds:
        started = time.monotonic()
        try:
            out = await run(
                seed,
                args.ues,
                args.steps,
                args.traces,
                args.expires,
                args.scscf_restarts,
                args.hss_restarts,
                args.icscf_restarts,
                args.pcscf_restarts,
                args.pcscf_handoffs,
                args.pcscf_store,
                args.scscf_instances,
                args.scscf_long_downs,
                args.scscf_store_cuts,
                args.devices,
                args.scscf_moves,
            )
        except Exception:  # a crash of the run itself is a failure of that seed
            out = {"seed": seed, "bad": [traceback.format_exc()[-1500:]]}
        out["seconds"] = round(time.monotonic() - started, 1)
        failures += bool(out["bad"])
        print(json.dumps(out, default=str), flush=True)
    print(json.dumps({"runs": len(seeds), "failed": failures}), flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.e2e.lifecycle_chaos")
    p.add_argument("--seeds", default="1-10", help="A-B (inclusive) or one seed")
    p.add_argument("--ues", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--traces", type=Path, help="write each failed UE's ladder here")
    p.add_argument(
        "--expires",
        type=int,
        default=0,
        help="the S-CSCF's longest grant and the UEs' Expires, in s (default: the product's)",
    )
    p.add_argument(
        "--scscf-restarts",
        default="",
        metavar="REDIS_URL",
        help="keep the S-CSCF's bindings in this Redis and restart it every 3-12 s",
    )
    p.add_argument(
        "--hss-restarts",
        action="store_true",
        help="run the HSS as a process and kill and restart it every 5-15 s",
    )
    p.add_argument(
        "--icscf-restarts",
        action="store_true",
        help="stop the I-CSCF at once every 3-12 s and start it again 0-1 s later",
    )
    p.add_argument(
        "--pcscf-restarts",
        action="store_true",
        help="stop the P-CSCF at once every 10-25 s (first after 1-6 s), start it 0-1 s later "
        "(grants at most 60 s)",
    )
    p.add_argument(
        "--pcscf-handoffs",
        action="store_true",
        help="stop the P-CSCF as SIGTERM does (state_file) every 3-12 s (first after 1-6 s), "
        "start it 0-1 s later; steps held to the no-restart rules",
    )
    p.add_argument(
        "--pcscf-store",
        default="",
        metavar="REDIS_URL",
        help="with --pcscf-restarts: the P-CSCF's registrations in this Redis (state_store)",
    )
    p.add_argument(
        "--scscf-instances",
        type=int,
        default=1,
        metavar="N",
        help="with --scscf-restarts: the S-CSCF as N instances behind one Server-Name "
        "([[scscf.instances]]), one restarted at a time and down for 0-4 s",
    )
    p.add_argument(
        "--scscf-long-downs",
        action="store_true",
        help="with --scscf-instances: one restart in four keeps its instance "
        f"down 10-20 s (the others take its subscriptions over after {LONG_DOWN_TAKE_OVER} s)",
    )
    p.add_argument(
        "--scscf-store-cuts",
        action="store_true",
        help="with --scscf-instances: about one event in two cuts one instance off "
        "from Redis for 3-15 s instead of restarting it",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: each subscription also a tablet IMPI sharing its IMPUs, a UE of its own",
    )
    p.add_argument(
        "--scscf-moves",
        action="store_true",
        help="a second S-CSCF of its own Server-Name; every 2-8 s the I-CSCF loses its way "
        "to one of the two for 3-10 s, and the REGISTERs of its users move to the other",
    )
    args = p.parse_args(argv)
    if args.scscf_moves and args.scscf_restarts:
        p.error("--scscf-moves and --scscf-restarts: one or the other")
    if args.devices > 1 and args.hss_restarts:
        p.error("--devices 2 provisions the tablets in process: not with --hss-restarts")
    if args.scscf_store_cuts and args.scscf_instances < 2:
        p.error("--scscf-store-cuts needs --scscf-instances 2 or more")
    if args.scscf_long_downs and args.scscf_instances < 2:
        p.error("--scscf-long-downs needs --scscf-instances 2 or more")
    if args.scscf_instances > 1 and not args.scscf_restarts:
        p.error("--scscf-instances needs --scscf-restarts (their shared Redis)")
    if args.pcscf_restarts and args.pcscf_handoffs:
        p.error("--pcscf-restarts and --pcscf-handoffs: one or the other")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
