"""Chat templates rendered exactly as transformers renders them (`apply_chat_template`).

The environment is transformers' own (`utils/chat_template_utils.py`, `_cached_compile_jinja_template`), rebuilt
here so the core layer needs jinja2 only: a sandbox with `trim_blocks`, `lstrip_blocks` and `loopcontrols`, a
`tojson` that does not HTML-escape (and takes indent/separators/sort_keys), `strftime_now`, `raise_exception`,
the restricted `dict` and `namespace`, and the `{% generation %}` tag, whose rendered spans are the assistant
mask (`return_assistant_tokens_mask`). tests/core/test_jinja.py checks it against transformers' environment and
output on many templates and inputs.
"""

from __future__ import annotations

import functools
import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from camelid.core.io import CamelidError

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

Spans = list[tuple[int, int]]


class TemplateError(CamelidError):
    pass


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@functools.cache
def _extensions() -> tuple[type, type]:
    """The `{% generation %}` tag and the sandboxed `namespace`, subclasses of jinja2's: made with the first template
    compiled, so that a command that renders none does not import jinja2 (~40 ms)."""
    import jinja2.nodes
    import jinja2.utils
    from jinja2.ext import Extension

    class _Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body and records where it landed in the output."""

        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(track_generation=self.track)
            self._tracking: ContextVar = ContextVar("camelid_generation", default=None)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation(self, context, caller) -> str:
            rv = caller()
            tracking = self._tracking.get()
            if tracking is not None:
                blocks, spans = tracking
                start = len("".join(blocks))
                spans.append((start, start + len(rv)))
            return rv

        @contextmanager
        def track(self, blocks: list[str], spans: Spans):
            token = self._tracking.set((blocks, spans))
            try:
                yield
            finally:
                self._tracking.reset(token)

    class _TemplateNamespace(jinja2.utils.Namespace):
        """A namespace that refuses dunder/underscore attributes (no way out of the sandbox)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                    "Please rename the attribute.")

    return _Generation, _TemplateNamespace


def environment() -> ImmutableSandboxedEnvironment:
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    generation, namespace = _extensions()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = namespace
    return env


def has_generation_tag(source: str) -> bool:
    """Whether a chat_template marks assistant text with `{% generation %}` (transformers' own test)."""
    return re.search(r"\{\%-?\s*generation\s*-?\%\}", source) is not None


@functools.lru_cache(maxsize=16)  # compiling a chat_template costs far more than rendering it
def compile_template(source: str) -> jinja2.Template:
    import jinja2

    try:
        return environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(f"chat_template line {e.lineno}: {e.message}") from None


def render(source: str, messages: list[dict], add_generation_prompt: bool = False, **tokens) -> tuple[str, Spans]:
    """(text, spans of `{% generation %}` blocks) exactly as `apply_chat_template(..., tokenize=False)` renders it,
    with transformers' template variables (`tools`/`documents` None, the special tokens given in `tokens`)."""
    import jinja2

    tmpl = compile_template(source)
    blocks: list[str] = []
    spans: Spans = []
    try:
        with tmpl.environment.track_generation(blocks, spans):  # type: ignore[attr-defined]
            for block in tmpl.generate(messages=messages, tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt, **tokens):
                blocks.append(block)
    except jinja2.exceptions.TemplateError as e:
        raise TemplateError(f"chat_template: {e}") from None
    return "".join(blocks), spans


def renderer(source: str, bos: str, eos: str) -> Callable[[list[dict], bool], str]:
    """A function (messages, add_generation_prompt) -> text for one chat_template and its BOS/EOS strings."""
    compile_template(source)  # a syntax error surfaces now, with its line

    def run(msgs: list[dict], gen: bool) -> str:
        return render(source, msgs, gen, bos_token=bos, eos_token=eos)[0] if msgs else ""

    return run
