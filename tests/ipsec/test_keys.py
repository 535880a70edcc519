"""Known-answer tests for the ESP key expansion (TS 33.203 Annex I) via imsaka.aka.keys.

The expected keys are computed here independently from the Annex I text, from the
CK/IK of the TS 35.208 Milenage test sets.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest

from imsaka.ipsec import LocalProtocolError, derive_esp_keys
from imsaka.ipsec.algorithms import ENCRYPTION, INTEGRITY, combination_allowed
from imsaka.ipsec.keys import kdf_salt

LEGACY = list(
    itertools.product(["hmac-md5-96", "hmac-sha-1-96"], ["des-ede3-cbc", "aes-cbc", "null"])
)


def _ck_ik(s: dict) -> tuple[bytes, bytes]:
    return bytes.fromhex(s["f3"]), bytes.fromhex(s["f4"])  # f3 = CK, f4 = IK


def test_test_set_1_literal_values():
    # TS 35.208 test set 1: CK b40ba9a3..., IK f769bcd7...
    ck = bytes.fromhex("b40ba9a3c58b2a05bbf0d987b21bf8cb")
    ik = bytes.fromhex("f769bcd751044604127672711c6d3441")
    k = derive_esp_keys("hmac-sha-1-96", "des-ede3-cbc", ik=ik, ck=ck)
    assert k.ik_esp.hex() == "f769bcd751044604127672711c6d344100000000"
    assert k.ck_esp.hex() == "b40ba9a3c58b2a05bbf0d987b21bf8cbb40ba9a3c58b2a05"
    k = derive_esp_keys("hmac-md5-96", "aes-cbc", ik=ik, ck=ck)
    assert k.ik_esp == ik and k.ck_esp == ck


@pytest.mark.parametrize("alg,ealg", LEGACY)
def test_legacy_expansions_against_every_test_set(milenage_sets, alg, ealg):
    for s in milenage_sets:
        ck, ik = _ck_ik(s)
        k = derive_esp_keys(alg, ealg, ik=ik, ck=ck)
        assert k.ik_esp == (ik + b"\x00" * 4 if alg == "hmac-sha-1-96" else ik)
        expected_ck = {"aes-cbc": ck, "des-ede3-cbc": ck[:8] + ck[8:] + ck[:8], "null": b""}
        assert k.ck_esp == expected_ck[ealg]
        # des-ede3-cbc is CK1 ‖ CK2 ‖ CK1, never a zero-padded CK (PITFALLS).
        if ealg == "des-ede3-cbc":
            assert k.ck_esp[16:] == ck[:8] and k.ck_esp[16:] != bytes(8)


def test_gcm_and_gmac_salt_per_annex_i(milenage_sets):
    s = milenage_sets[0]
    ck, ik = _ck_ik(s)
    gcm = derive_esp_keys("null", "aes-gcm", ik=ik, ck=ck)
    expected = hmac.new(ck + ik, b"\x59AES_GCM_SALT\x00\x0c", hashlib.sha256).digest()[-4:]
    assert gcm.ck_esp == ck and gcm.salt == expected and gcm.ik_esp == b""
    gmac = derive_esp_keys("aes-gmac", "null", ik=ik, ck=ck)
    expected = hmac.new(ck + ik, b"\x58AES_GMAC_SALT\x00\x0d", hashlib.sha256).digest()[-4:]
    assert gmac.ik_esp == ik and gmac.salt == expected and gmac.ck_esp == b""
    assert kdf_salt(ck, ik, 0x59, b"AES_GCM_SALT") == gcm.salt


def test_keys_never_in_repr():
    ck, ik = bytes(range(16)), bytes(range(16, 32))
    k = derive_esp_keys("hmac-sha-1-96", "aes-cbc", ik=ik, ck=ck)
    assert ik.hex() not in repr(k) and ck.hex() not in repr(k)


@pytest.mark.parametrize(
    "alg,ealg",
    [("hmac-sha-1-96", "aes-gcm"), ("null", "aes-cbc"), ("aes-gmac", "aes-cbc"), ("md5", "null")],
)
def test_invalid_combinations_are_refused(alg, ealg):
    with pytest.raises(LocalProtocolError) as exc:
        derive_esp_keys(alg, ealg, ik=bytes(16), ck=bytes(16))
    assert "alg/ealg" in str(exc.value)


def test_wrong_key_length_names_the_field_not_the_key():
    with pytest.raises(LocalProtocolError) as exc:
        derive_esp_keys("hmac-md5-96", "null", ik=b"\x01" * 15, ck=bytes(16))
    assert "ik/ck" in str(exc.value) and "0101" not in str(exc.value)


def test_release_table():
    assert combination_allowed("hmac-md5-96", "des-ede3-cbc", release=12)
    assert not combination_allowed("hmac-md5-96", "aes-cbc", release=13)
    assert not combination_allowed("hmac-sha-1-96", "des-ede3-cbc", release=13)
    assert combination_allowed("null", "aes-gcm", release=13)
    assert not combination_allowed("null", "aes-gcm", release=12)
    assert combination_allowed("aes-gmac", "null", release=15)
    assert set(INTEGRITY) == {"hmac-md5-96", "hmac-sha-1-96", "aes-gmac", "null"}
    assert set(ENCRYPTION) == {"des-ede3-cbc", "aes-cbc", "aes-gcm", "null"}
