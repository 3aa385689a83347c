"""`camelid generate`: prompts -> concurrent requests -> parse -> filters -> ROUGE-L dedup -> append-only JSONL.

Nothing is lost and a rerun continues: every kept record is one appended, flushed line of OUT.jsonl (a
Self-Instruct task's instances are one write), every rejected candidate a line of OUT.rejected.jsonl with its
`reason`, every model call a line of OUT.requests.jsonl (prompt, raw reply, finish_reason, usage). A rerun
cuts a torn last line, reloads the kept instructions into the dedup pool (seeds first, then kept, in order:
Stanford's pool), the rejection counts and the request counter, and continues to the target count.

Alpaca prompts depend only on their number k (sampled with random.Random(f"{seed}:{k}")), so requests stream:
`concurrency` in flight and `request_batch_size` (at least `concurrency`) more queued behind them while earlier
replies are parsed and filtered, and each reply's tasks go through ROUGE-L in one batch. Self-Instruct's prompts
sample the instructions kept so far, so its requests go out in rounds of `request_batch_size` through
`Model.map`. Replies are processed in request order either way: a deterministic teacher and the same seed give
the same prompts and the same data whatever the concurrency.
"""

from __future__ import annotations

import random
import re
import threading
import time
import zlib
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from camelid.core.io import (CamelidError, DataError, JsonlAppender, Problem, read_jsonl, read_yaml_mapping,
                             repair_jsonl_tail)
from camelid.data.dedup import Deduper
from camelid.generate import alpaca, self_instruct
from camelid.generate.filters import InstructionFilter, filter_instances
from camelid.generate.prompts import default_seeds, load_seeds, prompt_file, read_prompt
from camelid.models.base import Completion, ContextLengthError, Model, ModelError, Sampling

MAIN_STEP = {"alpaca": "alpaca", "self-instruct": "bootstrap"}
# mode defaults: Stanford (generate_instruction.py) and Wang et al. (bootstrap_instructions.py)
DEFAULTS = {
    "alpaca": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 3072,
               "num_prompt_instructions": alpaca.NUM_PROMPT_INSTRUCTIONS},
    "self-instruct": {"temperature": 0.7, "top_p": 0.5, "max_tokens": 1024,
                      "num_prompt_instructions": self_instruct.NUM_PROMPT_INSTRUCTIONS},
}
MIN_MAX_TOKENS = 64
EMBEDDED_MAX_TOKENS = 512


