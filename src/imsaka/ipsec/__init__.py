"""imsaka.ipsec: IPsec for the Gm interface (TS 33.203 §6-7, Annex H/I; RFC 3329, 4303, 3948).

- `secagree`: Security-Client/Server/Verify parse/build, the P-CSCF's policy choice,
  the Security-Verify downgrade check, 421/494 decisions.
- `keys`: ESP keys from IK/CK (Annex I; Rel-5..12 expansions from imsaka.aka.keys).
- `esp`: RFC 4303 transport-mode ESP codec with anti-replay, built once per SA.
- `sa`: the four-SA set, SPI and protected-port allocation, the lifetime state table.
- `backend`: protected transports (`userspace` ESP-in-UDP, `xfrm` kernel),
  `sip_transport`: the protected ports as imsaka.sip transports, and
  `keyfile`: Wireshark's esp_sa key file.
"""

from imsaka.ipsec.backend import (
    BACKENDS,
    ProtectedMessage,
    ProtectedTransport,
    UserspaceBackend,
    create_backend,
)
from imsaka.ipsec.errors import (
    DowngradeError,
    IpsecError,
    LocalProtocolError,
    PortPoolExhausted,
    RemoteProtocolError,
    SecAgreeParseError,
    SequenceNumberExhausted,
    SpiPoolExhausted,
    XfrmUnavailable,
)
from imsaka.ipsec.esp import EspDelivered, EspDrop, EspInbound, EspOutbound
from imsaka.ipsec.keyfile import write_esp_sa_file
from imsaka.ipsec.keys import EspKeys, derive_esp_keys
from imsaka.ipsec.sa import (
    NewRegistrationNeeded,
    PortPair,
    PortPool,
    SaSet,
    SaSetInstalled,
    SaSetRemoved,
    SaState,
    SecurityAssociation,
    SecurityAssociationTable,
    SpiAllocator,
)
from imsaka.ipsec.secagree import (
    SecAgreeDecision,
    SecAgreePolicy,
    SecurityMechanism,
    answer_headers,
    check_security_client_unchanged,
    check_security_verify,
    choose_mechanism,
    format_security_header,
    offer_mechanisms,
    parse_security_header,
    sec_agree_decision,
    strip_sec_agree,
    ue_choose_server_mechanism,
)
from imsaka.ipsec.sip_transport import ProtectedSipTransport, ProtectedSipTransports

__all__ = [
    "BACKENDS",
    "DowngradeError",
    "EspDelivered",
    "EspDrop",
    "EspInbound",
    "EspKeys",
    "EspOutbound",
    "IpsecError",
    "LocalProtocolError",
    "NewRegistrationNeeded",
    "PortPair",
    "PortPool",
    "PortPoolExhausted",
    "ProtectedMessage",
    "ProtectedSipTransport",
    "ProtectedSipTransports",
    "ProtectedTransport",
    "RemoteProtocolError",
    "SaSet",
    "SaSetInstalled",
    "SaSetRemoved",
    "SaState",
    "SecAgreeDecision",
    "SecAgreeParseError",
    "SecAgreePolicy",
    "SecurityAssociation",
    "SecurityAssociationTable",
    "SecurityMechanism",
    "SequenceNumberExhausted",
    "SpiAllocator",
    "SpiPoolExhausted",
    "UserspaceBackend",
    "XfrmUnavailable",
    "answer_headers",
    "check_security_client_unchanged",
    "check_security_verify",
    "choose_mechanism",
    "create_backend",
    "derive_esp_keys",
    "format_security_header",
    "offer_mechanisms",
    "parse_security_header",
    "sec_agree_decision",
    "strip_sec_agree",
    "ue_choose_server_mechanism",
    "write_esp_sa_file",
]
