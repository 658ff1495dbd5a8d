"""A small OpenAI-compatible model server for tests, the demo and benchmarks.

It answers ``/v1/chat/completions`` and ``/v1/completions`` (JSON or SSE stream)
with deterministic text and a ``usage`` block, after a configurable latency.
Per-request behaviour can be set through the request's ``metadata`` object,
which the proxy passes through untouched::

    {"metadata": {"stub_status": "503", "stub_latency_ms": "200", "stub_tokens": "12",
                  "stub_error_body": "plain"}}

``GET /stats`` reports how many requests it served, how many streams the client
cut short, and the model names it was asked for. ``POST /settings`` with a JSON object of
:class:`StubSettings` fields changes its behaviour from then on (tests and the demo make an arm's
answers shorter or make it refuse: ``{"completion_tokens": 2, "refusal_rate": 0.5}``). It is a raw ASGI app (no
framework) so that it costs little next to the proxy in benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

ASGIScope = dict[str, Any]


@dataclass
class StubSettings:
    """Default behaviour of a stub server; the request's metadata can override it."""

    name: str = "stub"
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0
    completion_tokens: int = 8
    status: int = 200
    fail_rate: float = 0.0
    refusal_rate: float = 0.0  # share of answers that decline ("I'm sorry, but I can't help with that.")
    # An eval test set (JSONL, docs/eval.md) whose cases it recognises by their last user message or
    # prompt: it answers a known case with its label or reference on a share ``accuracy`` of cases,
    # and otherwise with another label or a damaged reference. Deterministic per case (the same
    # prompt, the same answer) unless ``sampling``, which draws every answer afresh (from ``seed``).
    # answers' words: "<words>-w0 <words>-w1 ..." (default: the server's name); with ``diverge_on``, a
    # request whose last user message or prompt contains it gets ``diverge_tokens`` other words
    # (a candidate that answers one kind of prompt differently, for shadow traffic)
    words: str = ""
    diverge_on: str = ""
    diverge_tokens: int = 4
    answer_key: str = ""
    accuracy: float = 1.0
    sampling: bool = False
    seed: int | None = None
    # Log-probabilities from a known distribution (0: none served): a token of c characters (spaces
    # aside) has logprob -logprob_per_char * c. A completions request with echo and logprobs gets
    # them for its prompt's tokens (its words, each with its leading space; the first token None);
    # ``refuse_echo`` answers echo with 400 and serves vLLM's prompt_logprobs instead. A chat answer
    # to a labelled case asked for top_logprobs gives its label probability ``label_confidence`` and
    # the other labels an equal share of the rest.
    logprob_per_char: float = 0.0
    refuse_echo: bool = False
    label_confidence: float = 0.8
    number_noise: float = 0.0  # numeric labels: answer the label plus N(0, number_noise), rounded to 3 places
    # another accuracy on the cases of one slice: {"split=out_of_domain": 0.3} (a fine-tune that does not
    # generalise)
    accuracy_on: dict[str, float] = field(default_factory=dict)


REFUSAL = "I'm sorry, but I can't help with that."
_SETTABLE = {"latency_ms": float, "token_delay_ms": float, "completion_tokens": int, "status": int,
             "fail_rate": float, "refusal_rate": float, "accuracy": float, "sampling": bool}


@dataclass(frozen=True)
class KeyedCase:
    """What the stub knows of a test case: the expected label or reference text."""

    label: str | None
    reference: str | None
    metadata: tuple[tuple[str, str], ...] = ()


def load_answer_key(path: str) -> tuple[dict[str, KeyedCase], list[str]]:
    """Return the test set's cases by their last user message (or prompt), and its labels."""
    from ..evaluation.dataset import load_dataset

    ds = load_dataset(path, "open")
    key = {case_text(c.request_body()): KeyedCase(c.label, c.reference, c.metadata) for c in ds.cases}
    return key, sorted({c.label for c in ds.cases if c.label is not None})


