"""`camelid data clean`: clean ShareGPT / OpenAI-messages conversations the way Vicuna's data was cleaned.

FastChat's clean_sharegpt.py + optional_clean.py, in one pass, with every removal counted under one reason:

1. HTML -> Markdown (markdownify, not regexes) for assistant messages that *start* with an HTML block tag, which is
   how ShareGPT's scrape stores rendered answers; a message that merely mentions `<div>` is left alone, and user
   messages are never converted (users paste HTML as code). Code blocks stay fenced with their language when the HTML
   names it (`class="language-python"`); ChatGPT's "pythonCopy code" header and "1 / 2" regenerate counter go.
2. Structure: a leading assistant turn is stripped (as FastChat's trainer does) and a trailing user turn with no
   answer is trimmed; both are counted as modifications. Then a conversation is removed as `empty` (no user+assistant
   exchange left), `empty_message` (a blank turn) or `non_alternating` (roles do not alternate user/assistant after an
   optional leading system message, or a role is unknown).
3. `blocked_word`: an assistant message contains a blocked phrase (case-insensitive); assistant text only, since
   that is what the model learns to say.
4. `language`: optional keep (`--lang`) / skip (`--skip-lang`) by the conversation's dominant script (see
   `detect_language`). Nothing is filtered by language unless asked, so Korean survives by default.
5. `duplicate`: the same conversation (roles + NFC, whitespace-collapsed text, ids ignored) seen before.

The output has the input's shape (ShareGPT or OpenAI records, JSON list or JSONL, other fields kept) and is written
atomically; the report counts removals per reason and lists the removed ids.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from camelid.core.io import CamelidError, DataError, Problem, atomic_write, write_jsonl
from camelid.core.records import check_input, json_type, open_input
from camelid.core.tables import is_table
from camelid.data.formats import SHAREGPT_ROLES, TO_SHAREGPT, detect_record, iter_records
from camelid.data.lang import LANG_ALIASES, detect_language

Shape = Literal["sharegpt", "openai"]

REASONS: dict[str, str] = {
    "empty": "no user+assistant exchange",
    "empty_message": "a message is blank",
    "non_alternating": "roles do not alternate user/assistant",
    "blocked_word": "assistant message has a blocked phrase",
    "language": "language not kept",
    "duplicate": "exact duplicate of an earlier conversation",
}

# The usual boilerplate of ChatGPT-distilled data. FastChat's clean_sharegpt drops "openai"/"chatgpt" in any turn;
# here only assistant text is checked, so a user asking about OpenAI is kept. Plain "as a language model" is left
# out on purpose: Vicuna's own identity data says "I was trained by LMSYS as a language model". The Korean lines are
# the same phrase as it appears in translated Korean sets.
DEFAULT_BLOCKED_WORDS: tuple[str, ...] = (
    "As an AI language model",
    "As a large language model",
    "I'm an AI language model",
    "I am an AI language model",
    "OpenAI",
    "ChatGPT",
    "AI 언어 모델로서",
    "인공지능 언어 모델로서",
)



# ------------------------------------------------------------------------------------------- records


@dataclass
class Conversation:
    """One input record with its messages as [{"role", "content", "raw"}] ("raw" = the record's own message dict)."""

    index: int
    line: int | None
    id: Any
    record: dict
    shape: Shape
    messages: list[dict]


def record_shape(rec: Any) -> Shape | None:
    fmt = detect_record(rec)
    return fmt if fmt in ("sharegpt", "openai") else None


def _parse(path: str, line: int | None, index: int, rec: Any, want: Shape | None) -> Conversation:
    where = dict(file=path, line=line, record=index)
    shape = record_shape(rec)
    if shape is None:
        fmt = detect_record(rec)
        hint = f" (this is {fmt}: `camelid data convert` it to sharegpt or openai first)" if fmt else ""
        raise DataError(Problem(**where, field=None, message="expected a ShareGPT record {id, conversations: [{from, "
                                f"value}}]}} or an OpenAI record {{messages: [{{role, content}}]}}{hint}"))
    if not isinstance(rec.get("conversations" if shape == "sharegpt" else "messages"), list):
        raise DataError(Problem(**where, field="conversations" if shape == "sharegpt" else "messages",
                                message="expected a list"))
    if want is not None and shape != want:
        raise DataError(Problem(**where, field=None, message=f"a {shape} record in a {want} file (one shape per file)"))
    key, rkey, ckey = ("conversations", "from", "value") if shape == "sharegpt" else ("messages", "role", "content")
    msgs = []
    for j, m in enumerate(rec[key]):
        name = f"{key}[{j}]"
        if not isinstance(m, dict):
            raise DataError(Problem(**where, field=name, message="expected an object"))
        text = m.get(ckey)
        if isinstance(text, list):  # OpenAI content parts: only text parts are conversation text
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in text):
                raise DataError(Problem(**where, field=f"{name}.{ckey}", message="only text content parts are "
                                        "supported"))
            text = "".join(p.get("text") or "" for p in text)
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise DataError(Problem(**where, field=f"{name}.{ckey}", message=f"expected a string, got "
                                    f"{json_type(text)}"))
        role = m.get(rkey)
        role = SHAREGPT_ROLES.get(str(role).lower(), str(role)) if shape == "sharegpt" else role
        msgs.append({"role": role, "content": text, "raw": m})
    return Conversation(index, line, rec.get("id"), rec, shape, msgs)


