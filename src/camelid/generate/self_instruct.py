"""Self-Instruct (Wang et al., 2022): the four steps, as prompts and parsers.

1. bootstrap: a numbered list of 8 instructions (6 seed, 2 machine-generated) for the model to continue;
2. classification: a few-shot "Is it classification? Yes/No" prompt for each new instruction;
3. instances: output-first for classification tasks (class label, then an input for it), input-first for the
   rest (Example N / input / Output:), up to `max_instances`;
4. filtering: the instruction heuristics and ROUGE-L (in generator.py, shared with Alpaca mode) and the
   instance filters (filters.filter_instances).
The few-shot prompts are camelid's own, written in the spirit of the paper's (generate/prompts/self_instruct_*).
For Korean and Chinese the scaffolding stays English and one line asks for the target language.
"""

from __future__ import annotations

import random
import re

from camelid.generate.prompts import LANGUAGE_NAMES, SeedTask, prompt_file

NUM_PROMPT_INSTRUCTIONS = 8  # Wang et al.: 8 in-context instructions per bootstrap prompt
NUM_MACHINE = 2  # of which up to 2 are machine-generated
BOOTSTRAP_STOP = ["\n\n", "\n16", "16.", "16 ."]  # Wang et al.'s stop sequences


def bootstrap_prompt(instructions: list[str], lang: str = "en") -> str:
    """`Come up with a series of tasks:` and the instructions as a numbered list, ending at the next number."""
    head = prompt_file("self_instruct_bootstrap").rstrip("\n")
    if lang != "en":
        head += f"\n(Write every task in {LANGUAGE_NAMES[lang]}.)"
    prompt = head + "\n"
    for idx, inst in enumerate(instructions):
        inst = re.sub(r"\s+", " ", inst).strip().rstrip(":")
        prompt += f"{idx + 1}. {inst}\n"
    prompt += f"{len(instructions) + 1}."
    return prompt


def sample_bootstrap(seeds: list[SeedTask], machine: list[str], rng: random.Random, lang: str = "en",
                     n: int = NUM_PROMPT_INSTRUCTIONS) -> str:
    """Up to 2 machine instructions plus seed instructions up to n, shuffled (Wang et al.'s sampling)."""
    chosen = rng.sample(machine, min(NUM_MACHINE, len(machine)))
    chosen += [t.instruction for t in rng.sample(seeds, min(n - len(chosen), len(seeds)))]
    rng.shuffle(chosen)
    return bootstrap_prompt(chosen, lang)


def parse_bootstrap(text: str, finish_reason: str) -> tuple[list[str], str | None]:
    """New instructions from a bootstrap reply (Wang et al.'s post-processing before the filters).

    Returns (instructions, cut): the last item is dropped (and returned as `cut`) when the reply hit the token
    limit; Wang et al. drop the whole reply then, but one cut item is no reason to lose the others. Only the
    first letter is upper-cased (str.capitalize, as in the paper's code, also lower-cases every other letter)."""
    items = re.split(r"\n\d+\s?\. ", text)
    cut = None
    if finish_reason == "length" and items:
        cut = items.pop().strip() or None
    out = []
    for inst in items:
        inst = re.sub(r"\s+", " ", inst).strip()
        if inst:
            out.append(inst[0].upper() + inst[1:])
    return out, cut


def classify_prompt(instruction: str) -> str:
    return prompt_file("self_instruct_classify") + f"Task: {instruction.strip()}\nIs it classification?"


def parse_classify(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def instances_prompt(instruction: str, is_classification: bool, lang: str = "en") -> str:
    """Output-first for classification tasks, input-first for the others."""
    body = prompt_file("self_instruct_output_first" if is_classification else "self_instruct_input_first")
    if lang != "en":
        head, rest = body.split("\n", 1)
        body = f"{head} Write the inputs and outputs in {LANGUAGE_NAMES[lang]}.\n{rest}"
    return body + f"Task: {instruction.strip()}\n"


def instances_stop(max_instances: int) -> list[str]:
    """Stop at the next task, or after `max_instances` input-first examples."""
    return ["Task:", f"Example {max_instances + 1}"]


def _input_output(text: str) -> tuple[str, str]:
    """Wang et al.'s parse_input_output: the input is what precedes `Output:`, the output what follows it."""
    if re.findall(r"Output\s*\d*\s*:", text):
        parts = re.split(r"Output\s*\d*\s*:", text)
        inp, out = parts[0].strip(), parts[1].strip()
    else:
        inp, out = "", text.strip()
    if re.findall(r"Input\s*\d*\s*:", out):  # several input/output pairs ran together
        out = re.split(r"Input\s*\d*\s*:", out)[0].strip()
    inp = re.sub(r"^Input\s*\d*\s*:", "", inp).strip()
    return inp, out


def parse_instances(text: str, is_classification: bool, finish_reason: str) -> list[dict]:
    """Instances {input, output} from an instance-generation reply; the last one is dropped when the reply hit
    the token limit. Classification: `Class label: L` then the input on the following lines."""
    text = text.strip()
    instances = []
    if is_classification:
        if "Class label:" not in text:
            return []
        for piece in text.split("Class label:")[1:]:
            label, _, inp = piece.strip().partition("\n")
            instances.append({"input": inp.strip(), "output": label.strip()})
    elif re.findall(r"Example\s?\d*\.?", text):
        for piece in re.split(r"Example\s?\d*\.?", text):
            if piece.strip():
                inp, out = _input_output(piece)
                instances.append({"input": inp, "output": out})
    elif re.findall(r"Output\s*\d*\s*:", text):
        inp, out = _input_output(text)
        instances.append({"input": inp, "output": out})
    if finish_reason == "length":
        instances = instances[:-1]
    return instances
