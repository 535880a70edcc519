"""REST provisioning API of the HSS (FastAPI; OpenAPI docs at /docs and /openapi.json).

The same operations as ``imsaka hss …``: add, bulk import (CSV), show, change,
delete a subscriber; de-register an IMPU (the HSS sends an RTR to the serving
S-CSCF, TS 29.228 §6.1.3); profile changes of a served user push a PPR
(TS 29.228 §6.2.2). Every route but /health needs ``Authorization: Bearer
<token>``. K, OP and OPc are write-only: no response ever carries them, and
validation errors never echo the submitted values. A bad field gives 4xx with
``{"detail": {"field": …, "message": …}}``; every write is one transaction.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from imsaka.diameter.cx import ReasonCode
from imsaka.hss.csvimport import CsvError, parse_csv
from imsaka.hss.store import Conflict, HssStore, NotFound
from imsaka.hss.subscriber import (
    FieldError,
    parse_hex,
    parse_sqn,
    validate_impi,
    validate_impu,
    validate_schemes,
    validate_subscriber,
)
from imsaka.hss.userdata import validate_ifc_xml

__all__ = ["HssBackend", "create_app"]


class HssBackend(Protocol):
    """What the API needs from the running HSS: the store and the Cx-initiating side."""

    store: HssStore

    async def deregister_impu(
        self, impu: str, reason_info: str | None = None, reason: ReasonCode = ...
    ) -> dict[str, Any]: ...

    async def deregister_impi(
        self,
        impi: str,
        reason_info: str | None = None,
        reason: ReasonCode = ...,
        *,
        this_impi_only: bool = False,
    ) -> dict[str, Any]: ...

    async def push_profile(self, impi: str) -> dict[str, Any]: ...


class SubscriberIn(BaseModel):
    """A new subscriber. Give exactly one of `op` and `opc` (hex)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    impi: str = Field(description="Private identity (NAI user@realm)")
    impus: list[str] = Field(
        description="Public identities (sip:/tel: URIs); one implicit registration set"
    )
    k: str = Field(description="K, 32 hex digits (write-only)")
    op: str | None = Field(
        default=None, description="OP, 32 hex digits (write-only; OPc is derived)"
    )
    opc: str | None = Field(default=None, description="OPc, 32 hex digits (write-only)")
    amf: str | None = Field(default=None, description="AMF, 4 hex digits (default 8000)")
    sqn: str | None = Field(
        default=None, description="Initial SQN_HE, up to 12 hex digits (default 0)"
    )
    schemes: list[str] | None = Field(
        default=None, description="Allowed SIP-Authentication-Schemes"
    )
    password: str | None = Field(default=None, description="SIP Digest password (write-only)")
    barred: list[str] | None = Field(default=None, description="IMPUs to bar")
    ifc_xml: str | None = Field(
        default=None, description="InitialFilterCriteria XML (TS 29.228 Annex E)"
    )
    visited_networks: list[str] | None = Field(
        default=None, description="Visited networks this user may roam to"
    )


class SubscriberPatch(BaseModel):
    """Changes to a subscriber; absent fields stay. Changing OP/OPc needs `k` too when OP is given."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    k: str | None = None
    op: str | None = None
    opc: str | None = None
    amf: str | None = None
    sqn: str | None = None
    schemes: list[str] | None = None
    password: str | None = None
    ifc_xml: str | None = None
    barred: dict[str, bool] | None = None
    visited_networks: list[str] | None = None
    mandatory_capabilities: list[int] | None = Field(
        default=None, description="S-CSCF capabilities required (TS 29.228 §6.7)"
    )
    optional_capabilities: list[int] | None = Field(
        default=None, description="S-CSCF capabilities preferred"
    )


class ImpusIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    impus: list[str]
    barred: list[str] = []
    new_implicit_set: bool = Field(
        default=False, description="form a new implicit registration set"
    )


class ImpiIn(BaseModel):
    """Another private identity sharing the subscription's IMPUs (TS 23.228 §4.3.3.4)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    impi: str
    k: str
    op: str | None = None
    opc: str | None = None
    amf: str | None = None
    sqn: str | None = None
    schemes: list[str] | None = None
    password: str | None = None


class DeregisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    reason: str | None = Field(default=None, description="Reason-Info text for the RTR")
    reason_code: Literal["PERMANENT_TERMINATION", "SERVER_CHANGE"] = Field(
        default="PERMANENT_TERMINATION",
        description="Reason-Code of the RTR (TS 29.229 §6.3.17): SERVER_CHANGE asks the "
        "UE to register again (reg event 'deactivated'), PERMANENT_TERMINATION not to "
        "('rejected')",
    )


def _bad(status: int, field: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field, "message": message})