class GenerateConfig(BaseModel):
    """Everything `camelid generate` takes; a YAML file has the same keys as the flags (flags win)."""

    model_config = ConfigDict(extra="forbid")

    output: Optional[Path] = Field(None, description="Kept records (Alpaca JSONL); sidecars beside it")
    mode: Literal["alpaca", "self-instruct"] = "alpaca"
    lang: Literal["en", "ko", "zh"] = "en"
    seeds: Optional[Path] = Field(None, description="Seed tasks; default: the shipped ones for lang")
    prompt: Optional[Path] = Field(None, description="Alpaca mode: generation prompt; default: alpaca_<lang>.txt")
    model: str = "embedded"
    base_url: Optional[list[str]] = None
    api_key: Optional[str] = None
    chat: bool = Field(False, description="Send prompts as a chat user message (chat-only servers)")
    num: int = Field(100, ge=1, description="Target number of kept instructions")
    concurrency: Optional[int] = Field(None, ge=1, description="Requests in flight; default: the backend's")
    request_batch_size: int = Field(5, ge=1, description="Prompts per round (at least concurrency)")
    seed: int = 0
    temperature: Optional[float] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    threshold: float = Field(0.7, gt=0, le=1, description="Reject above this ROUGE-L F1")
    num_prompt_instructions: Optional[int] = Field(None, ge=1)
    max_instances: int = Field(5, ge=1, description="Self-Instruct: instances per instruction")
    instance_max_tokens: int = Field(350, ge=1, description="Self-Instruct: tokens per instance request (Wang: 350)")
    blacklist: Optional[list[str]] = Field(None, description="Keywords that reject an instruction")
    max_requests: Optional[int] = Field(None, ge=1, description="Stop after this many generation requests")

    def setting(self, name: str) -> Any:
        """A mode-dependent setting: the value given, else the mode's default."""
        value = getattr(self, name)
        if value is not None:
            return value
        if name == "max_tokens" and self.model == "embedded":
            # the 135M embedded teacher loops instead of ending its list: 3072 tokens would mostly be repeats
            return min(EMBEDDED_MAX_TOKENS, DEFAULTS[self.mode][name])
        return DEFAULTS[self.mode][name]


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> GenerateConfig:
    """The YAML file's settings, then every override that is not None; errors name the file and the key."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, kind="config")
        data = {k.replace("-", "_"): v for k, v in data.items()}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GenerateConfig(**data)
    except ValidationError as e:
        where = str(path) if path is not None else "options"
        raise DataError([Problem(where, None, ".".join(str(x) for x in err["loc"]) or None, err["msg"])
                         for err in e.errors()]) from None


def sidecar_paths(output: str | Path) -> tuple[Path, Path]:
    """(OUT.rejected.jsonl, OUT.requests.jsonl) beside OUT.jsonl."""
    output = Path(output)
    return output.with_suffix(".rejected.jsonl"), output.with_suffix(".requests.jsonl")


@dataclass
class Report:
    output: Path
    kept: int
    target: int
    resumed_from: int
    rejected: Counter = field(default_factory=Counter)
    requests: int = 0  # model calls this run
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why it stopped short of the target


class Generator:
    """One `camelid generate` run over an output file (resuming it when it exists)."""

    def __init__(self, cfg: GenerateConfig, model: Model | None = None, show_progress: bool = True):
        if cfg.output is None:
            raise CamelidError("no output file: pass -o OUT.jsonl (or output: in the config)")
        self.cfg = cfg
        self.model = model
        self.show_progress = show_progress
        self.seeds = load_seeds(cfg.seeds or default_seeds(cfg.lang))
        self.base_prompt = read_prompt(cfg.prompt) if cfg.prompt else prompt_file(f"alpaca_{cfg.lang}")
        self.npi = cfg.setting("num_prompt_instructions")
        self.filter = InstructionFilter(cfg.lang, cfg.blacklist)
        self.dedup = Deduper(cfg.threshold, cfg.lang)
        self.dedup.add([t.instruction for t in self.seeds])
        self.rejected_path, self.requests_path = sidecar_paths(cfg.output)
        self._log_lock = threading.Lock()
        self.machine: list[str] = []  # kept instructions, in order
        self.reasons: Counter = Counter()
        self.next_request = 0
        self.tokens = [0, 0]  # prompt, completion (all runs)
        for path in (Path(cfg.output), self.rejected_path, self.requests_path):
            repair_jsonl_tail(path)  # a line torn by a crash is cut before anything is read
        self._reload()
        self.out = JsonlAppender(cfg.output)
        self.rejected = JsonlAppender(self.rejected_path)
        self.requests = JsonlAppender(self.requests_path)
        self.report = Report(Path(cfg.output), len(self.machine), cfg.num, len(self.machine))

    # ------------------------------------------------------------------ resume
    def _reload(self) -> None:
        seen: set[str] = set()
        kept: list[str] = []
        for line, row in _read(self.cfg.output):
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise DataError(Problem(str(self.cfg.output), line, "instruction", "not a generated Alpaca row: "
                                        "pass a new -o file, or the output of an earlier `camelid generate`"))
            if row["instruction"] not in seen:
                seen.add(row["instruction"])
                kept.append(row["instruction"])
        self.dedup.add(kept)
        self.machine = kept
        for _, row in _read(self.rejected_path):
            self.reasons[row.get("reason", "unknown") if isinstance(row, dict) else "unknown"] += 1
        main = MAIN_STEP[self.cfg.mode]
        for _, row in _read(self.requests_path):
            if not isinstance(row, dict):
                continue
            if row.get("step") == main and isinstance(row.get("request"), int):
                self.next_request = max(self.next_request, row["request"] + 1)
            usage = row.get("usage") or {}
            self.tokens[0] += usage.get("prompt_tokens", 0)
            self.tokens[1] += usage.get("completion_tokens", 0)

    @property
    def kept(self) -> int:
        return len(self.machine)

    # ------------------------------------------------------------------ requests
    def _sampling(self, seed: int, **overrides: Any) -> Sampling:
        cfg = self.cfg
        s = Sampling(temperature=cfg.setting("temperature"), top_p=cfg.setting("top_p"),
                     max_tokens=cfg.setting("max_tokens"), seed=seed)
        for k, v in overrides.items():
            setattr(s, k, v)
        return s

    def _request_seed(self, *parts: Any) -> int:
        return zlib.crc32(":".join(str(p) for p in (self.cfg.seed, *parts)).encode()) & 0x7FFFFFFF

    def _request(self, k: int, step: str, prompt: str, sampling: Sampling, **extra: Any) -> Completion:
        """One model call, logged (from the worker thread) as soon as it returns. Like Stanford's openai_utils,
        a prompt too long for max_tokens retries with 80% of the tokens."""
        t0 = time.time()
        while True:
            try:
                if self.cfg.chat:
                    res = self.model.chat([{"role": "user", "content": prompt}], sampling)
                else:
                    res = self.model.complete(prompt, sampling)
                break
            except ContextLengthError as e:
                if sampling.max_tokens <= MIN_MAX_TOKENS:
                    self._log({"request": k, "step": step, **extra, "prompt": prompt, "error": str(e)})
                    raise
                sampling.max_tokens = max(MIN_MAX_TOKENS, int(sampling.max_tokens * 0.8))
            except ModelError as e:
                self._log({"request": k, "step": step, **extra, "prompt": prompt, "error": str(e)})
                raise
        self._log({"request": k, "step": step, **extra, "prompt": prompt, "reply": res.text,
                   "finish_reason": res.finish_reason,
                   "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens},
                   "seed": sampling.seed, "max_tokens": sampling.max_tokens, "model": res.model,
                   "latency_s": round(res.latency_s, 3), "time": round(t0, 3)})
        return res

    def _log(self, row: dict) -> None:
        with self._log_lock:
            self.requests.write(row)
            self.report.requests += 1
            if "error" in row:
                self.report.failed_requests += 1
            else:
                usage = row["usage"]
                self.tokens[0] += usage["prompt_tokens"]
                self.tokens[1] += usage["completion_tokens"]
                self.report.prompt_tokens += usage["prompt_tokens"]
                self.report.completion_tokens += usage["completion_tokens"]
        self._refresh()

    def _map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """Model.map with results handed back in request order (deterministic whatever the concurrency)."""
        buf: dict[int, Any] = {}
        nxt = 0
        for i, res in self.model.map(fn, items, self.cfg.concurrency or self.model.max_concurrency):
            if isinstance(res, BaseException) and not isinstance(res, ModelError):
                raise res
            if isinstance(res, ContextLengthError):
                raise CamelidError(f"{res} (lower --max-tokens, or use a model with a longer context)")
            buf[i] = res
            while nxt in buf:
                yield nxt, buf.pop(nxt)
                nxt += 1

    # ------------------------------------------------------------------ outcomes
    def _reject(self, row: dict, reason: str, k: int, **extra: Any) -> None:
        self.rejected.write({"instruction": row.get("instruction", ""), "input": row.get("input", ""),
                             "output": row.get("output", ""), "reason": reason, "request": k, **extra})
        self.reasons[reason] += 1
        self._refresh()

    def _filter_reason(self, inst: str, row: dict, need_output: bool = False) -> str | None:
        """Instruction filters (Stanford's order), then an empty output."""
        return self.filter.reason(inst) or ("empty_output" if need_output and not row.get("output") else None)

    def _screen(self, inst: str, row: dict, k: int, add: bool, need_output: bool = False) -> dict | None:
        """The filters, then ROUGE-L against the seeds and the kept instructions. Returns Stanford's similarity
        fields when it passes (with add: and pools it; without, the fields are empty)."""
        reason = self._filter_reason(inst, row, need_output)
        if reason:
            self._reject(row, reason, k)
            return None
        v = self.dedup.offer(inst) if add else self.dedup.check(inst)
        if not v.keep:
            self._reject(row, "near_duplicate", k, similar_to=v.similar_to, similarity=v.score)
            return None
        return v.fields()

    def _keep(self, rows: list[dict]) -> None:
        if len(rows) == 1:
            self.out.write(rows[0])
        else:
            self.out.write_many(rows)
        self.machine.append(rows[0]["instruction"])
        self._refresh()

    # ------------------------------------------------------------------ the two modes
    def _alpaca_stream(self) -> None:
        """Alpaca prompts depend only on their number k, so requests k, k+1, ... keep going out while earlier
        replies are parsed and filtered: `concurrency` run at a time and as many again wait queued, so a fast
        teacher never idles on the filter. Replies are processed in request order (the same data as rounds)."""
        cfg = self.cfg
        conc = cfg.concurrency or self.model.max_concurrency
        size = max(cfg.request_batch_size, conc)
        stop = list(dict.fromkeys(alpaca.STOP))
        pending: deque[tuple[int, Future]] = deque()
        made = failed = 0

        def call(k: int) -> Completion:
            prompt = alpaca.sample_prompt(self.base_prompt, self.seeds, random.Random(f"{cfg.seed}:{k}"), self.npi)
            return self._request(k, "alpaca", prompt, self._sampling(self._request_seed(k), stop=stop))

        pool = ThreadPoolExecutor(max_workers=conc)
        try:
            while self.kept < cfg.num:
                while len(pending) < conc + size and (cfg.max_requests is None or made < cfg.max_requests):
                    pending.append((self.next_request, pool.submit(call, self.next_request)))
                    self.next_request += 1
                    made += 1
                if not pending:
                    self.report.stopped = f"--max-requests {cfg.max_requests} reached"
                    break
                k, fut = pending.popleft()
                err = fut.exception()
                if isinstance(err, ContextLengthError):
                    raise CamelidError(f"{err} (lower --max-tokens, or use a model with a longer context)")
                if isinstance(err, ModelError):
                    failed += 1
                    if failed >= 3 * size:
                        raise CamelidError(f"the last {failed} requests all failed; see {self.requests_path} for "
                                           f"the errors")
                    continue
                if err is not None:
                    raise err
                failed = 0
                self._alpaca_reply(k, fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)

    def _alpaca_reply(self, k: int, res: Completion) -> None:
        """One reply's tasks, in order: parse and filter rejects, then ROUGE-L for the rest in one batch."""
        text = _strip_echo(res.text, rf"(###\s*)?{self.npi + 1}\s*\.\s*Instruction:") if self.cfg.chat else res.text
        rows = []
        for p in alpaca.parse_reply(text, res.finish_reason, self.npi):
            row = {"instruction": p.instruction, "input": p.input, "output": p.output}
            rows.append((p, row, p.reason or self._filter_reason(p.instruction, row, need_output=True)))
        verdicts = iter(self.dedup.offer_many([p.instruction for p, _, reason in rows if not reason]))
        for p, row, reason in rows:
            if self.kept >= self.cfg.num:
                return  # offer_many pooled the rest too; nothing else reads the pool once the target is met
            if reason:
                self._reject(row, reason, k, **({"raw": p.raw} if p.reason else {}))
                continue
            v = next(verdicts)
            if v.keep:
                self._keep([{**row, **v.fields()}])
            else:
                self._reject(row, "near_duplicate", k, similar_to=v.similar_to, similarity=v.score)

    def _self_instruct_round(self, ks: list[int]) -> int:
        lang = self.cfg.lang
        items = [(k, self_instruct.sample_bootstrap(self.seeds, self.machine, random.Random(f"{self.cfg.seed}:{k}"),
                                                    lang, self.npi)) for k in ks]

        def bootstrap(item: tuple[int, str]) -> Completion:
            k, prompt = item
            sampling = self._sampling(self._request_seed(k), stop=self_instruct.BOOTSTRAP_STOP)
            return self._request(k, "bootstrap", prompt, sampling)

        ok = 0
        candidates: list[tuple[int, str]] = []
        seen: set[str] = set()
        for i, res in self._map(bootstrap, items):
            if isinstance(res, BaseException):
                continue
            ok += 1
            k = items[i][0]
            next_number = re.search(r"(\d+)\.$", items[i][1]).group(1)
            text = _strip_echo(res.text, rf"{next_number}\s*\.") if self.cfg.chat else res.text
            insts, cut = self_instruct.parse_bootstrap(text, res.finish_reason)
            if cut:
                self._reject({"instruction": cut}, "truncated", k)
            for inst in insts:
                if inst in seen:  # the same line twice in one round: the pool check below cannot see it yet
                    self._reject({"instruction": inst}, "near_duplicate", k, similar_to=inst, similarity=1.0)
                elif self._screen(inst, {"instruction": inst}, k, add=False) is not None:
                    seen.add(inst)
                    candidates.append((k, inst))

        def instances(cand: tuple[int, str]) -> tuple[bool, Completion]:
            k, inst = cand
            seed = self._request_seed(k, inst)
            clf = self._request(k, "classify", self_instruct.classify_prompt(inst),
                                self._sampling(seed, temperature=0.0, top_p=1.0, max_tokens=3, stop=["\n", "Task:"]),
                                instruction=inst)
            is_clf = self_instruct.parse_classify(clf.text)
            prompt = self_instruct.instances_prompt(inst, is_clf, lang)
            sampling = self._sampling(seed, temperature=0.0, top_p=1.0, max_tokens=self.cfg.instance_max_tokens,
                                      stop=self_instruct.instances_stop(self.cfg.max_instances))
            return is_clf, self._request(k, "instances", prompt, sampling, instruction=inst,
                                         is_classification=is_clf)

        for i, res in self._map(instances, candidates):
            if self.kept >= self.cfg.num:
                break
            k, inst = candidates[i]
            if isinstance(res, BaseException):
                continue
            is_clf, comp = res
            parsed = self_instruct.parse_instances(comp.text, is_clf, comp.finish_reason)
            good, bad = filter_instances(parsed)
            for x, reason in bad:
                self._reject({"instruction": inst, **x}, reason, k)
            good = good[: self.cfg.max_instances]
            if not good:
                self._reject({"instruction": inst}, "no_valid_instances", k, raw=comp.text)
                continue
            fields = self._screen(inst, {"instruction": inst, **good[0]}, k, add=True)
            if fields is not None:
                self._keep([{"instruction": inst, "input": x["input"], "output": x["output"], **fields}
                            for x in good])
        return ok

    # ------------------------------------------------------------------ the loop
    def run(self) -> Report:
        """Generate until `num` instructions are kept (or max_requests generation requests were made)."""
        from camelid.models import load_model

        cfg = self.cfg
        t0 = time.perf_counter()
        own_model = self.model is None
        try:
            if self.kept < cfg.num and own_model:
                self.model = load_model(cfg.model, base_urls=cfg.base_url, api_key=cfg.api_key,
                                        concurrency=cfg.concurrency or 8)
            with self._progress():
                if cfg.mode == "alpaca":
                    self._alpaca_stream()
                else:
                    self._rounds()
        finally:
            for f in (self.out, self.rejected, self.requests):
                f.close()
            if own_model and self.model is not None:
                self.model.close()
        self.report.kept = self.kept
        self.report.rejected = Counter(self.reasons)
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _rounds(self) -> None:
        """Self-Instruct's rounds: each round's prompts sample the instructions kept by the rounds before."""
        cfg = self.cfg
        failed_rounds = 0
        made = 0
        while self.kept < cfg.num:
            if cfg.max_requests is not None and made >= cfg.max_requests:
                self.report.stopped = f"--max-requests {cfg.max_requests} reached"
                break
            size = max(cfg.request_batch_size, cfg.concurrency or self.model.max_concurrency)
            if cfg.max_requests is not None:
                size = min(size, cfg.max_requests - made)
            ks = list(range(self.next_request, self.next_request + size))
            self.next_request += size
            made += size
            if self._self_instruct_round(ks) == 0:
                failed_rounds += 1
                if failed_rounds >= 3:
                    raise CamelidError(f"every request of 3 rounds in a row failed; see "
                                       f"{self.requests_path} for the errors")
            else:
                failed_rounds = 0

    # ------------------------------------------------------------------ progress (stderr)
    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        from camelid.core.cli import console

        self._bar = Progress(TextColumn("[bold]kept"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=console, disable=not self.show_progress, transient=False)
        self._task = self._bar.add_task("kept", total=self.cfg.num, completed=self.kept, info=self._info())
        return self._bar

    def _info(self) -> str:
        rej = sum(self.reasons.values())
        top = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common(4))
        return (f"rejected {rej}" + (f" ({top})" if top else "") +
                f" · {self.report.requests} requests"
                f" · {self.tokens[0] + self.tokens[1]:,} tokens")

    def _refresh(self) -> None:
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.update(self._task, completed=self.kept, info=self._info())


def _read(path: Path) -> Iterator[tuple[int, Any]]:
    return read_jsonl(path) if Path(path).exists() else iter(())


def _strip_echo(text: str, pattern: str) -> str:
    """Chat models often repeat the list's next number (`4. Instruction:`) that a completion would continue."""
    return re.sub(rf"^\s*{pattern}", "", text, count=1)


def generate(cfg: GenerateConfig, model: Model | None = None, show_progress: bool = True) -> Report:
    """Run `camelid generate` as a library call (the model is loaded from cfg.model unless one is given)."""
    return Generator(cfg, model, show_progress).run()
