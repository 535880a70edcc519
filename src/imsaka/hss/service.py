"""The HSS side of Cx: UAR, MAR, SAR, LIR handlers and RTR/PPR builders.

TS 29.228 §6.1.1 (UAR: registration status query), §6.1.2 (SAR: S-CSCF
registration/de-registration notification), §6.1.3 (RTR: network-initiated
de-registration), §6.1.4 (LIR: user location query), §6.2.2 (PPR: HSS-initiated
update of user information), §6.3 (MAR: authentication), §6.5 (implicit
registration sets); result codes from TS 29.229 §6.2. Vectors per TS 33.102
§6.3.2 (Milenage, `imsaka.aka`), resynchronisation per TS 33.102 §6.3.5 with
MAC-S checked (`imsaka.aka.resync.recover_sqn_ms`) before SQN_HE may move.

`CxService.handle(request)` takes a decoded Cx request (an `imsaka.diameter.cx`
dataclass) and returns its answer. Bad identities, wrong schemes and malformed
values give the TS 29.229 Result-Code or Experimental-Result; an unexpected store
failure gives DIAMETER_UNABLE_TO_COMPLY and is logged; nothing raises out of here.

`CxService.respond(request)` gives the same answer at once when no step of it waits
(a UAR, a LIR, an AKA MAR, a REGISTRATION / RE_REGISTRATION / RESTORATION SAR, read
and, for MAR and SAR, committed in a transaction of their own on the SQLite file's
event-loop connection while no other request is being handled: `HssStore.*_now`), else
the awaitable of `handle`; the `DiameterNode` then runs that in a Task. The decisions
after each read are shared by both ways, so answers and counters do not depend on the
way taken.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from typing import Any

from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsError, AutsMacError, recover_sqn_ms
from imsaka.aka.vectors import generate_vectors
from imsaka.diameter import codec, cx
from imsaka.hss.config import HssConfig
from imsaka.hss.models import RegState
from imsaka.hss.store import (
    IND_BITS,
    MAX_SEQ,
    WAIT,
    HssStore,
    IdentityCheck,
    MarGrant,
    NotFound,
    SqnExhausted,
    UserState,
)
from imsaka.sip.uri import split_unquoted, unquote

__all__ = ["AKA_SCHEMES", "CxService"]

log = logging.getLogger("imsaka.hss.cx")

AKA_SCHEMES = (cx.SCHEME_AKAV1_MD5, cx.SCHEME_AKAV2_MD5)
_AKA_OR_UNKNOWN = frozenset((*AKA_SCHEMES, cx.SCHEME_UNKNOWN))
MILENAGE_CACHE = 4096
SAT = cx.ServerAssignmentType
UAT = cx.UserAuthorizationType
# Members every UAR tests, as globals: an Enum class's attribute is read through
# EnumType's __getattr__ hook, a few hundred instructions each time.
_UAT_REGISTRATION, _UAT_DE_REGISTRATION = UAT.REGISTRATION, UAT.DE_REGISTRATION
_UATS = frozenset(UAT)  # TS 29.229 §6.3.24: the values a UAR may carry
_SATS = {int(t): t for t in SAT}  # by value: a lookup, not an Enum call per SAR
# Server-Assignment-Types that register the implicit set and the sender as its S-CSCF.
_REGISTERING = frozenset((SAT.REGISTRATION, SAT.RE_REGISTRATION, SAT.RESTORATION))
# Those that always write (a RE_REGISTRATION reads first: usually nothing changes).
_ASSIGNING = frozenset((SAT.REGISTRATION, SAT.RESTORATION))


def _always(_state: UserState) -> bool:
    return True


# Server-Assignment-Types that end a registration, and whether the S-CSCF name stays.
_DEREGISTRATIONS = {
    SAT.TIMEOUT_DEREGISTRATION: False,
    SAT.USER_DEREGISTRATION: False,
    SAT.ADMINISTRATIVE_DEREGISTRATION: False,
    SAT.DEREGISTRATION_TOO_MUCH_DATA: False,
    SAT.TIMEOUT_DEREGISTRATION_STORE_SERVER_NAME: True,
    SAT.USER_DEREGISTRATION_STORE_SERVER_NAME: True,
}


def _identity_error(check: IdentityCheck) -> int:
    """TS 29.228 §6.1.1.1 / §6.3.1: unknown identity → 5001, not together → 5002."""
    if not (check.impi_known and check.impu_known):
        return cx.DIAMETER_ERROR_USER_UNKNOWN
    return cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH


def _unchanged(state: UserState, req: cx.ServerAssignmentRequest) -> bool:
    """A RE_REGISTRATION SAR that would write nothing: the implicit set is registered
    (one state for the whole set, TS 29.228 §6.5) to this very S-CSCF and no other
    S-CSCF is pending for the IMPI. Answered from the read alone, without a transaction
    (the store's write plan would find every row already as the SAR asks)."""
    return (
        state.reg_state == RegState.REGISTERED
        and state.pending_scscf is None
        and state.scscf_name == req.server_name
        and state.scscf_host == req.origin_host
        and state.scscf_realm == req.origin_realm
    )


def network_name(visited: str) -> str:
    """The network a Visited-Network-Identifier names, lower-cased for comparison.

    It carries the P-Visited-Network-ID value (AVP 600, TS 29.229 §6.3.1), a token or a
    quoted-string, parameters after it (RFC 7315 §4.3). Our I-CSCF sends the bare name;
    Kamailio's copies the header's text (seen in tests/e2e/test_kamailio_icscf.py): a
    quoted-string names the network its content names. (A bare name is compared whole:
    it may hold what a quoted-string held, ';' included.)"""
    v = visited.strip()
    if v.startswith('"'):
        v = unquote(split_unquoted(v, ";")[0].strip())
    return v.lower()


class CxService:
    """Answers Cx requests from the store. One instance per HSS process."""

    def __init__(
        self,
        store: HssStore,
        config: HssConfig,
        *,
        rand_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.store = store
        self.config = config
        self.rand_source = rand_source
        self.counters: Counter[str] = Counter()
        # Told of each registering SAR that took a registered subscription from another
        # S-CSCF: (IMPI, the Server-Name, Diameter host and realm before). The HSS
        # server sends that S-CSCF an RTR NEW_SERVER_ASSIGNED (TS 29.229 §6.3.17).
        self.on_moved: Callable[[str, str, str | None, str | None], None] | None = None
        # Milenage objects (K's AES key schedule) per credential pair, most recent
        # last: building one costs more than a whole vector. Event-loop thread only.
        self._milenage: dict[tuple[bytes, bytes], Milenage] = {}
        self._realms = frozenset(r.lower() for r in (config.diameter_realm, *config.home_networks))
        # Visited networks every subscriber may roam from (plus each one's own list).
        self._roaming = frozenset(
            n.lower() for n in (*config.home_networks, *config.visited_networks)
        )
        self._handlers: dict[type, Callable[[Any], Any]] = {
            cx.UserAuthorizationRequest: self.uar,
            cx.MultimediaAuthRequest: self.mar,
            cx.ServerAssignmentRequest: self.sar,
            cx.LocationInfoRequest: self.lir,
        }
        # The same requests answered at once (None: this one has to wait after all).
        self._now: dict[type, Callable[[Any], Any]] = {
            cx.UserAuthorizationRequest: self._uar_now,
            cx.MultimediaAuthRequest: self._mar_now,
            cx.ServerAssignmentRequest: self._sar_now,
            cx.LocationInfoRequest: self._lir_now,
        }

    # ------------------------------------------------------------------ dispatch

    def respond(self, request: Any) -> Any:
        """The answer to ``request`` if nothing has to wait for it, else the awaitable
        of the answer (`handle`'s). A `DiameterNode` request handler of its own: answers
        are sent at once, awaitables run in a Task.

        At once: a refused command or realm; and, when the store reads (and commits)
        them right now on the event loop's sqlite3 connection, a UAR, a LIR (but for
        one with neither a serving S-CSCF nor capabilities asked for), an AKA MAR
        without resync and a registering SAR. Anything else (resync, SIP Digest, other
        SARs, PostgreSQL, a busy database, other requests being handled: they share a
        group commit) takes the async way, which reads again from the start: nothing was
        counted or written before it was given up, and the answer is the one `handle`
        gives."""
        handler = self._handlers.get(type(request))
        refused = self._refused(request, handler)
        if refused is not None:
            return refused
        now = self._now.get(type(request))
        if now is not None:
            try:
                answer = now(request)
            except Exception:  # the same read raised in `handle`: the same answer
                return self._failed(request)
            if answer is not None:
                return answer
        return self._handle(handler, request)

    async def handle(self, request: Any) -> Any:
        handler = self._handlers.get(type(request))
        refused = self._refused(request, handler)
        if refused is not None:
            return refused
        return await self._handle(handler, request)

    def _refused(self, request: Any, handler: Any) -> Any:
        """The protocol error for a request this HSS does not serve, else None."""
        if handler is None:
            # RTR/PPR are HSS → S-CSCF only; receiving one is a peer's mistake.
            self.counters["command-unsupported"] += 1
            return self._protocol_error(request, cx.DIAMETER_COMMAND_UNSUPPORTED)
        realm = (request.destination_realm or "").lower()
        if realm not in self._realms:
            # RFC 6733 §6.1.8: we serve our own realm(s) only and relay nothing.
            self.counters["realm-not-served"] += 1
            return self._protocol_error(request, codec.DIAMETER_REALM_NOT_SERVED)
        return None

    async def _handle(self, handler: Callable[[Any], Any], request: Any) -> Any:
        try:
            return await handler(request)
        except Exception:  # the server keeps serving whatever the store did
            return self._failed(request)

    def _failed(self, request: Any) -> Any:
        self.counters["unable-to-comply"] += 1
        log.exception("Cx %s failed", type(request).__name__)
        return self._error(request, result_code=cx.DIAMETER_UNABLE_TO_COMPLY)

    def _protocol_error(self, request: Any, code: int) -> codec.Message:
        """A 3xxx answer: RFC 6733 §7.1.3 wants the E bit, which only the codec sets."""
        self.counters[f"error-{code}"] += 1
        return codec.error_answer(
            request.to_message(), code, self.config.diameter_host, self.config.diameter_realm
        )

    def _answer(self, request: Any, **fields: Any) -> Any:
        return request.answer(
            origin_host=self.config.diameter_host, origin_realm=self.config.diameter_realm, **fields
        )

    def _error(
        self,
        request: Any,
        *,
        result_code: int | None = None,
        experimental: int | None = None,
        **extra: Any,
    ) -> Any:
        self.counters[f"error-{result_code or experimental}"] += 1
        if result_code is not None:
            return self._answer(request, result_code=result_code, **extra)
        return self._answer(request, experimental_result_code=experimental, **extra)

    # ------------------------------------------------------------------ UAR

    def _roaming_allowed(self, visited: str, allowed_for_user: tuple[str, ...]) -> bool:
        v = network_name(visited)
        return v in self._roaming or any(v == n.lower() for n in allowed_for_user)

    async def _capabilities(self, state: Any) -> cx.ServerCapabilities:
        return self._server_capabilities(state, await self.store.scscf_pool())

    def _with_capabilities(
        self, req: Any, state: UserState, pool: list[dict[str, Any]], **code: int
    ) -> Any:
        """A UAA/LIA with ``code`` and the Server-Capabilities ``state`` asks of ``pool``."""
        return self._answer(req, **code, server_capabilities=self._server_capabilities(state, pool))

    @staticmethod
    def _server_capabilities(state: Any, pool: list[dict[str, Any]]) -> cx.ServerCapabilities:
        needed = set(state.mandatory_caps)
        names = tuple(
            p["name"]
            for p in pool
            if needed.issubset(set(p["mandatory_capabilities"]) | set(p["optional_capabilities"]))
        )
        return cx.ServerCapabilities(
            mandatory_capabilities=state.mandatory_caps,
            optional_capabilities=state.optional_caps,
            server_names=names,
        )

    async def uar(self, req: cx.UserAuthorizationRequest) -> cx.UserAuthorizationAnswer:
        # UAR only reads (TS 29.228 §6.1.1: no state changes at the HSS): one read,
        # and the S-CSCF pool's for a first registration.
        check, state = await self.store.checked_state(
            req.user_name, req.public_identity, with_pending=True
        )
        answer = self._uaa(req, check, state)
        if answer is None:
            answer = self._uaa_first(req, state, await self.store.scscf_pool())
        return answer

    def _uar_now(self, req: cx.UserAuthorizationRequest) -> cx.UserAuthorizationAnswer | None:
        """`uar` without waiting; None if a read would have to wait."""
        got = self.store.checked_state_now(req.user_name, req.public_identity, with_pending=True)
        if got is WAIT:
            return None
        check, state = got
        answer = self._uaa(req, check, state)
        if answer is None:
            pool = self.store.scscf_pool_now()
            if pool is WAIT:
                return None
            answer = self._uaa_first(req, state, pool)
        return answer

    def _uaa(
        self, req: cx.UserAuthorizationRequest, check: IdentityCheck, state: UserState | None
    ) -> cx.UserAuthorizationAnswer | None:
        """The UAA from the read; None for a first registration (`_uaa_first`)."""
        if not check.matched or state is None:
            return self._error(req, experimental=_identity_error(check))
        emergency = bool((req.uar_flags or 0) & 1)
        if state.barred and not emergency:
            return self._error(req, result_code=cx.DIAMETER_AUTHORIZATION_REJECTED)
        uat = req.user_authorization_type
        if uat is None:
            uat = _UAT_REGISTRATION
        elif uat not in _UATS:
            return self._error(req, result_code=cx.DIAMETER_INVALID_AVP_VALUE)
        if uat != _UAT_DE_REGISTRATION and not self._roaming_allowed(
            req.visited_network_identifier, state.visited_networks
        ):
            self.counters["roaming-refused"] += 1
            return self._error(req, experimental=cx.DIAMETER_ERROR_ROAMING_NOT_ALLOWED)
        if uat == _UAT_DE_REGISTRATION:
            if state.scscf_name:
                return self._answer(
                    req, result_code=cx.DIAMETER_SUCCESS, server_name=state.scscf_name
                )
            return self._error(req, experimental=cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED)
        if uat == _UAT_REGISTRATION and (state.scscf_name or state.pending_scscf):
            # Registered, unregistered-served, the name kept after a de-registration
            # that stored it, or an authentication under way: the same S-CSCF again.
            # An authentication under way wins: the S-CSCF of the MAR holds the
            # challenge the next REGISTER answers. It differs from the serving one
            # when a re-registration moved to another S-CSCF (the serving one did not
            # answer the I-CSCF) and was challenged there; before 2026-11-29 the answer
            # went back to the serving one, which challenged it anew (lifecycle_chaos
            # --scscf-moves, seed 11001: the UE gave up after three challenges).
            return self._answer(
                req,
                experimental_result_code=cx.DIAMETER_SUBSEQUENT_REGISTRATION,
                server_name=state.pending_scscf or state.scscf_name,
            )
        return None

    def _uaa_first(
        self, req: cx.UserAuthorizationRequest, state: UserState, pool: list[dict[str, Any]]
    ) -> cx.UserAuthorizationAnswer:
        # First registration (or capabilities asked for): never an answer with
        # neither Server-Name nor Server-Capabilities (PITFALLS, Cx).
        return self._with_capabilities(
            req, state, pool, experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION
        )

    # ------------------------------------------------------------------ MAR

    async def mar(self, req: cx.MultimediaAuthRequest) -> cx.MultimediaAuthAnswer:
        item = req.sip_auth_data_item
        scheme = item.sip_authentication_scheme or cx.SCHEME_UNKNOWN
        n = max(1, min(int(req.sip_number_auth_items), self.config.max_vectors))
        sqn_ms = None
        if item.sip_authorization is not None:
            # Resynchronisation: SIP-Authorization = RAND (16) ‖ AUTS (14), TS 29.228 §6.3.3.
            if len(item.sip_authorization) != 30:
                return self._error(
                    req,
                    result_code=cx.DIAMETER_INVALID_AVP_VALUE,
                    error_message="SIP-Authorization: expected RAND‖AUTS (30 octets)",
                )
            if scheme not in (*AKA_SCHEMES, cx.SCHEME_UNKNOWN):
                return self._error(req, experimental=cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED)
            check = await self.store.check_identities(req.user_name, req.public_identity)
            if not check.matched:
                return self._error(req, experimental=_identity_error(check))
            k, opc, _amf = await self.store.credentials(req.user_name)
            try:
                sqn_ms = recover_sqn_ms(
                    Milenage(k, opc=opc), item.sip_authorization[:16], item.sip_authorization[16:]
                )
            except (AutsMacError, AutsError):
                # A forged or corrupt AUTS never moves SQN_HE (PITFALLS: resync without MAC-S).
                self.counters["resync-mac-s-failure"] += 1
                log.warning("MAR resync for %s: MAC-S verification failed", req.user_name)
                return self._error(req, result_code=cx.DIAMETER_AUTHORIZATION_REJECTED)
            if (sqn_ms >> IND_BITS) + n > MAX_SEQ:
                # SQN_MS at the very top of the range: no fresh SQN can follow it.
                self.counters["sqn-exhausted"] += 1
                log.error(
                    "MAR resync for %s: SQN_MS at its maximum, the subscriber needs a new K",
                    req.user_name,
                )
                return self._error(
                    req, result_code=cx.DIAMETER_UNABLE_TO_COMPLY, error_message="SQN exhausted"
                )
            self.counters["resync"] += 1
        elif scheme == cx.SCHEME_SIP_DIGEST:
            return await self._digest_maa(req)
        elif scheme not in (*AKA_SCHEMES, cx.SCHEME_UNKNOWN):
            # NASS-Bundled, Early-IMS-Security, …: not served by this HSS.
            return self._error(req, experimental=cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED)
        grant = await self.store.mar(
            req.user_name,
            req.public_identity,
            n,
            req.server_name,
            resync_to=sqn_ms,
            scheme=None if scheme == cx.SCHEME_UNKNOWN else scheme,
        )
        return self._granted(req, grant, scheme)

    def _mar_now(self, req: cx.MultimediaAuthRequest) -> cx.MultimediaAuthAnswer | None:
        """`mar` without waiting for an AKA MAR (no resync: that reads and checks AUTS
        first), its SQNs committed at once on the loop's connection (fsynced, as any
        SQN: TS 33.102 Annex C); None for any other MAR, or if the commit would wait."""
        item = req.sip_auth_data_item
        scheme = item.sip_authentication_scheme or cx.SCHEME_UNKNOWN
        if item.sip_authorization is not None or scheme not in _AKA_OR_UNKNOWN:
            return None
        grant = self.store.mar_now(
            req.user_name,
            req.public_identity,
            max(1, min(int(req.sip_number_auth_items), self.config.max_vectors)),
            req.server_name,
            scheme=None if scheme == cx.SCHEME_UNKNOWN else scheme,
        )
        if grant is WAIT:
            return None
        return self._granted(req, grant, scheme)

    def _granted(
        self,
        req: cx.MultimediaAuthRequest,
        grant: MarGrant | IdentityCheck | SqnExhausted,
        scheme: str,
    ) -> cx.MultimediaAuthAnswer:
        """The MAA for what the store's MAR gave: vectors, or why not."""
        if isinstance(grant, SqnExhausted):
            self.counters["sqn-exhausted"] += 1
            log.error(
                "MAR for %s: SQN_HE at its maximum, the subscriber needs a new K", req.user_name
            )
            return self._error(
                req, result_code=cx.DIAMETER_UNABLE_TO_COMPLY, error_message="SQN exhausted"
            )
        if isinstance(grant, IdentityCheck):
            if grant.matched:  # matched but the scheme is not allowed for this IMPI
                return self._error(req, experimental=cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED)
            return self._error(req, experimental=_identity_error(grant))
        return self._maa(req, grant, scheme)

    def _maa(
        self, req: cx.MultimediaAuthRequest, grant: MarGrant, scheme: str
    ) -> cx.MultimediaAuthAnswer:
        if scheme == cx.SCHEME_UNKNOWN:
            # The scheme comes from the subscriber's record (PITFALLS: never MD5 by default).
            scheme = next((s for s in grant.schemes if s in AKA_SCHEMES), cx.SCHEME_AKAV1_MD5)
        vectors = generate_vectors(
            self._milenage_for(grant.k, grant.opc),
            grant.sqns,
            grant.amf,
            rand_source=self.rand_source,
        )
        items = tuple(
            cx.SipAuthDataItem.aka_vector(
                rand=v.rand,
                autn=v.autn,
                xres=v.xres,
                ck=v.ck,
                ik=v.ik,
                item_number=i + 1,
                scheme=scheme,
            )
            for i, v in enumerate(vectors)
        )
        self.counters["maa-vectors"] += len(items)
        return self._answer(
            req,
            result_code=cx.DIAMETER_SUCCESS,
            user_name=req.user_name,
            public_identity=req.public_identity,
            sip_number_auth_items=len(items),
            sip_auth_data_items=items,
        )

    async def _digest_maa(self, req: cx.MultimediaAuthRequest) -> Any:
        """SIP Digest (TS 33.203 Annex N, TS 29.229 §6.3.36): one item carrying
        SIP-Digest-Authenticate {Digest-Realm, Digest-Algorithm, Digest-QoP, Digest-HA1};
        the password itself never leaves the HSS."""
        check = await self.store.check_identities(req.user_name, req.public_identity)
        if not check.matched:
            return self._error(req, experimental=_identity_error(check))
        schemes, password = await self.store.digest_credentials(req.user_name, req.server_name)
        if cx.SCHEME_SIP_DIGEST not in schemes or password is None:
            return self._error(req, experimental=cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED)
        realm = req.user_name.rsplit("@", 1)[-1]
        # HA1 = MD5(username:realm:password), RFC 2617 §3.2.2.2: MD5 is what the scheme is.
        ha1 = hashlib.md5(f"{req.user_name}:{realm}:{password}".encode()).hexdigest()
        item = cx.SipAuthDataItem.sip_digest(
            realm=realm, ha1=ha1, algorithm="MD5", qop="auth", item_number=1
        )
        self.counters["maa-digest"] += 1
        return self._answer(
            req,
            result_code=cx.DIAMETER_SUCCESS,
            user_name=req.user_name,
            public_identity=req.public_identity,
            sip_number_auth_items=1,
            sip_auth_data_items=(item,),
        )

    def _milenage_for(self, k: bytes, opc: bytes) -> Milenage:
        key = (k, opc)
        mil = self._milenage.pop(key, None)
        if mil is None:
            mil = Milenage(k, opc=opc)
            if len(self._milenage) >= MILENAGE_CACHE:
                del self._milenage[next(iter(self._milenage))]
        self._milenage[key] = mil
        return mil

    # ------------------------------------------------------------------ SAR

    async def sar(self, req: cx.ServerAssignmentRequest) -> cx.ServerAssignmentAnswer:
        sat = _SATS.get(req.server_assignment_type)
        if sat is None:
            return self._error(req, result_code=cx.DIAMETER_INVALID_AVP_VALUE)
        impi = req.user_name
        if req.public_identities:
            impu = req.public_identities[0]
        elif impi:
            try:
                info = await self.store.serving_for_impi(impi)
            except NotFound:
                return self._error(req, experimental=cx.DIAMETER_ERROR_USER_UNKNOWN)
            impu = info.impus[0]
        else:
            return self._error(
                req,
                result_code=cx.DIAMETER_MISSING_AVP,
                error_message="SAR: neither User-Name nor Public-Identity",
            )
        if (
            sat
            in (
                SAT.AUTHENTICATION_FAILURE,
                SAT.AUTHENTICATION_TIMEOUT,
                SAT.REGISTRATION,
                SAT.RE_REGISTRATION,
            )
            and not impi
        ):
            return self._error(
                req,
                result_code=cx.DIAMETER_MISSING_AVP,
                error_message="SAR: User-Name required for this Server-Assignment-Type",
            )
        if sat in _ASSIGNING and impi and req.public_identities:
            # What `_sar_now` does at once: the read and the assignment in one write
            # transaction, here in the group commit (no read of its own before it).
            return self._assigned(
                req,
                impi,
                await self.store.checked_assign(
                    impi,
                    impu,
                    with_data=self._sar_reads_data(req, sat, impi),
                    assign=_always,
                    sender=(req.server_name, req.origin_host, req.origin_realm),
                ),
            )
        data = None
        if self._sar_reads_data(req, sat, impi):
            # The User-Data of the SAA comes with the check (one read, not two).
            check, state, data = await self.store.checked_state_and_data(impi, impu)
        else:
            check, state = await self.store.checked_state(
                impi, impu, with_pending=sat == SAT.RE_REGISTRATION
            )
        refused = self._sar_refused(req, impi, check, state)
        if refused is not None:
            return refused
        assert state is not None
        want_data = (
            req.user_data_already_available == cx.UserDataAlreadyAvailable.USER_DATA_NOT_AVAILABLE
        )

        if sat in (SAT.REGISTRATION, SAT.RE_REGISTRATION, SAT.RESTORATION):
            if not (sat == SAT.RE_REGISTRATION and _unchanged(state, req)):
                await self._assign_to_sender(req, impu, RegState.REGISTERED, impi)
                self._moved_from(state, req, impi)
            else:
                self.counters["sar_reregistration_unchanged"] += 1
            return await self._saa_ok(
                req, impi, impu, want_data or sat == SAT.REGISTRATION, data=data
            )
        if sat == SAT.UNREGISTERED_USER:
            if state.reg_state == RegState.REGISTERED:
                # Already registered: keep it, just hand out the profile.
                return await self._saa_ok(req, impi, impu, True)
            if (
                state.scscf_name
                and state.scscf_name != req.server_name
                and state.reg_state == RegState.UNREGISTERED
            ):
                return await self._saa_ok(req, impi, impu, True, server_name=state.scscf_name)
            await self._assign_to_sender(req, impu, RegState.UNREGISTERED)
            return await self._saa_ok(req, impi, impu, True)
        if sat in _DEREGISTRATIONS:
            if state.scscf_name and state.scscf_name != req.server_name:
                # Another S-CSCF serves the user now (it registered there while this
                # one was out of reach): the end of what this one still held ends
                # nothing here (its binding lapsing would otherwise take the user's
                # registration at the other one away).
                self.counters["sar_deregistration_not_serving"] += 1
                return self._answer(req, result_code=cx.DIAMETER_SUCCESS, user_name=impi)
            await self.store.assign(
                impu,
                state=RegState.NOT_REGISTERED,
                server_name=None,
                keep_server=_DEREGISTRATIONS[sat],
                want_set=False,
            )
            return self._answer(req, result_code=cx.DIAMETER_SUCCESS, user_name=impi)
        if sat in (SAT.AUTHENTICATION_FAILURE, SAT.AUTHENTICATION_TIMEOUT):
            # The pending S-CSCF of the failed authentication is forgotten; a
            # registered user stays registered (TS 29.228 §6.1.2.1).
            assert impi is not None
            await self.store.clear_pending(impi)
            return self._answer(req, result_code=cx.DIAMETER_SUCCESS, user_name=impi)
        if sat == SAT.NO_ASSIGNMENT:
            if state.scscf_name != req.server_name:
                return self._error(
                    req,
                    result_code=cx.DIAMETER_UNABLE_TO_COMPLY,
                    error_message="not the assigned S-CSCF",
                )
            return await self._saa_ok(req, impi, impu, True)
        # AAA_USER_DATA_REQUEST, PGW_UPDATE: not for an IMS registrar.
        return self._error(req, experimental=cx.DIAMETER_ERROR_IN_ASSIGNMENT_TYPE)

    @staticmethod
    def _sar_reads_data(req: cx.ServerAssignmentRequest, sat: SAT, impi: str | None) -> bool:
        """Whether the SAR's read takes the User-Data along (`checked_state_and_data`)."""
        return bool(
            impi
            and sat in (SAT.REGISTRATION, SAT.RE_REGISTRATION, SAT.RESTORATION)
            and (
                sat == SAT.REGISTRATION
                or req.user_data_already_available
                == cx.UserDataAlreadyAvailable.USER_DATA_NOT_AVAILABLE
            )
        )

    def _sar_refused(
        self,
        req: cx.ServerAssignmentRequest,
        impi: str | None,
        check: IdentityCheck,
        state: UserState | None,
    ) -> cx.ServerAssignmentAnswer | None:
        if impi and not check.matched:
            return self._error(req, experimental=_identity_error(check))
        if state is None:
            return self._error(req, experimental=cx.DIAMETER_ERROR_USER_UNKNOWN)
        return None

    def _sar_now(self, req: cx.ServerAssignmentRequest) -> cx.ServerAssignmentAnswer | None:
        """`sar` without waiting for a REGISTRATION, RE_REGISTRATION or RESTORATION with
        User-Name and Public-Identity: a re-registration whose read finds nothing to write
        (`_unchanged`) from that read alone; else the read and the assignment in one
        transaction committed at once on the loop's connection (`checked_assign_now`).
        None for any other SAR, or if the read or the commit would have to wait."""
        impi = req.user_name
        sat = _SATS.get(req.server_assignment_type)
        if sat not in _REGISTERING or not impi or not req.public_identities:
            return None
        impu = req.public_identities[0]
        # The read takes the User-Data along exactly when the answer carries it.
        with_data = self._sar_reads_data(req, sat, impi)
        if sat == SAT.RE_REGISTRATION:
            # Usually nothing changes: a read without the write lock decides.
            if with_data:
                got = self.store.checked_state_and_data_now(impi, impu)
                if got is WAIT:
                    return None
                check, state, data = got
            else:
                got = self.store.checked_state_now(impi, impu, with_pending=True)
                if got is WAIT:
                    return None
                (check, state), data = got, None
            refused = self._sar_refused(req, impi, check, state)
            if refused is not None:
                return refused
            if _unchanged(state, req) and (data is not None or not with_data):
                self.counters["sar_reregistration_unchanged"] += 1
                return self._saa(req, impi, None if data is None else data[0])

        def assign(state: UserState) -> bool:
            # What `sar` decides from its read: a RE_REGISTRATION changing nothing
            # writes nothing (`_unchanged`); the others always assign.
            return not (sat == SAT.RE_REGISTRATION and _unchanged(state, req))

        got = self.store.checked_assign_now(
            impi,
            impu,
            with_data=with_data,
            assign=assign,
            sender=(req.server_name, req.origin_host, req.origin_realm),
        )
        if got is WAIT:
            return None
        return self._assigned(req, impi, got)

    def _assigned(
        self,
        req: cx.ServerAssignmentRequest,
        impi: str,
        got: tuple[IdentityCheck, UserState | None, Any, bool],
    ) -> cx.ServerAssignmentAnswer:
        """The SAA for a registering SAR's `checked_assign` (read and assignment in one
        transaction): refused identities, else success with the User-Data read."""
        check, state, data, assigned = got
        refused = self._sar_refused(req, impi, check, state)
        if refused is not None:
            return refused
        if not assigned:
            self.counters["sar_reregistration_unchanged"] += 1
        elif state is not None and state.scscf_name != req.server_name:
            self._moved_from(state, req, impi)
        return self._saa(req, impi, None if data is None else data[0])

    def _moved_from(self, state: UserState, req: Any, impi: str) -> None:
        """A registering SAR was assigned; `state` is what the store held before it.
        When another S-CSCF had the subscription registered, `on_moved` is told."""
        before = state.scscf_name
        if (
            before
            and before != req.server_name
            and state.reg_state != RegState.NOT_REGISTERED
            and self.on_moved is not None
        ):
            self.counters["scscf_reassigned"] += 1
            self.on_moved(impi, before, state.scscf_host, state.scscf_realm)

    async def _assign_to_sender(
        self, req: Any, impu: str, state: RegState, impi: str | None = None
    ) -> None:
        """`impu`'s implicit set in `state`, served by the S-CSCF that sent `req`."""
        await self.store.assign(
            impu,
            state=state,
            server_name=req.server_name,
            server_host=req.origin_host,
            server_realm=req.origin_realm,
            impi=impi,
            want_set=False,
        )

    async def _saa_ok(
        self,
        req: Any,
        impi: str | None,
        impu: str,
        with_data: bool,
        server_name: str | None = None,
        *,
        data: tuple[bytes, tuple[str, ...]] | None = None,
    ) -> Any:
        if with_data and data is None:
            data = await self.store.user_data(impi, impu)
        user_name = impi
        if not impi:
            info = await self.store.serving_for_impu(impu)
            user_name = info.impis[0] if info.impis else None
        return self._saa(
            req, user_name, data[0] if with_data and data is not None else None, server_name
        )

    def _saa(
        self,
        req: Any,
        user_name: str | None,
        user_data: bytes | None,
        server_name: str | None = None,
    ) -> Any:
        """The successful SAA: User-Data, User-Name and Server-Name where given."""
        fields: dict[str, Any] = {"result_code": cx.DIAMETER_SUCCESS}
        if user_data is not None:
            fields["user_data"] = user_data
        if user_name is not None:
            fields["user_name"] = user_name
        if server_name:
            fields["server_name"] = server_name
        return self._answer(req, **fields)

    # ------------------------------------------------------------------ LIR

    async def lir(self, req: cx.LocationInfoRequest) -> cx.LocationInfoAnswer:
        try:
            state = await self.store.user_state(req.public_identity)
        except NotFound:
            return self._error(req, experimental=cx.DIAMETER_ERROR_USER_UNKNOWN)
        if req.user_authorization_type == UAT.REGISTRATION_AND_CAPABILITIES:
            pool = await self.store.scscf_pool()
            return self._with_capabilities(req, state, pool, result_code=cx.DIAMETER_SUCCESS)
        answer = self._lia_served(req, state)
        if answer is not None:
            return answer
        if await self._has_unregistered_services(req.public_identity):
            return self._answer(
                req,
                experimental_result_code=cx.DIAMETER_UNREGISTERED_SERVICE,
                server_capabilities=await self._capabilities(state),
            )
        return self._error(req, experimental=cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED)

    def _lir_now(self, req: cx.LocationInfoRequest) -> cx.LocationInfoAnswer | None:
        """`lir` without waiting; None if a read would have to wait, or for an IMPU that
        has no serving S-CSCF (the profile's iFCs decide: `lir`)."""
        try:
            state = self.store.user_state_now(req.public_identity)
        except NotFound:
            return self._error(req, experimental=cx.DIAMETER_ERROR_USER_UNKNOWN)
        if state is WAIT:
            return None
        if req.user_authorization_type == UAT.REGISTRATION_AND_CAPABILITIES:
            pool = self.store.scscf_pool_now()
            if pool is WAIT:
                return None
            return self._with_capabilities(req, state, pool, result_code=cx.DIAMETER_SUCCESS)
        return self._lia_served(req, state)

    def _lia_served(
        self, req: cx.LocationInfoRequest, state: UserState
    ) -> cx.LocationInfoAnswer | None:
        """The LIA naming the serving S-CSCF; None when there is none."""
        if state.scscf_name and state.reg_state in (RegState.REGISTERED, RegState.UNREGISTERED):
            return self._answer(req, result_code=cx.DIAMETER_SUCCESS, server_name=state.scscf_name)
        if state.scscf_name:
            # Not registered but the name was kept (…_STORE_SERVER_NAME).
            return self._answer(req, result_code=cx.DIAMETER_SUCCESS, server_name=state.scscf_name)
        return None

    async def _has_unregistered_services(self, impu: str) -> bool:
        """An iFC that applies in the unregistered state (ProfilePartIndicator absent or 1)."""
        user_data, _ = await self.store.user_data(None, impu)
        root = ET.fromstring(user_data)
        for ifc in root.iter("InitialFilterCriteria"):
            ppi = ifc.find("ProfilePartIndicator")
            if ppi is None or (ppi.text or "").strip() == "1":
                return True
        return False

    # ------------------------------------------------------------------ HSS-initiated

    def rtr(
        self,
        *,
        session_id: str,
        destination_host: str,
        destination_realm: str | None,
        impis: tuple[str, ...],
        impus: tuple[str, ...],
        reason: int = cx.ReasonCode.PERMANENT_TERMINATION,
        reason_info: str | None = None,
    ) -> cx.RegistrationTerminationRequest:
        """RTR (TS 29.228 §6.1.3) for every identity of a subscription."""
        return cx.RegistrationTerminationRequest(
            session_id=session_id,
            origin_host=self.config.diameter_host,
            origin_realm=self.config.diameter_realm,
            destination_host=destination_host,
            destination_realm=destination_realm or self.config.diameter_realm,
            user_name=impis[0],
            deregistration_reason=cx.DeregistrationReason(int(reason), reason_info),
            public_identities=impus,
            associated_identities=cx.AssociatedIdentities(impis[1:]) if len(impis) > 1 else None,
        )

    def ppr(
        self,
        *,
        session_id: str,
        destination_host: str,
        destination_realm: str | None,
        impi: str,
        user_data: bytes,
    ) -> cx.PushProfileRequest:
        """PPR (TS 29.228 §6.2.2) carrying the new subscription XML."""
        return cx.PushProfileRequest(
            session_id=session_id,
            origin_host=self.config.diameter_host,
            origin_realm=self.config.diameter_realm,
            destination_host=destination_host,
            destination_realm=destination_realm or self.config.diameter_realm,
            user_name=impi,
            user_data=user_data,
        )
