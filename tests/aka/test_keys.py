"""ESP key expansion (TS 33.203 Annex I)."""

from __future__ import annotations

import pytest

from imsaka.aka.keys import KeyExpansionError, esp_encryption_key, esp_integrity_key

IK = bytes.fromhex("f769bcd751044604127672711c6d3441")
CK = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")


def test_integrity_keys():
    assert esp_integrity_key("hmac-md5-96", IK) == IK
    key = esp_integrity_key("hmac-sha-1-96", IK)
    assert len(key) == 20 and key[:16] == IK and key[16:] == b"\x00\x00\x00\x00"


def test_encryption_keys():
    assert esp_encryption_key("aes-cbc", CK) == CK
    key = esp_encryption_key("des-ede3-cbc", CK)
    assert len(key) == 24
    ck1, ck2 = CK[:8], CK[8:]
    assert key == ck1 + ck2 + ck1  # not zero padded
    assert esp_encryption_key("null", CK) == b""


def test_des_key_works_with_3des():
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = esp_encryption_key("des-ede3-cbc", CK)
    enc = Cipher(TripleDES(key), modes.CBC(b"\x00" * 8)).encryptor()
    assert len(enc.update(b"\x00" * 8) + enc.finalize()) == 8


@pytest.mark.parametrize(
    ("fn", "alg", "key", "field"),
    [
        (esp_integrity_key, "hmac-sha-256", IK, "alg"),
        (esp_integrity_key, "hmac-md5-96", IK[:15], "ik"),
        (esp_encryption_key, "aes-gcm", CK, "ealg"),
        (esp_encryption_key, "aes-cbc", "00" * 16, "ck"),
    ],
)
def test_errors_name_field_not_key(fn, alg, key, field):
    with pytest.raises(KeyExpansionError) as ei:
        fn(alg, key)
    msg = str(ei.value)
    assert msg.startswith(field + ":")
    assert IK.hex() not in msg and CK.hex() not in msg