def create_app(backend: HssBackend, token: str) -> FastAPI:
    """The FastAPI application bound to a running HSS (or any `HssBackend`)."""
    if not token:
        raise ValueError("the REST API needs a bearer token")
    app = FastAPI(
        title="imsaka HSS provisioning",
        version="1",
        description="Subscribers of the imsaka HSS (TS 29.228 data). K, OP and OPc are write-only.",
    )
    bearer = HTTPBearer(auto_error=False)
    token_b = token.encode()

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if (
            creds is None
            or creds.scheme.lower() != "bearer"
            or not hmac.compare_digest(creds.credentials.encode(), token_b)
        ):
            raise HTTPException(
                status_code=401,
                detail="bearer token required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field, never echo its value (it may be K or OPc).
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        return JSONResponse(
            status_code=422,
            content={
                "detail": {
                    "field": ".".join(loc) or "body",
                    "message": str(first.get("msg", "invalid")),
                }
            },
        )

    store = backend.store

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "subscribers": await store.count_subscribers()}

    @app.post("/api/v1/subscribers", status_code=201, dependencies=[Depends(auth)])
    async def add_subscriber(body: SubscriberIn) -> dict[str, Any]:
        try:
            spec = validate_subscriber(
                impi=body.impi,
                impus=body.impus,
                k=body.k,
                op=body.op,
                opc=body.opc,
                amf=body.amf,
                sqn=body.sqn,
                schemes=body.schemes,
                digest_password=body.password,
                barred=body.barred,
                ifc_xml=body.ifc_xml,
                visited_networks=body.visited_networks,
            )
            await store.add_subscriber(spec)
        except FieldError as exc:
            raise _bad(422, exc.field, exc.reason) from None
        except Conflict as exc:
            raise _bad(409, exc.field, str(exc).split(": ", 1)[-1]) from None
        return (await store.get_subscriber(spec.impi)).as_dict()

    @app.post("/api/v1/import", dependencies=[Depends(auth)])
    async def import_csv(csv_text: str = Body(..., media_type="text/csv")) -> dict[str, Any]:
        """CSV with header ``impi,impu,k,op,opc,amf[,sqn]``: all rows or none."""
        try:
            specs = parse_csv(csv_text)
            count = await store.import_subscribers(specs)
        except CsvError as exc:
            raise HTTPException(
                status_code=422,
                detail={"field": exc.field, "line": exc.line, "message": exc.reason},
            ) from None
        except Conflict as exc:
            raise _bad(409, exc.field, str(exc).split(": ", 1)[-1]) from None
        return {"imported": count}

    @app.get("/api/v1/subscribers/{impi}", dependencies=[Depends(auth)])
    async def show(impi: str) -> dict[str, Any]:
        try:
            return (await store.get_subscriber(impi)).as_dict()
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None

    @app.get("/api/v1/subscribers/{impi}/user-data", dependencies=[Depends(auth)])
    async def user_data(impi: str, impu: str | None = None) -> Response:
        """The IMS subscription XML (Cx User-Data) the S-CSCF gets for this user."""
        try:
            info = await store.serving_for_impi(impi)
            target = impu or (info.impus[0] if info.impus else None)
            if target is None or target not in info.impus:
                raise _bad(404, "impu", f"{target!r} is not an IMPU of {impi!r}")
            data, _members = await store.user_data(impi, target)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        return Response(content=data, media_type="application/xml")

    @app.patch("/api/v1/subscribers/{impi}", dependencies=[Depends(auth)])
    async def change(impi: str, body: SubscriberPatch) -> dict[str, Any]:
        values: dict[str, Any] = {}
        try:
            current = await store.get_subscriber(impi)
            if body.k is not None:
                values["k"] = parse_hex("k", body.k, 16)
            if body.op is not None and body.opc is not None:
                raise FieldError("op/opc", "give exactly one of OP or OPc")
            if body.op is not None:
                from imsaka.aka.milenage import compute_opc

                k = values.get("k")
                if k is None:
                    raise FieldError(
                        "k", "changing OP needs K in the same request (OPc is derived from both)"
                    )
                op = parse_hex("op", body.op, 16)
                values.update(op=op, opc=compute_opc(k, op), op_kind="op")
            elif body.opc is not None:
                values.update(op=None, opc=parse_hex("opc", body.opc, 16), op_kind="opc")
            elif "k" in values and current.op_kind == "op":
                raise FieldError(
                    "op", "this subscriber was provisioned with OP: give OP with the new K"
                )
            if body.amf is not None:
                values["amf"] = parse_hex("amf", body.amf, 2)
            if body.sqn is not None:
                values["sqn"] = parse_sqn("sqn", body.sqn)
            if body.schemes is not None:
                values["schemes"] = validate_schemes(body.schemes)
            if body.password is not None:
                values["digest_password"] = body.password
            profile_changed = False
            if body.ifc_xml is not None:
                if body.ifc_xml.strip():
                    values["ifc_xml"] = validate_ifc_xml(body.ifc_xml)
                else:
                    values["clear_ifc"] = True
                profile_changed = True
            if body.barred is not None:
                values["barred"] = {validate_impu(u, "barred"): v for u, v in body.barred.items()}
                profile_changed = True
            if body.visited_networks is not None:
                values["visited_networks"] = [n.strip() for n in body.visited_networks if n.strip()]
            for name in ("mandatory_capabilities", "optional_capabilities"):
                caps = getattr(body, name)
                if caps is not None:
                    if any(not 0 <= c < 1 << 32 for c in caps):
                        raise FieldError(name, "capabilities are numbers 0..2^32-1")
                    values[name] = caps
            await store.update_subscriber(impi, **values)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        except FieldError as exc:
            raise _bad(422, exc.field, exc.reason) from None
        result = (await store.get_subscriber(impi)).as_dict()
        if profile_changed:
            result["ppr"] = await backend.push_profile(impi)
        return result

    @app.post("/api/v1/subscribers/{impi}/impus", dependencies=[Depends(auth)])
    async def add_impus(impi: str, body: ImpusIn) -> dict[str, Any]:
        try:
            impus = [validate_impu(u) for u in body.impus]
            if not impus:
                raise FieldError("impus", "at least one IMPU")
            barred = [validate_impu(u, "barred") for u in body.barred]
            for b in barred:
                if b not in impus:
                    raise FieldError("barred", f"{b!r} is not one of the new IMPUs")
            await store.add_impus(impi, impus, barred, new_set=body.new_implicit_set)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        except FieldError as exc:
            raise _bad(422, exc.field, exc.reason) from None
        except Conflict as exc:
            raise _bad(409, exc.field, str(exc).split(": ", 1)[-1]) from None
        result = (await store.get_subscriber(impi)).as_dict()
        result["ppr"] = await backend.push_profile(impi)
        return result

    @app.post("/api/v1/subscribers/{impi}/impis", status_code=201, dependencies=[Depends(auth)])
    async def add_impi(impi: str, body: ImpiIn) -> dict[str, Any]:
        try:
            current = await store.get_subscriber(impi)
            spec = validate_subscriber(
                impi=body.impi,
                impus=[u.identity for u in current.impus],
                k=body.k,
                op=body.op,
                opc=body.opc,
                amf=body.amf,
                sqn=body.sqn,
                schemes=body.schemes,
                digest_password=body.password,
            )
            await store.add_impi(impi, spec)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        except FieldError as exc:
            raise _bad(422, exc.field, exc.reason) from None
        except Conflict as exc:
            raise _bad(409, exc.field, str(exc).split(": ", 1)[-1]) from None
        return (await store.get_subscriber(spec.impi)).as_dict()

    @app.delete("/api/v1/subscribers/{impi}", dependencies=[Depends(auth)])
    async def delete(impi: str) -> dict[str, Any]:
        try:
            await store.get_subscriber(impi)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        # De-register at the serving S-CSCF first (RTR), then forget the user: this
        # IMPI's registrations only (another device of the subscription stays).
        rtr = await backend.deregister_impi(impi, "subscription deleted", this_impi_only=True)
        try:
            await store.delete_subscriber(impi)
        except NotFound:
            raise _bad(404, "impi", f"no subscriber {impi!r}") from None
        return {"deleted": impi, "rtr": rtr}

    async def _deregistered(
        send: Callable[..., Awaitable[dict[str, Any]]],
        identity: str,
        body: DeregisterIn | None,
        field: str,
        unknown: str,
    ) -> dict[str, Any]:
        """`send(identity[, reason, code])` (an RTR), its user errors as 422/404."""
        try:
            (validate_impi if field == "impi" else validate_impu)(identity)
            if body is None:
                return await send(identity)
            return await send(identity, body.reason, ReasonCode[body.reason_code])
        except FieldError as exc:
            raise _bad(422, exc.field, exc.reason) from None
        except NotFound:
            raise _bad(404, field, f"{unknown} {identity!r}") from None

    @app.post("/api/v1/subscribers/{impi}/deregister", dependencies=[Depends(auth)])
    async def deregister_subscription(
        impi: str, body: DeregisterIn | None = None
    ) -> dict[str, Any]:
        """Every registration of the subscription of `impi` (all its IMPIs and
        implicit sets, TS 29.228 §6.1.3)."""
        return await _deregistered(backend.deregister_impi, impi, body, "impi", "no subscriber")

    @app.post("/api/v1/impus/{impu:path}/deregister", dependencies=[Depends(auth)])
    async def deregister(impu: str, body: DeregisterIn | None = None) -> dict[str, Any]:
        """The implicit set of `impu` (its subscription's other sets stay)."""
        return await _deregistered(
            backend.deregister_impu, impu, body, "impu", "no public identity"
        )

    @app.get("/api/v1/scscfs", dependencies=[Depends(auth)])
    async def scscfs() -> list[dict[str, Any]]:
        return await store.scscf_pool()

    return app
