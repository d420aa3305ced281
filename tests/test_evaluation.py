"""The cached, resumable runner: a resumed or cached evaluation refuses rows of other images."""

from __future__ import annotations

import pytest

from crossholder import evaluation

from test_attacks import linear_case  # noqa: F401  (the fixture: a linear model with closed-form distances)


def _kw(**extra):
    return dict(dataset="mnist", defense="lin", eps_list=[0.0, 0.2, 0.4], steps=5, restarts=2, seed=1,
                profile="smoke", model_id="m", chunk=4, progress=False, protocol="paper-v1", **extra)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_resumed_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):  # noqa: F811
    """Issue 30: until=4 on images 0-7, then the same call on 8-15 kept chunk 0 of the old images."""
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    curve, rows, _ = evaluation.evaluate_model(lin, x[:8], y[:8], until=4, **_kw())
    assert curve is None and len(rows) == 4
    with pytest.raises(ValueError, match=r"other images \(inputs fingerprint [0-9a-f]{16}\) than this call's"):
        evaluation.evaluate_model(lin, x[8:16], y[8:16], **_kw())
    # same images: resumes, and the finished run is the one an uninterrupted run gives
    curve, rows, side = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    assert curve is not None and side["inputs"] and rows["label"].tolist() == y[:8].tolist()
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "whole"))
    _, whole, _ = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    evaluation.pd.testing.assert_frame_equal(rows, whole)


@pytest.mark.filterwarnings("ignore:APGD-T is not run")
def test_cached_evaluation_refuses_other_images(linear_case, tmp_path, monkeypatch):  # noqa: F811
    lin, x, y, _ = linear_case
    monkeypatch.setenv("CROSSHOLDER_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("CROSSHOLDER_RESULTS", str(tmp_path / "r"))
    _, _, side = evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())
    with pytest.raises(ValueError, match="holds rows of other images"):
        evaluation.evaluate_model(lin, x[8:16], y[8:16], **_kw())
    # a file written before fingerprints were recorded (the committed results): checked by its labels
    sidecar = next((tmp_path / "r").rglob("lin-*.json"))
    record = evaluation.store.read_json(sidecar)
    record.pop("inputs")
    evaluation.store.atomic_write_json(sidecar, record)
    assert evaluation.evaluate_model(lin, x[:8], y[:8], **_kw())[0] is not None
    flipped = y[:8].clone()
    flipped[3] = 1 - flipped[3]
    with pytest.raises(ValueError, match="row for image 3 has label"):
        evaluation.evaluate_model(lin, x[:8], flipped, **_kw())
