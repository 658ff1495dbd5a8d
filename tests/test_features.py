"""Prompt features carried on exposure events instead of text (docs/features.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from splitwatch.service.features.prompt import prompt_features
from splitwatch.service.features.text import text_features


def test_chat_features() -> None:
    body = {"messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Order 42 is late"},
        {"role": "assistant", "content": "Sorry!"},
        {"role": "user", "content": [{"type": "text", "text": "Où est mon colis?"}]},
    ]}
    f = prompt_features(body)
    text = "You are helpful.\nOrder 42 is late\nSorry!\nOù est mon colis?"
    n = len(text)
    assert f["chars"] == n == 58
    assert f["words"] == 12
    assert (f["messages"], f["user_turns"]) == (4, 2)
    assert f["est_tokens"] == (n + 3) // 4
    assert f["non_ascii_share"] == pytest.approx(1 / n)  # the ù
    assert f["digit_share"] == pytest.approx(2 / n)
    assert f["is_question"] == 1.0  # the last user message ends with '?'
    assert "has_code" not in f  # the event shipper's, from the last user message
    assert f["last_user_chars"] == len("Où est mon colis?")


@pytest.mark.parametrize(("text", "has_code"), [
    ("Fix this:\n```python\nprint(1)\n```", 1.0),
    ("def f(x):\n    return x", 1.0),
    ("SELECT * FROM t", 1.0),
    ("int main() {", 1.0),
    ("I'd like a refund; the class was cancelled", 0.0),
    ("Please define the function of a router", 0.0),
])
def test_has_code(text: str, has_code: float) -> None:
    assert text_features(text)["has_code"] == has_code


def test_empty_and_odd_bodies() -> None:
    f = prompt_features({"prompt": ""})
    assert f["chars"] == 0 and f["non_ascii_share"] == 0.0 and f["digit_share"] == 0.0
    f = prompt_features({"prompt": ["a b", "c"]})
    assert f["words"] == 3
    f = prompt_features({"messages": [{"role": "user", "content": None}, "junk"]})
    assert f["messages"] == 2 and f["chars"] == 0


def test_language_identifier_is_offline_and_bounded() -> None:
    from splitwatch.service.features.prompt import LANGUAGE_SAMPLE_CHARS, detect_language, language_sample, prompt_text

    assert detect_language("Where is my parcel? I ordered it last week.") == "en"
    assert detect_language("Wo ist mein Paket? Ich habe es letzte Woche bestellt.") == "de"
    assert detect_language("") == "und"
    body = {"messages": [{"role": "user", "content": "x" * 1000}, {"role": "assistant", "content": "hi"},
                         {"role": "user", "content": "  Bonjour, où est mon colis ?  " + "y" * 500}]}
    sample = language_sample(prompt_text(body)[1])
    assert sample.startswith("Bonjour") and len(sample) == LANGUAGE_SAMPLE_CHARS


def _reference_language(text: str, languages: tuple[str, ...]) -> str:
    """py3langid's own dense ``classify`` on the same model (the reference)."""
    from splitwatch.service.features.prompt import _language_identifier

    return str(_language_identifier(languages).classify(text)[0])


def _texts_in_many_languages() -> list[str]:
    import chatterbot_corpus

    from splitwatch.service.features.prompt import language_sample
    from tests.test_drift import corpus

    data = Path(chatterbot_corpus.__file__).parent / "data"
    texts = [language_sample(t) for d in sorted(data.iterdir()) if d.is_dir() for t in corpus(d.name)]
    return [t for t in texts if t]


