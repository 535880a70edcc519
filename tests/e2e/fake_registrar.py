"""A minimal S-CSCF stand-in for edge tests: challenges with real Milenage vectors and
verifies the digest, so UE and P-CSCF can be tested over sockets before/without the
real I-CSCF/S-CSCF. Not used by the full-network tests."""

from __future__ import annotations

from imsaka.aka import digest
from imsaka.aka.milenage import Milenage
from imsaka.aka.vectors import generate_vector
from imsaka.sip import make_response, parse_message
from imsaka.sip.transport import UdpTransport


class FakeRegistrar:
    def __init__(self, k: bytes, opc: bytes, realm: str = "registrar.home1.net") -> None:
        self.m = Milenage(k, opc=opc)
        self.realm = realm
        self.sqn = 32
        self.vectors: dict[str, object] = {}
        self.received: list = []
        self.udp: UdpTransport | None = None

    async def start(self) -> tuple[str, int]:
        self.udp = await UdpTransport.create("127.0.0.1", 0, owner="scscf")
        self.udp.set_receiver(self._rx)
        return self.udp.local_address

    async def close(self) -> None:
        if self.udp:
            await self.udp.close()

    def _rx(self, data: bytes, source, transport) -> None:
        req = parse_message(data)
        self.received.append(req)
        auth = req.authorization
        impi = auth.username
        headers = []
        if not auth.response:
            self.sqn += 32
            vec = generate_vector(self.m, self.sqn, b"\x80\x00")
            self.vectors[impi] = vec
            nonce = digest.make_nonce(vec.rand, vec.autn)
            headers.append(
                (
                    "WWW-Authenticate",
                    f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=AKAv1-MD5, ik="{vec.ik.hex()}", ck="{vec.ck.hex()}"',
                )
            )
            resp = make_response(req, 401, to_tag="5ef4", headers=headers)
        else:
            vec = self.vectors.get(impi)
            ok = vec is not None and digest.verify_response(
                response=auth.response,
                algorithm="AKAv1-MD5",
                username=impi,
                realm=auth.realm,
                password=vec.xres,
                method="REGISTER",
                uri=auth.uri,
                nonce=auth.nonce,
                qop=auth.qop,
                nc=auth.nc,
                cnonce=auth.cnonce,
            )
            if not ok:
                resp = make_response(req, 403, to_tag="5ef4")
            else:
                c = req.get("Contact")
                exp = req.contacts[0].expires
                resp = make_response(
                    req,
                    200,
                    to_tag="5ef4",
                    headers=[
                        ("Path", req.get("Path")),
                        ("Service-Route", "<sip:orig@scscf1.home1.net:5080;lr>"),
                        ("Contact", c.split(";expires")[0] + f";expires={exp}"),
                        ("P-Associated-URI", f"{req.get('To')}"),
                    ],
                )
        via = req.top_via
        host, port = via.host.strip("[]"), via.port or 5060
        self.udp.send(resp.to_bytes(), ("127.0.0.1", port) if host != "127.0.0.1" else (host, port))
