"""Training examples: records -> token ids and labels -> batches (what `camelid train` and `data render` see).

Tokenizing goes through `tokenize.encode` (segment by segment, never offset guessing), so the prompt a model is
served with is token for token the prompt it was trained on. Every record that loses something is counted:
nothing to train, cut at max_length, or decoded text that differs from the rendered template (FastChat's
"tokenization mismatch", made loud).

Batches: an optimizer step holds `global_batch_size` sequences, split over processes and micro-batches. With packing
a micro-batch is ONE row: the sequences concatenated, `position_ids` restarting at 0 for each, no attention_mask
(transformers then builds a block-diagonal causal mask, or flash-attention varlen); labels are shifted inside each
sequence so no token ever predicts the next sequence's first token.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from camelid.core.io import CamelidError, DataError, Problem, check_input
from camelid.core.templates import Mask, Template, TemplateError
from camelid.core.tokenize import IGNORE_INDEX, encode, special_prefix, whole_text
from camelid.core.tables import data_path, data_sha256
from camelid.data.formats import detect_format, read_conversations
from camelid.data.texts import read_texts


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]  # -100 where untrained, aligned with input_ids (not shifted)

    @property
    def targets(self) -> list[int]:
        """labels shifted left inside this sequence: targets[i] is what position i must predict."""
        return self.labels[1:] + [IGNORE_INDEX]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass
class DataStats:
    records: int = 0
    kept: int = 0
    dropped_no_trained_tokens: int = 0  # nothing left to learn (no assistant turn, or the prompt fills max_length)
    truncated: int = 0  # cut at max_length and kept
    truncated_untrained_turns: int = 0  # turns whose EOS was cut: not trained (truncation: drop_partial)
    truncated_without_eos: int = 0  # turns trained without their EOS (truncation: keep)
    tokenization_mismatch: int = 0  # decode(input_ids) != rendered text
    tokens: int = 0
    trained_tokens: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few record ids per problem, for the report

    def note(self, kind: str, rid: str) -> None:
        ids = self.examples.setdefault(kind, [])
        if len(ids) < 5:
            ids.append(rid)

    def problems(self) -> list[str]:
        out = []
        if self.dropped_no_trained_tokens:
            out.append(f"{self.dropped_no_trained_tokens} record(s) dropped: no trained tokens (no assistant turn, "
                       f"or the prompt alone fills max_length), e.g. {self._ids('no_trained')}")
        if self.truncated:
            extra = (f"; {self.truncated_untrained_turns} cut turn(s) left untrained so every trained turn ends with "
                     "EOS" if self.truncated_untrained_turns else "")
            extra += (f"; {self.truncated_without_eos} turn(s) trained WITHOUT their EOS (truncation=keep)"
                      if self.truncated_without_eos else "")
            out.append(f"{self.truncated} record(s) longer than max_length were cut{extra}, e.g. "
                       f"{self._ids('truncated')}")
        if self.tokenization_mismatch:
            out.append(f"TOKENIZATION MISMATCH in {self.tokenization_mismatch} record(s): decoding the tokens does not "
                       f"reproduce the rendered template text, e.g. {self._ids('mismatch')} (a text backend such as "
                       "llama.cpp will see different tokens than training did; try another --template or check the "
                       "tokenizer with `camelid data render`)")
        return out

    def _ids(self, kind: str) -> str:
        return ", ".join(self.examples.get(kind, [])) or "-"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


# ----------------------------------------------------------------------------------------------- encoding


def encode_record(tokenizer, template: Template, messages: list[dict], mask: Mask = "assistant",
                  max_length: int | None = None, truncation: str = "drop_partial"
                  ) -> tuple[list[int], list[int], dict]:
    """(input_ids, labels, info) for one conversation; info says what was cut and whether the text round-trips.

    Cut at max_length: with `drop_partial` the turn whose EOS fell off is untrained (a model must never learn a
    response that does not end); with `keep` it is trained as cut, without EOS."""
    ids, labels = encode(tokenizer, template, messages, mask)
    info = {"truncated": False, "cut_turns_untrained": 0, "cut_without_eos": 0, "mismatch": None}
    rendered = _prefix_text(tokenizer, template) + template.render(messages, bos_token=tokenizer.bos_token,
                                                                   eos_token=tokenizer.eos_token)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded != rendered:
        info["mismatch"] = _first_difference(rendered, decoded)
    if max_length is not None and len(ids) > max_length:
        info["truncated"] = True
        full_labels = labels
        ids, labels = ids[:max_length], labels[:max_length]
        # assistant turns are the contiguous runs of the "assistant" mask, each ending in its EOS: a turn lost its
        # EOS only when it goes on past the cut (a cut right after the EOS leaves the turn whole)
        full_turns = full_labels if mask == "assistant" else encode(tokenizer, template, messages, "assistant")[1]
        turn_labels = full_turns[:max_length]
        if (turn_labels[-1] != IGNORE_INDEX and full_turns[max_length] != IGNORE_INDEX
                and labels[-1] != IGNORE_INDEX):  # a trained turn lost its EOS
            start = len(turn_labels)
            while start > 0 and turn_labels[start - 1] != IGNORE_INDEX:
                start -= 1
            if truncation == "drop_partial":
                labels[start:] = [IGNORE_INDEX] * (len(labels) - start)
                info["cut_turns_untrained"] = 1
            else:
                info["cut_without_eos"] = 1
    return ids, labels, info


def _prefix_text(tokenizer, template: Template) -> str:
    if whole_text(template):
        return ""
    segs_start_bos = False
    try:
        segs_start_bos = template.segments([{"role": "user", "content": "x"}])[0].kind == "bos"
    except TemplateError:
        pass
    pre = [] if segs_start_bos else special_prefix(tokenizer)
    return tokenizer.decode(pre, skip_special_tokens=False) if pre else ""


def _first_difference(want: str, got: str) -> str:
    i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return f"at char {i}: rendered {want[max(0, i - 20):i + 20]!r} vs decoded {got[max(0, i - 20):i + 20]!r}"


def training_conversations(path: str | Path, fmt: str | None = None):
    """The conversations of one training file; a directory, a missing file or a question set (MT-bench /
    Vicuna-bench questions hold no answers to learn) is one line naming the file."""
    try:
        check_input(path)
    except CamelidError as e:
        raise CamelidError(f"{e} (a training data file)") from None
    if (fmt or detect_format(path)) == "mt-bench":
        raise CamelidError(f"{path}: holds MT-bench/Vicuna-bench questions (question_id, turns) but no answers, so "
                           "there is nothing to train on; pass a dataset with answers (alpaca, sharegpt, openai), or "
                           "answer the questions first with `camelid eval answer`")
    return read_conversations(path, fmt)


def check_data_files(files: Iterable[str | Path], fmt: str | None = None) -> None:
    """Read every training file through once before anything is loaded or written: a bad file fails in a second
    with its line, not after the model has loaded and the run directory exists."""
    for f in files:
        if fmt == "text":
            read_texts(f)
            continue
        for _ in training_conversations(Path(f), fmt):
            pass


def read_files(files: Iterable[str | Path], fmt: str | None = None) -> list[dict]:
    """Conversations from dataset files (any format camelid reads); ids default to FILE#INDEX."""
    out = []
    for f in files:
        path = Path(f)
        for i, conv in enumerate(training_conversations(path, fmt)):
            out.append({**conv, "id": str(conv.get("id") or f"{path.name}#{i}")})
    if not out:
        raise DataError(Problem(", ".join(map(str, files)) or "data", None, None, "no training records"))
    return out