def test_sparse_language_classifier_gives_py3langids_language() -> None:
    """The sparse scoring (classify_language) against py3langid's dense classify, same model: every
    corpus text in every language of the chatterbot corpus (28 folders, 14,000 texts), random
    text in mixed scripts, and the 97-language model on a subset. No disagreement is allowed: the
    scores differ only by float32 against float64 rounding (checked below 1e-3 of the largest)."""
    import random

    import numpy as np

    from splitwatch.service.features.prompt import LANGUAGES, _language_identifier, _language_model, classify_language

    texts = _texts_in_many_languages()
    assert len(texts) > 10_000
    rng = random.Random(7)
    alphabet = ("abcdefghijklmnopqrstuvwxyz ÄÖÜßéèçñ?!.,0123456789 абвгдежзийклмнопрстуфхцчшщыэюя "
                "的一是不了人我在有他 ابتثجحخدذرزسشصضطظعغفقكلمنهوي")
    texts += ["".join(rng.choices(alphabet, k=rng.randint(1, 200))) for _ in range(2000)]
    texts += ["\ud800 lone surrogate", "\x00\x01", "🙂🙂🙂", " "]
    wrong = [t for t in texts if classify_language(t, LANGUAGES) != _reference_language(t, LANGUAGES)]
    assert wrong == []
    every = ()
    wrong = [t for t in texts[::10] if classify_language(t, every) != _reference_language(t, every)]
    assert wrong == []
    # the scores themselves, for one text: the reference's float32 dense product
    ident, model = _language_identifier(LANGUAGES), _language_model(LANGUAGES)
    text = texts[123]
    dense = ident.nb_classprobs(ident.instance2fv(text)).astype(np.float64)
    state, feats = 0, []
    for byte in text.encode("utf8", "surrogatepass"):
        state = model.next_state[(state << 8) + byte]
        feats.extend(model.outputs.get(state, ()))
    sparse = model.log_p_feature[feats].sum(axis=0, dtype=np.float64) + model.log_prior
    assert np.max(np.abs(sparse - dense)) < 1e-3 * np.max(np.abs(dense))


SWAHILI = "Kifurushi changu kiko wapi? Nimekuwa nikikisubiri kwa wiki nzima sasa."


def test_languages_outside_the_default_list_can_be_configured() -> None:
    from splitwatch.service.config import ConfigError, parse_config
    from splitwatch.service.features.prompt import LANGUAGES, detect_language, supported_languages

    assert "sw" not in LANGUAGES and detect_language(SWAHILI) != "sw"  # attributed to the closest of the 30
    assert detect_language(SWAHILI, ("en", "sw")) == "sw"
    assert detect_language(SWAHILI, ()) == "sw"  # () = all that py3langid knows
    assert len(supported_languages()) == 97 and set(LANGUAGES) <= supported_languages()
    assert parse_config({"drift": {"languages": ["en", "sw"]}}, environ={}).drift.languages == ["en", "sw"]
    for bad, message in ((["en", "xx"], "unknown language codes ['xx']"), (["en"], "at least 2"),
                         (["en", "en"], "repeated: ['en']")):
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            parse_config({"drift": {"languages": bad}}, environ={})
        assert "drift.languages" in str(info.value)


# -- the event shipper's features (service/features/text.py, topic_sketch.py, answer_features.py) ------
def _real_tracebacks() -> list[str]:
    """Return tracebacks raised for real by the standard library, each as a user would paste it."""
    import importlib
    import json
    import traceback

    failures = [lambda: json.loads("{"), lambda: int("x"), lambda: {}["key"], lambda: 1 / 0,
                lambda: Path("/nonexistent/file.txt").read_text(), lambda: importlib.import_module("no_such_module_x"),
                lambda: [].pop(), lambda: "a" + 1, lambda: None.attr, lambda: float("nan!"),
                lambda: bytes([300]), lambda: "é".encode("ascii"), lambda: iter(5), lambda: max([]),
                lambda: divmod(1, 0), lambda: __import__("os").listdir("/nonexistent"),
                lambda: __import__("datetime").date(2024, 13, 1), lambda: __import__("re").compile("(")]
    intros = ["why does this fail?", "I get this error when I run my script:", "help", "",
              "after upgrading I see", "what does this mean"]
    out = []
    for i, fail in enumerate(failures):
        try:
            fail()
        except Exception:
            out.append(f"{intros[i % len(intros)]}\n{traceback.format_exc()}".strip())
    return out


def test_pasted_tracebacks_are_code_without_a_fence() -> None:
    traces = _real_tracebacks()
    assert len(traces) == 18 and not any("```" in t for t in traces)
    # every one: the report that motivated this found 1 of 18 with the old fence-and-keyword rule
    assert all(text_features(t)["has_stack_trace"] == 1.0 and text_features(t)["has_code"] == 1.0 for t in traces)


def test_no_stack_trace_in_chat_and_code_only_where_there_is_code() -> None:
    from tests.test_drift import corpus

    english = corpus("english")
    assert not any(text_features(t)["has_stack_trace"] for t in english)
    coded = [t for t in english if text_features(t)["has_code"]]
    # measured: 98 of 1,901, each with a fenced snippet (the corpus's coding answers)
    assert all("```" in t for t in coded) and 50 <= len(coded) <= 120


