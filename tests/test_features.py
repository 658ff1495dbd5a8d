"""Prompt features carried on exposure events instead of text (docs/features.md)."""

from __future__ import annotations

import re

import pytest

from splitwatch.service.features import prompt_features


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
    assert f["has_code"] == 0.0
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
    assert prompt_features({"prompt": text})["has_code"] == has_code


def test_empty_and_odd_bodies() -> None:
    f = prompt_features({"prompt": ""})
    assert f["chars"] == 0 and f["non_ascii_share"] == 0.0 and f["digit_share"] == 0.0
    f = prompt_features({"prompt": ["a b", "c"]})
    assert f["words"] == 3
    f = prompt_features({"messages": [{"role": "user", "content": None}, "junk"]})
    assert f["messages"] == 2 and f["chars"] == 0


def test_language_identifier_is_offline_and_bounded() -> None:
    from splitwatch.service.features import LANGUAGE_SAMPLE_CHARS, detect_language, language_sample, prompt_text

    assert detect_language("Where is my parcel? I ordered it last week.") == "en"
    assert detect_language("Wo ist mein Paket? Ich habe es letzte Woche bestellt.") == "de"
    assert detect_language("") == "und"
    body = {"messages": [{"role": "user", "content": "x" * 1000}, {"role": "assistant", "content": "hi"},
                         {"role": "user", "content": "  Bonjour, où est mon colis ?  " + "y" * 500}]}
    sample = language_sample(prompt_text(body)[1])
    assert sample.startswith("Bonjour") and len(sample) == LANGUAGE_SAMPLE_CHARS


SWAHILI = "Kifurushi changu kiko wapi? Nimekuwa nikikisubiri kwa wiki nzima sasa."


def test_languages_outside_the_default_list_can_be_configured() -> None:
    from splitwatch.service.config import ConfigError, parse_config
    from splitwatch.service.features import LANGUAGES, detect_language, supported_languages

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
