"""`camelid chat` driven through a pipe (the real CLI in a subprocess) on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from camelid.core.io import DataError
from camelid.serve.chat import Conversation

SYSTEM = "You are a helpful assistant."


def test_piped_chat_keeps_context_and_its_commands_work(tmp_path):
    # the embedded model answers "What is the password?" with TULIP only when the first turn is in its context
    d = tmp_path
    script = "\n".join([
        "The password is TULIP.",
        f"!!save {d}/a.json",
        "!!regen",
        f"!!save {d}/b.json",
        "What is the password?",
        f"!!save {d}/c.json",
        "!!reset",
        "What is the password?",
        f"!!save {d}/d.json",
        "!!bogus",
        f"!!load {d}/c.json",
        "What is the password?",
        f"!!save {d}/e.json",
        "!!exit",
        "this line comes after !!exit",
    ]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "camelid", "chat", "--temperature", "0", "--max-tokens", "12",
                           "--system", SYSTEM], input=script, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "unknown command !!bogus" in proc.stderr
    conv = {k: json.loads((d / f"{k}.json").read_text()) for k in "abcde"}
    assert all(c["system"] == SYSTEM for c in conv.values())
    a, b, c, d_, e = (conv[k]["messages"] for k in "abcde")
    roles = ["user", "assistant"]
    assert [m["role"] for m in a] == roles and a[0]["content"] == "The password is TULIP."
    assert [m["role"] for m in b] == roles and b[0] == a[0] and b[1]["content"]  # !!regen replaced, added nothing
    assert c[:2] == b and [m["role"] for m in c] == roles * 2
    assert "tulip" in c[3]["content"].lower()  # the second turn saw the first
    assert [m["role"] for m in d_] == roles and "tulip" not in d_[1]["content"].lower()  # !!reset forgot it
    assert e[:4] == c and "tulip" in e[5]["content"].lower()  # !!load brought it back
    # each answer streamed to stdout in turn (the regenerated one too); nothing after !!exit
    answers = [a[1], b[1], c[3], d_[1], e[5]]
    assert proc.stdout == "".join(m["content"] + "\n" for m in answers)
    assert "<|im_end|>" not in proc.stdout and "<|im_start|>" not in proc.stdout


def test_saved_conversations_load_back_and_bad_files_are_named(tmp_path):
    conv = Conversation("Be brief.", [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"}])
    conv.save(tmp_path / "c.json", "m")
    assert Conversation.load(tmp_path / "c.json") == conv
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # written atomically: no temp file left
    fastchat = {"template_name": "vicuna_v1.1", "system_message": "S", "roles": ["USER", "ASSISTANT"],
                "messages": [["USER", "hi"], ["ASSISTANT", "hello"], ["USER", "more"], ["ASSISTANT", None]],
                "offset": 0}
    (tmp_path / "f.json").write_text(json.dumps(fastchat))
    assert Conversation.load(tmp_path / "f.json") == Conversation("S", [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"}])
    (tmp_path / "bad.json").write_text(json.dumps({"messages": [{"role": "user", "content": 3}]}))
    with pytest.raises(DataError, match=r"bad.json: record 0: field 'messages\[0\]'"):
        Conversation.load(tmp_path / "bad.json")