@pytest.mark.parametrize(("text", "questions", "instructions"), [
    ("Where is my parcel? It was due Monday.", 0.5, 0.0),
    ("Please summarize this article. Then translate it to French.", 0.0, 1.0),
    ("Do you know basketball", 0.0, 0.0),  # a question without its mark, not an instruction
    ("Don't reply in English. What is 3.5 times 2?", 0.5, 0.5),  # "3.5" does not end a sentence
    ("", 0.0, 0.0),
])
def test_question_and_instruction_shares(text: str, questions: float, instructions: float) -> None:
    f = text_features(text)
    assert (f["question_share"], f["imperative_share"]) == (questions, instructions)


def test_links_numbers_and_personal_data_are_counted_not_kept() -> None:
    text = ("Order 12345 for jane.doe@example.com, call +44 20 7946 0958 or see https://shop.example.com/o/12345 "
            "and www.example.org/help; card 4111 1111 1111 1111.")
    f = text_features(text)
    assert f["url_count"] == 2
    assert f["pii_count"] == 3  # the email, the phone number, the card number
    assert f["number_count"] >= 4  # 12345, 44, 20, 7946... (numbers inside links are not counted)
    assert all(isinstance(v, float) for v in f.values())


def test_topic_sketch_keeps_subject_not_words() -> None:
    import numpy as np

    from splitwatch.service.features.topic_sketch import SKETCH_DIMS, decode_sketch, sketch_vector, topic_sketch

    a = "My invoice shows a double charge for the premium subscription this month"
    b = "The premium subscription invoice has a double charge, please refund it"
    c = "Which football team won the league championship final last season"
    va, vb, vc = (np.asarray(decode_sketch(topic_sketch(t))) for t in (a, b, c))
    assert len(topic_sketch(a)) == 172 and va.shape == (SKETCH_DIMS,)  # 128 signed bytes, base64
    assert float(va @ vb) > 0.3 > abs(float(va @ vc))  # same subject close, other subject near orthogonal
    assert np.allclose(va, sketch_vector(a), atol=1 / 127)  # quantisation error only
    assert topic_sketch(a) == topic_sketch(a.upper())  # stable across calls and processes (crc32, lower case)
    assert not any(np.asarray(sketch_vector("is it? no, and you?")))  # no content words: all zeros
    assert decode_sketch("not base64!") is None and decode_sketch("AAAA") is None


def test_topic_sketch_is_the_hashing_trick_of_words_and_pairs() -> None:
    """The shipper's sketch against a plain reading of its definition: each content word and each pair
    "a b" hashed by crc32 into 128 signed buckets, L2-normalised, x127, rounded, clipped (exact bytes), on
    corpus texts, long mixes and random mixed-script text."""
    import base64
    import itertools
    import math
    import random
    import zlib

    from splitwatch.service.features.topic_sketch import _WORD, STOP_WORDS, encode_sketch, sketch_vector, topic_sketch

    def reference(text: str) -> str:
        words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
        vec = [0.0] * 128
        for gram in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
            h = zlib.crc32(gram.encode("utf-8"))
            vec[h % 128] += 1.0 if h & 0x80000000 else -1.0
        norm = math.sqrt(sum(v * v for v in vec))
        raw = bytes((max(-127, min(127, round(v / norm * 127))) & 0xFF) if norm else 0 for v in vec)
        return base64.b64encode(raw).decode()

    texts = [t for t in _texts_in_many_languages()[::3]]
    rng = random.Random(3)
    texts += [" ".join(rng.choices(texts, k=40))[:2000] for _ in range(100)]
    texts += ["".join(rng.choices("abcde xyz ÄÖÜ ключ 的是 ?!.", k=rng.randint(0, 300))) for _ in range(500)]
    assert [t for t in texts if topic_sketch(t) != reference(t)] == []
    assert all(topic_sketch(t) == encode_sketch(sketch_vector(t)) for t in texts[::7])


def test_a_sentence_needs_a_letter_or_digit_as_isalnum_says() -> None:
    """sentences() keeps a part when it has a character str.isalnum() accepts; it searches a regex class for
    that: the two agree on every Unicode code point."""
    from splitwatch.service.features.text import _ALNUM, sentences

    assert [c for c in map(chr, range(0x110000)) if (_ALNUM.match(c) is not None) != c.isalnum()] == []
    assert sentences("Hi. ... ?! __ 42. ٣ ok") == ["Hi.", "__ 42.", "٣ ok"]  # "...", "?!" dropped


