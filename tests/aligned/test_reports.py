"""The switch and guarantee reports are readable and serialisable."""

import json

from helpers import train_aligned


def test_reports_are_readable_and_serialisable():
    trainer = train_aligned("tangent", "full", steps=6)
    report, guarantee = trainer.switch_report, trainer.guarantee()
    assert "tangent features scaled by α" in str(report) and "THEOREM" in str(guarantee)
    for obj in (report, guarantee):
        d = obj.to_dict()
        assert json.loads(json.dumps(d)) == d
    assert d["distance"]["holds"] is True and d["status"] == "theorem"
