"""SweepConfig: default widths across the counting threshold, validation, round trip and fingerprints."""

from __future__ import annotations

import json

import pytest
from helpers import tiny

from diagnostics.data import load_dataset
from diagnostics.width.config import SweepConfig, default_widths, load_data


def test_default_widths_span_the_counting_threshold():
    digits = load_dataset("digits", n_train=128)
    assert default_widths("mlp", digits) == (4, 8, 16, 32, 128, 512)
    assert default_widths("cnn", digits) == (2, 4, 8, 16, 32, 64)
    config = SweepConfig().resolve(digits)
    assert len(config.runs()) == 2 * 2 * 6 * 3


def test_config_validation_and_round_trip():
    config = tiny()
    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="multiple"):
        tiny(steps=5)
    with pytest.raises(ValueError, match="family"):
        tiny(families=("transformer",))
    with pytest.raises(ValueError, match="image inputs"):
        load_data(SweepConfig(dataset="teacher-student", families=("cnn",)))
    spec = config.resolve(load_data(config)).runs()[0]
    assert config.fingerprint(spec) == tiny(seeds=(5,), widths={"mlp": (64,)}).fingerprint(spec)
    assert config.fingerprint(spec) != tiny(steps=8).fingerprint(spec)
