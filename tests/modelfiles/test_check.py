"""camelid model check: EOS / generation_config / template end token / chat_template agree, or exit 1 and --fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import CamelidError
from camelid.modelfiles.check import check_model, fix_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_dir() -> Path:
    from camelid.models.checkpoint import embedded_hf_dir

    return embedded_hf_dir()


@pytest.fixture
def wrong_eos(tmp_path, base_dir) -> Path:
    """A chatml run whose tokenizer EOS and generation_config name <|endoftext|> instead of <|im_end|>."""
    run = tmp_path / "run"
    run.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "generation_config.json"):
        shutil.copy(base_dir / f, run / f)
    tok = json.loads((run / "tokenizer_config.json").read_text())
    (run / "tokenizer_config.json").write_text(json.dumps({**tok, "eos_token": "<|endoftext|>"}))
    gen = json.loads((run / "generation_config.json").read_text())
    (run / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 0}))
    (run / "camelid.json").write_text(json.dumps({"template": "chatml", "base_model": "embedded", "method": "full"}))
    return run


def test_a_tokenizer_whose_eos_is_not_the_templates_is_flagged_and_fixed(wrong_eos, tmp_path, capsys):
    assert main(["model", "check", f"hf:{wrong_eos}"]) == 1
    out = capsys.readouterr().out
    assert "[eos_mismatch]" in out and "[generation_eos]" in out and "problems found" in out
    original = (wrong_eos / "tokenizer_config.json").read_text()

    assert main(["model", "check", f"hf:{wrong_eos}", "--fix", "-o", str(tmp_path / "fixed")]) == 0
    assert "fixed copy written to" in capsys.readouterr().out
    assert (wrong_eos / "tokenizer_config.json").read_text() == original  # never in place
    report = check_model(f"hf:{tmp_path / 'fixed'}")
    assert report.ok and report.tokens["eos"]["token"] == "<|im_end|>"
    gen = json.loads((tmp_path / "fixed" / "generation_config.json").read_text())
    assert 2 in gen["eos_token_id"] and 0 in gen["eos_token_id"]  # the old EOS still stops generation
    assert report.tokens["pad"]["token"] == "<|endoftext|>"  # pad moved off the end token
    assert json.loads((tmp_path / "fixed" / "camelid.json").read_text())["template"] == "chatml"
    assert main(["model", "check", f"hf:{tmp_path / 'fixed'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_the_embedded_checkpoint_with_chatml_passes(base_dir):
    report = check_model(f"hf:{base_dir}", template="chatml")
    assert report.ok, report.findings
    assert report.template["end_token"] == "<|im_end|>" and report.template["end_token_id"] == 2
    assert report.generation_config["eos_token_id"] == 2
    assert {f.code for f in report.findings} <= {"pad_is_eos", "chat_template_differs"}  # warnings only


def test_vicuna_on_a_tokenizer_without_a_single_eos_token_is_an_error(base_dir, capsys):
    assert main(["model", "check", f"hf:{base_dir}", "--template", "vicuna_v1.1"]) == 1
    assert "[end_not_a_token]" in capsys.readouterr().out


def test_a_chat_template_without_the_trained_end_is_flagged_and_replaced(wrong_eos, tmp_path):
    (wrong_eos / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    report = check_model(f"hf:{wrong_eos}")
    assert "chat_template_end" in {f.code for f in report.findings}
    _, fixed = fix_model(f"hf:{wrong_eos}", tmp_path / "fixed")
    assert fixed.ok and not fixed.findings


def test_gguf_metadata_is_reported():
    report = check_model("embedded")
    assert report.format == "gguf" and report.ok
    assert report.tokens["eos"] == {"token": "<|im_end|>", "id": 2} and report.chat_template
    with pytest.raises(CamelidError, match="re-export"):
        fix_model("embedded", "/tmp/never-written")


def test_fix_refuses_to_write_in_place(wrong_eos):
    with pytest.raises(CamelidError, match="never writes in place"):
        fix_model(f"hf:{wrong_eos}", wrong_eos / "sub")
