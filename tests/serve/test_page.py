"""The chat page in headless Chromium (Debian's, offline): a real streamed answer, multi-turn, reset, errors, and
model output that looks like HTML shown as text."""

from __future__ import annotations

import json

import pytest

from camelid.models import Sampling
from tests.serve.helpers import MODEL, forget, off_main_thread

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
EVIL = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
        '<b onmouseover="window.__pwned = 3">bold</b> & 한국어 "quotes"')


@pytest.fixture(scope="module")
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium fonts-nanum)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context()
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.errors.append("dialog: " + d.message), d.dismiss()))
    pg.bodies = []
    pg.on("request", lambda r: pg.bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
    pg.goto(server.url + "/")
    playwright.expect(pg.locator("#model-name")).to_have_text(MODEL)
    pg.fill("#temperature", "0")
    pg.fill("#max-tokens", "12")
    yield pg
    context.close()


def send(page, text: str) -> None:
    """Type a message, press Enter, wait until the answer is complete."""
    n = page.locator("#log > .msg").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    # (locators, not wait_for_function: the page's CSP forbids the eval that the latter needs)
    page.locator("#log > .msg").nth(n).wait_for(state="attached")  # the user's bubble: the turn has begun
    page.locator("body[data-state=idle]").wait_for(state="attached", timeout=120_000)


def watch_assistant_text(page) -> None:
    """Record every length the newest assistant bubble's text goes through."""
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const b = [...document.querySelectorAll('.msg.assistant .body')].pop();
            if (b) window.__lengths.push(b.textContent.length);
        }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
    }""")


def test_page_streams_a_real_answer_keeps_the_conversation_and_resets(page, embedded):
    watch_assistant_text(page)
    forget(embedded)
    send(page, "Write the number 2 in words.")
    answer = page.inner_text(".msg.assistant .body")
    forget(embedded)
    expected = off_main_thread(embedded.chat, [{"role": "user", "content": "Write the number 2 in words."}],
                               Sampling(temperature=0, max_tokens=12)).text
    assert answer.strip() == expected.strip() and answer.strip()
    lengths = [n for n in page.evaluate("window.__lengths") if n]
    assert len(set(lengths)) >= 2  # it grew piece by piece
    assert page.bodies[-1]["stream"] is True and page.bodies[-1]["max_tokens"] == 12
    assert page.inner_text("#status").endswith(" s")  # usage shown from the last chunk

    send(page, "And the number 3?")
    assert [m["role"] for m in page.bodies[-1]["messages"]] == ["user", "assistant", "user"]
    assert page.bodies[-1]["messages"][1]["content"] == expected
    assert page.locator(".msg.assistant").count() == 2

    page.click("#reset")
    assert page.locator(".msg").count() == 0
    send(page, "Hi")
    assert page.bodies[-1]["messages"] == [{"role": "user", "content": "Hi"}]
    assert page.errors == []


def test_a_failed_turn_leaves_the_screen_with_the_error_shown_and_its_text_back_in_the_box(page):
    too_long = "word " * 2500  # the real server refuses: beyond the fixture's 2048-token context
    n = page.locator("#log > .msg").count()
    page.fill("#input", too_long)
    page.press("#input", "Enter")
    page.locator(".msg.error").wait_for(state="attached", timeout=60_000)
    page.locator("body[data-state=idle]").wait_for(state="attached")
    assert "context" in page.inner_text(".msg.error")
    assert page.locator(".msg.user").count() == 0 and page.locator(".msg.assistant").count() == 0
    assert page.input_value("#input") == too_long  # ready to be edited and sent again
    assert page.locator("#log > .msg").count() == n + 1  # the error alone
    page.fill("#input", "")
    page.fill("#max-tokens", "4")
    send(page, "Hello")  # the failed turn was dropped: the conversation goes on from a clean state
    assert [m["role"] for m in page.bodies[-1]["messages"]] == ["user"]
    assert page.errors == []


def test_max_tokens_box_takes_only_what_the_server_accepts(page, server):
    limit = server.app.state.model.context_length
    box = page.locator("#max-tokens")
    playwright.expect(box).to_have_attribute("max", str(limit))
    for typed, kept in (("999999", limit), ("0", 1), ("-3", 1), ("2.6", 3), ("12", 12)):
        box.fill(typed)
        box.press("Tab")  # the change event
        assert box.input_value() == str(kept), typed


def test_length_capped_and_stopped_answers_are_marked(page, embedded):
    page.fill("#max-tokens", "3")
    send(page, "Write a long story about a dragon.")
    capped = page.locator(".msg.assistant").last
    playwright.expect(capped).to_have_attribute("data-finish", "length")
    assert "max tokens" in capped.locator(".note").inner_text()

    # a reply that cannot end by itself before Stop is clicked: the request goes on to the real server with the end
    # tokens banned by logit_bias (a 135M model asked to count may still stop after ten numbers)
    ends = {embedded.llm.token_eos(), *embedded.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)}

    def endless(route):
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "logit_bias": {str(t): -100 for t in ends}}))

    page.route("**/v1/chat/completions", endless)
    page.fill("#max-tokens", "1500")
    page.fill("#input", "Count from 1 to 1000, one number per line.")
    page.press("#input", "Enter")
    playwright.expect(page.locator(".msg.assistant").last.locator(".body")).not_to_have_text("", timeout=60_000)
    page.click("#stop")
    page.unroute("**/v1/chat/completions")
    page.locator("body[data-state=idle]").wait_for(state="attached")
    stopped = page.locator(".msg.assistant").last
    playwright.expect(stopped).to_have_attribute("data-finish", "stopped")
    assert "stopped" in stopped.locator(".note").inner_text()

    page.fill("#max-tokens", "64")
    send(page, "Say hi.")
    ended = page.locator(".msg.assistant").last
    assert ended.get_attribute("data-finish") is None and ended.locator(".note").count() == 0
    assert page.errors == []


def test_header_controls_have_no_stray_border_line(page, tmp_path):
    # the composer's top border is the only line between header and log; the settings form in the header has none
    assert page.locator("#settings").evaluate("f => getComputedStyle(f).borderTopWidth") == "0px"
    assert page.locator("#composer").evaluate("f => getComputedStyle(f).borderTopWidth") == "1px"
    header = page.locator("header").bounding_box()
    controls = page.locator("#settings").bounding_box()
    assert header["y"] <= controls["y"] and controls["y"] + controls["height"] <= header["y"] + header["height"]
    page.screenshot(path=str(tmp_path / "chat-page.png"))


def test_model_output_that_looks_like_html_is_shown_as_text(page):
    # a routed SSE response (this tests the page's rendering): markup split across chunks, plus a code fence
    pieces = [EVIL[:9], EVIL[9:40], EVIL[40:], "\n```html\n<i>code</i>\n```"]
    events = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
               "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    send(page, "show me some html")
    bubble = page.locator(".msg.assistant .body")
    assert bubble.evaluate("b => b.firstChild.textContent") == EVIL + "\n"
    assert page.inner_text(".msg.assistant pre code") == "<i>code</i>\n"
    assert page.locator("#log img, #log script, #log b, #log i").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.hover(".msg.assistant .body")
    assert page.evaluate("window.__pwned") is None and page.errors == []


class OriginSite:
    """A second web site on another loopback port (another origin): a blank page a test scripts fetches from."""

    def __init__(self):
        import http.server
        import threading

        class Blank(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"<!doctype html><title>other site</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blank)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# what the official OpenAI JS SDK (openai-node, with dangerouslyAllowBrowser) sends from a browser
JS_SDK_FETCH = """async ([url, key]) => {
    const resp = await fetch(url + "/v1/chat/completions", {method: "POST", headers: {
        "Authorization": "Bearer " + key, "Content-Type": "application/json", "Accept": "application/json",
        "X-Stainless-Lang": "js", "X-Stainless-Package-Version": "5.0.0", "X-Stainless-OS": "Unknown",
        "X-Stainless-Arch": "unknown", "X-Stainless-Runtime": "browser:chrome", "X-Stainless-Runtime-Version": "130",
        "X-Stainless-Retry-Count": "0", "X-Stainless-Timeout": "600"},
        body: JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 2})});
    return [resp.status, (await resp.json()).object];
}"""
# a "simple" request: a foreign page sends it without any preflight
PLAIN_POST = """async (url) => {
    try {
        await fetch(url + "/v1/chat/completions", {method: "POST", mode: "no-cors",
            headers: {"Content-Type": "text/plain"},
            body: JSON.stringify({messages: [{role: "user", content: "hi"}]})});
        return "sent";
    } catch (e) { return "failed: " + e.message; }
}"""


def test_another_origin_runs_the_js_sdk_when_allowed_and_nothing_when_not(browser, embedded, server):
    from camelid.serve.server import BackgroundServer, create_app

    with OriginSite() as site, OriginSite() as evil:
        app = create_app(embedded, api_key="k", cors_origins=[site.url], page=False)
        with BackgroundServer(app) as srv:
            context = browser.new_context()
            pg = context.new_page()
            pg.goto(site.url)
            assert pg.evaluate(JS_SDK_FETCH, [srv.url, "k"]) == [200, "chat.completion"]
            served = app.state.gate.total
            pg.goto(evil.url)
            with pytest.raises(playwright.Error, match="Failed to fetch"):  # no CORS answer for this origin
                pg.evaluate(JS_SDK_FETCH, [srv.url, "k"])
            assert pg.evaluate(PLAIN_POST, srv.url) == "sent"  # the browser sends it (opaque response)...
            assert app.state.gate.total == served  # ...and the server ran nothing
            # the default server (no key, no CORS) is what a foreign page would aim at
            served = server.app.state.gate.total
            assert pg.evaluate(PLAIN_POST, server.url) == "sent"
            assert server.app.state.gate.total == served
            context.close()