def case_text(body: dict[str, Any]) -> str:
    """Return the text a request is recognised by: its last user message, or its prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""
    return str(body.get("prompt", ""))


def keyed_answer(case: KeyedCase, labels: list[str], accuracy: float, rng: random.Random,
                 number_noise: float = 0.0) -> str:
    """Return the stub's answer to a known case: right with probability ``accuracy``, else wrong
    (another label, or the reference with about half of its words dropped and the rest shuffled);
    a numeric label with ``number_noise`` is answered with Gaussian noise added."""
    if number_noise and case.label is not None:
        try:
            return f"{float(case.label) + rng.gauss(0, number_noise):.3f}"
        except ValueError:
            pass
    right = rng.random() < accuracy
    if case.label is not None:
        others = [label for label in labels if label != case.label]
        return case.label if right or not others else rng.choice(others)
    words = (case.reference or "").split()
    if right or len(words) < 2:
        return " ".join(words)
    kept = [w for w in words if rng.random() < 0.5] or words[:1]
    rng.shuffle(kept)
    return " ".join(kept)


@dataclass
class StubStats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    requests_cancelled: int = 0
    models: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    # the W3C trace context of the last requests (the proxy's tracing passes its span's on: docs/tracing.md)
    traceparents: deque[str] = field(default_factory=lambda: deque(maxlen=1000))


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    return len(str(body.get("prompt", "")).split())


class StubModelApp:
    """The ASGI application; see the module docstring."""

    def __init__(self, settings: StubSettings) -> None:
        self.settings = settings
        self.stats = StubStats()
        self._counter = 0
        self._key, self._labels = load_answer_key(settings.answer_key) if settings.answer_key else ({}, [])
        self._rng = random.Random(settings.seed)

    def _keyed_words(self, body: dict[str, Any]) -> list[str] | None:
        """Return the answer's words when the request is a case of the answer key, else None."""
        case = self._key.get(case_text(body)) if self._key else None
        if case is None:
            return None
        s = self.settings
        rng = self._rng if s.sampling else random.Random(f"{s.name}:{s.seed}:{case_text(body)}")
        accuracy = s.accuracy
        for k, v in case.metadata:
            accuracy = s.accuracy_on.get(f"{k}={v}", accuracy)
        return keyed_answer(case, self._labels, accuracy, rng, s.number_noise).split()

    async def __call__(self, scope: ASGIScope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/stats":
            s = self.stats
            await self._json(send, 200, {
                "name": self.settings.name, "requests": s.requests, "streams_started": s.streams_started,
                "streams_completed": s.streams_completed, "streams_cancelled": s.streams_cancelled,
                "requests_cancelled": s.requests_cancelled, "models": dict(s.models), "users": dict(s.users),
                "traceparents": list(s.traceparents)})
            return
        if method == "POST" and path == "/settings":
            raw = await self._read_body(receive)
            try:
                changes = {k: _SETTABLE[k](v) for k, v in orjson.loads(raw).items()}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                message = f"bad settings ({exc}); settable: {sorted(_SETTABLE)}"
                await self._json(send, 400, {"error": {"message": message, "type": "invalid_request_error",
                                                       "param": None, "code": None}})
                return
            for k, v in changes.items():
                setattr(self.settings, k, v)
            await self._json(send, 200, {k: getattr(self.settings, k) for k in _SETTABLE})
            return
        if method == "GET" and path == "/v1/models":
            await self._json(send, 200, {"object": "list", "data": [{"id": self.settings.name, "object": "model"}]})
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await self._json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found",
                                                   "param": None, "code": None}})
            return
        body = orjson.loads(await self._read_body(receive))
        if path == "/v1/completions" and body.get("echo") and self.settings.refuse_echo:
            await self._json(send, 400, {"error": {"message": "echo is not supported; use prompt_logprobs",
                                                   "type": "invalid_request_error", "param": "echo", "code": None}})
            return
        self._note_trace(scope)
        await self._complete(scope, receive, send, body, chat=path.endswith("chat/completions"))

    def _note_trace(self, scope: ASGIScope) -> None:
        """Keep the request's ``traceparent``, if it has one."""
        traceparent = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
        if traceparent is not None:
            self.stats.traceparents.append(traceparent.decode("latin-1"))

    @staticmethod
    async def _read_body(receive: Any) -> bytes:
        """Return the request's whole body."""
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                return raw

    @staticmethod
    async def _client_left_within(receive: Any, seconds: float) -> bool:
        """Wait ``seconds``; return True early if the client disconnects meanwhile."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(disconnected(), seconds)
        except TimeoutError:
            return False
        return True

    async def _json(self, send: Any, status: int, obj: Any, ctype: bytes = b"application/json") -> None:
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    # Past the size limits on purpose (pyproject.toml):
    # test tooling; each branch is one knob a test turns (status, failures, refusals, logprobs...)
    async def _complete(self, scope: ASGIScope, receive: Any, send: Any, body: dict[str, Any], chat: bool) -> None:  # noqa: C901
        s = self.settings
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        self.stats.requests += 1
        self.stats.models[str(body.get("model"))] += 1
        if isinstance(body.get("user"), str):
            self.stats.users[body["user"]] += 1
        self._counter += 1
        status = int(meta.get("stub_status", s.status))
        if status == 200 and s.fail_rate and random.random() < s.fail_rate:
            status = 500
        latency = float(meta.get("stub_latency_ms", s.latency_ms)) / 1000
        tokens = int(meta.get("stub_tokens", s.completion_tokens))
        if latency and await self._client_left_within(receive, latency):
            self.stats.requests_cancelled += 1
            return
        if status != 200:
            if meta.get("stub_error_body") == "plain":
                await self._json(send, status, b"<html>upstream exploded</html>", b"text/html")
            else:
                await self._json(send, status, {"error": {"message": f"stub {s.name} failed on purpose",
                                                          "type": "server_error", "param": None,
                                                          "code": "stub_failure"}})
            return
        created = int(time.time())
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{s.name}-{self._counter}"
        words = [f"{s.words or s.name}-w{i}" for i in range(tokens)]
        if s.diverge_on and s.diverge_on in case_text(body):
            words = [f"{s.words or s.name}-other{i}" for i in range(s.diverge_tokens)]
            tokens = len(words)
        keyed = self._keyed_words(body)
        if keyed is not None:
            words = keyed
            tokens = len(words)
        if s.refusal_rate and random.random() < s.refusal_rate:
            words = REFUSAL.split()
        usage = {"prompt_tokens": _prompt_words(body), "completion_tokens": tokens,
                 "total_tokens": _prompt_words(body) + tokens}
        model = body.get("model")
        if not body.get("stream"):
            text = " ".join(words)
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop", "logprobs": self._label_logprobs(body, text)}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                obj = "text_completion"
                if s.logprob_per_char and body.get("echo") and body.get("logprobs") is not None:
                    prompt = str(body.get("prompt", ""))
                    choice["logprobs"] = self.echo_logprobs(prompt)
                    choice["text"] = prompt if body.get("max_tokens") == 0 else prompt + text
                elif s.logprob_per_char and body.get("prompt_logprobs") is not None:
                    choice["prompt_logprobs"] = self.prompt_logprobs(str(body.get("prompt", "")))
            await self._json(send, 200, {"id": rid, "object": obj, "created": created, "model": model,
                                         "system_fingerprint": s.name, "choices": [choice], "usage": usage})
            return
        await self._stream(receive, send, rid, created, model, words, usage, chat, body)

    def token_logprob(self, token: str) -> float:
        """Return the stub's log-probability of a token: -logprob_per_char per character, spaces aside."""
        return -self.settings.logprob_per_char * len(token.strip())

    @staticmethod
    def prompt_tokens(prompt: str) -> list[str]:
        """Return the stub's tokens of a prompt: its words, each after the first with its leading space."""
        return [w if i == 0 else " " + w for i, w in enumerate(prompt.split(" "))]

    def echo_logprobs(self, prompt: str) -> dict[str, Any]:
        """Return the legacy completions ``logprobs`` of an echoed prompt (the first token has none)."""
        tokens = self.prompt_tokens(prompt)
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        values = [None, *(self.token_logprob(t) for t in tokens[1:])]
        return {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": None}

    def prompt_logprobs(self, prompt: str) -> list[Any]:
        """Return vLLM's ``prompt_logprobs`` of a prompt (None, then ``{id: {logprob, rank, decoded_token}}``)."""
        tokens = self.prompt_tokens(prompt)
        return [None, *({str(1000 + i): {"logprob": self.token_logprob(t), "rank": 1, "decoded_token": t}}
                        for i, t in enumerate(tokens[1:], start=1))]

    def _label_logprobs(self, body: dict[str, Any], text: str) -> dict[str, Any] | None:
        """Return a chat answer's ``logprobs`` for a labelled case when asked for (see :class:`StubSettings`)."""
        if not body.get("logprobs") or not self._labels or text not in self._labels:
            return None
        conf = self.settings.label_confidence
        rest = (1 - conf) / max(1, len(self._labels) - 1)
        tops = [{"token": lab, "logprob": math.log(conf if lab == text else rest), "bytes": None}
                for lab in self._labels][: int(body.get("top_logprobs") or 0)]
        tops.sort(key=lambda t: -t["logprob"])
        return {"content": [{"token": text, "logprob": math.log(conf), "bytes": None, "top_logprobs": tops}]}

    async def _stream(self, receive: Any, send: Any, rid: str, created: int, model: Any, words: list[str],
                      usage: dict[str, int], chat: bool, body: dict[str, Any]) -> None:
        s = self.settings
        self.stats.streams_started += 1
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i: int, word: str | None, finish: str | None) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if word is None else {"content": word if i == 0 else " " + word}
                if i == 0:
                    delta["role"] = "assistant"
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": "" if word is None else (word if i == 0 else " " + word),
                          "finish_reason": finish, "logprobs": None}
            payload = {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": s.name,
                       "choices": [choice]}
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        # uvicorn drops sends after a disconnect without telling the app: watch for it ourselves.
        gone = asyncio.ensure_future(self._client_left_within(receive, 3600))
        try:
            for i, w in enumerate(words):
                if i and s.token_delay_ms:
                    await asyncio.sleep(s.token_delay_ms / 1000)
                if gone.done():
                    self.stats.streams_cancelled += 1
                    return
                await send({"type": "http.response.body", "body": chunk(i, w, None), "more_body": True})
            tail = chunk(len(words), None, "stop")
            opts = body.get("stream_options")
            if isinstance(opts, dict) and opts.get("include_usage"):
                tail += b"data: " + orjson.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                  "choices": [], "usage": usage}) + b"\n\n"
            tail += b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            self.stats.streams_completed += 1
        except (asyncio.CancelledError, OSError):
            self.stats.streams_cancelled += 1
            raise
        finally:
            gone.cancel()


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the stub server's options to ``p`` (``splitwatch stub-model`` and this module's own main)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--name", default="stub")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--completion-tokens", type=int, default=8)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--refusal-rate", type=float, default=0.0, help="share of answers that decline")
    p.add_argument("--keep-alive-s", type=int, default=5, help="idle keep-alive timeout (uvicorn's default: 5)")
    p.add_argument("--words", default="", help="the answers' word prefix (default: --name)")
    p.add_argument("--diverge-on", default="", help="prompts containing this text get other, fewer words")
    p.add_argument("--diverge-tokens", type=int, default=4, help="with --diverge-on: how many words")
    p.add_argument("--answer-key", default="", help="an eval test set (JSONL) whose cases it answers")
    p.add_argument("--accuracy", type=float, default=1.0, help="with --answer-key: share of cases answered right")
    p.add_argument("--sampling", action="store_true", help="with --answer-key: draw every answer afresh")
    p.add_argument("--seed", type=int, default=None, help="with --answer-key: the random seed")
    p.add_argument("--logprob-per-char", type=float, default=0.0,
                   help="serve log-probabilities: -X per character of each token (0: none)")
    p.add_argument("--refuse-echo", action="store_true", help="answer echo with 400; serve vLLM's prompt_logprobs")
    p.add_argument("--label-confidence", type=float, default=0.8, help="the answered label's probability")
    p.add_argument("--number-noise", type=float, default=0.0, help="numeric labels: answer label + N(0, X)")
    p.add_argument("--accuracy-on", action="append", default=[], metavar="KEY=VALUE:ACCURACY",
                   help="another accuracy on the cases whose metadata KEY is VALUE (repeatable)")


def serve(a: argparse.Namespace) -> None:
    """Run the stub model server with the parsed options until interrupted."""
    import uvicorn

    accuracy_on = {spec.rsplit(":", 1)[0]: float(spec.rsplit(":", 1)[1]) for spec in a.accuracy_on}
    app = StubModelApp(StubSettings(a.name, a.latency_ms, a.token_delay_ms, a.completion_tokens, a.status,
                                    a.fail_rate, a.refusal_rate, a.words, a.diverge_on, a.diverge_tokens,
                                    a.answer_key, a.accuracy, a.sampling, a.seed, a.logprob_per_char,
                                    a.refuse_echo, a.label_confidence, a.number_noise, accuracy_on))
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False, lifespan="on",
                timeout_keep_alive=a.keep_alive_s)


def main(argv: list[str] | None = None) -> None:
    """Run a stub model server (``python -m splitwatch.service.local.stub_model --port P``)."""
    p = argparse.ArgumentParser(prog="splitwatch stub-model", description=DESCRIPTION)
    add_arguments(p)
    serve(p.parse_args(argv))


if __name__ == "__main__":
    main()
