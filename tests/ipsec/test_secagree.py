"""Security agreement (RFC 3329 / TS 33.203 Annex H): parse, build, choose, verify, 421/494."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.ipsec import (
    DowngradeError,
    SecAgreeParseError,
    SecAgreePolicy,
    SecurityMechanism,
    answer_headers,
    check_security_client_unchanged,
    check_security_verify,
    choose_mechanism,
    format_security_header,
    offer_mechanisms,
    parse_security_header,
    sec_agree_decision,
    strip_sec_agree,
    ue_choose_server_mechanism,
)

LEGACY = list(
    itertools.product(["hmac-md5-96", "hmac-sha-1-96"], ["des-ede3-cbc", "aes-cbc", "null"])
)

# The seed paper's packets 1 and 3 (whitepaper Appendix 1), unfolded.
SEED_CLIENT = (
    "ipsec-3gpp; alg=hmac-sha-1-96; spi-c=23456789; spi-s=12345678; port-c=2468; port-s=1357"
)
SEED_SERVER = (
    "ipsec-3gpp; q=0.1; alg=hmac-sha-1-96; spi-c=98765432; spi-s=87654321; port-c=8642; port-s=7531"
)


def offer(alg, ealg, **kw):
    base = dict(spi_c=1111, spi_s=2222, port_c=5062, port_s=5064)
    base.update(kw)
    return SecurityMechanism("ipsec-3gpp", alg=alg, ealg=ealg, prot="esp", mod="trans", **base)


def test_parse_seed_packets():
    (c,) = parse_security_header(SEED_CLIENT)
    assert (c.mechanism, c.alg, c.ealg, c.effective_ealg) == (
        "ipsec-3gpp",
        "hmac-sha-1-96",
        None,
        "null",
    )
    assert (c.spi_c, c.spi_s, c.port_c, c.port_s) == (23456789, 12345678, 2468, 1357)
    (s,) = parse_security_header(SEED_SERVER)
    assert s.q == 100 and s.spi_c == 98765432 and s.port_s == 7531


def test_parse_list_and_round_trip():
    header = (
        "ipsec-3gpp;alg=hmac-sha-1-96;ealg=aes-cbc;prot=esp;mod=trans;spi-c=1;spi-s=2;"
        "port-c=3;port-s=4, ipsec-3gpp;alg=hmac-md5-96;ealg=des-ede3-cbc;spi-c=1;spi-s=2;"
        'port-c=3;port-s=4;x-ext="a,b;c";flag, digest;q=1'
    )
    mechs = parse_security_header(header)
    assert [m.mechanism for m in mechs] == ["ipsec-3gpp", "ipsec-3gpp", "digest"]
    assert mechs[1].extensions == (("x-ext", '"a,b;c"'), ("flag", None))
    assert mechs[2].q == 1000
    again = parse_security_header(format_security_header(mechs))
    assert again == mechs
    # several header lines (msg.get_all) parse the same as one comma list
    assert parse_security_header(header.split(", ")) == mechs


@pytest.mark.parametrize(
    "bad,field",
    [
        ("ipsec-3gpp;spi-c=4294967296", "spi-c"),
        ("ipsec-3gpp;spi-s=abc", "spi-s"),
        ("ipsec-3gpp;port-c=0", "port-c"),
        ("ipsec-3gpp;port-s=65536", "port-s"),
        ("ipsec-3gpp;q=1.5", "q"),
        ("ipsec-3gpp;q=0.1234", "q"),
        ("ipsec-3gpp;alg=", "alg"),
        ("ipsec-3gpp;alg=a b", "alg"),
        ("ipsec-3gpp;alg=x;alg=y", "alg"),
        ("ipsec 3gpp;alg=x", "mechanism-name"),
        ('ipsec-3gpp;x="open', "quoted"),
        ("ipsec-3gpp;=x", "parameter name"),
    ],
)
def test_bad_values_name_the_field(bad, field):
    with pytest.raises(SecAgreeParseError) as exc:
        parse_security_header(bad)
    assert field in str(exc.value) and exc.value.status == 400


def test_caps_on_size():
    with pytest.raises(SecAgreeParseError):
        parse_security_header(", ".join(["tls"] * 40))
    with pytest.raises(SecAgreeParseError):
        parse_security_header("tls;" + ";".join(f"p{i}=1" for i in range(40)))


# --- the P-CSCF's choice ---


@pytest.mark.parametrize("alg,ealg", LEGACY)
def test_every_real_phone_combination_is_chosen_when_it_is_the_only_offer(alg, ealg):
    policy = SecAgreePolicy()
    chosen = choose_mechanism([offer(alg, ealg)], policy)
    assert chosen is not None and (chosen.alg, chosen.effective_ealg) == (alg, ealg)


def test_choice_follows_operator_preference_not_the_ue_order():
    offers = [offer(a, e) for a, e in LEGACY]
    policy = SecAgreePolicy()
    for shuffled in (offers, offers[::-1], random.Random(1).sample(offers, len(offers))):
        c = choose_mechanism(shuffled, policy)
        assert (c.alg, c.ealg) == ("hmac-sha-1-96", "aes-cbc")
    # "last offer wins" (PITFALLS): the UE lists null encryption last; it is not taken.
    last_null = [offer("hmac-sha-1-96", "des-ede3-cbc"), offer("hmac-md5-96", "null")]
    c = choose_mechanism(last_null, policy)
    assert c.ealg == "des-ede3-cbc"
    only_null = SecAgreePolicy(preference=(("hmac-md5-96", "null"),))
    assert choose_mechanism([offer("hmac-sha-1-96", "aes-cbc")], only_null) is None


def test_q_breaks_ties_between_offers_of_the_same_transform():
    low = offer("hmac-sha-1-96", "aes-cbc", spi_c=1, port_c=5000)
    high = dataclasses.replace(low, q=900, spi_c=2)
    assert choose_mechanism([low, high], SecAgreePolicy()).spi_c == 2


def test_unusable_offers_are_skipped():
    policy = SecAgreePolicy()
    tls = SecurityMechanism("tls", q=1000)
    no_spi = SecurityMechanism("ipsec-3gpp", alg="hmac-sha-1-96", ealg="aes-cbc")
    ah = offer("hmac-sha-1-96", "aes-cbc", spi_c=7)
    ah = dataclasses.replace(ah, prot="ah")
    tunnel = dataclasses.replace(offer("hmac-sha-1-96", "aes-cbc"), mod="tun")
    good = offer("hmac-md5-96", "des-ede3-cbc")
    assert choose_mechanism([tls, no_spi, ah, tunnel, good], policy) == good


def test_rel13_policy_and_aes_gcm():
    policy = SecAgreePolicy(preference=(("null", "aes-gcm"), ("aes-gmac", "null")), release=13)
    c = choose_mechanism([offer("aes-gmac", "null"), offer("null", "aes-gcm")], policy)
    assert (c.alg, c.ealg) == ("null", "aes-gcm")
    with pytest.raises(ValueError, match="preference"):
        SecAgreePolicy(preference=(("hmac-md5-96", "aes-cbc"),), release=13)
    with pytest.raises(ValueError, match="preference"):
        SecAgreePolicy(preference=(("hmac-sha-1-96", "aes-gcm"),))


def test_ue_side_offer_and_server_choice():
    policy = SecAgreePolicy()
    mine = offer_mechanisms(policy, spi_c=10, spi_s=11, port_c=5062, port_s=5064)
    assert len(mine) == len(policy.preference)
    server = [
        SecurityMechanism("ipsec-3gpp", q=100, alg="hmac-md5-96", ealg="null", spi_c=1,
                          spi_s=2, port_c=3, port_s=4),
        SecurityMechanism("ipsec-3gpp", q=500, alg="hmac-sha-1-96", ealg="aes-cbc", spi_c=1,
                          spi_s=2, port_c=3, port_s=4),
        SecurityMechanism("ipsec-3gpp", q=900, alg="hmac-sha-1-96", ealg="aes-gcm", spi_c=1,
                          spi_s=2, port_c=3, port_s=4),
    ]  # fmt: skip
    chosen = ue_choose_server_mechanism(server, mine)
    assert (chosen.alg, chosen.ealg) == ("hmac-sha-1-96", "aes-cbc")  # gcm was not offered
    assert (
        ue_choose_server_mechanism([SecurityMechanism("ipsec-3gpp", alg="hmac-md5-96")], mine)
        is None
    )


# --- Security-Verify (downgrade) ---


def _server():
    return [
        SecurityMechanism("ipsec-3gpp", q=100, alg="hmac-sha-1-96", ealg="aes-cbc", prot="esp",
                          mod="trans", spi_c=98765432, spi_s=87654321, port_c=8642, port_s=7531)
    ]  # fmt: skip


def test_verify_equal_passes_with_reordered_params_case_and_number_forms():
    sent = format_security_header(_server())
    check_security_verify(_server(), sent)
    reordered = (
        "IPSEC-3GPP; port-s=7531; Spi-S=87654321; alg=HMAC-SHA-1-96; q=0.100; "
        "ealg=aes-cbc; mod=trans; prot=esp; spi-c=0098765432; port-c=8642"
    )
    check_security_verify(_server(), reordered)
    check_security_verify(_server(), [reordered])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s.replace("aes-cbc", "null"),  # weaker cipher
        lambda s: s.replace(";ealg=aes-cbc", ""),  # ealg dropped = null
        lambda s: s.replace("hmac-sha-1-96", "hmac-md5-96"),
        lambda s: s.replace("spi-c=98765432", "spi-c=98765433"),
        lambda s: s.replace("port-s=7531", "port-s=7532"),
        lambda s: s.replace("q=0.1", "q=0.2"),
        lambda s: s + ";x=1",  # an added parameter
        lambda s: s + ", ipsec-3gpp;alg=hmac-md5-96;ealg=null;spi-c=1;spi-s=2;port-c=3;port-s=4",
        lambda s: "digest",
        lambda s: "",
        lambda s: "ipsec-3gpp;spi-c=99999999999",
    ],
)
def test_any_difference_is_a_downgrade(tamper):
    sent = format_security_header(_server())
    with pytest.raises(DowngradeError) as exc:
        check_security_verify(_server(), tamper(sent))
    assert exc.value.status == 494 and "Security-Verify" in str(exc.value)


def test_missing_verify_and_removed_mechanism():
    two = [*_server(), SecurityMechanism("tls", q=200)]
    with pytest.raises(DowngradeError):
        check_security_verify(two, format_security_header(_server()))
    check_security_verify(two, format_security_header(two[::-1]))  # list order is free
    with pytest.raises(DowngradeError):
        check_security_verify(_server(), None)


def test_security_client_must_repeat():
    first = parse_security_header(SEED_CLIENT)
    check_security_client_unchanged(first, SEED_CLIENT.replace("; ", ";"))
    with pytest.raises(DowngradeError):
        check_security_client_unchanged(first, SEED_CLIENT.replace("1357", "1358"))
    with pytest.raises(DowngradeError):
        check_security_client_unchanged(first, None)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_verify_on_arbitrary_text_only_raises_downgrade(text):
    try:
        check_security_verify(_server(), text)
    except DowngradeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_parser_only_raises_its_parse_error(text):
    try:
        parse_security_header(text)
    except SecAgreeParseError:
        pass


# --- 421 / 494 (RFC 3329 §2.3.1) ---


def decide(require=None, proxy_require=None, supported=None, client=None, policy=None):
    return sec_agree_decision(
        require=require,
        proxy_require=proxy_require,
        supported=supported,
        security_client=client,
        policy=policy or SecAgreePolicy(),
    )


def test_421_without_the_option_tag():
    d = decide(require=["path"], supported=["timer"])
    assert (d.status, d.reason) == (421, "Extension Required") and not d.proceed


def test_494_when_only_supported():
    assert decide(supported=["path, sec-agree"], client=[SEED_CLIENT]).status == 494


def test_494_without_security_client_or_acceptable_offer():
    assert decide(require=["sec-agree"], proxy_require=["sec-agree"]).status == 494
    only_md5_null = format_security_header([offer("hmac-md5-96", "null")])
    strict = SecAgreePolicy(preference=(("hmac-sha-1-96", "aes-cbc"),))
    assert decide(proxy_require=["sec-agree"], client=[only_md5_null], policy=strict).status == 494


def test_400_for_unparsable_security_client():
    d = decide(require=["sec-agree"], client=["ipsec-3gpp;spi-c=x"])
    assert d.status == 400 and "spi-c" in d.detail


def test_proceed_and_not_required():
    assert decide(require=["Sec-Agree"], proxy_require=["sec-agree"], client=[SEED_CLIENT]).proceed
    assert decide(policy=SecAgreePolicy(required=False)).proceed


def test_answer_headers_and_strip():
    headers = dict(answer_headers(SecAgreePolicy()))
    assert headers["Require"] == "sec-agree"
    mechs = parse_security_header(headers["Security-Server"])
    assert [(m.alg, m.ealg) for m in mechs] == list(SecAgreePolicy().preference)
    assert all(m.q == 100 and m.spi_c is None for m in mechs)
    assert strip_sec_agree(["sec-agree, path", "Sec-Agree"]) == ["path"]
    assert strip_sec_agree(["sec-agree"]) == []
    assert strip_sec_agree(None) == []


def test_accepts_the_sip_layer_typed_views():
    from imsaka.sip import parse_message

    raw = (
        "REGISTER sip:ims.example SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK77\r\n"
        "From: <sip:u@ims.example>;tag=1\r\nTo: <sip:u@ims.example>\r\n"
        "Call-ID: x\r\nCSeq: 2 REGISTER\r\nMax-Forwards: 70\r\n"
        f"Security-Client: {SEED_CLIENT}\r\n"
        f"Security-Verify: {format_security_header(_server())}\r\n"
        "Require: sec-agree\r\nProxy-Require: sec-agree\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(raw)
    check_security_verify(_server(), msg.security("Security-Verify"))
    check_security_client_unchanged(
        parse_security_header(SEED_CLIENT), msg.security("Security-Client")
    )
    chosen = choose_mechanism(msg.security("Security-Client"), SecAgreePolicy())
    assert chosen is not None and chosen.spi_c == 23456789
    d = sec_agree_decision(
        require=msg.get_all("Require"),
        proxy_require=msg.get_all("Proxy-Require"),
        supported=msg.get_all("Supported"),
        security_client=msg.security("Security-Client"),
        policy=SecAgreePolicy(),
    )
    assert d.proceed
