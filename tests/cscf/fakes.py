"""Test doubles for the S-CSCF core: a fake HSS (Milenage vectors) and a UE that answers.

The fake HSS is deliberately tiny: it answers MAR with real Milenage vectors and a
resync MAR by recovering SQN_MS from AUTS, so the core is exercised with the real AKA
arithmetic, not with canned bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imsaka.aka.digest import compute_response, password_for, split_nonce
from imsaka.aka.isim import AkaSuccess, AkaSyncFailure, Isim
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import recover_sqn_ms
from imsaka.aka.sqn import HssSqn, SqnArray
from imsaka.aka.vectors import generate_vector
from imsaka.cscf.scscf_core import AuthVectorItem, ContactSpec, DigestParams, RegisterRequest

K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
OPC = bytes.fromhex("cd63cb71954a9f4e48a5994e37a02baf")
AMF = bytes.fromhex("8000")
IMPI = "user1_private@home1.net"
IMPU = "sip:user1_public1@home1.net"
REALM = "home1.net"
USER_DATA = f"""<?xml version="1.0" encoding="UTF-8"?>
<IMSSubscription>
  <PrivateID>{IMPI}</PrivateID>
  <ServiceProfile>
    <PublicIdentity><BarringIndication>0</BarringIndication><Identity>{IMPU}</Identity></PublicIdentity>
    <PublicIdentity><Identity>sip:user1_public2@home1.net</Identity></PublicIdentity>
    <PublicIdentity><BarringIndication>1</BarringIndication><Identity>sip:barred@home1.net</Identity></PublicIdentity>
    <PublicIdentity><Identity>tel:+1-212-555-1111</Identity></PublicIdentity>
  </ServiceProfile>
</IMSSubscription>"""


@dataclass
class FakeHss:
    milenage: Milenage = field(default_factory=lambda: Milenage(K, opc=OPC))
    sqn: HssSqn = field(default_factory=HssSqn)
    algorithm: str = "AKAv1-MD5"
    mars: int = 0
    resyncs: int = 0

    def vectors(self, count: int, resync: bytes | None = None) -> list[AuthVectorItem]:
        self.mars += 1
        if resync is not None:
            self.resyncs += 1
            sqn_ms = recover_sqn_ms(self.milenage, resync[:16], resync[16:])
            self.sqn.resync(sqn_ms)
        out = []
        for _ in range(count):
            v = generate_vector(self.milenage, self.sqn.next(), AMF)
            out.append(AuthVectorItem(self.algorithm, v.rand, v.autn, v.xres, v.ck, v.ik))
        return out


@dataclass
class FakeUe:
    isim: Isim = field(default_factory=lambda: Isim(Milenage(K, opc=OPC), SqnArray()))
    impi: str = IMPI
    impu: str = IMPU
    contact: str = "sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp"
    call_id: str = "apb03a0s09dkjdfglkj49111"
    cseq: int = 1
    path: tuple[str, ...] = ("<sip:term@pcscf1.visited1.net;lr>",)

    def register(
        self,
        *,
        integrity: str = "no",
        nonce: str = "",
        response: str = "",
        algorithm: str | None = None,
        auts: str | None = None,
        expires: int | None = 600000,
        star: bool = False,
        expires_header: int | None = None,
    ) -> RegisterRequest:
        auth = DigestParams(
            username=self.impi,
            realm=REALM,
            nonce=nonce,
            uri=f"sip:{REALM}",
            response=response,
            algorithm=algorithm,
            auts=auts,
            integrity_protected=integrity,
        )
        contacts = () if star else (ContactSpec(self.contact, expires),)
        req = RegisterRequest(
            impu=self.impu,
            call_id=self.call_id,
            cseq=self.cseq,
            auth=auth,
            contacts=contacts,
            star=star,
            expires=expires_header,
            path=self.path,
        )
        self.cseq += 1
        return req

    def answer(self, www_authenticate: str, **kw) -> RegisterRequest:
        params = parse_challenge(www_authenticate)
        nonce = params["nonce"]
        algorithm = params["algorithm"]
        rand, autn, _ = split_nonce(nonce)
        result = self.isim.authenticate(rand, autn)
        if isinstance(result, AkaSyncFailure):
            from imsaka.aka.digest import encode_auts

            password = b""
            auts = encode_auts(result.auts)
        else:
            assert isinstance(result, AkaSuccess), result
            password = password_for(algorithm, res=result.res, ik=result.ik, ck=result.ck)
            auts = None
        response = compute_response(
            algorithm=algorithm,
            username=self.impi,
            realm=params["realm"],
            password=password,
            method="REGISTER",
            uri=f"sip:{REALM}",
            nonce=nonce,
        )
        return self.register(
            integrity=kw.pop("integrity", "yes"),
            nonce=nonce,
            response=response,
            algorithm=algorithm,
            auts=auts,
            **kw,
        )


def parse_challenge(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    out = {}
    for part in value[len("Digest ") :].split(", "):
        name, _, v = part.partition("=")
        out[name.strip()] = v.strip().strip('"')
    return out
