"""Bad input gets one clear line before any model loads (issue 12's table, the part done so far): config values of
the wrong type or range, an unknown profile in a TOML file, and a CSV saved with a byte-order mark (accepted)."""

from __future__ import annotations

import pytest

from programs.compile import main
from programs.config import ConfigError, build_config
from programs.inputs import load_file


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", 0, "epochs must be a positive number"),
    ("epochs", -1.0, "epochs must be a positive number"),
    ("epochs", "two", "epochs must be a positive number"),
    ("k_samples", 0, "k_samples must be a positive integer"),
    ("batch_size", -4, "batch_size must be a positive integer"),
    ("max_length", 0, "max_length must be a positive integer"),
    ("threads", 0, "threads must be a positive integer"),
    ("threads", 1.5, "threads must be a positive integer"),
    ("ood_inputs", -1, "ood_inputs (--ood) must be 0 or a positive integer"),
    ("max_steps", -2, "max_steps must be a positive integer (or -1"),
])
def test_bad_config_values_are_one_line(key, value, message):
    with pytest.raises(ConfigError, match=None) as e:
        build_config(overrides={key: value})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_profile_in_a_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('profile = "nope"\n')
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        build_config(toml_path=str(f))


def test_ood_minus_one_stops_the_command_before_any_model(tmp_path, capsys):
    code = main(["--ood", "-1", "--db", str(tmp_path / "t.duckdb"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "ood_inputs (--ood) must be 0 or a positive integer, got -1" in err
    assert not (tmp_path / "t.duckdb").exists()


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "in.csv"
    f.write_bytes("\ufefftext,split\nI lost my keys again.,train\nMy tea went cold.,test\n".encode("utf-8"))
    rows = load_file(f)
    assert [r["text"] for r in rows] == ["I lost my keys again.", "My tea went cold."]
    assert [r["split"] for r in rows] == ["train", "test"]
