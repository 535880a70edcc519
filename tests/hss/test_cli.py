"""`imsaka hss …` provisioning commands: one-line errors naming the field (exit 2),
secrets never printed, CSV import all-or-nothing with the bad line named."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from imsaka.cli import main

from .conftest import OP, OPC, K


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def add(db, impi="bob@home1.net", *extra):
    return [
        "hss", "add-subscriber", "--impi", impi, "--impu", f"sip:{impi}", "--impu", "tel:+15550002",
        "--k", K, "--op", OP, "--db", db, *extra,
    ]  # fmt: skip


def test_add_show_delete(capsys, db):
    rc, out, _ = run(capsys, *add(db, "bob@home1.net", "--amf", "0000", "--sqn", "3e0"))
    assert rc == 0 and "added bob@home1.net" in out
    rc, out, _ = run(capsys, "hss", "show", "bob@home1.net", "--db", db)
    assert rc == 0 and "sip:bob@home1.net" in out and "tel:+15550002" in out
    rc, out, _ = run(capsys, "hss", "show", "bob@home1.net", "--db", db, "--json")
    view = json.loads(out)
    assert view["sqn"] == "0000000003e0" and view["amf"] == "0000" and view["op_kind"] == "op"
    for text in (out,):
        assert K not in text and OP not in text and OPC not in text
    rc, out, _ = run(capsys, "hss", "delete", "bob@home1.net", "--db", db)
    assert rc == 0 and "deleted" in out
    rc, _, err = run(capsys, "hss", "show", "bob@home1.net", "--db", db)
    assert rc == 2 and err.strip() == "imsaka: error: impi: no subscriber 'bob@home1.net'"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--k", "00"], "--k: expected 32 hex digits"),
        (["--amf", "xyz0"], "--amf: not hexadecimal"),
        (["--sqn", "1234567890123"], "--sqn: expected up to 12 hex digits"),
        (["--impu", "bob"], "--impu: expected a sip:, sips: or tel: URI"),
        (["--scheme", "Digest-SHA3"], "--schemes: unknown scheme"),
        (["--opc", OPC], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_field(capsys, db, change, message):
    rc, _out, err = run(capsys, *add(db), *change)
    assert rc == 2
    assert err.startswith("imsaka: error: ") and message in err and err.count("\n") == 1
    assert K not in err and OP not in err
    assert "Traceback" not in err


def test_duplicate_is_refused(capsys, db):
    assert run(capsys, *add(db))[0] == 0
    rc, _, err = run(capsys, *add(db))
    assert rc == 2 and "--impi: 'bob@home1.net' already exists" in err


def test_import_reports_the_bad_line_and_imports_nothing(capsys, db, tmp_path):
    rows = ["impi,impu,k,op,opc,amf,sqn"]
    rows += [
        f"u{i}@home1.net,sip:u{i}@home1.net|tel:+1777{i:04d},{K},{OP},,8000,{i:x}"
        for i in range(50)
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "\n".join([*rows[:30], f"x@home1.net,sip:x@home1.net,{K[:-2]},{OP},,8000,0", *rows[30:]])
        + "\n"
    )
    rc, _, err = run(capsys, "hss", "import", str(bad), "--db", db)
    assert rc == 2 and "line 31: k: expected 32 hex digits" in err
    good = tmp_path / "good.csv"
    good.write_text("\n".join(rows) + "\n")
    # a duplicate against the database: nothing of the file is written
    assert run(capsys, *add(db, "u49@home1.net"))[0] == 0
    rc, _, err = run(capsys, "hss", "import", str(good), "--db", db)
    assert rc == 2 and "already exists (nothing imported)" in err
    rc, _, _ = run(capsys, "hss", "show", "u0@home1.net", "--db", db)
    assert rc == 2
    run(capsys, "hss", "delete", "u49@home1.net", "--db", db)
    rc, out, _ = run(capsys, "hss", "import", str(good), "--db", db)
    assert rc == 0 and "imported 50" in out
    rc, out, _ = run(capsys, "hss", "show", "u7@home1.net", "--db", db, "--json")
    assert json.loads(out)["sqn"] == "000000000007"


def test_import_10k_rows_is_fast(capsys, db, tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("impu,impi,opc,op,k,amf\n")  # columns in any order; no sqn column
        for i in range(10_000):
            fh.write(f"sip:n{i}@home1.net,n{i}@home1.net,{OPC},,{K},\n")
    # CPU time of this process (all its threads), not wall clock: a loaded machine
    # stretched the wall-clock figure past its bound while the work stayed the same.
    start = time.process_time()
    rc, out, _ = run(capsys, "hss", "import", str(path), "--db", db)
    cpu = time.process_time() - start
    assert rc == 0 and "imported 10000" in out
    assert cpu < 10  # 100,000 rows measured at ~9 s on this machine (README)


def test_import_header_errors(capsys, db, tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("impi,impu,k,op,amf\n")
    rc, _, err = run(capsys, "hss", "import", str(path), "--db", db)
    assert rc == 2 and "line 1: opc: column missing" in err
    rc, _, err = run(capsys, "hss", "import", str(tmp_path / "missing.csv"), "--db", db)
    assert rc == 2 and "No such file" in err


def test_deregister_without_api_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMSAKA_HSS_API_TOKEN", raising=False)
    rc, _, err = run(capsys, "hss", "deregister", "sip:bob@home1.net")
    assert rc == 2 and "--api:" in err
    rc, _, err = run(capsys, "hss", "deregister", "bob")  # no scheme: an IMPI, and not one
    assert rc == 2 and "impi: expected an NAI" in err
    rc, _, err = run(capsys, "hss", "deregister", "sip:")
    assert rc == 2 and "impu:" in err


def test_console_script_runs(db):
    proc = subprocess.run(
        [sys.executable, "-m", "imsaka", "hss", "add-subscriber", "--impi", "z@home1.net", "--impu",
         "sip:z@home1.net", "--k", K, "--opc", OPC, "--db", db],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert K not in proc.stdout + proc.stderr
