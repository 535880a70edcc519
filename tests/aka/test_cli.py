"""``imsaka aka ...`` through imsaka.cli.main, and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imsaka.aka.digest import compute_response, make_nonce, password_for
from imsaka.cli import main


def run(capsys, *argv):
    code = main(["aka", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def subscriber(ts, variant="op"):
    return ["--k", ts["k"], f"--{variant}", ts[variant]]


@pytest.mark.parametrize("variant", ["op", "opc"])
def test_vector_every_set_json(capsys, milenage_sets, variant):
    for ts in milenage_sets:
        code, out, err = run(
            capsys,
            "vector",
            *subscriber(ts, variant),
            "--rand",
            ts["rand"],
            "--sqn",
            ts["sqn"],
            "--amf",
            ts["amf"],
            "--json",
        )
        assert code == 0, err
        got = json.loads(out)
        sqn_xor_ak = (int(ts["sqn"], 16) ^ int(ts["f5"], 16)).to_bytes(6, "big").hex()
        assert got == {
            "rand": ts["rand"],
            "opc": ts["opc"],
            "mac_a": ts["f1"],
            "mac_s": ts["f1_star"],
            "xres": ts["f2"],
            "res": ts["f2"],
            "ck": ts["f3"],
            "ik": ts["f4"],
            "ak": ts["f5"],
            "ak_star": ts["f5_star"],
            "autn": sqn_xor_ak + ts["amf"] + ts["f1"],
        }
        assert all(v == v.lower() for v in got.values())


def test_vector_text_and_random_rand(capsys, milenage_sets):
    ts = milenage_sets[0]
    code, out, _ = run(
        capsys,
        "vector",
        *subscriber(ts),
        "--rand",
        ts["rand"].upper(),
        "--sqn",
        ts["sqn"],
        "--amf",
        ts["amf"],
    )
    assert code == 0
    lines = dict(line.split() for line in out.splitlines())
    assert lines["mac_a"] == ts["f1"] and lines["ak_star"] == ts["f5_star"]
    code, out, _ = run(
        capsys, "vector", *subscriber(ts), "--sqn", ts["sqn"], "--amf", ts["amf"], "--json"
    )
    assert code == 0 and len(json.loads(out)["rand"]) == 32


def test_auts_and_resync_round_trip(capsys, milenage_sets):
    for ts in milenage_sets:
        code, out, err = run(
            capsys, "auts", *subscriber(ts), "--rand", ts["rand"], "--sqn-ms", ts["sqn"], "--json"
        )
        assert code == 0, err
        auts = json.loads(out)["auts"]
        assert auts[:12] == (int(ts["sqn"], 16) ^ int(ts["f5_star"], 16)).to_bytes(6, "big").hex()
        code, out, err = run(
            capsys, "resync", *subscriber(ts, "opc"), "--rand", ts["rand"], "--auts", auts, "--json"
        )
        assert code == 0, err
        assert json.loads(out) == {"sqn_ms": ts["sqn"]}
        code, out, _ = run(capsys, "resync", *subscriber(ts), "--rand", ts["rand"], "--auts", auts)
        assert out.split() == ["sqn_ms", ts["sqn"]]


def test_resync_forged_auts_exits_1(capsys, milenage_sets):
    ts = milenage_sets[0]
    code, out, _ = run(
        capsys, "auts", *subscriber(ts), "--rand", ts["rand"], "--sqn-ms", "000000000020", "--json"
    )
    auts = bytearray.fromhex(json.loads(out)["auts"])
    auts[-1] ^= 1
    code, out, err = run(
        capsys, "resync", *subscriber(ts), "--rand", ts["rand"], "--auts", auts.hex()
    )
    assert code == 1
    assert out == ""
    assert err.strip().endswith("MAC-S check failed")
    assert len(err.strip().splitlines()) == 1


def test_digest_akav1_akav2_md5(capsys):
    nonce = make_nonce(bytes(range(16)), bytes(range(16, 32)))
    res, ik, ck = bytes.fromhex("00a4112200ba5000"), b"\x11" * 16, b"\x22" * 16
    base = [
        "--username",
        "alice@ims.test",
        "--realm",
        "ims.test",
        "--nonce",
        nonce,
        "--uri",
        "sip:ims.test",
        "--method",
        "REGISTER",
    ]
    common = dict(
        username="alice@ims.test",
        realm="ims.test",
        nonce=nonce,
        uri="sip:ims.test",
        method="REGISTER",
    )
    code, out, _ = run(capsys, "digest", "--algorithm", "AKAv1-MD5", *base, "--res", res.hex())
    assert code == 0
    assert out.split() == [
        "response",
        compute_response(algorithm="AKAv1-MD5", password=res, **common),
    ]
    code, out, _ = run(
        capsys,
        "digest",
        "--algorithm",
        "AKAv2-MD5",
        *base,
        "--res",
        res.hex(),
        "--ik",
        ik.hex(),
        "--ck",
        ck.hex(),
        "--qop",
        "auth",
        "--nc",
        "00000001",
        "--cnonce",
        "abc",
        "--json",
    )
    assert code == 0
    want = compute_response(
        algorithm="AKAv2-MD5",
        password=password_for("AKAv2-MD5", res=res, ik=ik, ck=ck),
        qop="auth",
        nc="00000001",
        cnonce="abc",
        **common,
    )
    assert json.loads(out) == {"response": want}
    code, out, _ = run(capsys, "digest", "--algorithm", "MD5", *base, "--password", "pw", "--json")
    assert json.loads(out)["response"] == compute_response(
        algorithm="MD5", password=b"pw", **common
    )
    code, out, _ = run(capsys, "digest", *base, "--res", "", "--json")  # resync: empty password
    assert json.loads(out)["response"] == compute_response(
        algorithm="AKAv1-MD5", password=b"", **common
    )


K = "465b5ce8b199b49faa5f0a2ee238a6bc"
OP = "cdc202d5123e20f62b6d676ac72cb318"
RAND = "23553cbe9637a89d218ae64dae47bf35"


def vec(**over):
    """``aka vector`` arguments, valid unless overridden (value None drops the option)."""
    args = {"--k": K, "--op": OP, "--rand": RAND, "--sqn": "000000000001", "--amf": "8000"}
    args.update(over)
    out = ["vector"]
    for key, value in args.items():
        if value is not None:
            out += [key, value]
    return out


SUB = ["--k", K, "--op", OP, "--rand", RAND]
DIG = ["digest", "--username", "u", "--realm", "r", "--nonce", "n", "--uri", "u"]
QOP = ["--res", "00" * 8, "--qop", "auth"]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (vec(**{"--k": K[:-2]}), "--k"),
        (vec(**{"--op": OP + "00"}), "--op"),
        (vec(**{"--op": None, "--opc": "zz" * 16}), "--opc"),
        (vec(**{"--rand": RAND[:-1]}), "--rand"),
        (vec(**{"--sqn": "01"}), "--sqn"),
        (vec(**{"--amf": "80"}), "--amf"),
        (vec(**{"--op": None}), "--op"),
        (vec(**{"--opc": OP, "--rand": None}), "--opc"),
        (["auts", *SUB, "--sqn-ms", "0001"], "--sqn-ms"),
        (["resync", *SUB, "--auts", "00" * 13], "--auts"),
        (["resync", *SUB, "--auts", "g" * 28], "--auts"),
        (DIG, "--res"),
        ([*DIG, "--res", "00" * 17], "--res"),
        ([*DIG, "--algorithm", "AKAv2-MD5", "--res", "00" * 8], "--ik"),
        ([*DIG, "--algorithm", "SHA-256"], "--algorithm"),
        ([*DIG, "--algorithm", "MD5"], "--password"),
        ([*DIG, *QOP, "--cnonce", "c"], "--nc"),
        ([*DIG, *QOP, "--nc", "1", "--cnonce", "c"], "--nc"),
        ([*DIG, *QOP, "--nc", "00000001"], "--cnonce"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, argv, field):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0]
    assert "Traceback" not in err
    # the key material given is never echoed back
    assert K not in err and OP not in err


def test_subprocess_vector_and_forged_resync(milenage_sets):
    ts = milenage_sets[1]
    cmd = [
        sys.executable,
        "-m",
        "imsaka",
        "aka",
        "vector",
        *subscriber(ts),
        "--rand",
        ts["rand"],
        "--sqn",
        ts["sqn"],
        "--amf",
        ts["amf"],
        "--json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["xres"] == ts["f2"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "imsaka",
            "aka",
            "resync",
            *subscriber(ts),
            "--rand",
            ts["rand"],
            "--auts",
            "00" * 14,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "MAC-S check failed" in bad.stderr and "Traceback" not in bad.stderr
    short = subprocess.run(
        [
            sys.executable,
            "-m",
            "imsaka",
            "aka",
            "auts",
            *subscriber(ts),
            "--rand",
            ts["rand"],
            "--sqn-ms",
            "00",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "--sqn-ms" in short.stderr


def test_hex_with_0x_prefix_and_upper_case_is_accepted(capsys, milenage_sets):
    ts = milenage_sets[3]
    code, out, err = run(
        capsys,
        "vector",
        "--k",
        "0x" + ts["k"].upper(),
        "--opc",
        ts["opc"],
        "--rand",
        ts["rand"],
        "--sqn",
        "0X" + ts["sqn"],
        "--amf",
        ts["amf"],
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["mac_a"] == ts["f1"]
