"""The pipeline config: learning rates per objective, validated, and left out of a run's identity while unset."""

import pytest

from programs.config import ConfigError, build_config


def test_objective_learning_rates_from_toml_and_their_identity(tmp_path):
    plain = build_config("tiny")
    assert plain.dpo_learning_rate is None and plain.brio_learning_rate is None
    assert "dpo_learning_rate" not in plain.identity()  # unset: the run ids of earlier runs stay what they were

    toml = tmp_path / "lr.toml"
    toml.write_text("learning_rate = 1e-4\ndpo_learning_rate = 2e-6\n")
    cfg = build_config("tiny", str(toml))
    assert (cfg.learning_rate, cfg.dpo_learning_rate, cfg.brio_learning_rate) == (1e-4, 2e-6, None)
    assert cfg.identity()["dpo_learning_rate"] == 2e-6 and "brio_learning_rate" not in cfg.identity()
    assert cfg.identity() != plain.identity()


@pytest.mark.parametrize("key, value", [("dpo_learning_rate", -1e-5), ("brio_learning_rate", "fast"),
                                        ("learning_rate", 0), ("dpo_learning_rate", True)])
def test_bad_learning_rates_are_named(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a positive number"):
        build_config("tiny", overrides={key: value})
