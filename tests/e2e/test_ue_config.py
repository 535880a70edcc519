"""ue.toml validation: one line naming the field, never a secret in the message."""

from __future__ import annotations

import pytest

from imsaka.cli import main
from imsaka.clierror import CliError
from imsaka.ue.config import UeConfig, load_ue_config

GOOD = """
impi = "alice@home1.net"
impus = ["sip:alice@home1.net"]
home_domain = "home1.net"
k = "465b5ce8b199b49faa5f0a2ee238a6bc"
opc = "cd63cb71954a9f4e48a5994e37a02baf"
pcscf = "[::1]:5070"
"""


def test_good_file(tmp_path):
    p = tmp_path / "ue.toml"
    p.write_text(GOOD)
    cfg = load_ue_config(p)
    assert cfg.pcscf == ("::1", 5070) and cfg.registrar == "home1.net" and cfg.realm == "home1.net"
    assert "465b5ce8" not in repr(cfg) and "cd63cb71" not in repr(cfg)
    assert cfg.subscribe_reg_event is True  # TS 24.229 §5.1.1.3 by default


def test_subscribe_reg_event_switch(tmp_path):
    p = tmp_path / "ue.toml"
    p.write_text("[ue]\n" + GOOD + "subscribe_reg_event = false\n")
    assert load_ue_config(p).subscribe_reg_event is False
    with pytest.raises(CliError, match=r"^subscribe_reg_event:"):
        UeConfig(impi="a@b", impus=["sip:a@b"], home_domain="b", k=bytes(16), opc=bytes(16),
                 subscribe_reg_event=1)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ('k = "465b"', "k:"),
        ('k = "zz5b5ce8b199b49faa5f0a2ee238a6bc"', "k:"),
        ('op = "cdc202d5123e20f62b6d676ac72cb318"', "op/opc:"),
        ('pcscf = "127.0.0.1:99999"', "pcscf:"),
        ('algorithms = ["hmac-sha-256"]', "algorithms:"),
        ("colour = 1", "colour:"),
        ('impi = "nodomain"', "impi:"),
        ('subscribe_reg_event = "yes"', "subscribe_reg_event:"),
    ],
)
def test_bad_field_named(tmp_path, change, field):
    key = change.split(" = ")[0]
    text = (
        "\n".join(line for line in GOOD.splitlines() if not line.startswith(key + " "))
        + "\n"
        + change
        + "\n"
    )
    p = tmp_path / "ue.toml"
    p.write_text(text)
    with pytest.raises(CliError) as exc:
        load_ue_config(p)
    assert str(exc.value).startswith(field)
    assert "465b5ce8b199b49faa5f0a2ee238a6bc" not in str(exc.value)


def test_cli_reports_missing_file(capsys):
    assert main(["ue", "register", "-c", "/nonexistent/ue.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imsaka: error: -c:") and err.count("\n") == 1


def test_dataclass_rejects_two_variants():
    with pytest.raises(CliError):
        UeConfig(
            impi="a@b", impus=["sip:a@b"], home_domain="b", k=bytes(16), op=bytes(16), opc=bytes(16)
        )
