#!/usr/bin/env python3
"""The official `openai` Python client against the real `kiln serve` binary (loopback only).

Streaming and not, chat and completions, n > 1, stop sequences, usage, logprobs, the API key,
and the client's own error classes for bad requests, all with max_retries=0 (a retry would
hide a failure). Exits non-zero on any failure; prints `N passed, M failed`.

usage: scripts/serve/openai_client_test.py [--model smollm2-135m] [--kiln target/release/kiln]
needs: pip install openai (.ci/run puts it in /tmp/kiln-serve-venv)
"""

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import openai  # noqa: E402

KEY = "kiln-test-key"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kiln", default=common.KILN)
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    common.KILN = args.kiln
    srv = common.Server(["--model", args.model, "--parallel", "3", "--ctx", "1024",
                         "--threads", args.threads, "--api-key", KEY])
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    name = args.model
    question = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
    checks = []

    def check(f):
        checks.append(f)
        return f

    @check
    def models_list():
        ids = [m.id for m in client.models.list().data]
        assert ids == [name], ids

    @check
    def chat_whole():
        r = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=24)
        c = r.choices[0]
        assert c.message.role == "assistant"
        assert "Paris" in c.message.content, c.message.content
        assert c.finish_reason in ("stop", "length")
        assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24, r.usage
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    @check
    def chat_streamed_equals_whole():
        kw = dict(model=name, messages=question, temperature=0, max_tokens=24)
        whole = client.chat.completions.create(**kw).choices[0].message.content
        text, usage, reasons, chunks = "", None, [], 0
        for ch in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
            chunks += 1
            if ch.usage:
                usage = ch.usage
            for c in ch.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        assert chunks > 3, chunks
        assert text == whole, (text, whole)
        assert len(reasons) == 1 and usage and usage.completion_tokens > 0, (reasons, usage)

    @check
    def completions_whole_and_streamed():
        kw = dict(model=name, prompt="The capital of France is", temperature=0, max_tokens=8)
        r = client.completions.create(**kw)
        text = r.choices[0].text
        assert text.strip(), r
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8, r
        streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
        assert streamed == text, (streamed, text)

    @check
    def n_choices():
        r = client.chat.completions.create(model=name, messages=question, n=3, temperature=1.0,
                                           seed=42, max_tokens=12)
        assert [c.index for c in r.choices] == [0, 1, 2], r.choices
        texts = [c.message.content for c in r.choices]
        assert len(set(texts)) > 1, texts
        again = client.chat.completions.create(model=name, messages=question, n=3, temperature=1.0,
                                               seed=42, max_tokens=12)
        assert [c.message.content for c in again.choices] == texts, "same seed, different choices"
        streamed = ["", "", ""]
        for ch in client.chat.completions.create(model=name, messages=question, n=3, temperature=1.0,
                                                 seed=42, max_tokens=12, stream=True):
            for c in ch.choices:
                streamed[c.index] += c.delta.content or ""
        assert streamed == texts, (streamed, texts)

    @check
    def stop_sequences():
        kw = dict(model=name, messages=question, temperature=0, max_tokens=24)
        whole = client.chat.completions.create(**kw).choices[0].message.content
        assert "Paris" in whole
        r = client.chat.completions.create(**kw, stop=["Paris"])
        assert r.choices[0].finish_reason == "stop", r
        assert r.choices[0].message.content == whole[: whole.index("Paris")], r
        streamed = "".join(c.choices[0].delta.content or ""
                           for c in client.chat.completions.create(**kw, stop="Paris", stream=True)
                           if c.choices)
        assert streamed == whole[: whole.index("Paris")], streamed

    @check
    def logprobs():
        r = client.chat.completions.create(model=name, messages=question, temperature=0, max_tokens=4,
                                           logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs.content
        assert len(lp) == r.usage.completion_tokens, lp
        for t in lp:
            assert t.logprob <= 0 and len(t.top_logprobs) == 3
            # greedy: the chosen token is the most likely one
            assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t

    @check
    def errors_are_the_clients_own_classes():
        try:
            client.chat.completions.create(model=name, messages=question, max_tokens=-1)
            raise AssertionError("max_tokens=-1 accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == "max_tokens", e.body
        try:
            client.chat.completions.create(model="gpt-404", messages=question)
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError:
            pass
        # and the server still answers
        assert client.chat.completions.create(model=name, messages=question, max_tokens=2).choices

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
    finally:
        srv.stop()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