def build_examples(conversations: list[dict], tokenizer, template: Template, mask: Mask = "assistant",
                   max_length: int = 512, truncation: str = "drop_partial") -> tuple[list[Example], DataStats]:
    """Encode conversations; count (never silently drop) what is cut, untrainable or mismatched."""
    stats = DataStats()
    out: list[Example] = []
    for conv in conversations:
        rid = str(conv.get("id"))
        stats.records += 1
        try:
            ids, labels, info = encode_record(tokenizer, template, conv["messages"], mask, max_length, truncation)
        except TemplateError as e:
            raise CamelidError(f"record {rid}: {e}") from None
        if info["mismatch"]:
            stats.tokenization_mismatch += 1
            stats.note("mismatch", f"{rid} ({info['mismatch']})")
        if info["truncated"]:
            stats.truncated += 1
            stats.truncated_untrained_turns += info["cut_turns_untrained"]
            stats.truncated_without_eos += info["cut_without_eos"]
            stats.note("truncated", rid)
        ex = Example(rid, ids, labels)
        if ex.n_trained == 0:
            stats.dropped_no_trained_tokens += 1
            stats.note("no_trained", rid)
            continue
        stats.kept += 1
        stats.tokens += len(ids)
        stats.trained_tokens += ex.n_trained
        out.append(ex)
    return out, stats


