"""Heuristic filters for generated instructions (Stanford / Wang et al.) and instances, each with a reason.

English follows stanford_alpaca's post_process_gpt3_response exactly: <= 3 or > 150 words, a keyword blacklist
matched on word boundaries, "Write a program", a leading ASCII punctuation mark, a non-ASCII first character.
Korean and Chinese have no spaces between all words and start with non-ASCII characters by nature, so they are
measured in letters, match keywords as substrings, skip the ASCII check and instead reject replies that are not
mostly in the target script (a small teacher often drifts into English).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from functools import lru_cache

# Stanford's list (generate_instruction.py): things a text-only model cannot do
BLACKLIST_EN = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
                "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
BLACKLIST = {
    "en": BLACKLIST_EN,
    "ko": BLACKLIST_EN + ["이미지", "그림", "그래프", "사진", "파일", "동영상", "비디오", "오디오", "음악", "순서도",
                          "흐름도", "다이어그램", "도표"],
    "zh": BLACKLIST_EN + ["图片", "图像", "图表", "照片", "画图", "绘制", "文件", "地图", "视频", "音频", "音乐",
                          "流程图", "示意图"],
}
PROGRAM = {"en": ["Write a program"], "ko": ["프로그램을 작성", "프로그램을 짜"],
           "zh": ["编写程序", "写一个程序", "编写一个程序"]}
# Stanford rejects <= 3 or > 150 words; Korean and Chinese are counted in letters (about 2-3 per English word)
LENGTH_BOUNDS = {"en": (3, 150), "ko": (6, 400), "zh": (5, 300)}
# Korean and Chinese instructions often open with a quoted phrase ('일석이조'와 ...): quotes and brackets may lead
CJK_PUNCTUATION = "".join(c for c in string.punctuation if c not in "'\"([<")
SCRIPT = {"ko": re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]"),
          "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}
_LETTER = re.compile(r"[^\W_]")

INSTRUCTION_REASONS = {
    "too_short": "too few words (letters for ko/zh)",
    "too_long": "too many words (letters for ko/zh)",
    "blacklisted": "mentions something a text model cannot do (image, file, audio, ...)",
    "write_a_program": "starts with 'Write a program'",
    "starts_with_punctuation": "starts with a punctuation mark",
    "non_ascii_start": "starts with a non-ASCII character (English only)",
    "wrong_language": "not mostly in the target language's script",
    "near_duplicate": "ROUGE-L above the threshold against a seed or a kept instruction",
}


@lru_cache(maxsize=None)
def _word_re(word: str) -> re.Pattern:
    return re.compile(r"\b({0})\b".format(word), flags=re.IGNORECASE)


def find_word_in_string(word: str, text: str) -> bool:
    """Stanford's word-boundary keyword match for ASCII keywords; a substring match for Korean/Chinese ones
    (particles attach to Korean nouns, and Chinese has no word boundaries)."""
    if word.isascii():
        return _word_re(word).search(text) is not None
    return word in text


def length(text: str, lang: str) -> int:
    """Words for English (str.split, as Stanford), letters and digits for Korean and Chinese."""
    return len(text.split()) if lang == "en" else len(_LETTER.findall(text))


@dataclass
class InstructionFilter:
    """The instruction-level heuristics for one language; `blacklist=None` means the language's default."""

    lang: str = "en"
    blacklist: list[str] | None = None
    bounds: tuple[int, int] | None = None
    keywords: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.keywords = list(BLACKLIST[self.lang] if self.blacklist is None else self.blacklist)
        self.bounds = self.bounds or LENGTH_BOUNDS[self.lang]

    def reason(self, inst: str) -> str | None:
        """Why `inst` is rejected, or None. The checks run in Stanford's order."""
        lo, hi = self.bounds
        n = length(inst, self.lang)
        if n <= lo:
            return "too_short"
        if n > hi:
            return "too_long"
        if any(find_word_in_string(w, inst) for w in self.keywords):
            return "blacklisted"
        if self.lang == "en":
            if inst.startswith("Write a program"):
                return "write_a_program"
        elif any(p in inst for p in PROGRAM[self.lang]):
            return "write_a_program"
        if inst[0] in (string.punctuation if self.lang == "en" else CJK_PUNCTUATION):
            return "starts_with_punctuation"
        if self.lang == "en":
            if not inst[0].isascii():
                return "non_ascii_start"
        else:
            letters = len(_LETTER.findall(inst))
            if len(SCRIPT[self.lang].findall(inst)) < 0.3 * letters:
                return "wrong_language"
        return None


# ---------------------------------------------------------------------------------------------- instances

INSTANCE_REASONS = {
    "empty_output": "the output is empty",
    "input_equals_output": "the input and the output are identical",
    "incomplete": "the input or output ends with a colon (cut off)",
    "duplicate_instance": "the same input and output twice",
    "conflicting_outputs": "the same input with different outputs (all of the task's instances dropped)",
}


def filter_instances(instances: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Wang et al.'s instance filters (prepare_for_finetuning.py): drop empty outputs, input == output, cut-off
    text ending in ':', exact duplicates; and drop every instance when one input has different outputs.
    Returns (kept, [(instance, reason)])."""
    rejected: list[tuple[dict, str]] = []
    valid = []
    for x in instances:
        inp, out = x["input"].strip(), x["output"].strip()
        if not out:
            rejected.append((x, "empty_output"))
        elif inp == out:
            rejected.append((x, "input_equals_output"))
        elif inp.endswith(":") or out.endswith(":"):
            rejected.append((x, "incomplete"))
        else:
            valid.append({"input": inp, "output": out})
    outputs: dict[str, set[str]] = {}
    for x in valid:
        if x["input"]:
            outputs.setdefault(x["input"], set()).add(x["output"])
    if any(len(v) > 1 for v in outputs.values()):
        return [], rejected + [(x, "conflicting_outputs") for x in valid]
    kept, seen = [], set()
    for x in valid:
        key = (x["input"], x["output"])
        if key in seen:
            rejected.append((x, "duplicate_instance"))
        else:
            seen.add(key)
            kept.append(x)
    return kept, rejected
