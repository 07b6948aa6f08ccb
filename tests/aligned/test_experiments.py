"""Base optimiser versus aligned training on the real digits (diagnostics.experiments, docs/application.md).

A ResNet with convolutions, skip connections and batch norm, trained with minibatch SGD + momentum: the
framework's test accuracy must be on par with the base optimiser's (within one standard deviation over
seeds, or better) for each feature map, and every record after the switch must lie under the bound.
An interrupted experiment resumes from its files without recomputing finished work.
"""

import json

import numpy as np
import pytest

from diagnostics.aligned import experiments
from diagnostics.aligned.experiments import ExperimentConfig, run_experiment, summary_table, to_markdown
from diagnostics.data import load_dataset

SMALL = dict(seeds=(0, 1, 2), width=8, epochs=10, switch_epoch=5, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def runs(digits):
    config = ExperimentConfig(variants=("base", "tangent", "penultimate", "penultimate/rank-one"), **SMALL)
    return run_experiment(config, digits)


def test_framework_is_on_par_with_the_base_optimizer_on_the_digits(runs):
    table = summary_table(runs).set_index("variant")
    base_mean, base_std = table.loc["base", ["test_acc_mean", "test_acc_std"]]
    assert base_mean > 0.9  # a real classifier, not an untrained one
    for variant in ("tangent", "penultimate", "penultimate/rank-one"):
        assert table.loc[variant, "test_acc_mean"] >= base_mean - base_std, variant
        assert table.loc[variant, "within_one_std_of_base"]


def test_every_post_switch_record_satisfies_the_bound(runs):
    framework = runs[runs.variant != "base"]
    assert (framework.bound_records > 5 * 20).all()  # 5 epochs × 21 minibatches after τ
    assert (framework.bound_holds == framework.bound_records).all()
    assert (framework.max_bound_ratio <= 1).all()
    assert (framework.residual <= 3.5e-4).all()  # D1 for the frozen block (after enlargement)
    assert (framework.residual_before > 0.1).all()  # d = 2,546 < nm = 12,970: enlargement was needed (S1)
    assert set(framework.status) == {"check"}  # momentum: reported as a check, not a theorem


def test_variants_share_the_trajectory_up_to_the_switch(runs):
    for _, g in runs.groupby("seed"):
        assert g.seconds_per_epoch_before.nunique() == 1
        assert g.omega_norm_sq.dropna().nunique() == 1  # the same ‖ω_τ‖² for every framework variant


def test_summary_and_markdown_are_readable(runs):
    table = summary_table(runs)
    text = to_markdown(table, ExperimentConfig(**SMALL))
    assert text.splitlines()[0].startswith("| variant | test accuracy")
    assert "| base |" in text and "| penultimate/rank-one |" in text and "Configuration:" in text
    assert list(table.variant) == ["base", "tangent", "penultimate", "penultimate/rank-one"]


TINY = dict(seeds=(0, 1), variants=("base", "penultimate"), width=4, epochs=2, switch_epoch=1, n_train=200)


def test_interrupted_experiment_resumes_without_recomputing(tmp_path, digits, monkeypatch):
    split = load_dataset("digits", n_train=200, seed=0)
    config = ExperimentConfig(**TINY)
    real_epoch = experiments._epoch
    calls = {"n": 0}

    def crash_in_the_last_run(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # seed 1, penultimate: the fourth and last run
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(experiments, "_epoch", crash_in_the_last_run)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, split, folder=tmp_path)
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert files == ["seed0-base.json", "seed0-penultimate.json", "seed0.switch.pt", "seed1-base.json",
                     "seed1.switch.pt"]
    finished = {p.name: p.read_text() for p in (tmp_path / "runs").glob("*.json")}

    # the rerun trains only seed 1's penultimate variant: no switch state is recomputed
    monkeypatch.setattr(experiments, "_epoch", real_epoch)
    monkeypatch.setattr(experiments, "_switch_state", lambda *a: pytest.fail("switch state recomputed"))
    resumed = run_experiment(config, split, folder=tmp_path)
    assert len(resumed) == 4 and {p.name: p.read_text() for p in (tmp_path / "runs").glob("*.json")
                                  if p.name in finished} == finished
    monkeypatch.undo()
    fresh = run_experiment(config, split)
    cols = ["variant", "seed", "test_accuracy", "train_loss", "bound_holds"]
    assert resumed[cols].equals(fresh[cols])  # same numbers as an uninterrupted run

    # other settings: stale files are not reused
    other = ExperimentConfig(**{**TINY, "lr": 0.01})
    monkeypatch.setattr(experiments, "_switch_state", lambda *a: pytest.fail("expected"))
    with pytest.raises(pytest.fail.Exception, match="expected"):
        run_experiment(other, split, folder=tmp_path)


def test_torn_files_are_recomputed(tmp_path):
    split = load_dataset("digits", n_train=200, seed=0)
    config = ExperimentConfig(**{**TINY, "seeds": (0,), "variants": ("base",)})
    first = run_experiment(config, split, folder=tmp_path)
    row = tmp_path / "runs" / "seed0-base.json"
    assert json.loads(row.read_text())["row"]["variant"] == "base"
    row.write_text('{"fingerprint": "')  # a torn write
    (tmp_path / "runs" / "seed0.switch.pt").write_bytes(b"PK\x03")
    again = run_experiment(config, split, folder=tmp_path)
    np.testing.assert_allclose(again.test_accuracy, first.test_accuracy)
    assert json.loads(row.read_text())["row"]["variant"] == "base"


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="unknown variants"):
        ExperimentConfig(variants=("base", "adagrad"))
    with pytest.raises(ValueError, match="switch_epoch"):
        ExperimentConfig(epochs=5, switch_epoch=5)
    with pytest.raises(ValueError, match="optimizer"):
        ExperimentConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="classification"):
        run_experiment(ExperimentConfig(**TINY), load_dataset("teacher-student"))
