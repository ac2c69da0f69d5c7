#!/usr/bin/env python3
"""The web chat page of the real `kiln serve` binary in headless Chromium (selenium).

Checks: the page loads and shows the model's name; a sent message streams tokens into the reply
(the text grows while the page says it is streaming); Stop ends the stream (the text stops
growing and the server counts a cancelled request); Markdown from a conversation stored in
localStorage renders as elements while HTML and script in it stay inert text, tool calls and their
outputs included; the layout fits a phone-width window. With --tools-model (a kiln chat
checkpoint), a second server runs it with `--tools code,search` and a question asked on the page
must show the model's tool call and its output, streamed. Saves screenshots (desktop and phone)
under --out, and the desktop ones as docs/serve-page.png (and docs/serve-page-tools.png) with
--docs. Exits non-zero on any failure; prints `N passed, M failed`.

usage: scripts/serve/page_test.py [--model smollm2-135m] [--tools-model runs/speedrun/sft]
                                  [--out /tmp/kiln-serve-page] [--docs]
needs: pip install selenium; apt-get install chromium chromium-driver
"""

import argparse
import os
import shutil
import sys
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

# A stored conversation whose reply tries to inject markup and script, plus real Markdown.
HOSTILE = (
    "Here is **bold**, *em* and `inline code`.\n\n"
    "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>\n\n"
    "- one\n- two [link](javascript:window.__pwned=3)\n\n"
    "```python\ndef add(a, b):\n    return a + b  # <b>not bold</b>\n```\n"
)


