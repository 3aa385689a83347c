"""A scripted LLM judge behind a real OpenAI-compatible HTTP server on loopback.

The embedded 135M model rarely writes a verdict, so the verdict logic (swap, tie rule, win rates) is checked against
judges whose behaviour is known (they read camelid's prompts and FastChat's MT-bench ones): `first` always prefers
the answer shown first (pure position bias), `longer` prefers the longer answer (length bias) unless one answer is
marked BEST or WORST. Single grading scores 1 + len(answer) // 40 (capped at 10), and any answer containing
NOVERDICT gets a reply without a rating.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECTION = r"## {name} \(begin\)\n(.*?)\n## {name} \(end\)"


def _section(text: str, name: str) -> str | None:
    m = re.search(SECTION.format(name=re.escape(name)), text, re.S)
    return m.group(1) if m else None


def _last_reply(conv: str | None) -> str | None:
    """The assistant's last reply in a multi-turn conversation section."""
    return re.split(r"### [^\n]*Assistant[^\n]*:\n", conv)[-1] if conv is not None else None


def _fastchat_section(text: str, name: str) -> str | None:
    """A section of FastChat's MT-bench prompts: `[The Start of NAME]...` or `<|The Start of NAME|>...`."""
    m = re.search(r"\[The Start of {n}\]\n(.*?)\n\[The End of {n}\]|<\|The Start of {n}\|>\n\n(.*?)\n\n"
                  r"<\|The End of {n}\|>".format(n=re.escape(name)), text, re.S)
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else None


def _answer(user: str, who: str) -> str | None:
    """Assistant `who`'s (last) answer in camelid's prompts or in FastChat's."""
    return (_section(user, f"Assistant {who}'s answer")
            or _last_reply(_section(user, f"Conversation with Assistant {who}"))
            or _fastchat_section(user, f"Assistant {who}'s Answer")
            or _last_reply(_fastchat_section(user, f"Assistant {who}'s Conversation with User")))


def judge_reply(policy: str, user: str) -> str:
    a, b = _answer(user, "A"), _answer(user, "B")
    if a is not None and b is not None:
        if policy == "first":
            return "Assistant A looks better to me.\n\n[[A]]"
        for mark, good in (("BEST", True), ("WORST", False)):  # content beats length when marked
            if (mark in a) != (mark in b):
                return f"One answer is clearly {'better' if good else 'worse'}.\n\n" + (
                    "[[A]]" if (mark in a) == good else "[[B]]")
        if len(a) == len(b):
            return "Both are the same length.\n\n[[C]]"
        return "The longer answer is more complete.\n\n" + ("[[A]]" if len(a) > len(b) else "[[B]]")
    ans = (_section(user, "Assistant's answer") or _section(user, "어시스턴트의 답변")
           or _fastchat_section(user, "Assistant's Answer")
           or _last_reply(_fastchat_section(user, "Assistant A's Conversation with User")) or "")
    if "NOVERDICT" in ans:
        return "I cannot decide on this one."
    return f"A fair answer.\n\nRating: [[{min(10, 1 + len(ans) // 40)}]]"


class JudgeServer:
    """POST /v1/chat/completions -> a scripted verdict; `requests` records every user prompt it was sent."""

    def __init__(self, policy: str = "longer", delay: float = 0.0):
        self.policy = policy
        self.delay = delay
        self.requests: list[list[dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.requests.append(body["messages"])
                if server.delay:
                    time.sleep(server.delay)
                text = judge_reply(server.policy, body["messages"][-1]["content"])
                out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
