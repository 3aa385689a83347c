import json

from camelid.cli import main
from camelid.evaluate.questions import load_questions

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
