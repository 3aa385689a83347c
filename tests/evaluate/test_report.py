import json

import matplotlib.pyplot as plt
import pytest

from camelid.cli import main
from camelid.evaluate.judge import combine
from camelid.evaluate.questions import load_questions
from camelid.evaluate.report import win_rates_figure

from . import fastchat_judge as fc
from .conftest import write_answers
from .judge_server import JudgeServer


def test_report_has_tables_and_charts_for_single_and_pairwise_judgments(shared_data, tmp_path, capsys):
    src = shared_data / "fastchat" / "vicuna_bench_question.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[::8]  # one question of each category
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(lines), encoding="utf-8")
    qs = load_questions(qfile)
    a = write_answers(tmp_path / "a.jsonl", "alpha", {q.question_id: ["An answer. " * (2 + i % 5)]
                                                      for i, q in enumerate(qs)})
    b = write_answers(tmp_path / "b.jsonl", "beta", {q.question_id: ["Another, longer answer. " * (1 + i % 7)]
                                                     for i, q in enumerate(qs)})
    srv = JudgeServer("longer")
    try:
        for mode in ("single", "pairwise"):
            assert main(["eval", "judge", "--judge", "openai:scripted", "--base-url", srv.url, "--api-key", "x",
                         "--mode", mode, "-q", str(qfile), "--answers", str(a), str(b),
                         "-o", str(tmp_path / f"{mode}.jsonl")]) == 0
    finally:
        srv.close()
    out = tmp_path / "report"
    assert main(["eval", "report", str(tmp_path / "single.jsonl"), str(tmp_path / "pairwise.jsonl"), "-o", str(out),
                 "--baseline", "alpha"]) == 0
    md = (out / "report.md").read_text()
    for png in ("score_by_category.png", "win_rates.png", "length_vs_score.png"):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in md
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| alpha vs beta |" in md and "relative to alpha" in md and "| fermi |" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<img src='win_rates.png'" in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["relative_scores"]["alpha"] == 1.0 and summary["pairwise"][0]["n"] == len(qs)
    assert main(["eval", "report", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "r2")]) == 1
    assert "no judgments found" in capsys.readouterr().err


def test_win_tie_loss_bar_is_the_strict_shares_as_fastchats_show_result_counts_them(tmp_path):
    pytest.importorskip("pandas")
    # tie-heavy: 3 wins, 12 ties (4 verdicts of tie, 8 orders that disagree), 1 loss, 2 unparsed
    games = ([("model_1", "model_1")] * 3 + [("tie", "tie")] * 4 + [("model_1", "model_2")] * 5
             + [("model_2", "model_1")] * 3 + [("model_2", "model_2")] + [("error", "model_1"), ("model_2", "error")])
    rows = [{"key": f"k{i}", "question_id": i + 1, "model_1": "tuned", "model_2": "base", "judge": "j",
             "mode": "pairwise", "prompts": "camelid", "prompt": "pair", "turn": 1, "category": "general",
             "length_1": 100 + 7 * i, "length_2": 120, "g1_winner": g1, "g2_winner": g2, "winner": combine(g1, g2)}
            for i, (g1, g2) in enumerate(games)]
    judgments = tmp_path / "pair.jsonl"
    judgments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "report", str(judgments), "-o", str(tmp_path / "r")]) == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())["pairwise"][0]
    ref = fc.display_result_pairwise(str(judgments), baseline_model="base").loc["tuned"]
    assert (s["win"], s["tie"], s["loss"], s["errors"]) == (3, 12, 1, 2) == (ref["win"], ref["tie"], ref["loss"], 2)
    assert s["win_share"] == ref["win_rate"] == 3 / 16 and s["loss_rate"] == ref["loss_rate"]  # FastChat's strict
    assert s["win_rate"] == pytest.approx(ref["win_rate_adjusted"], abs=1e-12)  # a tie half a win
    assert s["win_share_ci"][0] <= s["win_share"] <= s["win_share_ci"][1] and s["win_share_ci"][1] < s["win_rate"]
    assert s["win_share"] + s["tie_rate"] + s["loss_rate"] == pytest.approx(1.0)
    assert s["win_rate"] + s["tie_rate"] + s["loss_rate"] > 1.3  # what the bar used to stack
    fig = win_rates_figure([s])
    widths = [p.get_width() for p in fig.axes[0].patches]
    plt.close(fig)
    assert widths == pytest.approx([3 / 16, 12 / 16, 1 / 16]) and sum(widths) == pytest.approx(1.0)
