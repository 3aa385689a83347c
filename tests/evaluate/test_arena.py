"""The arena in a real headless Chromium: keyboard votes, SIGKILL of the server, restart, nothing lost."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import httpx
import pytest

from camelid.cli import main
from camelid.evaluate.arena import Arena
from camelid.evaluate.questions import load_questions

from ..models.servers import free_port, wait_http
from .conftest import write_answers

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
EVIL = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & done'


class ArenaServer:
    def __init__(self, files, questions, db, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "camelid", "arena", "--answers", *map(str, files), "--questions", str(questions),
             "--db", str(db), "--port", str(self.port), "--seed", "3"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/api/results", self.proc)

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def arena_files(vicuna10, two_models, tmp_path):
    from camelid.evaluate.questions import load_questions

    evil = write_answers(tmp_path / "evil.jsonl", "evil", {q.question_id: [EVIL] for q in load_questions(vicuna10)})
    return [*two_models, evil]


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")
def test_keyboard_votes_survive_killing_the_server(arena_files, vicuna10, tmp_path):
    from playwright.sync_api import sync_playwright

    db = tmp_path / "votes.sqlite"
    server = ArenaServer(arena_files, vicuna10, db)
    keys = ["1", "2", "3", "4", "s", "a", "b", "t", "x"]  # 8 votes and one skip
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            progress = page.get_by_test_id("progress")
            assert progress.text_content() == "item 1 of 30 · 0 votes"
            saw_evil = False
            for k, key in enumerate(keys):
                shown = page.locator("#left").text_content() + page.locator("#right").text_content()
                if "<img src=x" in shown:  # the markup is shown as text, never parsed
                    saw_evil = True
                    assert "&lt;img" in page.locator("#answers").inner_html()
                page.keyboard.press(key)
                voted = sum(x != "s" for x in keys[: k + 1])
                page.wait_for_function(f"document.querySelector('#progress').textContent === "
                                       f"'item {k + 2} of 30 · {voted} votes'")
            assert saw_evil and page.evaluate("window.__xss") is None
            assert page.locator("#answers img, #answers script").count() == 0
            session = page.evaluate("localStorage.getItem('camelid-arena-session')")

            server.kill()
            con = sqlite3.connect(db)
            rows = con.execute("SELECT idx, vote, model_a, model_b FROM votes ORDER BY idx").fetchall()
            con.close()
            assert [r[1] for r in rows] == ["a", "b", "tie", "bad", "skip", "a", "b", "tie", "bad"]
            assert [r[0] for r in rows] == list(range(9)) and all(r[2] != r[3] for r in rows)

            server = ArenaServer(arena_files, vicuna10, db, port=server.port)  # same origin: same session
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            assert progress.text_content() == "item 10 of 30 · 8 votes"  # the session resumes where it stopped
            # the item shown is the session's seeded 10th item, its model_a on the left
            arena = Arena(load_questions(vicuna10), _answers(arena_files), tmp_path / "other.sqlite", seed=3)
            item = arena.item(session, 9)
            assert page.locator("#question").text_content() == item.question.text(0)
            assert page.locator("#left").text_content() == _answers(arena_files)[item.model_a][
                str(item.question.question_id)].turns[0]

            res = httpx.get(server.url + "/api/results").json()
            assert res["battles"] == 8 and res["votes"]["skip"] == 1 and res["votes"]["bad"] == 2
            assert sum(m["battles"] for m in res["models"]) == 16
            assert all(m["elo_ci"][0] <= m["elo"] <= m["elo_ci"][1] for m in res["models"])
            page.goto(server.url + "/results")
            assert page.locator("#results tr").count() == 1 + len(res["models"])
            browser.close()
    finally:
        server.kill()


def _answers(files):
    from camelid.evaluate.cli import _merge_answers

    return _merge_answers(files)


def test_results_from_the_vote_database_as_win_rates_and_bradley_terry(arena_files, vicuna10, tmp_path, capsys):
    db = tmp_path / "votes.sqlite"
    arena = Arena(load_questions(vicuna10), _answers(arena_files), db, seed=0)
    for idx in range(len(arena.items)):  # the rater always prefers the verbose model, else votes a tie
        it = arena.item("s1", idx)
        vote = "a" if it.model_a == "verbose" else "b" if it.model_b == "verbose" else "tie"
        arena.vote("s1", idx, vote)
    arena.vote("s1", 0, "b")  # a repeated vote for the same item is ignored
    assert main(["arena", "--results", "--db", str(db)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["battles"] == 30
    top = res["models"][0]
    assert top["model"] == "verbose" and top["win_rate"] == 1.0 and top["wins"] == 20
    assert top["elo"] > res["models"][1]["elo"]
    assert main(["arena", "--results", "--db", str(tmp_path / "missing.sqlite")]) == 1