def load_conversations(path: str | Path) -> tuple[Literal["json", "jsonl"], Iterator[Conversation]]:
    """(container, conversations) of a ShareGPT or OpenAI-messages file, streamed; structural errors raise DataError.

    Lenient on purpose: `formats.read_conversations` refuses a conversation whose roles do not alternate, which is
    exactly what cleaning has to count and drop, so records are read raw (`formats.iter_records`) and parsed here."""
    check_input(path)
    container: Literal["json", "jsonl"] = "jsonl"  # a table source (Parquet, a Hub id) is written as JSONL
    if not is_table(path):
        with open_input(path) as f:  # the layout iter_records reads: a JSON list when the first character is "["
            head = f.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
        container = "json" if head.startswith(b"[") else "jsonl"

    def gen() -> Iterator[Conversation]:
        shape: Shape | None = None
        for item in iter_records(path):
            if isinstance(item, Problem):
                raise DataError(item)
            line, index, rec = item
            conv = _parse(str(path), line, index, rec, shape)
            shape = conv.shape
            yield conv

    return container, gen()


def to_record(conv: Conversation, messages: list[dict], id: Any = None) -> dict:
    """A copy of the conversation's record holding `messages`, in the record's own shape and role names."""
    sharegpt = conv.shape == "sharegpt"
    key, rkey, ckey = ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
    back = {"user": "human", "assistant": "gpt", "system": "system"}
    out_msgs = []
    for m in messages:
        raw = m.get("raw")
        base = dict(raw) if isinstance(raw, dict) else {}
        base[rkey] = back[m["role"]] if sharegpt else m["role"]
        base[ckey] = m["content"]
        out_msgs.append(base)
    rec = dict(conv.record)
    rec[key] = out_msgs
    if id is not None:
        rec["id"] = id
    return rec


def write_like_input(path: str | Path, container: Literal["json", "jsonl"], records: Iterable[dict]) -> int:
    """Write records atomically as JSONL or as a JSON list with the bytes of `json.dump(rows, indent=2)` (FastChat's
    files), one record at a time; returns the count."""
    if container == "jsonl":
        return write_jsonl(path, records)
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            text = json.dumps(rec, ensure_ascii=False, indent=2).replace("\n", "\n  ")
            f.write(("[\n  " if n == 0 else ",\n  ") + text)
            n += 1
        f.write("\n]\n" if n else "[]\n")
    return n


# ------------------------------------------------------------------------------------------- HTML


_HTML_START = re.compile(r"^\s*<(div|p|pre|ol|ul|h[1-6]|table|blockquote)\b[^>]*>", re.I)
_REGENERATE = re.compile(r"^\s*\d+\s*/\s*\d+\s*")  # "1 / 2" counter of a regenerated ChatGPT answer
_COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
_FENCE = re.compile(r"(```.*?```)", re.S)


def looks_like_html(text: str) -> bool:
    return bool(_HTML_START.match(text)) and "</" in text


def _converter():
    from markdownify import MarkdownConverter

    class Converter(MarkdownConverter):
        def convert_pre(self, el, text, parent_tags):
            # ChatGPT's <pre> holds a header ("python" + "Copy code" button) and the <code>: keep only the code, as
            # plain text (no Markdown escaping), fenced with its language and a fence longer than any inside it.
            code = el.find("code")
            body = (code or el).get_text().strip("\n")
            if not body.strip():
                return ""
            lang = ""
            for node in (code, el):
                for cls in (node.get("class") or []) if node is not None else []:
                    if cls.startswith(("language-", "lang-")):
                        lang = cls.split("-", 1)[1]
                        break
                if lang:
                    break
            run = max((len(r) for r in re.findall(r"`+", body)), default=0)
            fence = "`" * max(3, run + 1)
            return f"\n\n{fence}{lang}\n{body}\n{fence}\n\n"

    return Converter(heading_style="atx", bullets="-", escape_underscores=False, escape_asterisks=False,
                     strip=["button", "svg", "script", "style"])


_CONVERTER = None


def html_to_markdown(text: str) -> str:
    """Markdown for one HTML message (markdownify with ChatGPT's code-block layout handled)."""
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = _converter()
    md = _CONVERTER.convert(text)
    md = _COPY_CHARS.sub("", md)
    md = _REGENERATE.sub("", md, count=1) if _REGENERATE.match(md) else md
    # collapse runs of blank lines outside code blocks only (code keeps its own spacing)
    parts = _FENCE.split(md)
    md = "".join(p if i % 2 else re.sub(r"\n{3,}", "\n\n", p) for i, p in enumerate(parts))
    return md.strip()


def parse_langs(spec: str | None) -> set[str]:
    if not spec:
        return set()
    return {LANG_ALIASES.get(s.strip().lower(), s.strip().lower()) for s in spec.split(",") if s.strip()}


