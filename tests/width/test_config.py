"""SweepConfig: default widths across the counting threshold, settings per run, validation, round trip, fingerprints."""

from __future__ import annotations

import json

import pytest
from helpers import tiny

from diagnostics.data import load_dataset
from diagnostics.width.config import (
    FULL,
    RunSpec,
    SweepConfig,
    config_data,
    config_plan,
    default_widths,
    load_data,
    record_steps,
)


def test_default_widths_span_the_counting_threshold():
    digits = load_dataset("digits", n_train=128)
    assert default_widths("mlp", digits) == (4, 8, 16, 32, 64, 128, 256)
    assert default_widths("cnn", digits) == (2, 4, 8, 16, 32, 64)
    config = SweepConfig().resolve(digits)
    assert len(config.runs()) == 2 * (7 + 6) * 3
    full = SweepConfig(**FULL).resolve(digits)  # at least five widths above d = n·m = 1280 per family
    for family, widths in full.widths.items():
        above = [w for w in widths if sum(p.numel() for p in _model(family, w, digits).parameters()) >= 1280]
        assert len(above) >= 5, family


def _model(family, width, data):
    from diagnostics.width.config import build_run_model

    return build_run_model(family, width, data, "ntk", 0, 1)


def test_record_steps_are_log_spaced_and_end_at_the_last_step():
    assert record_steps(300, 6) == (0, 3, 7, 17, 45, 116, 300)
    assert record_steps(4, 2) == (0, 2, 4)
    assert record_steps(4, 6) == (0, 1, 2, 3, 4)  # rounding repeats are dropped


def test_learning_rates_and_steps_per_run():
    config = SweepConfig(lr={"mf": 2.0, "cnn/ntk": 3.0}, steps={"ntk": 50})
    assert config.base_lr("mlp", "mf") == config.base_lr("cnn", "mf") == 2.0  # given for the parameterisation
    assert config.base_lr("cnn", "ntk") == 3.0 and config.base_lr("mlp", "ntk") == 2.0  # given pair, default pair
    assert config.steps_for("mlp", "ntk") == 50 and config.steps_for("cnn", "mf") == 1384
    assert config.step_size(RunSpec("mlp", "mf", 64, 0)) == 128.0  # lr₀ · width under mean-field
    assert SweepConfig(steps=7).steps == {"mlp/ntk": 7, "mlp/mf": 7, "cnn/ntk": 7, "cnn/mf": 7}
    assert SweepConfig(families=("deep-linear",)).base_lr("deep-linear", "ntk") == 0.5  # per-parameterisation default


def test_config_validation_and_round_trip():
    config = tiny()
    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad, match in (({"records": 0}, "records"), ({"families": ("transformer",)}, "family"),
                       ({"lr": {"ntk": -1.0}}, "positive base learning rate"), ({"steps": {"mlp/ntk": 0}}, "steps"),
                       ({"lr": {"sgd": 1.0}}, "unknown keys"), ({"dtype": "float16"}, "dtype"),
                       ({"lr_grid": ()}, "lr_grid")):
        with pytest.raises(ValueError, match=match):
            tiny(**bad)
    with pytest.raises(ValueError, match="image inputs"):
        load_data(SweepConfig(dataset="teacher-student", families=("cnn",)))
    data = load_data(config)
    spec = config.resolve(data).runs()[0]

    def fingerprint(cfg):
        cfg = cfg.resolve(data)
        return config_plan(cfg, data).fingerprint(spec, config_data(cfg, data).key())

    assert fingerprint(config) == fingerprint(tiny(seeds=(5,), widths={"mlp": (64, 2)}))
    assert fingerprint(config) == fingerprint(tiny(lr={"mf": 9.0}, lr_grid=(1.0,)))  # not this run's
    assert fingerprint(config) != fingerprint(tiny(steps=8))
    assert fingerprint(config) != fingerprint(tiny(records=3))
    assert fingerprint(config) != fingerprint(tiny(lr={"ntk": 3.0}))
