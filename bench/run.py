"""``python bench/run.py [options]``: the same as ``python -m bench.ntk`` (see bench/ntk.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ntk import main  # noqa: E402

if __name__ == "__main__":
    main()
