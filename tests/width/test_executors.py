"""The Ray executor gives the same tables as the local one."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from helpers import ROOT, tiny

from diagnostics.width.study import config_study
from diagnostics.width.sweep import TIMING_COLUMNS


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in frame.columns if c in TIMING_COLUMNS]
    return frame.drop(columns=drop).sort_values(list(frame.columns[:5])).reset_index(drop=True)


def test_ray_and_local_executors_give_identical_tables(tmp_path):
    ray = pytest.importorskip("ray")
    config = tiny(widths={"mlp": (2, 8)})
    local = config_study(config, tmp_path / "local", jobs=1, progress=False).sweep
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        remote = config_study(config, tmp_path / "ray", executor="ray", progress=False).sweep
    finally:
        ray.shutdown()
    assert remote.missing.empty and remote.executed == 8
    pd.testing.assert_frame_equal(comparable(remote.runs), comparable(local.runs))
    pd.testing.assert_frame_equal(comparable(remote.records), comparable(local.records))
