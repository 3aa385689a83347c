"""Requests stay in flight while earlier replies are processed, and the data is still that of processing the replies
one by one in request order (issue 23 item 4): a real OpenAI-compatible teacher on loopback, real HTTP requests."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from camelid.generate import alpaca, self_instruct
from camelid.generate.filters import InstructionFilter
from camelid.generate.generator import GenerateConfig, generate, sidecar_paths
from camelid.generate.journal import read_rounds, rounds_path
from camelid.generate.prompts import default_seeds, load_seeds, prompt_file
from camelid.generate.quality import OutputFilter, QualityConfig
from tests.data.dedup_reference import Deduper as PreviousDeduper
from tests.models.servers import TeacherServer


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def teacher():
    server = TeacherServer(tasks=12, max_delay=0.03)  # replies come back out of order
    yield server
    server.close()


def one_by_one(requests: list[dict], num: int) -> tuple[list[dict], list[dict]]:
    """Stanford's loop over the logged replies: reply by reply in request order, the filters, then ROUGE-L one
    instruction at a time with camelid's previous (quadratic) filter, stopping once `num` are kept."""
    pool = PreviousDeduper()
    pool.add([t.instruction for t in load_seeds(default_seeds("en"))])
    flt, quality = InstructionFilter("en"), OutputFilter(QualityConfig(), "en")
    kept: list[dict] = []
    rejected: list[dict] = []
    for req in sorted(requests, key=lambda r: r["request"]):
        for p in alpaca.parse_reply(req["reply"], req["finish_reason"], alpaca.NUM_PROMPT_INSTRUCTIONS):
            if len(kept) >= num:
                return kept, rejected
            row = {"instruction": p.instruction, "input": p.input, "output": p.output}
            reason = p.reason or flt.reason(p.instruction) or (None if p.output else "empty_output")
            reason = reason or quality.reason(p.instruction, p.input, p.output)
            if reason:
                rejected.append({**row, "reason": reason, "request": req["request"],
                                 **({"raw": p.raw} if p.reason else {})})
                continue
            v = pool.offer(p.instruction)
            if v.keep:
                kept.append({**row, **v.fields()})
            else:
                rejected.append({**row, "reason": "near_duplicate", "request": req["request"],
                                 "similar_to": v.similar_to, "similarity": v.score})
    return kept, rejected


@pytest.mark.parametrize("stop", ["max_requests", "num"])
def test_pipelined_generation_keeps_the_records_of_the_one_by_one_loop_over_the_same_replies(tmp_path, teacher,
                                                                                              stop):
    out = tmp_path / "out.jsonl"
    limits = dict(num=10_000, max_requests=24) if stop == "max_requests" else dict(num=57)
    rep = generate(GenerateConfig(output=out, model="openai:teacher", base_url=[teacher.url], concurrency=4,
                                  request_batch_size=4, seed=5, **limits), show_progress=False)
    requests = [r for r in jsonl(sidecar_paths(out)[1]) if "reply" in r]
    kept, rejected = one_by_one(requests, limits["num"])
    assert len(kept) == rep.kept and (stop == "max_requests" or rep.kept == 57)
    assert kept and any(r["reason"] == "near_duplicate" for r in rejected)
    assert jsonl(out) == kept
    assert jsonl(sidecar_paths(out)[0]) == rejected


def test_a_higher_num_later_uses_the_replies_sent_past_the_target(tmp_path, teacher):
    out = tmp_path / "out.jsonl"
    cfg = dict(output=out, model="openai:teacher", base_url=[teacher.url], concurrency=3, request_batch_size=3, seed=9)
    generate(GenerateConfig(num=5, **cfg), show_progress=False)  # met in round 0; round 1 was sent with it
    first, last = read_rounds(rounds_path(out)).open
    sent = {r["request"] for r in jsonl(sidecar_paths(out)[1])}
    assert first in sent
    generate(GenerateConfig(num=90, **cfg), show_progress=False)
    asked = [r["request"] for r in jsonl(sidecar_paths(out)[1])]
    assert len(asked) == len(set(asked))  # a reply logged by the first run was used, not asked again
    rows = jsonl(sidecar_paths(out)[0])
    assert first in {r["request"] for r in rows}  # ... and processed
    assert len(jsonl(out)) == 90 and read_rounds(rounds_path(out)).done["requests"][0] > last


class HoldingTeacher(TeacherServer):
    """Holds the reply to request 0 until a request of the next round has arrived (or 20 s have passed)."""

    def __init__(self, prompts: dict[str, int], round_size: int):
        self.prompts, self.round_size = prompts, round_size
        self.next_round_arrived = threading.Event()
        self.held_until_next_round: bool | None = None
        super().__init__(tasks=6, max_delay=0.0)

    def reply(self, prompt: str) -> str:
        k = self.prompts.get(prompt, -1)
        if k >= self.round_size:
            self.next_round_arrived.set()
        if k == 0:
            self.held_until_next_round = self.next_round_arrived.wait(20)
        return super().reply(prompt)


