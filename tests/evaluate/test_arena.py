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
from camelid.core.http import MAX_BODY
from camelid.evaluate.arena import Arena, VoteRefused
from camelid.evaluate.arena_web import PAGE_CSP
from camelid.evaluate.questions import load_questions

from ..models.servers import free_port, wait_http
from .conftest import write_answers

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
EVIL = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & done'


class ArenaServer:
    def __init__(self, files, questions, db, port=None, extra=()):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "camelid", "arena", "--answers", *map(str, files), "--questions", str(questions),
             "--db", str(db), "--port", str(self.port), "--seed", "3", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/", self.proc)  # (not /api/results: its bootstrap can take over 1 s on a busy machine)

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
    from playwright.sync_api import expect, sync_playwright

    db = tmp_path / "votes.sqlite"
    server = ArenaServer(arena_files, vicuna10, db)
    keys = ["1", "2", "3", "4", "s", "a", "b", "t", "x"]  # 8 votes and one skip
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            response = page.goto(server.url)
            assert response.headers["content-security-policy"] == PAGE_CSP  # the chat page's: no inline script
            page.wait_for_selector("body[data-ready='1']")
            assert errors == []  # (a CSP violation is reported on the console)
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
                # (a locator, not wait_for_function: the page's CSP forbids the eval that the latter needs)
                expect(progress).to_have_text(f"item {k + 2} of 30 · {voted} votes")
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

            # the last items voted elsewhere (same session): back on the page nothing is left to vote on
            for _ in range(30 - 9):
                idx = httpx.get(server.url + "/api/next", params={"session": session}).json()["idx"]
                assert httpx.post(server.url + "/api/vote", json={"session": session, "idx": idx,
                                                                  "vote": "tie"}).status_code == 200
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            assert progress.text_content() == "done · 29 votes"
            buttons = page.locator("button[data-vote]")
            assert buttons.count() == 5 and all(buttons.nth(i).is_disabled() for i in range(5))
            page.keyboard.press("1")
            assert httpx.get(server.url + "/api/results").json()["battles"] == 29
            browser.close()
    finally:
        server.kill()


def _answers(files):
    from camelid.evaluate.cli import _merge_answers

    return _merge_answers(files)