def wait(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kiln", default=common.KILN)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--out", default="/tmp/kiln-serve-page")
    ap.add_argument("--docs", action="store_true", help="also write docs/serve-page.png")
    ap.add_argument("--tools-model", help="a kiln chat checkpoint to serve with --tools code,search")
    args = ap.parse_args()
    common.KILN = args.kiln
    os.makedirs(args.out, exist_ok=True)
    srv = common.Server(["--model", args.model, "--parallel", "2", "--ctx", "2048", "--threads", args.threads],
                        log_path=os.path.join(args.out, "server.log"))
    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,860", "--force-device-scale-factor=1"]:
        opts.add_argument(a)
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if chrome:
        opts.binary_location = chrome
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    d = driver
    find = d.find_element
    js = d.execute_script
    checks = []

    def check(f):
        checks.append(f)
        return f

    def reply_text():
        bodies = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .body")
        return bodies[-1].text if bodies else ""

    def streaming():
        return "streaming" in (find(By.TAG_NAME, "body").get_attribute("class") or "")

    def open_stored(conv):
        """Puts `conv` in the page's localStorage as the current conversation and reloads."""
        js("const s = JSON.parse(localStorage.getItem('kiln.chat.v1'));"
           "s.convs.unshift(arguments[0]); s.current = arguments[0].id;"
           "localStorage.setItem('kiln.chat.v1', JSON.stringify(s));", conv)
        d.refresh()
        wait(lambda: find(By.ID, "model").text == args.model, 60, "reload")

    def send(text):
        box = find(By.ID, "input")
        box.clear()
        box.send_keys(text)
        find(By.ID, "send").click()

    @check
    def loads_and_shows_the_model():
        d.get(srv.url + "/")
        wait(lambda: find(By.ID, "model").text == args.model, 60, "the model's name")
        assert "kiln" in d.title

    @check
    def streams_and_stop_stops():
        # a long answer, so there is time to stop it
        js("document.getElementById('max-tokens').value = 1500;"
           "document.getElementById('max-tokens').dispatchEvent(new Event('input'));")
        send("Write a very long story about a dragon who learns to bake bread.")
        wait(streaming, 30, "streaming to start")
        first = wait(lambda: len(reply_text()) > 0 and reply_text(), 120, "the first tokens")
        wait(lambda: len(reply_text()) > len(first) + 10, 120, "more tokens to stream in")
        assert streaming(), "stopped streaming too early for the test"
        cancelled = metric(srv.url, 'kiln_requests_total{outcome="cancelled"}')
        find(By.ID, "stop").click()
        wait(lambda: not streaming(), 10, "the page to leave the streaming state")
        stopped = reply_text()
        time.sleep(1.5)
        assert reply_text() == stopped, "text kept growing after Stop"
        # the server saw the hang-up and freed the slot
        wait(lambda: metric(srv.url, 'kiln_requests_total{outcome="cancelled"}') > cancelled, 10,
             "the server to count the cancelled request")
        wait(lambda: metric(srv.url, "kiln_slots_busy") == 0, 10, "the slot to be freed")
        assert len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .regenerate")) == 1

    @check
    def regenerate_and_edit_and_resend():
        js("document.getElementById('max-tokens').value = 24;"
           "document.getElementById('max-tokens').dispatchEvent(new Event('input'));")
        find(By.CSS_SELECTOR, ".msg.assistant .regenerate").click()
        wait(lambda: not streaming() and reply_text(), 120, "the regenerated reply")
        assert len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 2
        find(By.CSS_SELECTOR, ".msg.user .tools button").click()
        ta = find(By.CSS_SELECTOR, ".msg.user textarea")
        ta.clear()
        ta.send_keys("What is the capital of France?")
        find(By.CSS_SELECTOR, ".msg.user .tools button.primary").click()
        wait(lambda: not streaming() and reply_text(), 120, "the reply to the edited message")
        users = d.find_elements(By.CSS_SELECTOR, ".msg.user .body")
        assert [u.text for u in users] == ["What is the capital of France?"], [u.text for u in users]

    @check
    def markdown_renders_and_html_stays_text():
        conv = {"id": "hostile", "title": "Markdown check", "system": "",
                "messages": [{"role": "user", "content": "<b>hi</b>"},
                             {"role": "assistant", "content": HOSTILE}]}
        open_stored(conv)
        box = find(By.ID, "messages")
        assert js("return window.__pwned") is None, "script ran"
        assert not box.find_elements(By.TAG_NAME, "img") and not box.find_elements(By.TAG_NAME, "script")
        assert box.find_elements(By.CSS_SELECTOR, ".msg.assistant strong")[0].text == "bold"
        assert box.find_elements(By.CSS_SELECTOR, ".msg.assistant li")
        code = box.find_elements(By.CSS_SELECTOR, ".codeblock code")[0].text
        assert "<b>not bold</b>" in code, code
        assert "<img src=x" in box.text, "the HTML should show as text"
        assert not box.find_elements(By.CSS_SELECTOR, "a[href^='javascript']")
        assert box.find_elements(By.CSS_SELECTOR, ".msg.user .body")[0].text == "<b>hi</b>"

    @check
    def tool_calls_render_in_order_and_stay_text():
        # A reply as `kiln serve --tools` streams it: text, a call with its output, more text.
        parts = [{"text": "Let me check. "},
                 {"tool": "code", "input": "print('<b>x</b>')", "output": "<img src=x onerror=\"window.__pwned=4\">\n"},
                 {"text": "It printed a **tag**."}]
        conv = {"id": "tools", "title": "Tools check", "system": "",
                "messages": [{"role": "user", "content": "run it"},
                             {"role": "assistant", "content": "Let me check. It printed a **tag**.",
                              "parts": parts}]}
        open_stored(conv)
        box = find(By.ID, "messages")
        assert js("return window.__pwned") is None, "script ran"
        assert not box.find_elements(By.TAG_NAME, "img")
        calls = box.find_elements(By.CSS_SELECTOR, ".msg.assistant .toolcall")
        assert len(calls) == 1, len(calls)
        assert calls[0].find_element(By.CSS_SELECTOR, ".label").text.lower() == "code"
        assert calls[0].find_element(By.CSS_SELECTOR, "pre.input").text == "print('<b>x</b>')"
        assert calls[0].find_element(By.CSS_SELECTOR, "pre.output").text.startswith("<img src=x")
        body = box.find_elements(By.CSS_SELECTOR, ".msg.assistant .body")[0]
        # text, call, text: in the order the reply came
        kids = js("return Array.from(arguments[0].children).map(e => e.className || e.tagName)", body)
        assert kids.index("toolcall") > 0 and kids.index("toolcall") < len(kids) - 1, kids
        assert body.find_elements(By.TAG_NAME, "strong")[0].text == "tag"

    @check
    def screenshot_desktop():
        # A real exchange for the picture: ask for code, so Markdown and a code block show.
        find(By.ID, "new").click()
        js("document.getElementById('temperature').value = 0;"
           "document.getElementById('temperature').dispatchEvent(new Event('input'));"
           "document.getElementById('max-tokens').value = 160;"
           "document.getElementById('max-tokens').dispatchEvent(new Event('input'));")
        send("Write a Python function that returns the square of a number, with a short explanation.")
        wait(lambda: not streaming() and reply_text(), 300, "the reply")
        path = os.path.join(args.out, "serve-page.png")
        d.save_screenshot(path)
        if args.docs:
            shutil.copy(path, os.path.join(common.ROOT, "docs", "serve-page.png"))

    @check
    def phone_width_fits():
        d.set_window_size(390, 844)
        time.sleep(0.3)
        overflow = js("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
        assert find(By.ID, "menu").is_displayed() and not find(By.ID, "sidebar").is_displayed() or \
            js("return document.getElementById('sidebar').getBoundingClientRect().right") <= 0
        assert find(By.ID, "send").is_displayed()
        d.save_screenshot(os.path.join(args.out, "serve-page-phone.png"))

    if args.tools_model:
        @check
        def a_tool_call_streams_onto_the_page():
            tsrv = common.Server(["--model", args.tools_model, "--tools", "code,search", "--parallel", "2",
                                  "--threads", args.threads],
                                 log_path=os.path.join(args.out, "server-tools.log"))
            try:
                d.set_window_size(1280, 860)
                d.get(tsrv.url + "/")
                wait(lambda: "tools: code, search" in find(By.ID, "model-badge").text, 60, "the tools badge")
                find(By.ID, "new").click()
                js("document.getElementById('temperature').value = 0;"
                   "document.getElementById('temperature').dispatchEvent(new Event('input'));"
                   "document.getElementById('max-tokens').value = 200;"
                   "document.getElementById('max-tokens').dispatchEvent(new Event('input'));")
                send("How many times does the letter r appear in the word strawberry?")
                wait(lambda: not streaming() and reply_text(), 300, "the reply")
                calls = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .toolcall")
                assert calls, "the model made no tool call: " + reply_text()
                out = calls[0].find_element(By.CSS_SELECTOR, "pre.output").text
                assert out, "the call has no output"
                print("     call:", calls[0].find_element(By.CSS_SELECTOR, "pre.input").text.replace("\n", " | "),
                      "->", out.replace("\n", " | "))
                print("     reply:", reply_text().replace("\n", " | "))
                path = os.path.join(args.out, "serve-page-tools.png")
                d.save_screenshot(path)
                if args.docs:
                    shutil.copy(path, os.path.join(common.ROOT, "docs", "serve-page-tools.png"))
            finally:
                tsrv.stop()

    passed = failed = 0
    try:
        for f in checks:
            try:
                f()
                passed += 1
                print(f"ok   {f.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {f.__name__}")
                traceback.print_exc()
                d.save_screenshot(os.path.join(args.out, f"fail-{f.__name__}.png"))
    finally:
        driver.quit()
        srv.stop()
    print(f"screenshots in {args.out}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
