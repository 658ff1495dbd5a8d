"""Log-probabilities from the arms: perplexity on the references, and the label's probability.

**Perplexity** (``--logprobs``, cases with a reference): each arm scores the case's reference text
through the OpenAI-compatible completions API as vLLM serves it: ``prompt`` the case's context
followed by the reference, ``echo: true``, ``logprobs: 0``, ``max_tokens: 0``; the reference's
tokens are those whose ``text_offset`` is at or past the context's end. A completion case's context
is its prompt (the perplexity is conditional on it); a chat case has no chat template here, so its
reference is scored alone. When the upstream refuses ``echo`` (HTTP 400), the call is made again
with vLLM's ``prompt_logprobs: 0`` (each prompt token's own log-probability, its text in
``decoded_token``). An answer with no log-probabilities is recorded as the error ``no_logprobs``
and the report says the arm's perplexity is unknown, never a number.

Per arm: the corpus perplexity, token-weighted, ``exp(-sum(logprob) / tokens)`` over every case;
per case, the log-perplexity ``-mean(logprob)``, paired-tested between arms.

**Label probabilities** (``--logprobs``, classification): the answer calls ask for
``logprobs``/``top_logprobs`` and keep the first answer token's top alternatives
(:mod:`.probabilities` turns them into label probabilities).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from ..config import ExperimentConfig
from .dataset import EvalCase
from .runner import Job

PERPLEXITY_PREFIX = "ppl/"
TOP_LOGPROBS = 20  # the OpenAI API's largest top_logprobs


def perplexity_key(arm: str) -> str:
    """Return the store's arm field for the perplexity calls of ``arm``."""
    return PERPLEXITY_PREFIX + arm


def context_of(case: EvalCase) -> str:
    """Return the text the reference is scored after: a completion case's prompt, else nothing."""
    return case.prompt or "" if case.messages is None else ""


def scoring_payload(case: EvalCase, model: str, vllm: bool = False) -> bytes:
    """Return the completions body that scores the case's reference: ``echo`` (or vLLM's ``prompt_logprobs``)."""
    body: dict[str, Any] = {"model": model, "prompt": context_of(case) + (case.reference or ""), "max_tokens": 0,
                            "stream": False, "temperature": 0}
    body.update({"prompt_logprobs": 0, "max_tokens": 1} if vllm else {"echo": True, "logprobs": 0})
    return orjson.dumps(body)


def answer_logprob_params(path: str) -> dict[str, Any]:
    """Return the request parameters that ask an answer call for its first tokens' top log-probabilities."""
    return {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if path == "/chat/completions" else \
        {"logprobs": min(TOP_LOGPROBS, 5)}  # the legacy completions API caps logprobs at 5


def reference_logprobs(parsed: Any, context_chars: int, prompt_chars: int) -> list[float] | None:
    """Return the log-probabilities of the reference's tokens (those starting at or past ``context_chars``
    in a prompt of ``prompt_chars`` characters) from an echo or ``prompt_logprobs`` answer (None when the
    answer carries none)."""
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    prompt_lp = choice.get("prompt_logprobs", parsed.get("prompt_logprobs"))
    if isinstance(prompt_lp, list) and prompt_lp:
        return _from_prompt_logprobs(prompt_lp, context_chars, prompt_chars)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    values, offsets = lp.get("token_logprobs"), lp.get("text_offset")
    if not isinstance(values, list) or not isinstance(offsets, list) or len(values) != len(offsets):
        return None
    out = [float(v) for v, off in zip(values, offsets, strict=True)
           if v is not None and isinstance(off, int) and off >= context_chars]
    return out or None


def _from_prompt_logprobs(entries: list[Any], context_chars: int, prompt_chars: int) -> list[float] | None:
    """vLLM's ``prompt_logprobs``: per prompt token, None (the first) or ``{token_id: {logprob, decoded_token}}``
    holding the token itself (``prompt_logprobs: 0`` asks for nothing else). The first token's text is not
    given, so offsets are counted back from the prompt's end (the reference is its suffix)."""
    end, out = prompt_chars, []
    for entry in reversed(entries):
        if entry is None:  # the first token has no log-probability
            break
        if not isinstance(entry, dict) or len(entry) != 1:
            return None
        (info,) = entry.values()
        if not isinstance(info, dict) or not isinstance(info.get("logprob"), (int, float)):
            return None
        end -= len(str(info.get("decoded_token") or ""))
        if end < context_chars:
            break
        out.append(float(info["logprob"]))
    return out[::-1] or None


def first_token_alternatives(parsed: Any) -> dict[str, float] | None:
    """Return the first answer token's top alternatives ``{token: logprob}`` (chat or completions), or None."""
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    lp = choices[0].get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        tops = content[0].get("top_logprobs")
        if isinstance(tops, list):
            return {str(t["token"]): float(t["logprob"]) for t in tops
                    if isinstance(t, dict) and "token" in t and isinstance(t.get("logprob"), (int, float))} or None
    tops = lp.get("top_logprobs")
    if isinstance(tops, list) and tops and isinstance(tops[0], dict):
        return {str(k): float(v) for k, v in tops[0].items() if isinstance(v, (int, float))} or None
    return None


def corpus_perplexity(per_case: list[list[float]]) -> float | None:
    """Return the token-weighted perplexity over the cases, ``exp(-sum / tokens)`` (None with no token)."""
    tokens = sum(len(x) for x in per_case)
    return math.exp(-sum(sum(x) for x in per_case) / tokens) if tokens else None


def log_perplexity(values: list[float]) -> float:
    """Return one case's log-perplexity, ``-mean(logprob)`` over its reference's tokens."""
    return -sum(values) / len(values)


def plan_perplexity_jobs(exp: ExperimentConfig, cases: list[EvalCase]) -> list[Job]:
    """Return the perplexity calls: each case with a reference, each arm (echo first, vLLM's
    ``prompt_logprobs`` when the upstream refuses echo)."""
    return [Job((c.id, perplexity_key(a.name), 0), a.upstream, "/completions",
                scoring_payload(c, a.upstream.model), kind="perplexity",
                fallback=scoring_payload(c, a.upstream.model, vllm=True), context_chars=len(context_of(c)))
            for c in cases if c.reference is not None for a in exp.arms]
