"""`camelid chat`: a multi-turn terminal chat with streaming output and FastChat's `!!` commands.

On a terminal it prompts `USER:` / `ASSISTANT:`; with piped stdin it reads one message per line and writes each answer
on stdout followed by a newline (notices go to stderr), so scripts and tests can drive it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from camelid.core.io import CamelidError, DataError, Problem, read_json, write_json
from camelid.models.base import Model, Sampling

COMMANDS = {
    "!!exit": "leave the chat",
    "!!reset": "start a new conversation (the system message stays)",
    "!!regen": "drop the last answer and generate it again",
    "!!save FILE": "write the conversation as JSON",
    "!!load FILE": "continue a saved conversation",
}


@dataclass
class Conversation:
    """OpenAI-shaped turns; the system message is kept apart so !!reset keeps it."""

    system: str | None = None
    messages: list[dict] = field(default_factory=list)

    def for_model(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def save(self, path: str | Path, model: str | None = None) -> None:
        write_json(path, {"model": model, "system": self.system, "messages": self.messages})

    @classmethod
    def load(cls, path: str | Path) -> "Conversation":
        """Read a conversation saved by !!save; FastChat's saved `conv.dict()` (`[[role, text], ...]`) works too."""
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise DataError(Problem(str(path), None, "messages", "expected an object with a 'messages' list"))
        system = data.get("system", data.get("system_message")) or None
        roles = data.get("roles") or ["USER", "ASSISTANT"]
        messages = []
        for i, m in enumerate(data["messages"]):
            if isinstance(m, list) and len(m) == 2:  # FastChat: [role name, text]; None text = pending turn
                if m[1] is None:
                    continue
                m = {"role": "user" if m[0] == roles[0] else "assistant", "content": m[1]}
            if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str)):
                raise DataError(Problem(str(path), None, f"messages[{i}]", "expected {\"role\": "
                                        "system|user|assistant, \"content\": string}", record=i))
            if m["role"] == "system":
                system = m["content"]
            else:
                messages.append({"role": m["role"], "content": m["content"]})
        if not isinstance(system, (str, type(None))):
            raise DataError(Problem(str(path), None, "system", "expected a string"))
        return cls(system, messages)


class ChatSession:
    """The conversation plus the model: `send`, `regen`, `reset`, streaming each answer to `out`."""

    def __init__(self, model: Model, sampling: Sampling, system: str | None = None):
        self.model, self.sampling = model, sampling
        self.conv = Conversation(system)

    def _answer(self, out: TextIO) -> str:
        parts: list[str] = []
        chunks = self.model.stream_chat(self.conv.for_model(), self.sampling)
        try:
            for c in chunks:
                if c.text:
                    parts.append(c.text)
                    out.write(c.text)
                    out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, keeps what came, and the chat goes on
            out.write(" [interrupted]")
        finally:
            chunks.close()
        out.write("\n")
        out.flush()
        answer = "".join(parts)
        self.conv.messages.append({"role": "assistant", "content": answer})
        return answer

    def send(self, text: str, out: TextIO) -> str:
        self.conv.messages.append({"role": "user", "content": text})
        try:
            return self._answer(out)
        except BaseException:
            if self.conv.messages and self.conv.messages[-1]["role"] == "user":
                self.conv.messages.pop()  # nothing answered: the turn did not happen
            raise

    def regen(self, out: TextIO) -> str:
        if not self.conv.messages or self.conv.messages[-1]["role"] != "assistant":
            raise CamelidError("nothing to regenerate yet")
        last = self.conv.messages.pop()
        try:
            return self._answer(out)
        except BaseException:
            self.conv.messages.append(last)
            raise

    def reset(self) -> None:
        self.conv.messages.clear()


def chat_loop(model: Model, sampling: Sampling, system: str | None = None, stdin: TextIO | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None, interactive: bool | None = None
              ) -> Conversation:
    """Run the chat until `!!exit` or end of input; returns the final conversation."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    tty = stdin.isatty() and stdout.isatty() if interactive is None else interactive
    session = ChatSession(model, sampling, system)

    def notice(msg: str) -> None:
        print(msg, file=stdout if tty else stderr, flush=True)

    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        notice(f"Chatting with {model.name}. Commands: " + ", ".join(c.split()[0] for c in COMMANDS) +
               " (Ctrl-C stops an answer, Ctrl-D leaves).")
    while True:
        try:
            if tty:
                line = input("\nUSER: ")
            else:
                line = stdin.readline()
                if not line:
                    break
        except EOFError:
            break
        except KeyboardInterrupt:
            notice("")
            break
        text = line.rstrip("\r\n") if not tty else line
        if not text.strip():
            continue
        cmd, _, arg = text.strip().partition(" ")
        try:
            if cmd == "!!exit":
                break
            elif cmd == "!!reset":
                session.reset()
                notice("(conversation reset)")
            elif cmd == "!!regen":
                if tty:
                    stdout.write("ASSISTANT: ")
                session.regen(stdout)
            elif cmd == "!!save":
                if not arg.strip():
                    raise CamelidError("usage: !!save FILE")
                session.conv.save(arg.strip(), model.name)
                notice(f"(saved {len(session.conv.messages)} messages to {arg.strip()})")
            elif cmd == "!!load":
                if not arg.strip():
                    raise CamelidError("usage: !!load FILE")
                session.conv = Conversation.load(arg.strip())
                notice(f"(loaded {len(session.conv.messages)} messages from {arg.strip()})")
                if tty:
                    for m in session.conv.messages:
                        notice(f"{m['role'].upper()}: {m['content']}")
            elif cmd.startswith("!!"):
                raise CamelidError(f"unknown command {cmd}; commands: " + "; ".join(
                    f"{k} ({v})" for k, v in COMMANDS.items()))
            else:
                if tty:
                    stdout.write("ASSISTANT: ")
                    stdout.flush()
                session.send(text, stdout)
        except CamelidError as e:  # a bad command or an over-long conversation must not end the chat
            print(f"camelid: error: {e}", file=stderr, flush=True)
    return session.conv
