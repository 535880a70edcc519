"""The HSS process: Diameter Cx server (TS 29.228/29.229) plus the REST provisioning API.

`HssServer(config)` with ``await start()`` / ``await stop()`` runs in any event loop
(the demo wires it in-process); `run(config)` is ``imsaka run hss -c imsaka.toml``:
it validates ``[hss]`` of the whole-network TOML, runs until SIGINT/SIGTERM and
returns an exit code.

Only configured Diameter peers are served (`DiameterNode` refuses any other CER
with 3010). HSS-initiated requests go to the serving S-CSCF's Diameter host (the
Origin-Host of the SAR that assigned it): RTR for administrative
de-registration (TS 29.228 §6.1.3), PPR for a changed profile (§6.2.2).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from imsaka.clierror import CliError
from imsaka.diameter import cx
from imsaka.diameter.errors import DiameterRequestError
from imsaka.diameter.node import DiameterNode, NodeConfig, PeerSpec
from imsaka.hss.config import HssConfig, parse_hss_config
from imsaka.hss.models import RegState
from imsaka.hss.service import CxService
from imsaka.hss.store import HssStore, NotFound

__all__ = ["HssServer", "HssStartError", "run"]

log = logging.getLogger("imsaka.hss")


class HssStartError(CliError):
    """The HSS cannot start (store, port); the message names the ``[hss]`` field."""


# Seconds between the tries of an RTR NEW_SERVER_ASSIGNED the old S-CSCF did not take
# (`HssServer._tell_moved`): about 20 minutes in all, then its binding lapses there.
MOVED_RETRIES: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 300.0, 300.0, 300.0)


class HssServer:
    """One HSS: store + Cx service on a `DiameterNode` + optional REST API (uvicorn)."""

    def __init__(
        self,
        config: HssConfig,
        *,
        store: HssStore | None = None,
        rand_source: Callable[[int], bytes] | None = None,
        observers: tuple[Any, ...] = (),
    ) -> None:
        self.config = config
        self.store: HssStore = store  # type: ignore[assignment]
        self._own_store = store is None
        self._rand_source = rand_source
        self._observers = observers
        self.node: DiameterNode | None = None
        self.service: CxService | None = None
        self._api_server: Any = None
        self._api_task: asyncio.Task | None = None
        self._api_socket: socket.socket | None = None
        self._session_counter = 0
        self.diameter_port: int | None = None
        self.api_port: int | None = None
        # Server-Name -> the Diameter hosts heard sending SARs with it (`_heard_from`)
        self._scscf_hosts: dict[str, dict[str, None]] = {}
        self._moves: set[asyncio.Task] = set()  # RTRs NEW_SERVER_ASSIGNED under way

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        if self.store is None:
            try:
                self.store = await HssStore.open(cfg.database)
            except (SQLAlchemyError, OSError) as exc:
                orig = getattr(exc, "orig", None) or exc
                first = (str(orig).splitlines() or [type(orig).__name__])[0]
                raise HssStartError(
                    f"[hss].database: cannot open the store: {first[:200]}"
                ) from None
        await self.store.sync_scscf_pool(
            [
                {
                    "name": e.name,
                    "diameter_host": e.diameter_host,
                    "mandatory_capabilities": e.mandatory_capabilities,
                    "optional_capabilities": e.optional_capabilities,
                }
                for e in cfg.scscfs
            ]
        )
        kwargs = {} if self._rand_source is None else {"rand_source": self._rand_source}
        self.service = CxService(self.store, cfg, **kwargs)
        self.service.on_moved = self._moved
        self.node = DiameterNode(
            NodeConfig(
                origin_host=cfg.diameter_host,
                origin_realm=cfg.diameter_realm,
                peers=tuple(
                    PeerSpec(host=p.host, address=p.address, port=p.port) for p in cfg.peers
                ),
                listen_address=cfg.diameter_address,
                listen_port=cfg.diameter_port,
                watchdog_interval=cfg.watchdog,
                request_timeout=cfg.request_timeout,
                host_ip_addresses=(cfg.diameter_address,),
                owner="hss",
            )
        )
        for obs in self._observers:
            self.node.add_observer(obs)
        self.node.set_request_handler(self._on_request)
        node = self.node
        # A write may commit without the worker's hop only while it is the one request
        # being handled (those read together share a group commit): no other handler
        # Task, and no request behind it in the same read.
        self.store.alone = lambda: node.requests_in_hand <= 1
        try:
            try:
                await self.node.start()
            except OSError as exc:
                raise HssStartError(
                    f"[hss].diameter_port: cannot listen on {cfg.diameter_address}:{cfg.diameter_port}: {exc.strerror or exc}"
                ) from None
            self.diameter_port = self.node.port
            if cfg.api_port:
                await self._start_api()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "HSS %s listening: Diameter %s:%s, API %s",
            cfg.diameter_host,
            cfg.diameter_address,
            self.diameter_port,
            cfg.api_url() if cfg.api_port else "off",
        )

    async def _start_api(self) -> None:
        import uvicorn

        from imsaka.hss.api import create_app

        assert self.config.api_token is not None
        app = create_app(self, self.config.api_token)

        class _Server(uvicorn.Server):
            # Signals belong to run() (or to the demo), not to uvicorn.
            def capture_signals(self):  # type: ignore[override]
                import contextlib

                return contextlib.nullcontext()

        ucfg = uvicorn.Config(
            app,
            host=self.config.api_address,
            port=self.config.api_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = _Server(ucfg)
        self._api_server = server
        # Bind here, so a port in use is our one-line error (uvicorn would sys.exit).
        family = socket.AF_INET6 if ":" in self.config.api_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.api_address, self.config.api_port))
        except OSError as exc:
            sock.close()
            raise HssStartError(
                f"[hss].api_port: cannot listen on {self.config.api_address}:{self.config.api_port}: {exc.strerror or exc}"
            ) from None
        self._api_socket = sock
        self._api_task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name="hss-api"
        )
        deadline = time.monotonic() + 10
        while not server.started:
            if self._api_task.done():
                exc = self._api_task.exception()
                raise HssStartError(
                    f"[hss].api_port: REST API did not start on {self.config.api_address}:{self.config.api_port}"
                    f" ({exc or 'port in use?'})"
                )
            if time.monotonic() > deadline:
                raise HssStartError("[hss].api_port: REST API did not start within 10 s")
            await asyncio.sleep(0.01)
        sockets = [s for srv in server.servers for s in srv.sockets]
        self.api_port = sockets[0].getsockname()[1] if sockets else self.config.api_port

    async def stop(self) -> None:
        for task in list(self._moves):
            task.cancel()
        if self._moves:
            await asyncio.gather(*self._moves, return_exceptions=True)
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_task is not None:
                try:
                    await asyncio.wait_for(self._api_task, 5)
                except (TimeoutError, asyncio.CancelledError, Exception):
                    self._api_task.cancel()
            self._api_server = None
            self._api_task = None
        if self._api_socket is not None:
            self._api_socket.close()
            self._api_socket = None
        if self.node is not None:
            await self.node.stop()
            self.node = None
        if self.store is not None and self._own_store:
            await self.store.close()
            self.store = None  # type: ignore[assignment]

    async def __aenter__(self) -> HssServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ Cx

    def census(self) -> dict[str, int]:
        """Outstanding Diameter work, for leak checks and metrics."""
        if self.node is None:
            return {}
        return {f"diameter_{k}": v for k, v in self.node.pending_counts().items()}

    def _on_request(self, request: Any, peer: Any) -> Any:
        """A plain-function request handler: the answer, sent at once when the Cx
        service can give it without waiting (UAR, LIR, an AKA MAR, a registering SAR,
        read and committed on the loop's SQLite connection), else the awaitable the node
        runs in a Task."""
        assert self.service is not None
        if type(request) is cx.ServerAssignmentRequest:
            self._heard_from(request.server_name, request.origin_host)
        return self.service.respond(request)

    def _heard_from(self, server_name: str | None, host: str | None) -> None:
        """Which Diameter hosts serve a Server-Name (several for the instances of one
        S-CSCF sharing a binding store): an RTR or PPR the last SAR's instance cannot
        take goes to another (`_send_to_scscf`)."""
        if not server_name or not host:
            return
        hosts = self._scscf_hosts.get(server_name)
        if hosts is None:
            if len(self._scscf_hosts) >= 256:
                self._scscf_hosts.clear()
            self._scscf_hosts[server_name] = hosts = {}
        if host not in hosts and len(hosts) < 16:
            hosts[host] = None

    def _session_id(self) -> str:
        self._session_counter += 1
        return (
            f"{self.config.diameter_host};{int(time.time())};{os.getpid()};{self._session_counter}"
        )

    async def _send(self, request: Any, host: str) -> dict[str, Any]:
        assert self.node is not None
        try:
            answer = await self.node.request(
                request, peer=host, timeout=self.config.request_timeout
            )
        except (DiameterRequestError, TimeoutError) as exc:
            reason = getattr(exc, "reason", "timeout")
            log.warning("%s to %s failed: %s", type(request).__name__, host, reason)
            return {"sent": True, "to": host, "ok": False, "error": str(reason)}
        return {"sent": True, "to": host, "ok": answer.is_success, "result": answer.result}

    async def deregister_impu(
        self,
        impu: str,
        reason_info: str | None = None,
        reason: cx.ReasonCode = cx.ReasonCode.PERMANENT_TERMINATION,
    ) -> dict[str, Any]:
        """Administrative de-registration of the implicit set of ``impu`` (RTR naming
        that set's IMPUs, TS 29.228 §6.1.3; every IMPI of the subscription as User-Name
        and Associated-Identities, for any device may hold it). The subscription's other
        implicit sets stay registered, and another device that registered one of them
        hears nothing. `reason` SERVER_CHANGE asks the UE to register again (at an
        S-CSCF chosen anew); PERMANENT_TERMINATION, the default, not to."""
        info, state = await self.store.serving_for_set(impu)
        if state is RegState.NOT_REGISTERED:
            return {"sent": False, "reason": "not registered"}
        # Only this set goes (the S-CSCF name too when no other set is served).
        clear = partial(
            self.store.assign,
            impu,
            state=RegState.NOT_REGISTERED,
            server_name=None,
            keep_server=False,
            want_set=False,
        )
        return await self._deregister(info, reason_info, reason, clear=clear)

    async def deregister_impi(
        self,
        impi: str,
        reason_info: str | None = None,
        reason: cx.ReasonCode = cx.ReasonCode.PERMANENT_TERMINATION,
        *,
        this_impi_only: bool = False,
    ) -> dict[str, Any]:
        """RTR for the subscription of `impi`: every IMPI of it (User-Name and
        Associated-Identities, TS 29.228 §6.1.3), or with `this_impi_only` (the IMPI is
        being deleted) `impi`'s registrations alone."""
        info = await self.store.serving_for_impi(impi)
        if this_impi_only and info.impis != (impi,):
            # The other IMPIs' registrations stay, and so does the state the HSS holds
            # for the IMPUs they share (kept per implicit set, not per IMPI).
            info = replace(info, impis=(impi,))
            return await self._deregister(info, reason_info, reason, clear=None)
        clear = partial(self.store.deregister_subscription, info.subscription_id)
        return await self._deregister(info, reason_info, reason, clear=clear)

    async def _deregister(
        self,
        info: Any,
        reason_info: str | None,
        reason: cx.ReasonCode,
        *,
        clear: Callable[[], Awaitable[Any]] | None,
    ) -> dict[str, Any]:
        """RTR for `info`, then `clear()` (when given) the HSS's registration state of
        what it named."""
        if not info.scscf_name:
            return {"sent": False, "reason": "not registered"}
        host = info.scscf_host or (await self.store.scscf_host_for(info.scscf_name))
        if not host:
            if clear is not None:
                await clear()
            return {"sent": False, "reason": "serving S-CSCF has no Diameter host; state cleared"}
        assert self.service is not None
        rtr = partial(
            self.service.rtr,
            destination_realm=info.scscf_realm,
            impis=info.impis,
            impus=info.impus,
            reason=reason,
            reason_info=reason_info or "administrative de-registration",
        )
        result = await self._send_to_scscf(rtr, host, info.scscf_name)
        # The operator asked for it: the HSS forgets the registration whether or
        # not the S-CSCF answered (it would otherwise keep serving a ghost).
        if clear is not None:
            await clear()
        return result

    def _moved(self, impi: str, name: str, host: str | None, realm: str | None) -> None:
        """`CxService.on_moved`: the subscription of `impi`, registered at S-CSCF `name`,
        was just registered at another one (the I-CSCF chose anew when `name` did not
        answer). `name` is told to drop what it holds of it (`_tell_moved`)."""
        if len(self._moves) >= 1000:  # (a storm of moves: the rest lapse there)
            self.service.counters["rtr_new_server_not_sent"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._tell_moved(impi, name, host, realm))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def _tell_moved(self, impi: str, name: str, host: str | None, realm: str | None) -> None:
        """RTR with Reason-Code NEW_SERVER_ASSIGNED (TS 29.229 §6.3.17) to the S-CSCF
        the subscription of `impi` moved from, naming its IMPUs (TS 29.228 §6.1.3: that
        reason names them) and IMPIs, `impi` (the one that moved) as User-Name. That
        S-CSCF ends what it holds of `impi` without telling its UE the registration
        ended (it lives on at the new one), and tells the subscription's other devices
        registered there to register again (TS 24.229 §5.4.1.5, "deactivated"); the
        HSS's state, now the new S-CSCF's, is not touched. Unanswered (the old one
        down, or cut off from its store), it is sent again after each wait of `MOVED_RETRIES` while the
        subscription stays registered elsewhere: an S-CSCF that comes back on its
        Redis store otherwise holds the registration until it lapses there, and tells
        the subscriptions it kept that the registration ended (its de-registration SAR
        changes nothing here, `CxService.sar`)."""
        assert self.service is not None
        counters = self.service.counters
        for wait in (0.0, *MOVED_RETRIES):
            if wait:
                await asyncio.sleep(wait)
            try:
                info = await self.store.serving_for_impi(impi)
                if not info.impus or not info.scscf_name or info.scscf_name == name:
                    return  # (de-registered since, or moved back: nothing to take)
                host = host or await self.store.scscf_host_for(name)
                if not host:
                    return
                rtr = partial(
                    self.service.rtr,
                    destination_realm=realm,
                    # The mover first, as User-Name: the old S-CSCF lets its devices go
                    # quietly and tells the others' (Associated-Identities) to register
                    # again, which now takes them to the new one.
                    impis=(impi, *(i for i in info.impis if i != impi)),
                    impus=info.impus,
                    reason=cx.ReasonCode.NEW_SERVER_ASSIGNED,
                    reason_info="registered at another S-CSCF",
                )
                result = await self._send_to_scscf(rtr, host, name)
                if result.get("ok"):
                    counters["rtr_new_server_sent"] += 1
                    return
                counters["rtr_new_server_failed"] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (the store, a closed node): tried again
                counters["rtr_new_server_failed"] += 1
                log.warning("RTR NEW_SERVER_ASSIGNED for %s to %s: %s", impi, name, exc)
        counters["rtr_new_server_given_up"] += 1

    async def push_profile(self, impi: str) -> dict[str, Any]:
        """PPR with the new User-Data to the S-CSCF serving ``impi`` (if any)."""
        try:
            info = await self.store.serving_for_impi(impi)
        except NotFound:
            return {"sent": False, "reason": "unknown"}
        if not info.scscf_name or not info.impus:
            return {"sent": False, "reason": "not registered"}
        host = info.scscf_host or (await self.store.scscf_host_for(info.scscf_name))
        if not host:
            return {"sent": False, "reason": "serving S-CSCF has no Diameter host"}
        assert self.service is not None
        # One PPR per implicit set the S-CSCF holds, each with that set's User-Data
        # (what its SAA carried, TS 29.228 §6.1.4): a set's document lists its own
        # IMPUs and services only.
        view = await self.store.get_subscriber(impi)
        held = {
            u.implicit_set: u.identity
            for u in view.impus
            if u.reg_state is not RegState.NOT_REGISTERED
        }
        results = []
        for impu in held.values() or (info.impus[0],):
            user_data, _ = await self.store.user_data(impi, impu)
            ppr = partial(
                self.service.ppr,
                destination_realm=info.scscf_realm,
                impi=impi,
                user_data=user_data,
            )
            results.append(await self._send_to_scscf(ppr, host, info.scscf_name))
        # (each set its own outcome: the first failure is the one reported)
        return next((r for r in results if not r.get("ok")), results[-1])

    async def _send_to_scscf(
        self, make: Callable[..., Any], host: str, server_name: str
    ) -> dict[str, Any]:
        """The request `make(session_id=…, destination_host=host)` builds, sent to
        `host`; if it cannot be delivered there (no connection, no answer, or an answer
        3004 DIAMETER_TOO_BUSY: an instance cut off from its binding store), to each
        other instance of the S-CSCF `server_name`, in turn."""

        def request(to: str) -> Any:
            return make(session_id=self._session_id(), destination_host=to)

        result = await self._send(request(host), host)
        heard = list(self._scscf_hosts.get(server_name, ()))
        configured = [h for name, h in self.config.scscf_instances if name == server_name]
        others = [h for h in dict.fromkeys(heard + configured) if h != host]
        for other in others:
            if result.get("ok") or (
                "result" in result and result["result"] != cx.DIAMETER_TOO_BUSY
            ):
                break  # answered: the S-CSCF's say (TOO_BUSY: try another, RFC 6733 §7.1.3)
            result = await self._send(request(other), other)
        return result


def run(config: Mapping[str, Any]) -> int:
    """``imsaka run hss``: start from the whole-network TOML dict, serve until a signal."""
    hss_config = parse_hss_config(config, base_dir=None)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional speed-up
        return asyncio.run(serve(HssServer(hss_config), hss_config))
    # Outside the try: an ImportError raised while serving must not start a second HSS.
    return uvloop.run(serve(HssServer(hss_config), hss_config))


async def serve(server: HssServer, config: HssConfig) -> int:
    """Start `server`, print its ``hss: Diameter ...`` line, wait for SIGINT/SIGTERM, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()  # HssStartError: one line naming the field, exit 2
    # Everything built so far (modules, tables, the store's engine) out of the cyclic
    # collector's sight, so its older-generation passes walk only what serving builds.
    gc.collect()
    gc.freeze()
    print(
        f"hss: Diameter {config.diameter_host} on {config.diameter_address}:{server.diameter_port}"
        + (f", REST API on {config.api_address}:{server.api_port}" if server.api_port else ""),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
