"""Batched generation for the transformers backend: a static batcher.

Requests that wait together are decoded together: one left-padded prefill, then one forward per token for the whole
group, each row with its own stop rule, its own sampling settings and its own seeded generator (a seed gives the draws
it gives alone). A row that finishes leaves the batch at once (its cache rows are dropped); requests that arrive
while a group runs form the next group. Requests submitted together (`submit_group`: Model.map's waves, see
models/lockstep.py) form groups of their own, in their given order, max_batch at a time, and run to the end even
if a consumer stops reading, so their batches (and outputs) depend on the requests alone. Greedy rows are the argmax of the same forward as one-at-a-time decoding
(tests/models/test_batching.py checks equality with `model.generate` on one prompt at a time).
"""

from __future__ import annotations

import inspect
import queue
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from camelid.models import lockstep
from camelid.models.base import Cancelled, Chunk, ModelError, Sampling
from camelid.models.batching import Scheduler, TextOut


@dataclass
class Row:
    ids: list[int]
    sampling: Sampling
    max_tokens: int
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    text: TextOut | None = None
    decoded: str = ""
    generator: Any = None
    processors: list = field(default_factory=list)  # OpenAI penalties and logit_bias (hf.openai_logits_processors)
    warpers: list = field(default_factory=list)
    group: object | None = None  # submitted together (submit_group): scheduled as a unit
    aborted: bool = False  # interrupted (cancel_all): dropped even from a group

    def gone(self) -> bool:
        """The consumer stopped reading and the schedule may drop the row (never inside a group), or it was
        interrupted."""
        return self.aborted or (self.group is None and self.cancelled.is_set())


class HFBatcher(Scheduler):
    """A scheduler thread over a transformers causal LM; `submit` streams one request's text."""

    def __init__(self, model, tokenizer, stop_ids: list[int], pad_id: int, max_batch: int):
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids, self.pad_id, self.max_batch = set(stop_ids), pad_id, max(1, max_batch)
        self._waiting: list[Row] = []
        self._running: list[Row] = []  # the group being decoded
        self._cv = threading.Condition()
        self._closed = False
        self.groups = 0  # groups run, for tests and benches
        self.max_rows = 0
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns); older 5.x know only the old one
        self._cache_kw = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
        self._thread = threading.Thread(target=self._loop, name="hf-batcher", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], sampling: Sampling, max_tokens: int, processors: list | None = None
               ) -> Iterator[Chunk]:
        row = Row(list(ids), sampling, max_tokens, text=TextOut(sampling.stop), processors=list(processors or []))
        return lockstep.submit(self, row)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            for row in self._waiting + self._running:  # the running group stops at its next token
                row.aborted = True
                row.out.put(ModelError("the model was closed"))
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting:
                    self._cv.wait()
                if self._closed:
                    return
                self._waiting = [r for r in self._waiting if not r.gone()]
                if not self._waiting:
                    continue
                token = self._waiting[0].group  # a group's rows, or rows submitted alone, never both
                take = 0
                while take < min(self.max_batch, len(self._waiting)) and self._waiting[take].group is token:
                    take += 1
                group, self._waiting = self._waiting[:take], self._waiting[take:]
                self._running = group
            if not group:
                continue
            try:
                self._run(group)
            except Exception as e:  # a failed forward fails the requests in it, not the model
                for row in group:
                    row.out.put(e)
            finally:
                with self._cv:
                    self._running = []

    # ---------------------------------------------------------------- one group
    def _prepare(self, row: Row) -> None:
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        s = row.sampling
        if s.temperature > 0:  # what `generate(do_sample=True, temperature, top_p)` applies, in its order
            top_k = getattr(self.model.generation_config, "top_k", None)
            row.warpers = [TemperatureLogitsWarper(s.temperature)]
            if top_k:
                row.warpers.append(TopKLogitsWarper(top_k))
            if s.top_p < 1.0:
                row.warpers.append(TopPLogitsWarper(s.top_p))
            seed = s.seed if s.seed is not None else random.randrange(2**63)
            row.generator = torch.Generator(device=self.model.device).manual_seed(seed)

    def _pick(self, row: Row, logits) -> int:
        import torch

        if not row.warpers and not row.processors:
            return int(torch.argmax(logits))
        scores = logits.float().unsqueeze(0)
        ids = torch.tensor([row.ids + row.generated], device=logits.device)
        for p in row.processors + row.warpers:  # `generate`'s order: processors, then warpers
            scores = p(ids, scores)
        if not row.warpers:
            return int(torch.argmax(scores))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=row.generator)[0, 0])

    def _run(self, group: list[Row]) -> None:
        import torch
        from transformers import DynamicCache

        self.groups += 1
        self.max_rows = max(self.max_rows, len(group))
        for row in group:
            self._prepare(row)
        dev = self.model.device
        width = max(len(r.ids) for r in group)
        input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(group), width), dtype=torch.long, device=dev)
        for i, r in enumerate(group):  # left padding: every row's next token is at the end
            input_ids[i, width - len(r.ids):] = torch.tensor(r.ids, device=dev)
            mask[i, width - len(r.ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        alive = list(group)
        with torch.no_grad():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True,
                             logits_to_keep=1, **{self._cache_kw: cache})
            while True:
                logits = out.logits[:, -1, :]
                keep, nxt = [], []
                for i, row in enumerate(alive):
                    if row.gone():
                        continue
                    token = self._pick(row, logits[i])
                    if self._advance(row, token):
                        keep.append(i)
                        nxt.append(token)
                if not keep:
                    return
                if len(keep) < len(alive):  # finished rows leave the batch
                    idx = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(idx)
                    mask, pos = mask[idx], pos[idx]
                    alive = [alive[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
                pos = pos[:, -1:] + 1
                out = self.model(input_ids=torch.tensor(nxt, device=dev).unsqueeze(1), attention_mask=mask,
                                 position_ids=pos, use_cache=True, **{self._cache_kw: cache})

    def _advance(self, row: Row, token: int) -> bool:
        """Take one token; False when the row is finished (its last chunk sent)."""
        if token in self.stop_ids:
            return self._finish(row, "stop")
        row.generated.append(token)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # an unfinished UTF-8 character waits for its next token
            piece = row.text.feed_text(text[len(row.decoded):])
            row.decoded = text
            if piece:
                row.out.put(Chunk(piece))
        if row.text.stopped:
            return self._finish(row, "stop")
        if len(row.generated) >= row.max_tokens:
            return self._finish(row, "length")
        return True

    def _finish(self, row: Row, reason: str) -> bool:
        piece = ""
        if not row.text.stopped:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            piece = row.text.feed_text(text[len(row.decoded):])
            row.decoded = text
        piece += row.text.finish()
        if piece:
            row.out.put(Chunk(piece))
        row.out.put(Chunk("", reason, len(row.ids), len(row.generated)))
        return False