def test_results_from_the_vote_database_as_win_rates_and_bradley_terry(arena_files, vicuna10, tmp_path, capsys):
    db = tmp_path / "votes.sqlite"
    arena = Arena(load_questions(vicuna10), _answers(arena_files), db, seed=0)
    s1 = arena.new_session()
    for idx in range(len(arena.items)):  # the rater always prefers the verbose model, else votes a tie
        assert arena.next(s1)["idx"] == idx
        it = arena.item(s1, idx)
        vote = "a" if it.model_a == "verbose" else "b" if it.model_b == "verbose" else "tie"
        arena.vote(s1, idx, vote)
    with pytest.raises(VoteRefused):
        arena.vote(s1, 0, "b")  # a repeated vote for the same item is refused
    assert main(["arena", "--results", "--db", str(db)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["battles"] == 30
    top = res["models"][0]
    assert top["model"] == "verbose" and top["win_rate"] == 1.0 and top["wins"] == 20
    assert top["elo"] > res["models"][1]["elo"]
    assert main(["arena", "--results", "--db", str(tmp_path / "missing.sqlite")]) == 1


@pytest.fixture
def arena_server(arena_files, vicuna10, tmp_path):
    server = ArenaServer(arena_files, vicuna10, tmp_path / "votes.sqlite")
    yield server
    server.kill()


def test_a_session_votes_only_on_the_item_it_was_shown(arena_server, tmp_path):
    url = arena_server.url
    session = httpx.post(url + "/api/session", json={}).json()["session"]
    assert len(session) >= 40

    def vote(**kw):
        return httpx.post(url + "/api/vote", json={"session": session, "idx": 0, "vote": "a", **kw})

    assert vote().status_code == 409  # nothing was shown yet
    assert httpx.get(url + "/api/next", params={"session": session}).json()["idx"] == 0
    assert vote(idx=1).status_code == 409  # never shown
    assert vote(idx=29).status_code == 409
    r = vote()
    assert r.status_code == 200 and r.json()["idx"] == 1  # the answer shows the next item
    assert vote().status_code == 409  # the same item twice
    assert vote(idx=2).status_code == 409
    assert vote(idx=1, vote="tie").status_code == 200
    # made-up and malformed sessions, values and bodies
    for body, status in [({"session": "x" * 43, "idx": 2, "vote": "a"}, 404),
                         ({"session": "x" * 3000, "idx": 2, "vote": "a"}, 400),
                         ({"session": 5, "idx": 2, "vote": "a"}, 400),
                         ({"session": session, "idx": "2", "vote": "a"}, 400),
                         ({"session": session, "idx": True, "vote": "a"}, 400),
                         ({"session": session, "idx": 2, "vote": "nope"}, 400),
                         ({"session": session, "idx": 2, "vote": "a", "extra": 1}, 400),
                         ([session, 2, "a"], 400)]:
        r = httpx.post(url + "/api/vote", json=body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()) == {"detail"}
    assert httpx.get(url + "/api/next", params={"session": "y" * 43}).status_code == 404
    assert httpx.get(url + "/api/next", params={"session": "y" * 5000}).status_code == 400
    assert httpx.get(url + "/api/next").status_code == 400
    too_big = {"session": session, "idx": 2, "vote": "a", "pad": "x" * 10_000}
    assert httpx.post(url + "/api/vote", json=too_big).status_code == 413
    assert httpx.post(url + "/api/vote", content=b'{"session": "' + b"[" * 5000, headers={
        "Content-Type": "application/json"}).status_code in (400, 413)
    plain = httpx.post(url + "/api/vote", content=json.dumps({"session": session, "idx": 2, "vote": "a"}),
                       headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    foreign = httpx.post(url + "/api/vote", json={"session": session, "idx": 2, "vote": "a"},
                         headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert httpx.get(url + "/", headers={"Host": "evil.example"}).status_code == 403
    assert httpx.get(url + "/api/results").json()["battles"] == 2
    assert MAX_BODY > 10_000  # (the arena's own limit is far smaller than the chat server's)


def test_vote_stuffing_is_rate_limited_per_client(arena_server):
    url = arena_server.url
    statuses = [httpx.post(url + "/api/session", json={}).status_code for _ in range(14)]
    assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}
    r = httpx.post(url + "/api/session", json={})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # votes: a burst of 30, then one per 2 seconds (refused votes count too: guessing costs the same)
    con = sqlite3.connect(arena_server.db)
    session = con.execute("SELECT token FROM sessions LIMIT 1").fetchone()[0]
    con.close()
    with httpx.Client() as client:
        statuses = [client.post(url + "/api/vote", json={"session": session, "idx": 5, "vote": "a"}).status_code
                    for _ in range(60)]
    assert statuses[:30] == [409] * 30 and statuses.count(429) >= 15


def test_the_vote_key_guards_the_voting_api(arena_files, vicuna10, tmp_path):
    server = ArenaServer(arena_files, vicuna10, tmp_path / "votes.sqlite", extra=["--api-key", "k3y"])
    try:
        assert httpx.post(server.url + "/api/session", json={}).status_code == 401
        bad = httpx.post(server.url + "/api/session", json={}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        key = {"Authorization": "Bearer k3y"}
        session = httpx.post(server.url + "/api/session", json={}, headers=key).json()["session"]
        assert httpx.get(server.url + "/api/next", params={"session": session}).status_code == 401
        assert httpx.get(server.url + "/api/next", params={"session": session}, headers=key).json()["idx"] == 0
        r = httpx.post(server.url + "/api/vote", json={"session": session, "idx": 0, "vote": "b"}, headers=key)
        assert r.status_code == 200 and r.json()["voted"] == 1
        assert httpx.get(server.url + "/").status_code == 200  # the page itself holds nothing
    finally:
        server.kill()
