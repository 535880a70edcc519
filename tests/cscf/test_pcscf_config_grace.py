"""`[pcscf].dereg_grace`: how long the SA set a de-REGISTER's 200 OK (or another last
answer) left over stays for that request's retransmissions (Timer J, RFC 3261 §17.2.2;
`pcscf.DEREGISTER_GRACE`). A config field like the others: default, validated with one
line naming it, and read by the core."""

from __future__ import annotations

import pytest

from imsaka.config import ConfigError, PcscfConfig, parse_config
from imsaka.cscf.pcscf import DEREGISTER_GRACE, PcscfCore
from tests.cscf.test_config import example, mutate


def test_default_is_timer_j_and_reaches_the_core():
    cfg = parse_config(example())
    assert cfg.pcscf.dereg_grace == DEREGISTER_GRACE == 32.0
    assert PcscfConfig(name="p").dereg_grace == DEREGISTER_GRACE
    assert PcscfCore(cfg.pcscf, cfg.network).dereg_grace == DEREGISTER_GRACE


@pytest.mark.parametrize("value", [0, 2, 2.5, 64])
def test_a_value_reaches_the_core(value):
    cfg = parse_config(mutate(["pcscf", "dereg_grace"], value))
    assert cfg.pcscf.dereg_grace == float(value)
    assert isinstance(cfg.pcscf.dereg_grace, float)
    assert PcscfCore(cfg.pcscf, cfg.network).dereg_grace == float(value)
    # the argument still wins over the config (tests shorten it)
    assert PcscfCore(cfg.pcscf, cfg.network, dereg_grace=1.0).dereg_grace == 1.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "[pcscf].dereg_grace: must be greater than 0"),
        ("32", "[pcscf].dereg_grace: must be a number"),
        (True, "[pcscf].dereg_grace: must be a number"),
        (float("inf"), "[pcscf].dereg_grace: must be a finite number"),
        (float("nan"), "[pcscf].dereg_grace: must be a finite number"),
    ],
)
def test_a_bad_value_names_the_field(value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(mutate(["pcscf", "dereg_grace"], value))
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text
