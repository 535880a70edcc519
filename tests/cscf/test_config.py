"""imsaka.config: the whole-network TOML; one line naming [section].field on any mistake."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from imsaka.config import ConfigError, load_config, parse_config, split_hostport

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "imsaka.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_describes_a_whole_loopback_network():
    cfg = load_config(EXAMPLE)
    assert cfg.network.home_domains == ("home1.net",)
    assert cfg.pcscf.route_for("home1.net").icscf == "sip:icscf1_p.home1.net:5070"
    assert cfg.pcscf.subscribe_reg_event is True
    assert cfg.pcscf.max_in_flight == 300
    assert cfg.pcscf.max_queue_delay == 0.4
    assert cfg.icscf.scscfs[0].name == cfg.scscf.server_name
    assert cfg.icscf.scscf_by_name("SIP:SCSCF1.home1.net:5080") is cfg.icscf.scscfs[0]
    assert cfg.scscf.service_route == "<sip:orig@scscf1.home1.net:5080;lr>"
    assert cfg.scscf.realm == "home1.net"
    assert cfg.network.resolve("scscf1.home1.net") == "127.0.0.1"
    assert cfg.hss["diameter_host"] == "hss.home1.net"
    assert cfg.raw["hss"] is cfg.hss


def test_the_hss_accepts_the_example_hss_section():
    from imsaka.hss.config import parse_hss_config

    hss = parse_hss_config(example())
    assert hss.scscfs[0].name == "sip:scscf1.home1.net:5080"
    assert {p.host for p in hss.peers} == {"icscf1.home1.net", "scscf1.home1.net"}


def mutate(path: list[str], value) -> dict:
    doc = example()
    target = doc
    for key in path[:-1]:
        target = target[key] if not key.isdigit() else target[int(key)]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["scscf", "port"], "5080", "[scscf].port: must be an integer"),
        (["scscf", "port"], 70000, "[scscf].port: must be at most 65535"),
        (["scscf", "reauthenticate"], "sometimes", "[scscf].reauthenticate: must be one of"),
        (["scscf", "binding_store"], "mysql://x", "[scscf].binding_store:"),
        (["scscf", "min_expires"], 0, "[scscf].min_expires: must be at least 1"),
        (["scscf", "default_expires"], 10, "[scscf].default_expires:"),
        (["scscf", "vectors_per_request"], 0, "[scscf].vectors_per_request:"),
        (["scscf", "colour"], "blue", "[scscf].colour: unknown field"),
        (["scscf", "diameter"], KeyError, "[scscf].diameter: missing"),
        (["scscf", "diameter", "peers"], [], "[scscf.diameter].peers:"),
        (
            ["icscf", "diameter", "watchdog_interval"],
            2,
            "[icscf.diameter].watchdog_interval: must be at least 6",
        ),
        (
            ["scscf", "diameter", "reopen_dwas"],
            0,
            "[scscf.diameter].reopen_dwas: must be at least 1",
        ),
        (["icscf", "scscfs"], [], "[icscf].scscfs: at least one"),
        (["icscf", "scscf_timeout"], 0, "[icscf].scscf_timeout: must be greater than 0"),
        (["icscf", "scscf_down_time"], -1, "[icscf].scscf_down_time: must be greater than 0"),
        (
            ["icscf", "scscf_probe_interval"],
            -1,
            "[icscf].scscf_probe_interval: must be greater than 0",
        ),
        (["icscf", "address"], "localhost", "[icscf].address: 'localhost' is not an IP address"),
        (["pcscf", "sec_agree"], "maybe", "[pcscf].sec_agree: must be one of"),
        (["pcscf", "max_in_flight"], -1, "[pcscf].max_in_flight: must be at least 0"),
        (["pcscf", "max_in_flight"], "many", "[pcscf].max_in_flight: must be an integer"),
        # TOML has inf and nan; nan would pass every bound check
        (["pcscf", "max_queue_delay"], float("nan"), "[pcscf].max_queue_delay: must be a finite"),
        (["pcscf", "max_queue_delay"], float("inf"), "[pcscf].max_queue_delay: must be a finite"),
        (["icscf", "diameter", "timeout"], float("inf"), "[icscf.diameter].timeout: must be a fin"),
        (["pcscf", "integrity_algorithms"], ["hmac-sha-256"], "[pcscf].integrity_algorithms:"),
        (["pcscf", "trusted_nodes"], "sip:x", "[pcscf].trusted_nodes: must be a list"),
        (
            ["pcscf", "trusted_nodes"],
            ["sip:nowhere.example:5080"],
            "[pcscf].trusted_nodes: 'sip:nowhere.example:5080':",
        ),
        (["pcscf", "port_s"], 5060, "[pcscf].port_s: port, port_c and port_s must differ"),
        (["pcscf", "scscf_timeout"], -1, "[pcscf].scscf_timeout: must be greater than 0.0 or 0"),
        (["pcscf", "scscf_down_time"], 0, "[pcscf].scscf_down_time: must be greater than 0"),
        (
            ["pcscf", "scscf_probe_interval"],
            -1,
            "[pcscf].scscf_probe_interval: must be greater than 0",
        ),
        (
            ["pcscf", "scscfs"],
            [{"instances": ["sip:127.0.0.1:6060"]}],
            "[pcscf.scscfs[0]].instances: two or more sip:host:port of one S-CSCF",
        ),
        (
            ["pcscf", "scscfs"],
            [{"instances": ["sip:127.0.0.1:6060", "sip:127.0.0.1:6060"]}],
            "[pcscf.scscfs[0]].instances: has duplicates",
        ),
        (
            ["pcscf", "scscfs"],
            [{"instances": ["sip:127.0.0.1:1", "sip:127.0.0.1:2"], "weight": 1}],
            "[pcscf.scscfs[0]].weight: unknown field",
        ),
        (["pcscf", "state_file"], 7, "[pcscf].state_file: must be a non-empty string"),
        (["pcscf", "state_store"], "/tmp/x", "[pcscf].state_store: a redis://host:port/db URL"),
        (["network", "home_domains"], [], "[network].home_domains: must not be empty"),
        (["network", "hosts"], {"a.b": "not-an-ip"}, "[network.hosts].a.b:"),
        (["nonsense"], {}, "[nonsense]: unknown section"),
        (["network"], KeyError, "[network]: missing"),  # (was "[].network")
        (["network"], 3, "[network]: must be a table"),
    ],
)
def test_mistakes_name_the_field(path, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(mutate(path, value))
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_an_scscf_listed_twice_by_name_is_one_scscf_with_two_instances():
    doc = example()
    first = doc["icscf"]["scscfs"][0]
    doc["icscf"]["scscfs"].append({**first, "address": "127.0.0.2"})
    doc["icscf"]["scscf_timeout"] = 2.5
    cfg = parse_config(doc)
    instances = cfg.icscf.instances_of(first["name"].upper())
    assert [e.address for e in instances] == ["127.0.0.1", "127.0.0.2"]
    assert cfg.icscf.scscf_by_name(first["name"]) is instances[0]
    assert (cfg.icscf.scscf_timeout, cfg.icscf.scscf_down_time) == (2.5, 30.0)
    assert cfg.icscf.scscf_probe_interval == 5.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, "[icscf.scscfs[1]].port: 127.0.0.1:5080 is listed twice"),
        ({"address": "127.0.0.2", "capabilities": [7]}, "[icscf.scscfs[1]].capabilities: differ"),
    ],
)
def test_instances_of_one_scscf_must_differ_in_address_and_agree_in_capabilities(change, message):
    doc = example()
    first = doc["icscf"]["scscfs"][0]
    doc["icscf"]["scscfs"].append({**first, **change})
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith(message), str(info.value)


def with_instances(*instances: dict, store: str = "redis://127.0.0.1:6379/15") -> dict:
    doc = example()
    doc["scscf"]["binding_store"] = store
    doc["scscf"]["instances"] = list(instances)
    return doc


def test_an_scscf_instance_runs_with_its_own_port_and_diameter_identity():
    from imsaka.hss.config import parse_hss_config

    doc = with_instances({"port": 5081, "diameter_host": "scscf1b.home1.net"})
    cfg = parse_config(doc)
    first, second = cfg.scscf.instance(1), cfg.scscf.instance(2)
    assert first is cfg.scscf
    assert (second.port, second.diameter.host) == (5081, "scscf1b.home1.net")
    assert second.server_name == first.server_name  # one S-CSCF to the HSS and the I-CSCF
    assert second.diameter.peers == first.diameter.peers and second.instances == ()
    with pytest.raises(ValueError, match="--instance: 3 is not an instance"):
        cfg.scscf.instance(3)
    assert first.share_challenges and second.share_challenges  # (on with instances)
    assert not parse_config(with_instances()).scscf.share_challenges
    hss = parse_hss_config(doc)
    assert "scscf1b.home1.net" in [p.host for p in hss.peers]
    assert hss.scscf_instances == (
        (first.server_name, "scscf1.home1.net"),
        (first.server_name, "scscf1b.home1.net"),
    )
    # the P-CSCF takes NOTIFYs from either (one tells the subscribers of the other)
    assert cfg.pcscf.trusted_nodes == ("sip:127.0.0.1:5080", "sip:127.0.0.1:5081")


@pytest.mark.parametrize(
    ("instances", "store", "message"),
    [
        ([{"port": 5081, "diameter_host": "x.home1.net"}], "memory://", "[scscf].instances: need"),
        ([{"diameter_host": "x.home1.net"}], None, "[scscf.instances[0]].port: missing"),
        ([{"port": 5081}], None, "[scscf.instances[0]].diameter_host: missing"),
        (
            [{"port": 5081, "diameter_host": "SCSCF1.home1.net"}],
            None,
            "[scscf.instances[0]].diameter_host: SCSCF1.home1.net is taken",
        ),
        ([{"port": 5080, "diameter_host": "x.home1.net"}], None, "[scscf.instances[0]].port:"),
    ],
)
def test_scscf_instances_mistakes_name_the_field(instances, store, message):
    doc = with_instances(*instances, **({"store": store} if store else {}))
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith(message), str(info.value)


def test_share_challenges_needs_a_shared_store():
    doc = example()
    doc["scscf"]["share_challenges"] = True
    with pytest.raises(ConfigError, match=r"^\[scscf\].share_challenges: needs a shared"):
        parse_config(doc)
    doc["scscf"]["binding_store"] = "redis://127.0.0.1:6379/15"
    assert parse_config(doc).scscf.share_challenges


def test_cli_instance_of_what_has_none_is_one_line(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text(EXAMPLE.read_text())
    r = run_cli("run", "pcscf", "--instance", "2", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "imsaka: error: --instance: only an S-CSCF runs as several instances"
    ]
    r = run_cli("run", "scscf", "--instance", "2", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "imsaka: error: --instance: 2 is not an instance of this S-CSCF "
        "(1 to 1: [scscf] and its [[scscf.instances]])"
    ]


def test_watchdog_settings_reach_the_cx_node():
    from imsaka.cscf._wiring import cx_node

    doc = example()
    doc["scscf"]["diameter"]["watchdog_interval"] = 12
    doc["scscf"]["diameter"]["reopen_dwas"] = 2
    cfg = parse_config(doc)
    assert cfg.icscf.diameter.watchdog_interval == 30.0  # RFC 3539 default
    node = cx_node(cfg.scscf.diameter, reconnect=1.0, owner="scscf")
    assert node.config.watchdog_interval == 12.0
    assert node.config.reopen_dwas == 2


def test_route_needs_a_target():
    doc = example()
    doc["pcscf"]["routes"] = [{"domain": "home1.net"}]
    with pytest.raises(ConfigError, match=r"^\[pcscf.routes\[0\]\].icscf: a route needs"):
        parse_config(doc)


def test_route_to_an_unknown_host_name():
    doc = example()
    doc["pcscf"]["routes"] = [{"domain": "home1.net", "icscf": "sip:nowhere.example:5070"}]
    with pytest.raises(ConfigError, match=r"^\[pcscf.routes\[0\]\].icscf:"):
        parse_config(doc)


def test_sections_of_other_functions_may_be_absent():
    doc = example()
    del doc["pcscf"], doc["icscf"]
    cfg = parse_config(doc)
    assert cfg.pcscf is None and cfg.icscf is None and cfg.scscf is not None


def test_not_toml(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[scscf\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:scscf1.home1.net:5080", ("scscf1.home1.net", 5080)),
        ("sip:orig@scscf1.home1.net;lr", ("scscf1.home1.net", 5060)),
        ("[::1]:5070", ("::1", 5070)),
        ("127.0.0.1", ("127.0.0.1", 5060)),
        ("sip:[2001:db8::1]:5090;transport=tcp", ("2001:db8::1", 5090)),
    ],
)
def test_split_hostport(text, expected):
    assert split_hostport(text) == expected


@pytest.mark.parametrize("text", ["", "sip:", "[::1", "host:99999", "host:x"])
def test_split_hostport_refuses(text):
    with pytest.raises(ValueError):
        split_hostport(text)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imsaka", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_bad_file_is_one_line_and_exit_2(tmp_path):
    doc = EXAMPLE.read_text().replace('reauthenticate = "never"', 'reauthenticate = "often"')
    p = tmp_path / "bad.toml"
    p.write_text(doc)
    r = run_cli("run", "scscf", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "imsaka: error: [scscf].reauthenticate: must be one of 'never', 'always'"
    ]
    assert "Traceback" not in r.stderr


def test_cli_state_file_in_a_folder_it_cannot_write_is_one_line(tmp_path):
    doc = EXAMPLE.read_text().replace(
        "[pcscf]\n", f'[pcscf]\nstate_file = "{tmp_path}/none/pcscf.state"\n', 1
    )
    p = tmp_path / "x.toml"
    p.write_text(doc)
    r = run_cli("run", "pcscf", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"imsaka: error: [pcscf].state_file: cannot write in {tmp_path}/none"
    ]


def test_cli_missing_file(tmp_path):
    r = run_cli("run", "icscf", "-c", str(tmp_path / "none.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_cli_missing_section(tmp_path):
    doc = example()
    p = tmp_path / "x.toml"
    p.write_text(EXAMPLE.read_text().split("[icscf]")[0])
    r = run_cli("run", "icscf", "-c", str(p))
    assert r.returncode == 2 and "[icscf]: missing section" in r.stderr
    assert doc  # the example itself is untouched


def test_pcscf_route_for_matches_the_request_uri_host_by_domain_suffix():
    """The P-CSCF core routes by the Request-URI host: a route's domain serves the
    domain and every name under it, case-insensitively, the longest domain winning."""
    from imsaka.cscf.pcscf import PcscfCore

    doc = example()
    doc["network"]["home_domains"] = ["home1.net", "ims.home1.net"]
    doc["network"]["hosts"]["icscf2.home1.net"] = "127.0.0.1"
    doc["pcscf"]["routes"] = [
        {"domain": "home1.net", "icscf": "sip:icscf1_p.home1.net:5070"},
        {"domain": "IMS.home1.net", "icscf": "sip:icscf2.home1.net:5071"},
    ]
    doc["pcscf"]["subscribe_reg_event"] = False
    cfg = parse_config(doc)
    p = cfg.pcscf
    assert p.subscribe_reg_event is False
    assert p.route_for("registrar.home1.net").icscf.endswith(":5070")
    assert p.route_for("HOME1.NET").icscf.endswith(":5070")
    assert p.route_for("scscf.ims.home1.net").icscf.endswith(":5071")
    assert p.route_for("evilhome1.net") is None and p.route_for("home2.net") is None
    core = PcscfCore(p, cfg.network)
    assert core.subscribe_reg_event is False
    assert core.route("sip:registrar.home1.net") == ("127.0.0.1", 5070)
    assert core.route("sip:x.ims.home1.net;transport=udp") == ("127.0.0.1", 5071)
    assert core.route("sip:home2.net") is None


def test_pcscf_overload_bound_reaches_the_core():
    from imsaka.cscf.pcscf import PcscfCore

    cfg = parse_config(mutate(["pcscf", "max_in_flight"], 7))
    assert cfg.pcscf.max_in_flight == 7
    assert PcscfCore(cfg.pcscf, cfg.network).max_in_flight == 7


def test_pcscf_trusts_the_scscfs_of_the_document_unless_told_otherwise():
    """`[pcscf].trusted_nodes`: by default the S-CSCFs the document defines (the P-CSCF
    takes their requests to UEs before any Service-Route named them, e.g. after its own
    restart); a list given replaces them, an empty one trusts routes and Service-Routes
    only."""
    from imsaka.cscf.pcscf import Arrival, PcscfCore

    assert parse_config(example()).pcscf.trusted_nodes == ("sip:127.0.0.1:5080",)
    doc = example()
    doc["pcscf"]["trusted_nodes"] = ["scscf1.home1.net:5090"]
    cfg = parse_config(doc)
    assert cfg.pcscf.trusted_nodes == ("sip:scscf1.home1.net:5090",)
    core = PcscfCore(cfg.pcscf, network=cfg.network)
    assert core._from_core(Arrival(("127.0.0.1", 5090), "udp"))
    assert not core._from_core(Arrival(("127.0.0.1", 5080), "udp"))
    doc["pcscf"]["trusted_nodes"] = []
    cfg = parse_config(doc)
    assert cfg.pcscf.trusted_nodes == ()
    assert not PcscfCore(cfg.pcscf, network=cfg.network)._from_core(
        Arrival(("127.0.0.1", 5090), "udp")
    )


def test_pcscf_state_file_needs_the_userspace_backend_and_fixed_ports():
    doc = example()
    doc["pcscf"]["state_file"] = "pcscf.state"
    assert parse_config(doc).pcscf.state_file == "pcscf.state"
    assert parse_config(example()).pcscf.state_file == ""
    doc = example()
    doc["pcscf"]["state_store"] = "redis://127.0.0.1:6379/3"
    assert parse_config(doc).pcscf.state_store == "redis://127.0.0.1:6379/3"
    assert parse_config(doc).pcscf.state_interval == 0.5
    for kept, key, value, message in (
        ("state_file", "ipsec_backend", "xfrm", 'state_file: needs ipsec_backend = "userspace"'),
        ("state_file", "port_c", 0, "state_file: needs fixed port, port_c and port_s (not 0)"),
        ("state_store", "port", 0, "state_store: needs fixed port, port_c and port_s (not 0)"),
        ("state_store", "state_file", "x", "state_store: state_file or state_store, not both"),
        ("state_store", "state_interval", 0, "state_interval: must be greater than 0.0"),
    ):
        bad = example()
        where = "pcscf.state" if kept == "state_file" else "redis://127.0.0.1/0"
        bad["pcscf"].update({kept: where, key: value})
        message = "[pcscf]." + message
        with pytest.raises(ConfigError) as info:
            parse_config(bad)
        assert str(info.value) == message
