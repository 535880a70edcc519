"""The interim ``imsaka demo`` and the rule that secrets never reach output, logs,
reprs or exception messages unless asked for."""

from __future__ import annotations

import logging
import random

import pytest

from imsaka.aka import digest
from imsaka.aka.isim import Isim
from imsaka.aka.keys import esp_encryption_key, esp_integrity_key
from imsaka.aka.milenage import Milenage
from imsaka.aka.resync import AutsError, build_auts, recover_sqn_ms
from imsaka.aka.sqn import HssSqn
from imsaka.aka.vectors import generate_vector
from imsaka.cli import main


def seeded_secrets(seed: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    return rng.randbytes(16), rng.randbytes(16)


def test_demo_runs_the_exchange_and_resync(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    assert main(["-vv", "demo", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert out.count("200 OK") == 2
    assert "MAC-S check failed" in out and "AUTS" in out and "auts=" in out
    assert "IMS AKA completed" in out
    k, opc = seeded_secrets(7)
    for s in (k, opc):
        assert s.hex() not in out and s.hex() not in caplog.text
    assert "hidden" in out


def test_demo_shows_keys_on_request(capsys):
    assert main(["demo", "--seed", "7", "--show-keys"]) == 0
    out = capsys.readouterr().out
    k, opc = seeded_secrets(7)
    assert k.hex() in out and opc.hex() in out


def test_demo_is_random_without_seed(capsys):
    assert main(["demo"]) == 0
    first = capsys.readouterr().out
    assert main(["demo"]) == 0
    assert capsys.readouterr().out != first


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
