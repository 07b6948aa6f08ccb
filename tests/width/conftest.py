"""Fixtures of the width tests: one small report, shared by the tests that read it."""

import pytest
from helpers import tiny

from diagnostics.width.study import build_report


@pytest.fixture(scope="package")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("width")
    return build_report(tiny(), folder, jobs=1, progress=False)
