"""PII: emails, IPv4/IPv6 addresses, phone numbers and payment cards, found and redacted with polars regexes.

Cards are 13-19 digit runs that pass the Luhn check (computed vectorized on the exploded candidates), so order
numbers and ISBNs are left alone. Patterns refuse a match glued to letters, digits or dots on either side, which is
what keeps version numbers (v1.2.3.4, 3.11.7), dates and times out.
"""

from __future__ import annotations

import polars as pl

PLACEHOLDER = {"email": "[EMAIL]", "ipv4": "[IPV4]", "ipv6": "[IPV6]", "phone": "[PHONE]", "card": "[CARD]"}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H = r"[0-9A-Fa-f]{1,4}"
# each pattern: (left guard)(match)(right guard); guards are captured and put back on redaction
PATTERNS = {
    "email": r"(^|[^\w.+-])([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})(\b|$)",
    "ipv4": rf"(^|[^\w.])({_OCTET}(?:\.{_OCTET}){{3}})([^\w.]|\.(?:\s|$)|$)",
    "ipv6": rf"(^|[^\w:.])((?:{_H}:){{7}}{_H}|(?:{_H}:){{1,6}}:(?:{_H}:){{0,5}}{_H}|::1|(?:{_H}:){{1,7}}:)([^\w:]|$)",
    "phone": r"(^|[^\w+.-])((?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4})([^\w-]|$)",
    "card": r"(^|[^\w.-])(\d(?:[ -]?\d){12,18})([^\w-]|$)",
}


def _luhn_valid(candidates: pl.Expr) -> pl.Expr:
    """Luhn checksum of each candidate (digits only), as a polars expression over a string column."""
    digits = candidates.str.replace_all(r"\D", "").str.reverse().str.split("").list.eval(
        pl.element().cast(pl.Int32))
    doubled = digits.list.eval(
        pl.when(pl.int_range(pl.len()) % 2 == 1)
        .then(pl.when(pl.element() * 2 > 9).then(pl.element() * 2 - 9).otherwise(pl.element() * 2))
        .otherwise(pl.element())
    )
    return doubled.list.sum() % 10 == 0


def find_and_redact(df: pl.DataFrame, kinds: list[str], redact: bool, text: str = "text") -> pl.DataFrame:
    """Adds `q_pii_<kind>` counts and, when `redact`, replaces each finding with its placeholder."""
    out = df
    for kind in kinds:
        if kind == "card":
            out = _cards(out, redact, text)
            continue
        pattern = PATTERNS[kind]
        out = out.with_columns(pl.col(text).str.count_matches(pattern).cast(pl.Int32).alias(f"q_pii_{kind}"))
        if redact:
            # twice: a guard character consumed by one match can be the guard of the next
            for _ in range(2):
                out = out.with_columns(pl.col(text).str.replace_all(pattern, f"${{1}}{PLACEHOLDER[kind]}${{3}}"))
    return out


def _cards(df: pl.DataFrame, redact: bool, text: str) -> pl.DataFrame:
    row = "_pii_row"
    found = (df.select(pl.int_range(pl.len()).alias(row),
                       pl.col(text).str.extract_all(PATTERNS["card"]).alias("m"))
             .explode("m").drop_nulls("m")
             .with_columns(number=pl.col("m").str.extract(PATTERNS["card"], 2)))
    valid = found.filter(_luhn_valid(pl.col("number")))
    counts = valid.group_by(row).agg(pl.len().cast(pl.Int32).alias("q_pii_card"), pl.col("number"))
    out = df.with_columns(pl.int_range(pl.len()).alias(row)).join(
        counts, on=row, how="left", maintain_order="left").with_columns(pl.col("q_pii_card").fill_null(0))
    if redact and valid.height:
        # only documents holding a Luhn-valid number (rare) are rewritten, each by its own findings
        hit = out.filter(pl.col("number").is_not_null())
        fixed = []
        for body, numbers in hit.select(text, "number").iter_rows():
            for number in numbers:
                body = body.replace(number, PLACEHOLDER["card"])
            fixed.append(body)
        patch = hit.select(row).with_columns(pl.Series("_fixed", fixed, dtype=pl.String))
        out = out.join(patch, on=row, how="left", maintain_order="left").with_columns(
            pl.coalesce("_fixed", text).alias(text)).drop("_fixed")
    return out.drop(row, "number")
