"""The [hss] section: defaults from the whole-network file, one-line errors naming
[hss].field, secrets kept out of reprs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from imsaka.hss.config import HssConfigError, parse_hss_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imsaka.toml"


def test_example_file_parses_with_defaults_from_the_cscfs():
    cfg = parse_hss_config(tomllib.loads(EXAMPLE.read_text()))
    assert cfg.diameter_host == "hss.home1.net" and cfg.diameter_realm == "home1.net"
    assert cfg.api_port == 0
    assert {p.host for p in cfg.peers} == {"icscf1.home1.net", "scscf1.home1.net"}
    assert [e.name for e in cfg.scscfs] == ["sip:scscf1.home1.net:5080"]
    assert cfg.scscfs[0].diameter_host == "scscf1.home1.net"
    assert "home1.net" in cfg.home_networks


def test_full_section():
    cfg = parse_hss_config(
        {
            "network": {"home_domains": ["home1.net"]},
            "hss": {
                "database": "postgresql+asyncpg://postgres@127.0.0.1/test",
                "diameter_port": 3869,
                "peers": [
                    "scscf1.home1.net",
                    {"host": "scscf2.home1.net", "address": "127.0.0.1", "port": 3870},
                ],
                "visited_networks": ["visited1.net"],
                "max_vectors": 3,
                "api_port": 8081,
                "api_token": "0123456789abcdef",
                "scscfs": [
                    {
                        "name": "sip:s1.home1.net",
                        "mandatory_capabilities": [1, 2],
                        "optional_capabilities": [3],
                    }
                ],
            },
        }
    )
    assert cfg.diameter_host == "hss.home1.net"
    assert cfg.peers[1].address == "127.0.0.1" and cfg.peers[1].port == 3870
    assert cfg.scscfs[0].mandatory_capabilities == (1, 2)
    assert "0123456789abcdef" not in repr(cfg)
    assert cfg.api_url() == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    ("hss", "field"),
    [
        ({"colour": 1}, "[hss].colour"),
        ({"diameter_port": 70000}, "[hss].diameter_port"),
        ({"diameter_address": "localhost"}, "[hss].diameter_address"),
        ({"database": "mysql://x"}, "[hss].database"),
        ({"max_vectors": 0}, "[hss].max_vectors"),
        ({"api_port": 8080}, "[hss].api_token"),
        ({"api_port": 8080, "api_token": "short"}, "[hss].api_token"),
        ({"api_token_file": "/nonexistent/token"}, "[hss].api_token_file"),
        ({"peers": [{"realm": "x"}]}, "[hss].peers[0].host"),
        ({"peers": [{"host": "a", "port": 0}]}, "[hss].peers[0].port"),
        ({"scscfs": [{"name": "scscf1"}]}, "[hss].scscfs[0].name"),
        (
            {"scscfs": [{"name": "sip:a", "mandatory_capabilities": ["x"]}]},
            "[hss].scscfs[0].mandatory_capabilities",
        ),
        ({"watchdog": 1}, "[hss].watchdog"),
        ({"watchdog": float("inf")}, "[hss].watchdog"),
        ({"request_timeout": float("nan")}, "[hss].request_timeout"),
        ({"request_timeout": float("inf")}, "[hss].request_timeout"),
        ({"visited_networks": "visited1.net"}, "[hss].visited_networks"),
    ],
)
def test_errors_name_the_field(hss, field, monkeypatch):
    monkeypatch.delenv("IMSAKA_HSS_API_TOKEN", raising=False)
    with pytest.raises(HssConfigError) as err:
        parse_hss_config(
            {"network": {"home_domains": ["home1.net"]}, "hss": {"api_port": 0, **hss}}
        )
    message = str(err.value)
    assert message.startswith(field + ":"), message
    assert "\n" not in message


def test_token_from_file_and_environment(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("from-a-file-123\n")
    cfg = parse_hss_config({"hss": {"api_token_file": "token"}}, base_dir=tmp_path)
    assert cfg.api_token == "from-a-file-123"
    monkeypatch.setenv("IMSAKA_HSS_API_TOKEN", "from-the-environment")
    assert parse_hss_config({"hss": {}}).api_token == "from-the-environment"


def test_run_hss_with_a_bad_section_is_one_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text('[network]\nhome_domains = ["home1.net"]\n[hss]\ndiameter_port = "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "imsaka", "run", "hss", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "imsaka: error: [hss].diameter_port: expected a port number 0..65535"
    )


async def test_start_errors_name_the_field(tmp_path):
    import socket

    from imsaka.hss.server import HssServer, HssStartError

    from .conftest import hss_config

    with pytest.raises(
        HssStartError, match=r"^\[hss\]\.database: cannot open the store: directory"
    ):
        await HssServer(hss_config(f"sqlite:///{tmp_path}/missing/dir/x.db")).start()
    with pytest.raises(HssStartError, match=r"^\[hss\]\.database: cannot open the store"):
        await HssServer(hss_config("postgresql+asyncpg://postgres@127.0.0.1:1/test")).start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = HssServer(hss_config(f"sqlite:///{tmp_path}/x.db", diameter_port=port))
        with pytest.raises(HssStartError, match=r"^\[hss\]\.diameter_port: cannot listen"):
            await server.start()
        server = HssServer(
            hss_config(f"sqlite:///{tmp_path}/x.db", api_port=port, api_token="t" * 16)
        )
        with pytest.raises(HssStartError, match=r"^\[hss\]\.api_port: cannot listen"):
            await server.start()
