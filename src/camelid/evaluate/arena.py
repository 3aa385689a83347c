"""`camelid arena`: Alpaca's blind pairwise human evaluation as a small web app.

A rater sees one instruction and two anonymous answers from different models, in an order shuffled per session
(seeded by the session token, so a reload shows the same next item), and votes A / B / tie / both bad, or skips.
Each vote is committed to SQLite in WAL mode before the reply is sent, so killing the server loses nothing.
Results are win rates and Bradley-Terry (Elo-scale) ratings with bootstrap confidence intervals.

Votes are hard to stuff: sessions are tokens the server issued (kept in the database, so they survive a restart), a
session votes only on the item it was shown (each item once, in its order), sessions and votes are rate-limited per
client, bodies are small and bounded, and `--api-key` puts a key in front of the voting API.
"""

from __future__ import annotations

import html
import itertools
import random
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from camelid.core.io import CamelidError
from camelid.evaluate.questions import Answer, Question
from camelid.evaluate.stats import arena_summary

VOTES = ("a", "b", "tie", "bad", "skip")
OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5, "bad": 0.5}  # "both bad" is a tie for the ratings

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY,
  session TEXT NOT NULL,
  idx INTEGER NOT NULL,
  question_id TEXT NOT NULL,
  model_a TEXT NOT NULL,
  model_b TEXT NOT NULL,
  vote TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'bad', 'skip')),
  tstamp REAL NOT NULL,
  UNIQUE (session, idx)
);
CREATE TABLE IF NOT EXISTS sessions (
  token TEXT PRIMARY KEY,
  client TEXT NOT NULL,
  created REAL NOT NULL,
  shown INTEGER NOT NULL DEFAULT -1
);
"""
MAX_TOKEN = 64  # characters in a session token (43 issued)


class VoteRefused(CamelidError):
    """A vote or session request the arena refuses; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def connect(db: str | Path) -> sqlite3.Connection:
    """Open the vote database: WAL so a reader never blocks a vote, synchronous=FULL so a commit is on disk."""
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SCHEMA)
    return con


def read_battles(db: str | Path) -> tuple[list[tuple[str, str, float]], dict[str, int]]:
    """(battles for the ratings, vote counts by kind) from a vote database; skips are not battles."""
    if not Path(db).is_file():
        raise CamelidError(f"{db}: no such vote database")
    con = connect(db)
    try:
        rows = con.execute("SELECT model_a, model_b, vote FROM votes ORDER BY id").fetchall()
    finally:
        con.close()
    counts = {v: 0 for v in VOTES}
    battles = []
    for a, b, v in rows:
        counts[v] += 1
        if v in OUTCOME:
            battles.append((a, b, OUTCOME[v]))
    return battles, counts


def results(db: str | Path, n_boot: int = 500, seed: int = 0) -> dict:
    battles, counts = read_battles(db)
    return {"votes": counts, "battles": len(battles), "models": arena_summary(battles, n_boot, seed)}


@dataclass
class Item:
    question: Question
    model_a: str  # shown on the left
    model_b: str