# ------------------------------------------------------------------------------------------- cleaning


@dataclass
class CleanReport:
    input: str = ""
    output: str = ""
    shape: str | None = None
    total: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    modified: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)  # detected language of every input conversation
    removed_ids: dict[str, list] = field(default_factory=dict)

    def remove(self, reason: str, conv: Conversation) -> None:
        self.removed[reason] += 1
        self.removed_ids.setdefault(reason, []).append(conv.id if conv.id is not None else conv.index)

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "format": self.shape, "total": self.total,
                "kept": self.kept, "removed": {r: self.removed[r] for r in REASONS if self.removed[r]},
                "modified": dict(self.modified), "languages": dict(self.languages.most_common()),
                "removed_ids": self.removed_ids}


def load_blocked_words(path: str | Path | None) -> tuple[str, ...]:
    """Phrases from a file (one per line; blank lines and '#' comments skipped), else the default list."""
    if path is None:
        return DEFAULT_BLOCKED_WORDS
    p = Path(path)
    if not p.is_file():
        raise CamelidError(f"{p}: no such blocked-words file")
    lines = p.read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def conversation_hash(messages: list[dict]) -> str:
    norm = [[m["role"], _normal(m["content"])] for m in messages]
    return hashlib.sha256(json.dumps(norm, ensure_ascii=False).encode()).hexdigest()


def fix_turns(msgs: list[dict], mods: Counter) -> tuple[list[dict], str | None]:
    """(messages with a leading assistant turn stripped and a trailing user turn trimmed, removal reason or None)."""
    system = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
    turns = msgs[len(system):]
    if turns and turns[0]["role"] == "assistant":
        turns = turns[1:]
        mods["leading_assistant_stripped"] += 1
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            return msgs, "non_alternating"
    if len(turns) > 1 and turns[-1]["role"] == "user":
        turns = turns[:-1]
        mods["trailing_user_trimmed"] += 1
    if len(turns) < 2:
        return msgs, "empty"
    if any(not m["content"].strip() for m in system + turns):
        return msgs, "empty_message"
    return system + turns, None


def clean_conversations(convs: Iterable[Conversation], report: CleanReport,
                        blocked_words: Iterable[str] = DEFAULT_BLOCKED_WORDS, keep_langs: set[str] | None = None,
                        skip_langs: set[str] | None = None) -> Iterator[dict]:
    """Cleaned records (in the input's shape), counting every removal and modification in `report`."""
    blocked = [unicodedata.normalize("NFC", w).lower() for w in blocked_words if w.strip()]
    seen: set[str] = set()
    for conv in convs:
        report.total += 1
        report.shape = conv.shape
        msgs, mods = [], Counter()
        for m in conv.messages:
            if conv.shape == "sharegpt" and isinstance(m.get("raw"), dict) and m["raw"].get("from") != \
                    TO_SHAREGPT.get(m["role"]):
                mods["renamed_roles"] += 1  # `Human`, `chatgpt`, `bard`...: written as human/gpt, which validate takes
            if m["role"] == "assistant" and looks_like_html(m["content"]):
                m = {**m, "content": html_to_markdown(m["content"])}
                mods["html_converted_messages"] += 1
            msgs.append(m)
        lang = detect_language("\n".join(m["content"] for m in msgs))
        report.languages[lang] += 1
        msgs, reason = fix_turns(msgs, mods)
        if reason is None and blocked:
            for m in msgs:
                low = unicodedata.normalize("NFC", m["content"]).lower() if m["role"] == "assistant" else ""
                if any(w in low for w in blocked):
                    reason = "blocked_word"
                    break
        if reason is None and ((keep_langs and lang not in keep_langs) or (skip_langs and lang in skip_langs)):
            reason = "language"
        if reason is None:
            h = conversation_hash(msgs)
            if h in seen:
                reason = "duplicate"
            seen.add(h)
        if reason is not None:
            report.remove(reason, conv)
            continue
        report.kept += 1
        report.modified.update(mods)  # counted for kept conversations only
        yield to_record(conv, msgs)


def clean_file(src: str | Path, dst: str | Path, blocked_words: Iterable[str] = DEFAULT_BLOCKED_WORDS,
               keep_langs: set[str] | None = None, skip_langs: set[str] | None = None) -> CleanReport:
    """Clean `src` into `dst` (same shape and container, written atomically) and return what was removed and why."""
    unknown = {x for x in (keep_langs or set()) | (skip_langs or set()) if x not in KNOWN_LANGS}
    if unknown:
        raise CamelidError(f"unknown language code(s) {', '.join(sorted(unknown))}; script detection knows "
                           f"{', '.join(KNOWN_LANGS)}")
    report = CleanReport(input=str(src), output=str(dst))
    container, convs = load_conversations(src)
    write_like_input(dst, container, clean_conversations(convs, report, blocked_words, keep_langs, skip_langs))
    return report


KNOWN_LANGS: tuple[str, ...] = ("ko", "ja", "zh", "en", "ru", "ar", "el", "he", "th", "hi", "unknown")
