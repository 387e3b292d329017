"""Quality rules on hand-made positive and negative documents, language ID, PII redaction, determinism."""

from __future__ import annotations

import json

import polars as pl
import pytest
from judge import judge as stage_judge

from schemas.config import LanguageConfig, PIIConfig, QualityConfig
from tasks.stages.quality import quality
from tasks.text import tokens
from tasks.text.pii import find_and_redact

GOOD = (
    "The history of the river valley is long and well recorded. Farmers settled on the banks of the river more "
    "than two thousand years ago, and they built small villages with walls of stone. Each spring the water rose "
    "and covered the fields with rich mud. The people learned to store grain for the dry months, and trade with "
    "the towns to the north grew slowly. Today the valley is known for its orchards and for the old bridge that "
    "still carries traffic across the water."
)


def judge(text: str, cfg: QualityConfig | None = None) -> str | None:
    return stage_judge("quality", text, params=cfg or QualityConfig(pii=PIIConfig(enabled=False)))[0]


def test_good_document_passes_every_rule():
    assert judge(GOOD) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A short note with the words of the day.", "quality.gopher.word_count"),
        (GOOD + " " + " ".join(["#tag"] * 40), "quality.gopher.symbol_ratio"),
        ("\n".join(f"- the item {i} of the list and more." for i in range(12)), "quality.gopher.bullet_lines"),
        ("\n".join(f"The wonderful stories continued through the evening number {i} without ending..."
                   for i in range(12)), "quality.gopher.ellipsis_lines"),
        (GOOD.replace("the ", "zzz ").replace("and ", "qqq ").replace("to ", "xxx ").replace("of ", "vvv ")
         .replace("with ", "www ").replace("that ", "ttt "),
         "quality.gopher.stop_words"),
        (" ".join(["x"] * 60) + " the and of.", "quality.gopher.mean_word_length"),
        (GOOD + " " + " ".join(["1234", "5678", "+++", "9999"] * 30), "quality.gopher.alpha_words"),
        ("\n".join(["The same line is repeated here, again and again."] * 8),
         "quality.gopher_repetition.dup_line_frac"),
        ("buy cheap pills now " * 40, "quality.gopher_repetition.top_2_gram"),
        ("\n".join(["Short line one.", "Another line.", "A third line.", "Line four.", "Five.", GOOD, GOOD]),
         "quality.gopher_repetition.dup_line_char_frac"),
        (GOOD + "\nLorem ipsum dolor sit amet, with the rest of it.", "quality.c4.lorem_ipsum"),
        (GOOD + "\nThe code block { is here } and it ends.", "quality.c4.curly_bracket"),
    ],
)
def test_each_rule_rejects_its_case(text, reason):
    # like datatrove, repetition runs first: a short or list-like text often trips an n-gram rule before its own,
    # so each case is judged by its own family alone, and by the whole chain only for the repetition family
    family = reason.split(".")[1]
    others = {f: {"enabled": f == family} for f in ("gopher_repetition", "c4", "fineweb")}
    others["gopher_quality"] = {"enabled": family == "gopher"}
    cfg = QualityConfig(pii=PIIConfig(enabled=False), language=LanguageConfig(enabled=False), **others)
    assert judge(text, cfg) == reason
    assert judge(text) is not None


def test_c4_drops_javascript_and_policy_lines_and_rewrites_text():
    text = GOOD + "\nPlease enable JavaScript to view the rest of the page.\nRead our privacy policy and the terms."
    res = quality(pl.DataFrame({"id": ["x"], "text": [text]}), QualityConfig(pii=PIIConfig(enabled=False)))
    assert res.kept.height == 1
    assert res.kept["text"][0] == GOOD
    assert res.kept["q_c4_lines_removed"][0] == 2
    assert res.stats.counts["c4.lines_removed"] == 2


def test_c4_min_sentences():
    assert judge(GOOD.replace(". ", ", ")) == "quality.c4.min_sentences"


@pytest.mark.parametrize(("lines", "reason"), [
    ([f"Menu entry {i}." for i in range(10)] + [GOOD], "quality.fineweb.short_line_ratio"),
    ([f"A line of text that runs long but never stops number {i}" for i in range(10)],
     "quality.fineweb.line_punct_ratio"),
    ([GOOD, GOOD.upper(), GOOD], "quality.fineweb.char_dup_ratio"),
    ([f"Supercalifragilisticexpialidocious_{i:04d}." for i in range(20)], "quality.fineweb.list_ratio"),
])
def test_fineweb_rules(lines, reason):
    only = {f: {"enabled": False} for f in ("gopher_repetition", "gopher_quality", "c4")}
    cfg = QualityConfig(pii=PIIConfig(enabled=False), language=LanguageConfig(enabled=False), **only)
    assert judge("\n".join(lines), cfg) == reason
    assert judge(GOOD, cfg) is None


def test_disable_and_thresholds_are_configurable():
    short = "A short note with the words of the day."
    cfg = QualityConfig(pii=PIIConfig(enabled=False), gopher_quality={"min_doc_words": 5},
                        c4={"min_num_sentences": 1}, gopher_repetition={"top_n_grams": [(2, 0.9), (3, 0.9),
                                                                                        (4, 0.9)]})
    assert judge(short, cfg) is None
    assert judge(short, QualityConfig(pii=PIIConfig(enabled=False), disable=["gopher.word_count"])) != \
        "quality.gopher.word_count"


