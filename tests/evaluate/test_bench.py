"""lm-evaluation-harness on a local multiple-choice task with the embedded model's transformers weights."""

import math
from pathlib import Path

from camelid.cli import main
from camelid.evaluate.harness import metrics_table, run_bench

TASK = Path(__file__).parent / "data" / "tiny_mc" / "tiny_mc.yaml"


def test_local_multiple_choice_task_scores_by_log_likelihood(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the YAML's data path resolves against the YAML, not the working directory
    res = run_bench("embedded", [str(TASK)], batch_size=4, log_samples=True, bootstrap_iters=100)
    rows = {r["metric"]: r for r in metrics_table(res)}
    acc = rows["acc"]["value"]
    assert isinstance(acc, float) and math.isfinite(acc) and 0.0 <= acc <= 1.0 and rows["acc"]["n"] == 10
    assert acc >= 0.3  # four choices: chance is 0.25; even a 135M model knows some of these
    samples = res["samples"]["camelid_tiny_mc"]
    assert len(samples) == 10
    for s in samples:  # one (log-likelihood, is_greedy) per choice: the loglikelihood path ran
        lls = s["filtered_resps"]
        assert len(lls) == 4 and all(isinstance(ll, float) and ll < 0 and isinstance(g, bool) for ll, g in lls)
        assert s["acc"] == float(max(range(4), key=lambda i: lls[i][0]) == s["target"])


def test_bench_rejects_a_missing_task_file_and_a_backend_without_log_likelihoods(tmp_path, capsys):
    assert main(["eval", "bench", "--tasks", str(tmp_path / "nope.yaml")]) == 1
    assert "no such task YAML" in capsys.readouterr().err
    assert main(["eval", "bench", "--model", "openai:x", "--tasks", str(TASK)]) == 1
    assert "log-likelihoods" in capsys.readouterr().err
