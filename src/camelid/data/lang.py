"""Which language a text is in, by its dominant script: the one rule `data clean`, `data dedup` and the judge use."""

from __future__ import annotations

import re
from collections import Counter

_SCRIPTS: dict[str, re.Pattern] = {
    "hangul": re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]"),
    "kana": re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]"),
    "han": re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
}
_SCRIPT_LANG = {"hangul": "ko", "latin": "en", "cyrillic": "ru", "arabic": "ar", "greek": "el", "hebrew": "he",
                "thai": "th", "devanagari": "hi"}
LANG_ALIASES = {"latin": "en", "kr": "ko", "cn": "zh", "jp": "ja"}
_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|https?://\S+", re.S)
CJK_WEIGHT = 3  # a Hangul syllable or Han character carries about what three Latin letters do


def detect_language(text: str) -> str:
    """The dominant script of `text` as a language code, code blocks, inline code and URLs ignored.

    ko (Hangul), ja (Han with kana), zh (Han alone), en (any Latin-script language: script cannot tell English from
    French), ru (Cyrillic), ar, el, he, th, hi (Devanagari), or "unknown" when there are no letters. CJK characters
    count three times so that a Korean question full of English terms is still Korean."""
    prose = _NOT_PROSE.sub(" ", text)
    counts = {name: len(p.findall(prose)) for name, p in _SCRIPTS.items()}
    score: Counter = Counter()
    for name, n in counts.items():
        if name in _SCRIPT_LANG and n:
            score[_SCRIPT_LANG[name]] += n * (CJK_WEIGHT if name == "hangul" else 1)
    han, kana = counts["han"], counts["kana"]
    if kana and kana >= 0.1 * (han + kana):
        score["ja"] += (han + kana) * CJK_WEIGHT
    elif han:
        score["zh"] += han * CJK_WEIGHT
    return score.most_common(1)[0][0] if score else "unknown"
