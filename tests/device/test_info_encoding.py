"""``ffedge info`` prints the parameters the bundle's label encoding config holds (fourier stores ``freqs``,
not a ``frequency``), for every registered encoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffedge.cli.info_cmd import ENCODING_FRAME_KEYS, encoding_params
from ffedge.labels import ENCODING_NAMES, encoding_class, make_encoding

from tests.conftest import cli_inprocess


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_info_shows_every_parameter_of_the_encoding(name: str) -> None:
    cfg = make_encoding(name, 10, (1, 28, 28)).to_config()
    text = encoding_params(cfg)
    params = [k for k in cfg if k not in ENCODING_FRAME_KEYS]
    assert params and set(params) <= set(encoding_class(name).param_names())
    for key in params:
        assert f"{key}=" in text, (key, text)
    for key in ENCODING_FRAME_KEYS:
        assert f"{key}=" not in text


def test_fourier_shows_its_freqs_not_a_frequency() -> None:
    text = encoding_params(make_encoding("fourier", 10, (1, 28, 28)).to_config())
    assert "freqs=[4.0 x10]" in text and "frequency" not in text
    assert (
        text.startswith("mode=channel, amplitude=1.0, ") and "angles=[0.0, 0.314159, 0.628319, ... (10 values)]" in text
    )


def test_untrusted_values_stay_short_and_on_one_line() -> None:
    deep: list = [1]
    for _ in range(3000):
        deep = [deep]
    text = encoding_params({"name": "x", "note\nkey": "a" * 500, "deep": [deep] * 5, "n": float("nan")})
    assert "\n" not in text and len(text) < 300 and "n=nan" in text


def test_info_command_prints_the_encoding_config(golden_int8: Path) -> None:
    r = cli_inprocess("info", str(golden_int8))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("labels: "))
    assert line.startswith("labels: fourier mode=channel, amplitude=1.0, freqs=") and "frequency" not in line
