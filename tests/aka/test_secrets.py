"""Secrets (K, OPc, XRES/RES, CK, IK) never reach logs, reprs or exception messages."""

from __future__ import annotations

import logging

import pytest

from imsaka.aka import digest
from imsaka.aka.isim import Isim
from imsaka.aka.keys import esp_encryption_key, esp_integrity_key
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsError, build_auts, recover_sqn_ms
from imsaka.aka.sqn import HssSqn
from imsaka.aka.vectors import generate_vector


def test_no_secret_in_any_error_message_or_log(caplog):
    caplog.set_level(logging.DEBUG)
    k, opc = bytes(range(0xA0, 0xB0)), bytes(range(0xC0, 0xD0))
    m = Milenage(k, opc=opc)
    hss = HssSqn()
    av = generate_vector(m, hss.next(), b"\x80\x00")
    isim = Isim(Milenage(k, opc=opc))
    ok = isim.authenticate(av.rand, av.autn)
    secrets_ = [k, opc, av.xres, av.ck, av.ik, ok.res, ok.ck, ok.ik]
    messages = [repr(m), repr(av), repr(ok), repr(isim), repr(hss), repr(isim.sqn_array)]
    calls = [
        lambda: recover_sqn_ms(m, av.rand, build_auts(m, av.rand, 1)[:-1] + b"\x00"),
        lambda: recover_sqn_ms(m, av.rand, av.xres),
        lambda: esp_integrity_key("hmac-sha-256", av.ik),
        lambda: esp_encryption_key("aes-gcm", av.ck),
        lambda: esp_encryption_key("aes-cbc", av.ck[:15]),
        lambda: digest.password_for("AKAv2-MD5", res=av.xres, ik=av.ik, ck=av.ck[:8]),
        lambda: digest.password_for("AKAv1-MD5", res=av.xres + av.ck),
        lambda: digest.password_for("SHA-1", res=av.xres),
        lambda: Milenage(k, op=opc, opc=opc),
        lambda: Milenage(k[:15], opc=opc),
        lambda: m.f1(av.rand, av.xres, b"\x80\x00"),
        lambda: isim.authenticate(av.rand, av.ck[:15]),
    ]
    for call in calls:
        with pytest.raises(ValueError) as ei:
            call()
        messages.append(str(ei.value))
        messages.append(repr(ei.value))
    text = "\n".join(messages) + caplog.text
    for s in secrets_:
        assert s.hex() not in text
        assert s.hex().upper() not in text
        assert repr(s) not in text
    assert isinstance(AutsError("x"), ValueError)


def test_cli_never_prints_or_logs_k(capsys, caplog):
    from imsaka.cli import main

    caplog.set_level(logging.DEBUG)
    k = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    rand = "00112233445566778899aabbccddeeff"
    assert (
        main(
            [
                "-vv",
                "aka",
                "vector",
                "--k",
                k,
                "--op",
                "c0" * 16,
                "--rand",
                rand,
                "--sqn",
                "000000000021",
                "--amf",
                "8000",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "-vv",
                "aka",
                "resync",
                "--k",
                k,
                "--op",
                "c0" * 16,
                "--rand",
                rand,
                "--auts",
                "00" * 14,
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "-vv",
                "aka",
                "vector",
                "--k",
                k[:-1],
                "--op",
                "c0" * 16,
                "--sqn",
                "00",
                "--amf",
                "8000",
            ]
        )
        == 2
    )
    out, err = capsys.readouterr()
    for text in (out, err, caplog.text):
        assert k not in text and k[:-1] not in text and "c0" * 16 not in text
