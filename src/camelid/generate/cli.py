"""`camelid generate`: a thin layer over camelid.generate.pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from camelid.core.cli import ApiKeyOpt, BaseUrlOpt, console
from camelid.core.errors import interrupt_note

app = typer.Typer()


@app.command()
def generate(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Kept records (Alpaca JSONL). Beside it: "
                                                   "OUT.rejected.jsonl and OUT.requests.jsonl. An existing file is "
                                                   "resumed.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML with the same keys as these options "
                                                   "(options given here win).")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="alpaca (Stanford: 20 tasks with input/output per "
                                                "prompt) | self-instruct (Wang et al.'s four steps). "
                                                "(default: alpaca)")] = None,
    lang: Annotated[Optional[str], typer.Option("--lang", help="en | ko | zh: prompt, seeds, filters, tokenizer "
                                                "for dedup. (default: en)")] = None,
    seeds: Annotated[Optional[Path], typer.Option("--seeds", help="Seed tasks (self-instruct JSONL or Alpaca "
                                                  "rows); default: the shipped seeds for --lang.")] = None,
    prompt: Annotated[Optional[Path], typer.Option("--prompt", help="Alpaca mode: the generation prompt file; "
                                                   "default: the shipped one for --lang.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Teacher: embedded | gguf:PATH | hf:PATH | "
                                                 "openai:NAME. (default: embedded)")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--complete", help="Send each prompt as a chat message "
                                                 "(chat-only servers) instead of a text completion (Stanford's "
                                                 "way). (default: --complete)")] = None,
    num: Annotated[Optional[int], typer.Option("--num", "-n", help="Target number of kept instructions. "
                                               "(default: 100)")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", help="Requests in flight (a server "
                                                       "takes many; the embedded model runs one at a time).")] = None,
    request_batch_size: Annotated[Optional[int], typer.Option("--request-batch-size", help="Prompts per round "
                                                              "(at least --concurrency). (default: 5)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seeds prompt sampling and each request. "
                                                "(default: 0)")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="(default: alpaca 1.0 "
                                                         "(Stanford), self-instruct 0.7 (Wang et al.))")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="(default: alpaca 1.0, self-instruct 0.5)")]
    = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Per generation request, lowered "
                                                      "automatically when the prompt leaves less room. (default: "
                                                      "alpaca 3072, self-instruct 1024; 512 with the embedded "
                                                      "teacher)")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Reject an instruction whose ROUGE-L "
                                                       "F1 to a seed or kept one is above this. (default: 0.7)")]
    = None,
    max_instances: Annotated[Optional[int], typer.Option("--max-instances", help="Self-instruct: instances per "
                                                         "instruction. (default: 5)")] = None,
    instance_max_tokens: Annotated[Optional[int], typer.Option("--instance-max-tokens", help="Self-instruct: "
                                                               "tokens per instance request. (default: 350)")]
    = None,
    num_prompt_instructions: Annotated[Optional[int], typer.Option(
        "--num-prompt-instructions", help="In-context tasks per prompt. (default: alpaca 3, self-instruct 8)")]
    = None,
    blacklist: Annotated[Optional[list[str]], typer.Option(
        "--blacklist", help="Keyword that rejects an instruction (repeatable; replaces the default list).")] = None,
    max_requests: Annotated[Optional[int], typer.Option("--max-requests", help="Stop after this many generation "
                                                        "requests even short of --num.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Generate instruction data with a teacher model (Stanford Alpaca or Self-Instruct), resumably.

    Every candidate is parsed, filtered (length, keyword blacklist, 'Write a program', leading punctuation,
    non-ASCII start for English) and checked by ROUGE-L against the seeds and every kept instruction.
    kill -9 at any moment, rerun the same command, and it continues where it stopped.
    """
    from camelid.generate.pipeline import Generator, load_config

    overrides = dict(output=output, mode=mode, lang=lang, seeds=seeds, prompt=prompt, model=model,
                     base_url=base_url or None, api_key=api_key, chat=chat, num=num, concurrency=concurrency,
                     request_batch_size=request_batch_size, seed=seed, temperature=temperature, top_p=top_p,
                     max_tokens=max_tokens, threshold=threshold, max_instances=max_instances,
                     instance_max_tokens=instance_max_tokens, num_prompt_instructions=num_prompt_instructions,
                     blacklist=blacklist or None, max_requests=max_requests)
    cfg = load_config(config, overrides)
    made: list[Generator] = []

    def note() -> str:
        return made[0].interrupted_note() if made else f"{cfg.output} is as it was; the same command resumes it"

    with interrupt_note(note):
        gen = Generator(cfg, show_progress=not quiet)
        made.append(gen)
        note_ = gen.resume_note()
        if note_:
            console.print(f"resuming {cfg.output}: {note_}")
        rep = gen.run()
        rejected = ", ".join(f"{r} {n}" for r, n in rep.rejected.most_common()) or "none"
        t = rep.totals
        so_far = (f" ({t.requests} requests, {t.prompt_tokens + t.completion_tokens:,} tokens, "
                  f"{rep.total_seconds:.1f} s in all runs)" if rep.resumed_from or t.requests != rep.requests else "")
        console.print(f"kept {rep.kept}/{rep.target} ({rep.kept - rep.resumed_from} new) in {rep.seconds:.1f} s; "
                      f"{rep.requests} requests ({rep.failed_requests} failed), {rep.prompt_tokens:,} prompt + "
                      f"{rep.completion_tokens:,} completion tokens{so_far}; rejected: {rejected}")
        console.print(f"wrote {rep.output}, {gen.rejected_path.name}, {gen.requests_path.name}, {gen.rounds_path.name}")
        if rep.stopped:
            console.print(f"[yellow]stopped short of --num: {rep.stopped}[/]")