def test_number_and_personal_data_counts_are_the_plain_regexes() -> None:
    """The number pattern written to start at its digit, and the personal-data count tried only near digits,
    give what the plain findall of the original patterns gives: on corpus text, long mixes, and random
    text dense in digits, separators, capitals, "+", "(", dots and non-ASCII digits."""
    import random
    import re

    from splitwatch.service.features.text import _NUMBER, _PII_NUMBER, pii_number_count

    plain_number = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
    rng = random.Random(9)
    texts = _texts_in_many_languages()[::2]
    texts += [" ".join(rng.choices(texts, k=40))[:2000] for _ in range(100)]
    alphabet = "0123456789" * 4 + "  +-.,()/:_abcXYZDEGB" + "٣٤۵\u0966"
    texts += ["".join(rng.choices(alphabet, k=rng.randint(0, 120))) for _ in range(20_000)]
    texts += ["Call +44 20 7946 0958 or (030) 1234-5678.", "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00",
              "x4111 1111 1111 1111", "1.2.3,4 .5 a6 7_8 +12 ++34"]
    assert [t for t in texts if _NUMBER.findall(t) != plain_number.findall(t)] == []
    assert [t for t in texts if pii_number_count(t) != len(_PII_NUMBER.findall(t))] == []
    assert pii_number_count(texts[-3]) == 2 and pii_number_count(texts[-4]) == 2


@pytest.mark.parametrize(("answer", "refusal"), [
    ("I'm sorry, but I can't help with that request.", True),
    ("I\u2019m sorry \u2014 I cannot assist with creating malware.", True),  # typographic apostrophe
    ("Sorry, but I won't be able to share personal data.", True),
    ("I can't help with that.", True),
    ("As an AI language model, I cannot give medical advice.", True),
    ("I must decline to answer.", True),
    ("I'm sorry to hear your parcel is late. Here is how to track it.", False),
    ("Sure! Here is a summary of the article.", False),
    ("You can't return opened items after 30 days, but I can help you with an exchange.", False),
])
def test_refusal_detector(answer: str, refusal: bool) -> None:
    from splitwatch.service.features.answer import is_refusal

    assert is_refusal(answer) is refusal


def test_answer_features_of_json_and_streamed_answers() -> None:
    from splitwatch.service.features.answer import answer_features, stream_content

    ok = {"status_code": 200, "stream": False, "finish_reason": "stop"}
    assert answer_features(ok, "I can't help with that.") == {"refusal": 1.0, "empty": 0.0, "truncated": 0.0,
                                                             "chars": 23.0}
    assert answer_features({**ok, "finish_reason": "length"}, "A long answer cut")["truncated"] == 1.0
    assert answer_features(ok, "   ")["empty"] == 1.0
    assert answer_features({**ok, "finish_reason": "tool_calls"}, "")["empty"] == 0.0  # a tool call is an answer
    assert answer_features({"status_code": 503, "stream": False}, "") is None
    sse = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"I\'m sorry,"}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":" but I can\'t do that."},"finish_reason":null}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    assert stream_content(sse) == ("I'm sorry, but I can't do that.", False, True)
    streamed = answer_features({"status_code": 200, "stream": True, "finish_reason": "stop"}, sse)
    assert streamed == {"refusal": 1.0, "empty": 0.0, "truncated": 0.0, "chars": 31.0}
    cut = answer_features({"status_code": 200, "stream": True}, sse[:60])  # the head of a long stream
    assert cut is not None and "chars" not in cut


def test_the_shipper_adds_features_and_drops_the_text() -> None:
    import orjson

    from splitwatch.service.delivery.text_enrichment import with_text_features
    from splitwatch.service.events import TEXT_KIND_ANSWER, TEXT_KIND_PROMPT

    secret = "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\nKeyError: 'token-XYZ'"
    exposure = orjson.dumps({"type": "exposure", "features": {"chars": 10.0}})
    out = with_text_features(exposure, TEXT_KIND_PROMPT + secret.encode())
    f = orjson.loads(out)["features"]
    assert f["chars"] == 10.0 and f["has_stack_trace"] == 1.0 and f["language"] and len(f["topic"]) == 172
    assert b"token-XYZ" not in out and b"app.py" not in out
    response = orjson.dumps({"type": "response", "status_code": 200, "stream": False, "finish_reason": "stop"})
    out = with_text_features(response, TEXT_KIND_ANSWER + b"I cannot help with that, token-XYZ")
    assert orjson.loads(out)["answer"]["refusal"] == 1.0 and b"token-XYZ" not in out
    assert with_text_features(response, b"") == response and with_text_features(response, b"Zjunk") == response