def test_tokenizer_matches_spacy_on_contractions_abbreviations_numbers():
    # expected lists are what datatrove's split_into_words (spaCy blank "en") returns for the same strings
    words = pl.select(tokens.words(pl.lit("Don't stop... It’s 3.14 in the U.S. e-mail (test) x--y z."))).item()
    assert words.to_list() == ["Do", "n't", "stop", "...", "It", "’s", "3.14", "in", "the", "U.S.", "e", "-",
                               "mail", "(", "test", ")", "x", "--", "y", "z."]
    words = pl.select(tokens.words(pl.lit("Mr. Smith met Dr. Who, etc. and what I do I. [them]:]"))).item()
    assert words.to_list() == ["Mr.", "Smith", "met", "Dr.", "Who", ",", "etc", ".", "and", "what", "I", "do",
                               "I.", "[", "them", "]", ":]"]


def test_language_id_with_the_packaged_model():
    german = ("Der Fluss fließt seit vielen Jahren durch das Tal, und die Bauern haben an seinen Ufern kleine "
              "Dörfer gebaut. Jedes Frühjahr steigt das Wasser und bedeckt die Felder mit fruchtbarem Schlamm. "
              "Die Menschen lernten, Getreide für die trockenen Monate zu lagern, und der Handel wuchs langsam.")
    res = quality(pl.DataFrame({"id": ["en", "de"], "text": [GOOD, german]}),
                  QualityConfig(pii=PIIConfig(enabled=False), gopher_quality={"enabled": False},
                                gopher_repetition={"enabled": False}, c4={"enabled": False},
                                fineweb={"enabled": False}))
    assert res.kept["id"].to_list() == ["en"]
    assert res.kept["q_lang"][0] == "en" and res.kept["q_lang_score"][0] > 0.65
    assert res.rejected["reason"].to_list() == ["quality.language.not_allowed"]
    evidence = json.loads(res.rejected["evidence"][0])
    assert evidence == {"rule": "quality.language.not_allowed", "test": 'q_lang not in {"en"}', "q_lang": "de"}
    both = quality(pl.DataFrame({"id": ["de"], "text": [german]}),
                   QualityConfig(pii=PIIConfig(enabled=False), language=LanguageConfig(allowed=["en", "de"]),
                                 gopher_quality={"enabled": False}, gopher_repetition={"enabled": False},
                                 c4={"enabled": False}, fineweb={"enabled": False}))
    assert both.kept.height == 1


PII_CASES = [
    ("Write to jane.doe+news@example.co.uk today.", "Write to [EMAIL] today.", "email"),
    ("The server at 192.168.10.20 answered.", "The server at [IPV4] answered.", "ipv4"),
    ("Reach 2001:0db8:85a3:0000:0000:8a2e:0370:7334 or fe80::1ff:fe23:4567:890a now.",
     "Reach [IPV6] or [IPV6] now.", "ipv6"),
    ("Call (555) 123-4567 or +1 555-123-4567 tonight.", "Call [PHONE] or [PHONE] tonight.", "phone"),
    ("Paid with 4111 1111 1111 1111 yesterday.", "Paid with [CARD] yesterday.", "card"),
]


@pytest.mark.parametrize(("text", "expected", "kind"), PII_CASES)
def test_pii_is_found_and_redacted(text, expected, kind):
    out = find_and_redact(pl.DataFrame({"text": [text]}), ["email", "ipv4", "ipv6", "phone", "card"], True)
    assert out["text"][0] == expected
    assert out[f"q_pii_{kind}"][0] >= 1


@pytest.mark.parametrize("text", [
    "Requires Python 3.11.7 and polars v1.2.3.4, released 2024-01-02 at 12:30:45.",
    "Order 4111 1111 1111 1112 failed the Luhn check; ISBN 978-3-16-148410-0.",
    "Version 2.0.1 of the tool; chapter 3.14.15; the score was 10-2.",
])
def test_pii_leaves_versions_dates_and_non_luhn_numbers(text):
    out = find_and_redact(pl.DataFrame({"text": [text]}), ["email", "ipv4", "ipv6", "phone", "card"], True)
    assert out["text"][0] == text
    assert sum(out[f"q_pii_{k}"][0] for k in ("email", "ipv4", "ipv6", "phone", "card")) == 0


def test_pii_flag_mode_keeps_text_and_counts():
    text = GOOD + " Contact ops@example.com for the records."
    res = quality(pl.DataFrame({"id": ["x"], "text": [text]}), QualityConfig(pii=PIIConfig(mode="flag")))
    assert res.kept["text"][0] == text and res.kept["q_pii_email"][0] == 1
    res = quality(pl.DataFrame({"id": ["x"], "text": [text]}), QualityConfig())
    assert "[EMAIL]" in res.kept["text"][0] and res.stats.counts["pii.email"] == 1


def test_deterministic_and_batch_independent():
    texts = [GOOD, "short text", GOOD + "\n" + GOOD, "buy now " * 60] * 5
    df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    cfg = QualityConfig()
    whole = quality(df, cfg)
    parts = [quality(df.slice(i, 7), cfg) for i in range(0, df.height, 7)]
    assert whole.kept.equals(pl.concat([p.kept for p in parts]))
    assert whole.rejected.equals(pl.concat([p.rejected for p in parts]))
    assert whole.kept.height + whole.rejected.height == df.height


def test_quarantine_evidence_names_the_rule_its_threshold_and_its_signals():
    """A short document fails the word-count rule: the evidence is that rule, its test with the configured bounds,
    and the one signal it reads, not every signal of every family."""
    res = quality(pl.DataFrame({"id": ["short"], "text": ["Too short to keep here."]}),
                  QualityConfig(pii=PIIConfig(enabled=False), language={"enabled": False},
                                gopher_repetition={"enabled": False}, gopher_quality={"min_doc_words": 12}))
    assert res.rejected["reason"].to_list() == ["quality.gopher.word_count"]
    assert json.loads(res.rejected["evidence"][0]) == {
        "rule": "quality.gopher.word_count", "test": "q_gopher_words < 12 | q_gopher_words > 100000",
        "q_gopher_words": 5}
