"""tools.val_curves: curves read from metrics.jsonl, group means at the last common iteration."""

import json

import pytest

from tools.val_curves import main, report, val_curve


def write_run(folder, evals, train_records=3):
    folder.mkdir()
    lines = [{"iter": 20 * (i + 1), "loss": 1.0, "lr": 1e-3} for i in range(train_records)]
    lines += [{"iter": it, "val_mIoU": miou, "val_aAcc": 90.0} for it, miou in evals]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return folder


def test_curve_keeps_only_val_records_and_the_last_of_a_repeated_iteration(tmp_path):
    run = write_run(tmp_path / "a", [(500, 60.0), (1000, 65.0), (1000, 66.5)])
    assert val_curve(run) == {500: 60.0, 1000: 66.5}


def test_group_mean_and_std_at_the_last_iteration_every_run_reached(tmp_path):
    a = write_run(tmp_path / "a", [(500, 60.0), (1000, 70.0)])
    b = write_run(tmp_path / "b", [(500, 62.0), (1000, 72.0)])
    c = write_run(tmp_path / "c", [(500, 61.0)])  # still training
    text = report({"done": [a, b], "mixed": [a, c], "alone": [c]})
    assert "| iteration | a | b | c |" in text
    assert "| 1000 | 70.00 | 72.00 |  |" in text
    assert "- done: val mIoU at iteration 1000 71.00 +- 1.41 (2 runs)" in text
    assert "- mixed: val mIoU at iteration 500 60.50 +- 0.71 (2 runs)" in text
    assert "- alone: val mIoU at iteration 500 61.00 (1 run)" in text


def test_cli_rejects_a_missing_run_and_a_malformed_group(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([f"x={tmp_path / 'missing'}"])
    assert "metrics.jsonl not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-equals-sign"])
    assert "expected NAME=RUN" in capsys.readouterr().err
