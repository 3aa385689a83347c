"""`camelid data clean`: HTML -> Markdown, structure fixes, blocked phrases, languages, duplicates, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camelid.cli import main
from camelid.core.io import DataError
from camelid.data.clean import clean_file, detect_language, html_to_markdown, load_blocked_words

CHATGPT_HTML = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>1 / 2</p><p>Use a list '
    'comprehension on <code>my_list</code>:</p><pre><div class="bg-black mb-4 rounded-md"><div class="flex '
    'items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">python</span>'
    '<button class="flex ml-auto gap-2"><svg></svg>Copy code</button></div><div class="p-4 overflow-y-auto"><code '
    'class="!whitespace-pre hljs language-python"><span class="hljs-keyword">def</span> <span class="hljs-title '
    'function_">squares</span>(<span class="hljs-params">my_list</span>):\n    <span class="hljs-keyword">return'
    '</span> [x * x <span class="hljs-keyword">for</span> x <span class="hljs-keyword">in</span> my_list]\n'
    '</code></div></div></pre><ol><li>It is <strong>short</strong>.</li><li>It is fast &amp; clear.</li></ol></div>'
)
HTML_TABLE = ('<div><p>Compare them:</p><table><thead><tr><th>lang</th><th>typing</th></tr></thead><tbody><tr><td>'
              'Python</td><td>dynamic</td></tr><tr><td>Rust</td><td>static</td></tr></tbody></table><h2>Note</h2>'
              '<p>Both are <em>fine</em>.</p></div>')
KO_USER = "파이썬에서 리스트 컴프리헨션(list comprehension)을 사용하는 방법을 자세히 알려주세요."
KO_ANSWER = ("리스트 컴프리헨션은 반복문을 한 줄로 줄여 새 리스트를 만드는 문법입니다. 예를 들어 "
             "`[x * x for x in range(10)]`은 0부터 9까지의 제곱을 담은 리스트를 만듭니다. 조건을 붙이려면 뒤에 "
             "if 절을 씁니다. 가독성을 해치지 않는 범위에서 사용하는 것이 좋습니다.")


def h(text: str) -> dict:
    return {"from": "human", "value": text}


def g(text: str) -> dict:
    return {"from": "gpt", "value": text}


def mixed_records() -> list[dict]:
    """ShareGPT records covering every cleaning rule: HTML, Korean (kept), Chinese/Japanese, broken ones."""
    long_ko = []
    for i in range(6):  # a long Korean conversation for the splitter (about 80 tokens per exchange)
        long_ko += [h(f"{i + 1}번째 질문: 추천 장소는?"), g(f"{i + 1}번째 추천: 경복궁입니다. 조선 시대의 궁궐입니다.")]
    return [
        {"id": "html_code", "conversations": [h("How do I square a list in Python?"), g(CHATGPT_HTML)]},
        {"id": "html_table", "model": "gpt-4", "conversations": [h("Python or Rust?"), g(HTML_TABLE)]},
        {"id": "ko_1", "conversations": [h(KO_USER), g(KO_ANSWER), h("고마워요!"), g("천만에요. 더 궁금한 점이 있으면 물어보세요.")]},
        {"id": "ko_dup", "conversations": [h(KO_USER + "  "), g(KO_ANSWER.replace(" ", "  ")), h("고마워요!"),
                                           g("천만에요. 더 궁금한 점이 있으면 물어보세요.")]},
        {"id": "ko_leading_gpt", "conversations": [g("안녕하세요! 무엇을 도와드릴까요?"), h("서울의 인구는?"),
                                                   g("서울의 인구는 약 940만 명입니다.")]},
        {"id": "ko_long", "conversations": long_ko},
        {"id": "ko_blocked", "conversations": [h("너는 누구야?"), g("저는 AI 언어 모델로서 감정이 없습니다.")]},
        {"id": "blocked", "conversations": [h("Do you have feelings?"),
                                            g("As an AI language model, I do not have feelings.")]},
        {"id": "user_mentions_openai", "conversations": [h("What does OpenAI's API rate limit mean?"),
                                                         g("It caps how many requests you may send per minute.")]},
        {"id": "plain_tags", "conversations": [h("Why is my <div> not centered?"),
                                               g("Give the parent `display: flex` and use snake_case_names.")]},
        {"id": "zh", "conversations": [h("你好，请介绍一下北京。"), g("北京是中国的首都，有三千多年的历史。")]},
        {"id": "ja", "conversations": [h("東京のおすすめの観光地を教えてください。"), g("浅草寺や東京タワーがおすすめです。")]},
        {"id": "trailing_user", "conversations": [h("Name a prime."), g("7 is prime."), h("And another?")]},
        {"id": "empty", "conversations": []},
        {"id": "only_user", "conversations": [h("Hello?")]},
        {"id": "blank_answer", "conversations": [h("Say something."), g("   ")]},
        {"id": "two_humans", "conversations": [h("Hi."), h("Are you there?"), g("Yes.")]},
    ]


def write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    return write(tmp_path / "mixed.json", mixed_records())


def by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(path.read_text(encoding="utf-8"))}


def test_chatgpt_html_becomes_markdown_with_the_code_language_kept():
    md = html_to_markdown(CHATGPT_HTML)
    assert md.startswith("Use a list comprehension on `my_list`:")  # "1 / 2" regenerate counter gone
    assert "```python\ndef squares(my_list):\n    return [x * x for x in my_list]\n```" in md
    assert "Copy code" not in md and "pythonCopy" not in md and "<" not in md
    assert "1. It is **short**.\n2. It is fast & clear." in md
    table = html_to_markdown(HTML_TABLE)
    assert "| lang | typing |" in table and "| Rust | static |" in table and "## Note" in table


def test_code_containing_backticks_gets_a_longer_fence():
    md = html_to_markdown("<div><pre><code>print('```')</code></pre></div>")
    assert md == "````\nprint('```')\n````"


def test_cleaning_counts_every_removal_reason_and_keeps_korean(mixed, tmp_path):
    out = tmp_path / "clean.json"
    rep = clean_file(mixed, out)
    assert dict(rep.removed) == {"empty": 2, "empty_message": 1, "non_alternating": 1, "blocked_word": 2,
                                 "duplicate": 1}
    assert rep.removed_ids["duplicate"] == ["ko_dup"] and sorted(rep.removed_ids["blocked_word"]) == [
        "blocked", "ko_blocked"]
    assert rep.total == 17 and rep.kept == 10
    assert rep.modified == {"html_converted_messages": 2, "leading_assistant_stripped": 1,
                            "trailing_user_trimmed": 1}
    kept = by_id(out)
    assert {"ko_1", "ko_leading_gpt", "ko_long", "zh", "ja", "user_mentions_openai"} <= set(kept)
    assert kept["ko_leading_gpt"]["conversations"][0] == h("서울의 인구는?")
    assert kept["trailing_user"]["conversations"] == [h("Name a prime."), g("7 is prime.")]
    assert kept["html_table"]["model"] == "gpt-4"  # other fields travel along
    assert "```python" in kept["html_code"]["conversations"][1]["value"]
    # a plain-text message that mentions a tag, or has underscores, is not touched
    assert kept["plain_tags"] == mixed_records()[9]
    assert rep.languages == {"en": 9, "ko": 5, "zh": 1, "ja": 1, "unknown": 1}


def test_lang_keeps_only_the_named_languages_and_skip_lang_removes(mixed, tmp_path):
    rep = clean_file(mixed, tmp_path / "ko.json", keep_langs={"ko"})
    assert set(by_id(tmp_path / "ko.json")) == {"ko_1", "ko_leading_gpt", "ko_long"}
    assert rep.removed["language"] == 7
    rep = clean_file(mixed, tmp_path / "nozh.json", skip_langs={"zh", "ja"})
    kept = by_id(tmp_path / "nozh.json")
    assert "zh" not in kept and "ja" not in kept and "ko_1" in kept and rep.removed["language"] == 2


def test_language_is_the_dominant_script_with_code_ignored():
    assert detect_language(KO_USER) == "ko"  # Korean with an English term in it
    assert detect_language("```python\nfor item in items: print(item)\n```\n이 코드가 뭐예요?") == "ko"
    assert detect_language("Hello, how are you?") == "en"
    assert detect_language("Bonjour, ça va ?") == "en"  # Latin script: script alone cannot tell French
    assert detect_language("北京是中国的首都") == "zh"
    assert detect_language("東京に行きます") == "ja"
    assert detect_language("Привет, как дела?") == "ru"
    assert detect_language("12345 !?") == "unknown"


def test_blocked_words_file_replaces_the_default_list(mixed, tmp_path):
    words = tmp_path / "blocked.txt"
    words.write_text("# my list\nsnake_case\n\n", encoding="utf-8")
    assert load_blocked_words(words) == ("snake_case",)
    rep = clean_file(mixed, tmp_path / "a.json", blocked_words=load_blocked_words(words))
    assert rep.removed_ids["blocked_word"] == ["plain_tags"]
    words.write_text("", encoding="utf-8")
    rep = clean_file(mixed, tmp_path / "b.json", blocked_words=load_blocked_words(words))
    assert rep.removed["blocked_word"] == 0


def test_openai_jsonl_keeps_its_shape_and_fields(tmp_path):
    src = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "<p>Hello <b>there</b></p>", "weight": 1}], "source": "a"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello **there**", "weight": 1}], "source": "b"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi?"}]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rep = clean_file(src, tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and rep.shape == "openai"
    assert json.loads(lines[0]) == {"messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Hello **there**", "weight": 1}],
                                    "source": "a"}
    assert rep.removed == {"duplicate": 1, "non_alternating": 1}


def test_a_broken_record_names_file_and_field_and_writes_nothing(tmp_path):
    src = write(tmp_path / "bad.json", [{"id": "a", "conversations": [h("Hi"), g("Hello")]},
                                        {"id": "b", "conversations": [h("Hi"), {"from": "gpt", "value": 3}]}])
    out = tmp_path / "out.json"
    with pytest.raises(DataError, match=r"bad.json:15: field 'conversations\[1\].value': expected a string"):
        clean_file(src, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_cli_prints_the_table_writes_the_report_and_rejects_unknown_languages(mixed, tmp_path, capsys):
    out, report = tmp_path / "clean.json", tmp_path / "report.json"
    assert main(["data", "clean", str(mixed), "-o", str(out), "--report", str(report), "--skip-lang", "zh"]) == 0
    err = capsys.readouterr().err
    assert "blocked_word" in err and "duplicate" in err and "ko 5" in err
    rep = json.loads(report.read_text(encoding="utf-8"))
    assert rep["removed"] == {"empty": 2, "empty_message": 1, "non_alternating": 1, "blocked_word": 2,
                              "language": 1, "duplicate": 1}
    assert rep["kept"] == 9 == len(json.loads(out.read_text(encoding="utf-8")))
    assert main(["data", "clean", str(mixed), "-o", str(tmp_path / "x.json"), "--lang", "xx"]) == 1
    assert "unknown language code(s) xx" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_fastchat_sample_passes_through_byte_for_byte(shared_data, tmp_path):
    src = shared_data / "fastchat" / "dummy_conversation.json"
    rep = clean_file(src, tmp_path / "clean.json")
    assert rep.total == rep.kept == 500 and not rep.removed and rep.languages == {"en": 500}
    assert (tmp_path / "clean.json").read_bytes() == src.read_bytes()
