"""`camelid generate`: prompts -> concurrent requests -> parse -> filters -> ROUGE-L dedup -> append-only JSONL.

Nothing is lost and a rerun continues: every kept record is one appended, flushed line of OUT.jsonl (a
Self-Instruct task's instances are one write), every rejected candidate a line of OUT.rejected.jsonl with its
`reason`, every model call a line of OUT.requests.jsonl (prompt, raw reply, finish_reason, usage), and
OUT.rounds.jsonl journals the rounds (`generate.journal`: how a cut round is redone exactly). A rerun cuts a torn
last line, reloads the kept instructions into the dedup pool (seeds first, then kept, in order: Stanford's pool),
the rejection counts and the counters, redoes the round that was cut (with the replies already logged) and
continues to the target count. One process writes an output at a time (a lock beside it).

Requests go out in rounds of `request_batch_size` (at least `concurrency`), `concurrency` of them in flight
(generate.flight); results are processed in request order, so a deterministic teacher and the same seed give the
same prompts and the same data whatever the concurrency. Prompt k is sampled with random.Random(f"{seed}:{k}").
The teacher is kept busy while replies are processed: Alpaca prompts never depend on the kept data, so the next
round is in flight while one is written; Self-Instruct's next round samples the kept data, so only a round's
instance requests overlap its bootstrap replies. Each reply's tasks are deduplicated in one batch
(Deduper.offer_many, the verdicts of one-by-one offers).
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from camelid.core.cli import console
from camelid.core.columns import using_columns
from camelid.core.config import validate
from camelid.core.errors import interrupt_note
from camelid.core.io import (CamelidError, DataError, JsonlAppender, Problem, output_lock, read_jsonl,
                             read_yaml_mapping, refuse_overwrite, repair_jsonl_tail)
from camelid.data.dedup import Deduper, Verdict
from camelid.generate import alpaca, self_instruct
from camelid.generate.filters import InstructionFilter, filter_instances
from camelid.generate.flight import Flight
from camelid.generate.journal import (Pending, Totals, check_rejected_row, check_request_row, read_prefix,
                                      read_rounds, rounds_path)
from camelid.generate.quality import OutputFilter, QualityConfig
from camelid.generate.prompts import default_seeds, load_seeds, prompt_file, read_prompt
from camelid.models import load_model
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


def _flags(short: str) -> dict:
    return {"flags": ("--" + {"-o": "output", "-m": "model", "-n": "num"}[short], short)}


def mode_defaults(name: str) -> str:
    """How `--help` words a setting whose default depends on the mode (and, for max_tokens, the teacher)."""
    text = ", ".join(f"{mode} {values[name]}" for mode, values in DEFAULTS.items())
    return text + (f"; {EMBEDDED_MAX_TOKENS} with the embedded teacher" if name == "max_tokens" else "")


class GenerateConfig(BaseModel):
    """Everything `camelid generate` takes: the YAML file's keys and the command's options (options win)."""

    model_config = ConfigDict(extra="forbid")

    output: Optional[Path] = Field(None, description="Kept records (Alpaca JSONL). Beside it: OUT.rejected.jsonl "
                                   "and OUT.requests.jsonl. An existing file is resumed", json_schema_extra=_flags("-o"))
    mode: Literal["alpaca", "self-instruct"] = Field("alpaca", description="alpaca (Stanford: 20 tasks with "
                                                     "input/output per prompt) | self-instruct (Wang et al.'s four "
                                                     "steps)")
    lang: Literal["en", "ko", "zh"] = Field("en", description="en | ko | zh: prompt, seeds, filters, tokenizer for "
                                            "dedup")
    seeds: Optional[Path] = Field(None, description="Seed tasks (self-instruct JSONL or Alpaca rows); default: the "
                                  "shipped seeds for --lang")
    columns: Optional[str] = Field(None, description="Read --seeds whose field names differ: "
                                   "instruction=prompt,output=completion (TARGET=COLUMN, comma-separated)")
    prompt: Optional[Path] = Field(None, description="Alpaca mode: the generation prompt file; default: the shipped "
                                   "one for --lang")
    model: str = Field("embedded", description="Teacher: embedded | gguf:PATH | hf:PATH | openai:NAME",
                       json_schema_extra=_flags("-m"))
    base_url: Optional[list[str]] = None
    api_key: Optional[str] = None
    chat: bool = Field(False, description="Send each prompt as a chat message (chat-only servers) instead of a text "
                       "completion (Stanford's way)", json_schema_extra={"flags": ("--chat/--complete",)})
    num: int = Field(100, ge=1, description="Target number of kept instructions", json_schema_extra=_flags("-n"))
    concurrency: Optional[int] = Field(None, ge=1, description="Requests in flight (a server takes many; a "
                                       "local model decodes them together); default: the backend's")
    request_batch_size: int = Field(5, ge=1, description="Prompts per round (at least --concurrency)")
    seed: int = Field(0, description="Seeds prompt sampling and each request")
    temperature: Optional[float] = Field(None, ge=0, description="Sampling temperature (Stanford 1.0, Wang et al. 0.7)")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Nucleus sampling")
    max_tokens: Optional[int] = Field(None, ge=1, description="Per generation request, lowered automatically when "
                                      "the prompt leaves less room")
    threshold: float = Field(0.7, gt=0, le=1, description="Reject an instruction whose ROUGE-L F1 to a seed or kept "
                             "one is above this")
    num_prompt_instructions: Optional[int] = Field(None, ge=1, description="In-context tasks per prompt")
    max_instances: int = Field(5, ge=1, description="Self-instruct: instances per instruction")
    instance_max_tokens: int = Field(350, ge=1, description="Self-instruct: tokens per instance request (Wang: 350)")
    blacklist: Optional[list[str]] = Field(None, description="Keyword that rejects an instruction (repeatable; "
                                           "replaces the default list)")
    max_requests: Optional[int] = Field(None, ge=1, description="Stop after this many generation requests even "
                                        "short of --num")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Output-quality filters' thresholds "
                                   "(numbering/template leaks, repetition, language, length ratio)")

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
    return validate(GenerateConfig, data, path if path is not None else "options")


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
    totals: Totals = field(default_factory=Totals)  # every invocation on this output, from its request log
    total_seconds: float = 0.0  # every invocation's rounds, from the journal


@dataclass
class Round:
    """Request numbers first..last, sent together; journaled when sent and when every result is written."""

    first: int
    last: int
    t0: float  # when it was sent
    ok: int = 0  # requests that got a reply
    taken: int = 0  # results processed


class Generator:
    """One `camelid generate` run over an output file (resuming it when it exists)."""

    def __init__(self, cfg: GenerateConfig, model: Model | None = None, show_progress: bool = True):
        if cfg.output is None:
            raise CamelidError("no output file: pass -o OUT.jsonl (or output: in the config)")
        self.cfg = cfg
        self.model = model
        self.show_progress = show_progress
        with using_columns(cfg.columns if cfg.seeds else None):  # the user's seeds, never the shipped ones
            self.seeds = load_seeds(cfg.seeds or default_seeds(cfg.lang))
        self.base_prompt = read_prompt(cfg.prompt) if cfg.prompt else prompt_file(f"alpaca_{cfg.lang}")
        self.npi = cfg.setting("num_prompt_instructions")
        self.filter = InstructionFilter(cfg.lang, cfg.blacklist)
        self.quality = OutputFilter(cfg.quality, cfg.lang)
        self.dedup = Deduper(cfg.threshold, cfg.lang)
        self.dedup.add([t.instruction for t in self.seeds])
        self.rejected_path, self.requests_path = sidecar_paths(cfg.output)
        self.rounds_path = rounds_path(cfg.output)
        refuse_overwrite([cfg.seeds, cfg.prompt], cfg.output)
        self._log_lock = threading.Lock()
        self.machine: list[str] = []  # kept instructions, in order
        self.reasons: Counter = Counter()
        self.next_request = 0
        self.totals = Totals()
        self.tokens = [0, 0]  # prompt, completion (all runs)
        self.out_lines = self.rejected_lines = 0  # lines of OUT and OUT.rejected after the finished rounds
        self._cache: dict[tuple, dict] = {}  # logged replies of the round that was cut, reused when it is redone
        self._redo: list[int] | None = None  # that round's [first, last] request numbers
        self._last_done = 0.0  # when the last round was written
        self._failed_rounds = 0  # rounds in a row without a reply
        self._replies = 0  # generation results processed by this run
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(output_lock(cfg.output))  # before anything is read or cut
            for path in (Path(cfg.output), self.rejected_path, self.requests_path, self.rounds_path):
                repair_jsonl_tail(path)  # a line torn by a crash is cut before anything is read
            self._reload()
            self.out = self._stack.enter_context(JsonlAppender(cfg.output))
            self.rejected = self._stack.enter_context(JsonlAppender(self.rejected_path))
            self.requests = self._stack.enter_context(JsonlAppender(self.requests_path))
            self.rounds = self._stack.enter_context(JsonlAppender(self.rounds_path, fsync=True))
        except BaseException:
            self._stack.close()
            raise
        self.report = Report(Path(cfg.output), len(self.machine), cfg.num, len(self.machine), totals=self.totals,
                             total_seconds=self._seconds)

    # ------------------------------------------------------------------ resume
    def _reload(self) -> None:
        out = Path(self.cfg.output)
        journal = read_rounds(self.rounds_path)
        done = journal.done
        self._seconds = journal.seconds
        seen: set[str] = set()
        kept: list[str] = []

        def on_kept(line: int, row: Any) -> None:
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise DataError(Problem(str(out), line, "instruction", "not a generated Alpaca row: pass a new -o "
                                        "file, or the output of an earlier `camelid generate`"))
            self.out_lines += 1
            if row["instruction"] not in seen:
                seen.add(row["instruction"])
                kept.append(row["instruction"])

        def on_rejected(line: int, row: Any) -> None:
            self.reasons[check_rejected_row(self.rejected_path, line, row)] += 1
            self.rejected_lines += 1

        # without a journal (a fresh output, or one an older camelid wrote) every line is finished
        limit = (lambda key: done[key] if done else 0) if journal.exists else (lambda key: None)
        pending_out = read_prefix(out, limit("kept_lines"), on_kept)
        pending_rej = read_prefix(self.rejected_path, limit("rejected_lines"), on_rejected)
        self.pending_out, self.pending_rejected = Pending(out, pending_out), Pending(self.rejected_path, pending_rej)
        self.dedup.add(kept)
        self.machine = kept
        main = MAIN_STEP[self.cfg.mode]
        first_open = journal.open[0] if journal.open else (done["requests"][1] + 1 if done else None)
        for line, row in (read_jsonl(self.requests_path) if self.requests_path.exists() else ()):
            row = check_request_row(self.requests_path, line, row)
            self.totals.add(row)
            if first_open is not None and row["request"] >= first_open:
                self._cache[(row["step"], row["request"], row.get("instruction"))] = row
        self.tokens = [self.totals.prompt_tokens, self.totals.completion_tokens]
        if journal.open:
            self._redo = journal.open
            self.next_request = journal.open[0]
        elif done:
            self.next_request = done["requests"][1] + 1
        else:  # an output from before the journal: continue after the last logged generation request
            self.next_request = self.totals.by_step.get(main, -1) + 1

    @property
    def kept(self) -> int:
        return len(self.machine)

    def resume_note(self) -> str | None:
        """What a rerun found, for the user (None for a fresh output)."""
        if not (self.out_lines or self.rejected_lines or self._redo or self.pending_out.rows):
            return None
        note = f"{self.kept} kept, {sum(self.reasons.values())} rejected so far"
        if self._redo and self.kept < self.cfg.num:
            cut = len(self.pending_out.rows) + len(self.pending_rejected.rows)
            note += (f"; redoing requests {self._redo[0]}-{self._redo[1]}, which were cut (their logged replies are "
                     f"reused{f', and the {cut} rows they had written checked' if cut else ''})")
        return note

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
        a prompt too long for max_tokens retries with 80% of the tokens. A reply logged before the run was cut
        (the round being redone) is taken from the log instead of asked again."""
        logged = self._cache.pop((step, k, extra.get("instruction")), None)
        if logged is not None and logged["prompt"] == prompt:
            if "error" in logged:
                raise ModelError(logged["error"])
            usage = logged["usage"]
            return Completion(logged["reply"], logged["finish_reason"], usage.get("prompt_tokens", 0),
                              usage.get("completion_tokens", 0), str(logged.get("model", "")))
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
            self.totals.add(row)
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

    # ------------------------------------------------------------------ outcomes
    def _reject(self, row: dict, reason: str, k: int, **extra: Any) -> None:
        rej = {"instruction": row.get("instruction", ""), "input": row.get("input", ""),
               "output": row.get("output", ""), "reason": reason, "request": k, **extra}
        if self.pending_rejected.take([rej]):  # not already written by the round that was cut
            self.rejected.write(rej)
        self.rejected_lines += 1
        self.reasons[reason] += 1
        self._refresh()

    def _reason(self, inst: str, row: dict, need_output: bool = False) -> str | None:
        """Why the instruction filters (Stanford's order; then an empty output) or the output filters reject it."""
        reason = self.filter.reason(inst) or ("empty_output" if need_output and not row.get("output") else None)
        if not reason and need_output:
            reason = self.quality.reason(inst, row.get("input", ""), row["output"])
        return reason

    def _screen(self, inst: str, row: dict, k: int, add: bool) -> dict | None:
        """The filters, then ROUGE-L against the seeds and the kept instructions. Returns Stanford's similarity
        fields when it passes (with add: and pools it)."""
        reason = self._reason(inst, row)
        if reason:
            self._reject(row, reason, k)
            return None
        v = self.dedup.offer(inst) if add else self.dedup.check(inst)
        return self._verdict(v, row, k)

    def _verdict(self, v: Verdict, row: dict, k: int) -> dict | None:
        if not v.keep:
            self._reject(row, "near_duplicate", k, similar_to=v.similar_to, similarity=v.score)
            return None
        return v.fields()

    def _keep(self, rows: list[dict]) -> None:
        fresh = self.pending_out.take(rows)  # those the round that was cut had not written yet
        if len(fresh) == 1:
            self.out.write(fresh[0])
        elif fresh:
            self.out.write_many(fresh)
        self.out_lines += len(rows)
        self.machine.append(rows[0]["instruction"])
        self._refresh()

    # ------------------------------------------------------------------ rounds (the journal's unit)
    def _open_round(self) -> Round | None:
        """The next round: the one a kill cut short first, else the next request numbers (journaled as sent);
        None once --max-requests generation requests were made."""
        cfg = self.cfg
        if self._redo is not None:  # the round a kill cut short: the same requests again
            first, last = self._redo
            self._redo = None
        else:
            if cfg.max_requests is not None and self.next_request >= cfg.max_requests:
                return None
            first = self.next_request
            last = first + max(cfg.request_batch_size, self.concurrency) - 1
            if cfg.max_requests is not None:
                last = min(last, cfg.max_requests - 1)
            self.rounds.write({"step": "round", "requests": [first, last]})
        self.next_request = last + 1
        return Round(first, last, time.perf_counter())

    def _close_round(self, rnd: Round) -> None:
        """Every result of the round is written: journal it (what a resume starts from)."""
        self.pending_out.check_done(rnd.first, rnd.last)
        self.pending_rejected.check_done(rnd.first, rnd.last)
        for key in [key for key in self._cache if key[1] <= rnd.last]:
            del self._cache[key]
        now = time.perf_counter()
        seconds = round(now - max(rnd.t0, self._last_done), 3)  # rounds overlap: count each second once
        self._last_done = now
        self.report.total_seconds += seconds
        self.rounds.write({"step": "done", "requests": [rnd.first, rnd.last], "kept_lines": self.out_lines,
                           "rejected_lines": self.rejected_lines, "seconds": seconds})
        if rnd.ok:
            self._failed_rounds = 0
            return
        self._failed_rounds += 1
        if self._failed_rounds >= 3:
            raise CamelidError(f"every request of 3 rounds in a row failed; see {self.requests_path} for the errors")

    @property
    def concurrency(self) -> int:
        return self.cfg.concurrency or self.model.max_concurrency

    # ------------------------------------------------------------------ Alpaca
    def _alpaca_loop(self, flight: Flight) -> None:
        """Stanford's prompts sample only the seed tasks (generate_instruction.py: "only sampling from the seed
        tasks"), never the kept data, so the next round's requests are sent before this round's replies are
        parsed, filtered and written: the teacher works while camelid does. The replies are still processed one
        after the other in request order, so the data is what one round at a time gives."""
        rounds: deque[Round] = deque()
        stop = list(dict.fromkeys(alpaca.STOP))
        call = self._alpaca_call
        while self.kept < self.cfg.num:
            while len(rounds) < 2 and not self._enough_asked(rounds):  # this round and the next in flight
                rnd = self._open_round()
                if rnd is None:
                    break
                rounds.append(rnd)
                for k in range(rnd.first, rnd.last + 1):
                    prompt = alpaca.sample_prompt(self.base_prompt, self.seeds, random.Random(f"{self.cfg.seed}:{k}"),
                                                  self.npi)
                    flight.submit(call, (k, prompt, self._sampling(self._request_seed(k), stop=stop)), k)
            if not rounds:
                self.report.stopped = f"--max-requests {self.cfg.max_requests} reached"
                return
            rnd = rounds[0]
            replies = [flight.next()]  # the next reply, and every later one of the round already back
            while replies[-1][0] < rnd.last and flight.ready():
                replies.append(flight.next())
            rnd.taken += len(replies)
            self._alpaca_replies(rnd, replies)
            self._replies += len(replies)
            if replies[-1][0] == rnd.last or self.kept >= self.cfg.num:
                self._close_round(rounds.popleft())
        flight.cancel()  # requests of a round after the target: a later run with a higher --num uses their replies

    def _enough_asked(self, rounds: deque[Round]) -> bool:
        """Whether the replies asked and not processed yet are expected (at this run's kept tasks per reply) to
        meet the target: the next round then waits, rather than have the teacher write replies past the target."""
        if not rounds or not self._replies:
            return False
        waiting = sum(r.last - r.first + 1 - r.taken for r in rounds)
        return waiting * (self.kept - self.report.resumed_from) >= (self.cfg.num - self.kept) * self._replies

    def _alpaca_call(self, item: tuple[int, str, Sampling]) -> Completion:
        k, prompt, sampling = item
        return self._request(k, "alpaca", prompt, sampling)

    def _alpaca_replies(self, rnd: Round, replies: list[tuple[int, Any]]) -> None:
        """Parse and filter the replies' tasks, decide the survivors' ROUGE-L in batches (Deduper.offer_many: the
        verdicts of offering them one by one), and write every outcome in reply order."""
        tasks: list[tuple[int, dict, str | None, dict]] = []  # request, row, why rejected (None: to dedup), extra
        for k, res in replies:
            if isinstance(res, BaseException):
                continue
            rnd.ok += 1
            text = _strip_echo(res.text, rf"(###\s*)?{self.npi + 1}\s*\.\s*Instruction:") if self.cfg.chat else res.text
            for p in alpaca.parse_reply(text, res.finish_reason, self.npi):
                row = {"instruction": p.instruction, "input": p.input, "output": p.output}
                if p.reason:
                    tasks.append((k, row, p.reason, {"raw": p.raw}))
                else:
                    tasks.append((k, row, self._reason(p.instruction, row, need_output=True), {}))
        start = 0
        while start < len(tasks) and self.kept < self.cfg.num:
            # no more candidates at once than are still wanted: none is pooled after the target is met
            want, end, todo = self.cfg.num - self.kept, start, []
            while end < len(tasks) and len(todo) < want:
                if tasks[end][2] is None:
                    todo.append(end)
                end += 1
            verdicts = dict(zip(todo, self.dedup.offer_many([tasks[i][1]["instruction"] for i in todo])))
            for i in range(start, end):
                k, row, reason, extra = tasks[i]
                if reason:
                    self._reject(row, reason, k, **extra)
                    continue
                fields = self._verdict(verdicts[i], row, k)
                if fields is not None:
                    self._keep([{**row, **fields}])
            start = end

    # ------------------------------------------------------------------ Self-Instruct
    def _self_instruct_loop(self, flight: Flight) -> None:
        """Wang et al.'s bootstrap prompts sample kept instructions, so a round is sent once the round before it
        is written. Within a round, a candidate's classification and instance requests are sent as soon as its
        bootstrap reply is parsed, while later bootstrap replies are still coming in or being parsed."""
        while self.kept < self.cfg.num:
            rnd = self._open_round()
            if rnd is None:
                self.report.stopped = f"--max-requests {self.cfg.max_requests} reached"
                return
            self._self_instruct_round(rnd, flight)
            flight.cancel()  # instance requests not needed once the target is met
            self._close_round(rnd)

    def _self_instruct_round(self, rnd: Round, flight: Flight) -> None:
        lang = self.cfg.lang
        for k in range(rnd.first, rnd.last + 1):
            prompt = self_instruct.sample_bootstrap(self.seeds, self.machine, random.Random(f"{self.cfg.seed}:{k}"),
                                                    lang, self.npi)
            flight.submit(self._bootstrap_call, (k, prompt), (k, prompt))
        candidates = 0
        seen: set[str] = set()
        for _ in range(rnd.first, rnd.last + 1):  # the bootstrap replies come first: they were sent first
            (k, prompt), res = flight.next()
            if isinstance(res, BaseException):
                continue
            rnd.ok += 1
            next_number = re.search(r"(\d+)\.$", prompt).group(1)
            text = _strip_echo(res.text, rf"{next_number}\s*\.") if self.cfg.chat else res.text
            insts, cut = self_instruct.parse_bootstrap(text, res.finish_reason)
            if cut:
                self._reject({"instruction": cut}, "truncated", k)
            for inst in insts:
                if inst in seen:  # the same line twice in one round: the pool check below cannot see it yet
                    self._reject({"instruction": inst}, "near_duplicate", k, similar_to=inst, similarity=1.0)
                elif self._screen(inst, {"instruction": inst}, k, add=False) is not None:
                    seen.add(inst)
                    candidates += 1
                    flight.submit(self._instances_call, (k, inst), (k, inst))
        for _ in range(candidates):
            if self.kept >= self.cfg.num:
                return
            (k, inst), res = flight.next()
            if isinstance(res, BaseException):
                continue
            is_clf, comp = res
            parsed = self_instruct.parse_instances(comp.text, is_clf, comp.finish_reason)
            good, bad = filter_instances(parsed)
            verdicts = [(x, self.quality.reason(inst, x["input"], x["output"])) for x in good]
            bad += [(x, r) for x, r in verdicts if r]
            good = [x for x, r in verdicts if not r]
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

    def _bootstrap_call(self, item: tuple[int, str]) -> Completion:
        k, prompt = item
        sampling = self._sampling(self._request_seed(k), stop=self_instruct.BOOTSTRAP_STOP)
        return self._request(k, "bootstrap", prompt, sampling)

    def _instances_call(self, cand: tuple[int, str]) -> tuple[bool, Completion]:
        k, inst = cand
        seed = self._request_seed(k, inst)
        clf = self._request(k, "classify", self_instruct.classify_prompt(inst),
                            self._sampling(seed, temperature=0.0, top_p=1.0, max_tokens=3, stop=["\n", "Task:"]),
                            instruction=inst)
        is_clf = self_instruct.parse_classify(clf.text)
        prompt = self_instruct.instances_prompt(inst, is_clf, self.cfg.lang)
        sampling = self._sampling(seed, temperature=0.0, top_p=1.0, max_tokens=self.cfg.instance_max_tokens,
                                  stop=self_instruct.instances_stop(self.cfg.max_instances))
        return is_clf, self._request(k, "instances", prompt, sampling, instruction=inst, is_classification=is_clf)

    # ------------------------------------------------------------------ the loop
    def run(self) -> Report:
        """Generate until `num` instructions are kept (or max_requests generation requests were made)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        own_model = self.model is None
        try:
            with interrupt_note(self.interrupted_note):
                if self.kept < cfg.num and own_model:
                    self.model = load_model(cfg.model, base_urls=cfg.base_url, api_key=cfg.api_key,
                                            concurrency=cfg.concurrency or 8)
                with self._progress():
                    if self.kept < cfg.num:
                        self._loop()
        finally:
            self._stack.close()  # the files, then the lock
            if own_model and self.model is not None:
                self.model.close()
        self.report.kept = self.kept
        self.report.rejected = Counter(self.reasons)
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _loop(self) -> None:
        flight = Flight(self.concurrency, batched=self.model.batched)
        try:
            (self._alpaca_loop if self.cfg.mode == "alpaca" else self._self_instruct_loop)(flight)
        except BaseException:  # Ctrl-C or an error: requests not sent never will be; a local model stops at once
            flight.cancel()
            self.model.interrupt()
            raise
        finally:
            flight.close()  # remote replies still in flight arrive and are logged before the files close

    def interrupted_note(self) -> str:
        return (f"kept {self.kept} instructions in {self.cfg.output} ({self.out_lines} rows); replies that were in "
                f"flight are logged in {self.requests_path.name} and used when the same command runs again")

    def close(self) -> None:
        """Release the output (files and lock) without running: `run()` does this itself."""
        self._stack.close()

    # ------------------------------------------------------------------ progress (stderr)
    def _progress(self):
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