def test_the_next_rounds_requests_are_sent_while_a_reply_of_this_round_is_outstanding(tmp_path):
    """Alpaca prompts sample only the seed tasks (Stanford), so round 1 need not wait for round 0 to be written: with
    request 0 held back by the teacher, round 1's requests must still reach it (rounds one after the other would
    wait out the 20 s and fail)."""
    seeds, base = load_seeds(default_seeds("en")), prompt_file("alpaca_en")
    prompts = {alpaca.sample_prompt(base, seeds, random.Random(f"3:{k}")): k for k in range(40)}
    server = HoldingTeacher(prompts, round_size=2)
    try:
        out = tmp_path / "out.jsonl"
        rep = generate(GenerateConfig(output=out, model="openai:teacher", base_url=[server.url], concurrency=2,
                                      request_batch_size=2, seed=3, num=10_000, max_requests=6), show_progress=False)
    finally:
        server.close()
    assert server.held_until_next_round is True
    assert rep.requests == 6 and rep.failed_requests == 0
    lines = [json.loads(x) for x in rounds_path(out).read_text().splitlines()]
    steps = [(x["step"], x["requests"]) for x in lines]
    # the journal: round 1 is sent before round 0 is written; every round is written, in order
    assert steps.index(("round", [2, 3])) < steps.index(("done", [0, 1]))
    assert [r for s, r in steps if s == "done"] == [[0, 1], [2, 3], [4, 5]]


class SelfInstructTeacher(TeacherServer):
    """Self-Instruct replies (a bootstrap list, `No`, one input-first example); holds bootstrap request 1 until a
    classification or instance request has arrived (or 20 s have passed)."""

    def __init__(self, bootstrap: dict[str, int]):
        self.bootstrap = bootstrap
        self.instance_arrived = threading.Event()
        self.held_until_instances: bool | None = None
        super().__init__(max_delay=0.0)

    def reply(self, prompt: str) -> str:
        k = self.bootstrap.get(prompt)
        if k is None:
            self.instance_arrived.set()
            if prompt.rstrip().endswith("Is it classification?"):
                return " No"
            return ("Example 1\nInput: a small coastal town in early spring\nOutput: The town wakes slowly, "
                    "fishing boats return at noon and the market fills with fresh bread and talk.\n")
        if k == 1:
            self.held_until_instances = self.instance_arrived.wait(20)
        place = ["harbour", "orchard", "glacier", "bazaar"][k % 4]
        return (f" Describe a morning at the {place} from the point of view of a visiting child.\n"
                f"10. Explain how the {place} changes between summer and the first weeks of winter.\n")


def test_self_instruct_sends_a_candidates_instance_requests_before_the_rounds_last_bootstrap_reply(tmp_path):
    """Bootstrap prompts sample kept instructions, so rounds stay one after the other; within a round, the instance
    requests of bootstrap reply 0's candidates go out while bootstrap reply 1 is still awaited."""
    seeds = load_seeds(default_seeds("en"))
    prompts = {self_instruct.sample_bootstrap(seeds, [], random.Random(f"4:{k}")): k for k in range(2)}
    server = SelfInstructTeacher(prompts)
    try:
        out = tmp_path / "out.jsonl"
        rep = generate(GenerateConfig(output=out, mode="self-instruct", model="openai:teacher", base_url=[server.url],
                                      concurrency=2, request_batch_size=2, seed=4, num=10_000, max_requests=2),
                       show_progress=False)
    finally:
        server.close()
    assert server.held_until_instances is True
    assert rep.failed_requests == 0 and rep.kept >= 1


@pytest.mark.parametrize("lines, open_round", [
    ([("round", [0, 3])], [0, 3]),
    ([("round", [0, 3]), ("round", [4, 7])], [0, 3]),
    ([("round", [0, 3]), ("round", [4, 7]), ("done", [0, 3])], [4, 7]),
    ([("round", [0, 3]), ("round", [4, 7]), ("done", [0, 3]), ("done", [4, 7])], None),
    # a resumed run sends round [4, 7] again, with other sizes: the first round not written is redone
    ([("round", [0, 3]), ("round", [4, 7]), ("done", [0, 3]), ("round", [4, 9]), ("round", [10, 15])], [4, 7]),
])
def test_the_journal_redoes_the_first_round_sent_and_not_written(tmp_path, lines, open_round):
    path = tmp_path / "out.rounds.jsonl"
    rows = []
    for step, reqs in lines:
        row = {"step": step, "requests": reqs}
        if step == "done":
            row |= {"kept_lines": reqs[1], "rejected_lines": 0, "seconds": 0.1}
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    assert read_rounds(path).open == open_round
