"""Stanford Alpaca's simplified self-instruct: one prompt asks for 20 tasks with input and output at once.

`encode_prompt` and `parse_reply` are stanford_alpaca's encode_prompt and post_process_gpt3_response (the
filters live in filters.py and run afterwards, so each rejection is counted under its reason).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from camelid.generate.prompts import SeedTask

NUM_PROMPT_INSTRUCTIONS = 3  # Stanford samples 3 seed tasks per prompt
STOP = ["\n20", "20.", "20."]  # Stanford's stop sequences: the list asks for 20 tasks


def encode_prompt(base: str, tasks: list[SeedTask]) -> str:
    """The prompt file, then the tasks as `###\\nN. Instruction: ...\\nN. Input:\\n...\\nN. Output:\\n...`, then the
    opening of the next one for the model to continue. An empty input is written `<noinput>`."""
    prompt = base.rstrip("\n") + "\n"  # Stanford: open("prompt.txt").read() + "\n" (the file has no final newline)
    for idx, task in enumerate(tasks):
        instruction = re.sub(r"\s+", " ", task.instruction).strip().rstrip(":")
        inp = "<noinput>" if task.input.lower() == "" else task.input
        prompt += "###\n"
        prompt += f"{idx + 1}. Instruction: {instruction}\n"
        prompt += f"{idx + 1}. Input:\n{inp}\n"
        prompt += f"{idx + 1}. Output:\n{task.output}\n"
    prompt += "###\n"
    prompt += f"{len(tasks) + 1}. Instruction:"
    return prompt


def sample_prompt(base: str, seeds: list[SeedTask], rng: random.Random, n: int = NUM_PROMPT_INSTRUCTIONS) -> str:
    """Stanford samples only from the seed tasks (never from generated ones)."""
    return encode_prompt(base, rng.sample(seeds, min(n, len(seeds))))


@dataclass
class Parsed:
    """A task read back from a reply, or why a piece of the reply could not be read."""

    instruction: str = ""
    input: str = ""
    output: str = ""
    reason: str | None = None  # "truncated" | "malformed" for unreadable pieces
    raw: str = ""


def parse_reply(text: str, finish_reason: str, num_prompt_instructions: int) -> list[Parsed]:
    """stanford_alpaca's post_process_gpt3_response before its filters: split the numbered list on `###`,
    drop the last piece when the reply was cut by the token limit, and read `N. Instruction:/Input:/Output:`
    with the numbering expected at that position (and, unlike Stanford, the three labels in that order).
    Unreadable non-blank pieces come back with a reason."""
    pieces = re.split("###", f"{num_prompt_instructions + 1}. Instruction:" + text)
    out = []
    for idx, piece in enumerate(pieces):
        if idx == len(pieces) - 1 and finish_reason == "length":
            # the decoding stopped at the token limit: the last example is likely cut off
            if piece.strip():
                out.append(Parsed(reason="truncated", raw=piece))
            continue
        n = idx + num_prompt_instructions + 1
        parts = re.split(rf"{n}\.\s+(Instruction|Input|Output):", piece)
        # Stanford reads parts 2/4/6 whatever their labels; a reply that says `Output:` before `Input:` would
        # swap them, so the labels must come in order here
        # (a weak teacher may run on into the next task without `###`: Stanford would keep it inside the output)
        if len(parts) != 7 or parts[1::2] != ["Instruction", "Input", "Output"] or ITEM.search(parts[6]):
            recovered = recover(piece)
            if recovered:
                out.extend(recovered)
            elif piece.strip():
                out.append(Parsed(reason="malformed", raw=piece))
            continue
        inp = parts[4].strip()
        out.append(Parsed(parts[2].strip(), "" if inp.lower() == "<noinput>" else inp, parts[6].strip(), raw=piece))
    return out


ITEM = re.compile(r"(?:^|\n)\s*(\d+)\.\s*Instruction:")


def recover(piece: str) -> list[Parsed]:
    """Read a piece Stanford's parser drops, as weak teachers write it: several tasks without `###` between them,
    or `N. Output:` with no `N. Input:` (read as no input). Each task needs `Instruction:` then `Output:` under one
    number; anything else stays malformed. (A strong teacher's reply never gets here.)"""
    starts = list(ITEM.finditer(piece))
    out = []
    for i, m in enumerate(starts):
        item = piece[m.start(): starts[i + 1].start() if i + 1 < len(starts) else len(piece)]
        n = m.group(1)
        parts = re.split(rf"\n\s*{n}\.\s*(Input|Output):", item[m.end() - m.start():])
        labels = parts[1::2]
        if labels not in (["Input", "Output"], ["Output"]):
            continue
        inp = parts[2].strip() if labels[0] == "Input" else ""
        out.append(Parsed(parts[0].strip(), "" if inp.lower() == "<noinput>" else inp, parts[-1].strip(), raw=item))
    return out