class Arena:
    """The items (question x model pair) and each session's seeded order over them."""

    def __init__(self, questions: list[Question], answers: dict[str, dict[str, Answer]], db: str | Path,
                 seed: int = 0):
        self.answers = answers
        self.models = sorted(answers)
        if len(self.models) < 2:
            raise CamelidError(f"the arena needs answers from two models or more; got {self.models or 'none'}")
        self.items = [(q, m1, m2) for q in questions for m1, m2 in itertools.combinations(self.models, 2)
                      if str(q.question_id) in answers[m1] and str(q.question_id) in answers[m2]]
        if not self.items:
            raise CamelidError("no question was answered by two models (do the answer files match the questions?)")
        self.db = Path(db)
        self.seed = seed
        connect(self.db).close()

    def order(self, session: str) -> list[tuple[int, bool]]:
        rng = random.Random(f"{self.seed}:{session}")
        perm = list(range(len(self.items)))
        rng.shuffle(perm)
        return [(i, rng.random() < 0.5) for i in perm]

    def item(self, session: str, idx: int) -> Item:
        i, swap = self.order(session)[idx]
        q, m1, m2 = self.items[i]
        return Item(q, *((m2, m1) if swap else (m1, m2)))

    def new_session(self, client: str = "") -> str:
        """Issue a session token (stored: votes name it, and it outlives a restart)."""
        token = secrets.token_urlsafe(32)
        con = connect(self.db)
        try:
            con.execute("INSERT INTO sessions (token, client, created) VALUES (?, ?, ?)",
                        (token, client[:100], time.time()))
        finally:
            con.close()
        return token

    def _known(self, con: sqlite3.Connection, session: object) -> int:
        """The index last shown to `session`; refuses a token the server never issued."""
        if not isinstance(session, str) or not 0 < len(session) <= MAX_TOKEN:
            raise VoteRefused(f"session must be a token of at most {MAX_TOKEN} characters", 400)
        row = con.execute("SELECT shown FROM sessions WHERE token = ?", (session,)).fetchone()
        if row is None:
            raise VoteRefused("unknown session: ask /api/session for one", 404)
        return row[0]

    def progress(self, session: str) -> tuple[int, int]:
        """(next index to show, votes cast) for a session: it resumes where it stopped, even after a restart."""
        con = connect(self.db)
        try:
            nxt, n = con.execute("SELECT COALESCE(MAX(idx) + 1, 0), COALESCE(SUM(vote != 'skip'), 0) FROM votes "
                                 "WHERE session = ?", (session,)).fetchone()
        finally:
            con.close()
        return nxt, n

    def next(self, session: str) -> dict:
        """The session's next item (and it is recorded as shown: the only item the session may vote on)."""
        con = connect(self.db)
        try:
            self._known(con, session)
            con.execute("UPDATE sessions SET shown = (SELECT COALESCE(MAX(idx) + 1, 0) FROM votes WHERE session = ?)"
                        " WHERE token = ?", (session, session))
        finally:
            con.close()
        idx, voted = self.progress(session)
        out = {"idx": idx, "total": len(self.items), "voted": voted, "done": idx >= len(self.items)}
        if out["done"]:
            return out
        it = self.item(session, idx)
        qid = str(it.question.question_id)
        out.update(question=[it.question.text(t) for t in range(len(it.question.turns))],
                   category=it.question.category, lang=it.question.lang,
                   left=self.answers[it.model_a][qid].turns, right=self.answers[it.model_b][qid].turns)
        return out

    def vote(self, session: str, idx: int, vote: str) -> None:
        """Record a vote on the item shown to the session; anything else is refused (VoteRefused)."""
        if vote not in VOTES:
            raise VoteRefused(f"vote must be one of {', '.join(VOTES)}")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self.items):
            raise VoteRefused(f"idx must be an item index in [0, {len(self.items)})")
        con = connect(self.db)
        try:
            con.execute("BEGIN IMMEDIATE")  # the check and the insert as one step: two racing votes cannot both pass
            try:
                shown = self._known(con, session)
                nxt = con.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM votes WHERE session = ?",
                                  (session,)).fetchone()[0]
                if idx != shown or idx != nxt:
                    raise VoteRefused(f"item {idx} is not the item shown to this session"
                                      + (f" (item {nxt})" if shown == nxt else ""), 409)
                it = self.item(session, idx)
                con.execute("INSERT INTO votes (session, idx, question_id, model_a, model_b, vote, tstamp) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (session, idx, str(it.question.question_id), it.model_a, it.model_b, vote, time.time()))
                con.execute("COMMIT")  # synchronous=FULL: the vote is on disk when this returns
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()


def results_html(res: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(m['model'])}</td><td>{m['elo']:.0f}</td><td>{m['elo_ci'][0]:.0f} - "
        f"{m['elo_ci'][1]:.0f}</td><td>{m['win_rate']:.1%}</td><td>{m['win_rate_ci'][0]:.1%} - "
        f"{m['win_rate_ci'][1]:.1%}</td><td>{m['battles']}</td><td>{m['wins']}</td><td>{m['ties']}</td>"
        f"<td>{m['losses']}</td></tr>" for m in res["models"])
    v = res["votes"]
    return ("<!doctype html><meta charset=utf-8><title>camelid arena results</title>"
            "<link rel=stylesheet href='/static/results.css'>"
            f"<h1>Arena results</h1><p>{res['battles']} battles: {v['a'] + v['b']} decisive, {v['tie']} ties, "
            f"{v['bad']} both bad; {v['skip']} skipped.</p><table id=results><tr><th>model</th><th>Elo (BT)</th>"
            "<th>95% CI</th><th>win rate</th><th>95% CI</th><th>battles</th><th>wins</th><th>ties</th>"
            f"<th>losses</th></tr>{rows}</table><p><a href='/'>back to voting</a></p>")

