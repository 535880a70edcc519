"""imsaka.aka: the IMS AKA security core, pure functions and sans-I/O objects, no I/O.

- `milenage`: f1..f5* and OPc (TS 35.206)
- `vectors`: authentication vectors (TS 33.102 §6.3.2)
- `sqn`: SEQ‖IND management, HSS and ISIM sides (TS 33.102 Annex C)
- `resync`: AUTS building and SQN_MS recovery (TS 33.102 §6.3.3, §6.3.5)
- `isim`: the ISIM's AUTN check, RES/CK/IK or AUTS (TS 33.102 §6.3.3)
- `digest`: HTTP Digest AKAv1-MD5 / AKAv2-MD5 / MD5 (RFC 2617, 3310, 4169)
- `keys`: ESP key expansion from IK/CK (TS 33.203 Annex I)
"""