def text_examples(files: Iterable[str | Path], tokenizer, max_length: int) -> tuple[list[Example], DataStats]:
    """Raw text for language-model training (`data_format: text`): every document (a plain-text file, or each text
    field of a JSON/JSONL file, as `texts.read_texts` reads them) is tokenized and ends with EOS, the documents are
    concatenated and cut into `max_length` pieces, and every token is trained (run_clm's group_texts). A last piece
    of one token has nothing to predict and is left out."""
    stats = DataStats()
    out: list[Example] = []
    for f in files:
        path = Path(f)
        docs = read_texts(path)
        stats.records += len(docs)
        ids: list[int] = []
        for doc in docs:
            ids += tokenizer(doc, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for k, start in enumerate(range(0, len(ids), max_length)):
            ex = Example(f"{path.name}#chunk{k}", ids[start:start + max_length], ids[start:start + max_length])
            if ex.n_trained:
                stats.kept += 1
                stats.tokens += len(ex.input_ids)
                stats.trained_tokens += ex.n_trained
                out.append(ex)
    return out, stats


def split_eval(examples: list[Example], val_size: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out `val_size` records (a fraction when < 1), chosen by the seed."""
    if not val_size:
        return examples, []
    n = int(round(val_size * len(examples))) if val_size < 1 else int(val_size)
    if not 0 < n < len(examples):
        raise CamelidError(f"val_size {val_size} leaves {len(examples) - n} of {len(examples)} records to train on")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def data_files_info(files: Iterable[str | Path]) -> list[dict]:
    return [{"path": data_path(f), "sha256": data_sha256(f)} for f in files]


def examples_fingerprint(examples: list[Example], extra: str = "") -> str:
    """What a resumed run must find again: the tokenized examples in their order, plus `extra` (the tokenizer's
    hash and the curriculum, when set)."""
    h = hashlib.sha256(extra.encode())
    for e in examples:
        h.update(repr((e.input_ids, e.labels)).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- batching


def plan_steps(examples: list[Example], epoch: int, seed: int, global_batch: int, world_size: int,
               group_by_length: bool, ordered: bool = False) -> tuple[list[list[int]], int]:
    """The optimizer steps of one epoch as lists of example indices, and how many examples did not fit.

    A seeded permutation cut into steps of `global_batch`; grouping sorts each step by length (longest first) so
    its micro-batches hold similar lengths (less padding) while what a step contains, and so its gradient, stays
    exactly as random as without grouping. Depends only on the global batch, never on micro-batch or world size.
    The last step may be smaller; with several processes it keeps a multiple of the world size so that every
    process gets work (the < world_size left over are counted, never silently lost).

    `ordered` (a curriculum): the examples' own order every epoch, no shuffle, no grouping."""
    order = list(range(len(examples)))
    if not ordered:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    steps = [order[s:s + global_batch] for s in range(0, len(order), global_batch)]
    if group_by_length and not ordered:
        steps = [sorted(st, key=lambda k: -len(examples[k].input_ids)) for st in steps]
    left = 0
    if steps and len(steps[-1]) % world_size:
        keep = len(steps[-1]) - len(steps[-1]) % world_size
        left = len(steps[-1]) - keep
        steps[-1] = steps[-1][:keep]
        if not steps[-1]:
            steps.pop()
    return steps, left


def steps_per_epoch(n_examples: int, global_batch: int, world_size: int) -> int:
    full, rest = divmod(n_examples, global_batch)
    return full + (1 if rest >= world_size else 0)


def micro_batches(step: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This process's share of one step, cut into micro-batches. Dealt round-robin, so with a length-sorted step
    every process gets a similar amount of work (and at least one sequence: steps hold a multiple of world_size)."""
    mine = step[rank::world_size]
    return [mine[s:s + micro_batch_size] for s in range(0, len(mine), micro_batch_size)]


def collate(batch: list[Example], packing: bool, pad_id: int) -> dict:
    """Tensors for one micro-batch. `targets` is already shifted (position i predicts targets[i])."""
    import torch

    if packing:
        ids = [t for e in batch for t in e.input_ids]
        pos = [p for e in batch for p in range(len(e.input_ids))]
        tgt = [t for e in batch for t in e.targets]
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "targets": torch.tensor([tgt]),
                "tokens": len(ids)}
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        tgt[r, :n] = torch.tensor(e.targets)
        att[r, :n] = 1
    return {"input_ids": ids, "attention_mask": att, "targets": tgt, "tokens": sum(len(e.input_ids) for e in batch)}


# ----------------------------------------------------------------------------------------------- inspecting


def trained_spans(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """The text as runs of (text, trained). Runs break at segment boundaries, so each decodes exactly."""
    spans: list[tuple[str, bool]] = []
    run: list[int] = []
    flag = None
    for i, lab in zip(input_ids, labels):
        t = lab != IGNORE_INDEX
        if flag is not None and t != flag:
            spans.append((tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), flag))
            run = []
        run.append(i)
        flag = t
    if run:
        spans.append((tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False), bool(flag)))
    return spans


def render_file(path: str | Path, tokenizer, template: Template, mask: Mask = "assistant", max_length: int | None = None,
                truncation: str = "drop_partial", limit: int | None = None, fmt: str | None = None):
    """Yield what training sees for each record: {id, input_ids, labels, spans, info} (`camelid data render`)."""
    for n, conv in enumerate(training_conversations(path, fmt)):
        if limit is not None and n >= limit:
            return
        rid = str(conv.get("id") or f"{Path(path).name}#{n}")
        try:
            ids, labels, info = encode_record(tokenizer, template, conv["messages"], mask, max_length, truncation)
        except TemplateError as e:
            raise CamelidError(f"{path}: record {rid}: {e}") from None
        yield {"id": rid, "input_ids": ids, "labels": labels, "spans": trained_spans(tokenizer, ids, labels),
               "info": info}
