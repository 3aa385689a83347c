"""`camelid data split`: cut long conversations at turn boundaries so every piece fits the training context.

FastChat's split_long_conversation.py (Vicuna trained on 2,048-token pieces), made exact for the template:
every message is tokenized once with the model's tokenizer and a piece's size is estimated as the sum of its
messages plus the template's overhead (measured once per system prompt by rendering probe conversations); each
piece chosen this way is then rendered with the real template and counted, and shrunk by whole exchanges until it
fits. So no piece is ever over the limit, and big files cost about one tokenization of their text.

Rules: pieces hold whole user+assistant exchanges (no message is ever cut), start with a user turn and end with an
assistant turn; a conversation's system message is repeated in each of its pieces; one exchange that alone exceeds
the limit is dropped and counted, not cut; a trailing unanswered user turn is trimmed. Piece ids are the record's id
with `_0`, `_1`... appended (records without an id stay without one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from camelid.core.io import CamelidError
from camelid.core.templates import Template, TemplateError
from camelid.data.clean import Conversation, fix_turns, load_conversations, to_record, write_like_input

_PROBE_USER, _PROBE_ASSISTANT = "Hello", "Sure"


@dataclass
class SplitReport:
    input: str = ""
    output: str = ""
    template: str = ""
    max_tokens: int = 0
    conversations: int = 0
    pieces: int = 0
    split: int = 0  # conversations that became more than one piece
    dropped_exchanges: int = 0  # single exchanges longer than max_tokens
    dropped_conversations: int = 0  # conversations with no piece left
    invalid: Counter = field(default_factory=Counter)  # removed before splitting: clean.py's structural reasons
    trimmed_trailing_user: int = 0
    max_piece_tokens: int = 0
    total_piece_tokens: int = 0
    dropped_ids: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("input", "output", "template", "max_tokens", "conversations", "pieces",
                                           "split", "dropped_exchanges", "dropped_conversations",
                                           "trimmed_trailing_user", "max_piece_tokens")}
        d["mean_piece_tokens"] = round(self.total_piece_tokens / self.pieces, 1) if self.pieces else 0
        d["invalid"] = dict(self.invalid)
        d["dropped_ids"] = self.dropped_ids
        return d


class PieceCounter:
    """Token counts of pieces: exact (`count`, the real render) and the template's overhead (`overhead`) that turns
    per-message counts into an estimate."""

    def __init__(self, count_tokens: Callable[[str], int], template: Template, bos_token: str | None = None,
                 eos_token: str | None = None, prefix_tokens: int = 0):
        self.count_tokens, self.template = count_tokens, template
        self.bos_token, self.eos_token = bos_token, eos_token
        probe = [{"role": "user", "content": _PROBE_USER}]
        # what the tokenizer adds in front (Llama's BOS) unless the template writes BOS itself, as encode() does
        self.prefix_tokens = prefix_tokens if template.segments(probe)[0].kind != "bos" else 0
        self._overhead: dict[str, tuple[int, int | None]] = {}
        self._probe = count_tokens(_PROBE_USER) + count_tokens(_PROBE_ASSISTANT)

    def render(self, messages: list[dict]) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.template.render(msgs, bos_token=self.bos_token, eos_token=self.eos_token)

    def count(self, messages: list[dict]) -> int:
        """Exact: the tokens of the piece as the template renders it for training."""
        return self.count_tokens(self.render(messages)) + self.prefix_tokens

    def overhead(self, system: list[dict]) -> tuple[int, int | None]:
        """(tokens the template adds around the first exchange, around each further one; None if single-turn)."""
        key = system[0]["content"] if system else ""
        if key not in self._overhead:
            ex = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT}]
            one = self.count(system + ex)
            try:
                two: int | None = self.count(system + ex + ex) - one - self._probe
            except TemplateError:  # alpaca-style templates hold one exchange
                two = None
            self._overhead[key] = (one - self._probe, two)
        return self._overhead[key]


def split_messages(messages: list[dict], counter: PieceCounter, max_tokens: int,
                   sizes: Callable[[dict], int] | None = None) -> tuple[list[tuple[list[dict], int]], int]:
    """([(piece messages, exact tokens)], exchanges dropped) for one valid conversation (optional system first,
    then alternating user/assistant ending with an assistant turn)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    exchanges = [turns[i:i + 2] for i in range(0, len(turns), 2)]
    size = sizes or (lambda m: counter.count_tokens(m["content"]))
    est = [size(u) + size(a) for u, a in exchanges]
    first, more = counter.overhead(system)
    pieces, dropped, i = [], 0, 0
    while i < len(exchanges):
        j, total = i + 1, first + est[i]
        while more is not None and j < len(exchanges) and total + more + est[j] <= max_tokens:
            total += more + est[j]
            j += 1
        while True:  # verify with the real render; give back whole exchanges until it fits
            piece = system + [m for ex in exchanges[i:j] for m in ex]
            n = counter.count(piece)
            if n <= max_tokens or j == i + 1:
                break
            j -= 1
        if n > max_tokens:  # one exchange alone is too long: drop it rather than cut a message
            dropped += 1
            i += 1
            continue
        pieces.append((piece, n))
        i = j
    return pieces, dropped


def split_conversations(convs: Iterable[Conversation], counter: PieceCounter, max_tokens: int,
                        report: SplitReport) -> Iterator[dict]:
    """Records of the pieces (input shape, ids suffixed `_k`), counting what happened in `report`."""
    cache: dict[str, int] = {}

    def size(m: dict) -> int:  # repeated texts (system prompts, short answers) are tokenized once
        text = m["content"]
        if text not in cache:
            if len(cache) > 100_000:
                cache.clear()
            cache[text] = counter.count_tokens(text)
        return cache[text]

    for conv in convs:
        report.conversations += 1
        mods: Counter = Counter()
        msgs, reason = fix_turns(conv.messages, mods)
        if reason is not None:
            report.invalid[reason] += 1
            continue
        report.trimmed_trailing_user += mods["trailing_user_trimmed"]
        pieces, dropped = split_messages(msgs, counter, max_tokens, size)
        report.dropped_exchanges += dropped
        if not pieces:
            report.dropped_conversations += 1
            report.dropped_ids.append(conv.id if conv.id is not None else conv.index)
            continue
        report.split += len(pieces) > 1
        for k, (piece, n) in enumerate(pieces):
            report.pieces += 1
            report.total_piece_tokens += n
            report.max_piece_tokens = max(report.max_piece_tokens, n)
            yield to_record(conv, piece, id=f"{conv.id}_{k}" if conv.id is not None else None)


def split_file(src: str | Path, dst: str | Path, model, max_tokens: int, template: Template | None = None
               ) -> SplitReport:
    """Split every conversation of `src` into pieces of at most `max_tokens` tokens as `template` (default: the
    model's) renders them, counted with `model.count_tokens`; write `dst` atomically in the input's shape."""
    if max_tokens < 1:
        raise CamelidError("--max-tokens must be at least 1")
    template = template or model.template
    if template is None:
        raise CamelidError(f"{model.name}: no chat template known; pass --template")
    counter = PieceCounter(model.count_tokens, template, model.bos_token, model.eos_token, model.prefix_tokens())
    report = SplitReport(input=str(src), output=str(dst), template=template.name, max_tokens=max_tokens)
    container, convs = load_conversations(src)
    write_like_input(dst, container, split_conversations(convs, counter, max_tokens, report))
    return report
