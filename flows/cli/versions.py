"""Commands on published versions: diff, forget, files, verify."""

from __future__ import annotations

import argparse
import sys

from flows.cli.common import _storage
from schemas.errors import BadInput


def _version_number(text: str) -> int:
    digits = text.removeprefix("v")
    if not digits.isdigit():
        raise BadInput(f"version {text!r} is not a version number (write 3 or v3)")
    return int(digits)


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    from schemas.config import check_safe_name
    from tasks.ops.diff import version_diff

    check_safe_name(args.dataset, "dataset name")
    storage = _storage(args.output, args.config)
    va, vb = (_version_number(v) for v in (args.version_a, args.version_b))
    d = version_diff(storage, args.dataset, va, vb)
    if args.format == "json":
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print(f"{args.dataset}: v{va} -> v{vb}")
    print(f"  rows      {d['rows_a']:>10,} -> {d['rows_b']:,}")
    print(f"  added     {d['rows_added']:>10,}\n  removed   {d['rows_removed']:>10,}\n"
          f"  unchanged {d['rows_unchanged']:>10,}\n  changed   {d['changed_fraction']:>10.2%} (of v{va})")
    if d.get("tombstone"):
        t = d["tombstone"]
        print(f"  forgotten {d['rows_forgotten']:>10,}  by {t['requested_by']}: {t['reason']} ({t['selector']}, "
              f"{t['tombstone']})")
    for title, key in (("per source", "by_source"), ("quarantine reasons of the producing runs", "by_reason")):
        print(f"\n{title}:" if d[key] else f"\n{title}: no change")
        for name, c in d[key].items():
            print(f"  {name:<40} {c['a']:>9,} -> {c['b']:>9,}  ({c['change']:+,})")
    if d.get("synthetic"):
        print("\nsynthetic rows per class (augment):")
        for name, c in d["synthetic"].items():
            print(f"  {name:<40} {c['a']['synthetic']:>9,} ({c['a']['share']:.1%}) -> "
                  f"{c['b']['synthetic']:>9,} ({c['b']['share']:.1%})")
    if d["scores"]:
        print("\nscores (mean, p10/p50/p90):")
        for col, s in d["scores"].items():
            def fmt(x: dict | None) -> str:  # an all-null column has no mean
                if not x or x.get("mean") is None:
                    return "-"
                return f"{x['mean']:.4g} ({x['p10']:.3g}/{x['p50']:.3g}/{x['p90']:.3g})"
            shift = "" if s["mean_shift"] is None else f"  mean {s['mean_shift']:+.4g}"
            print(f"  {col:<28} {fmt(s['a'])} -> {fmt(s['b'])}{shift}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name, load_config
    from tasks.ops.forget import Selector, forget, lift

    check_safe_name(args.dataset, "dataset name")
    cfg = load_config(args.config)
    storage = _storage(args.output, args.config)
    if args.undo:
        done = lift(storage, args.dataset, args.undo, args.reason, args.by)
        print(f"lifted takedown {done['tombstone']} of {args.dataset} ({done['rows']:,} rows, {done['selector']}); "
              "later runs no longer reject its content. The tombstone stays, with the lifting recorded beside it.")
        return 0
    dry_run = args.dry_run or (not args.yes and not sys.stdin.isatty())

    def confirm(plan: dict) -> bool:
        _print_forget_plan(plan)
        answer = input(f"forget these {plan['rows_selected']:,} rows? [y/N] ").strip().lower()
        return answer in ("y", "yes")

    done = forget(storage, cfg, args.dataset, Selector(args.source, args.ids, args.where), args.reason or "",
                  args.by, dry_run=dry_run, max_fraction=args.max_fraction,
                  confirm=None if (dry_run or args.yes) else confirm)
    if not done["rows_selected"]:
        print(f"{args.dataset} v{done['version']}: no row matches; nothing published")
        return 1
    if done.get("dry_run"):
        _print_forget_plan(done)
        print("dry run: nothing was forgotten" + ("" if args.dry_run else " (stdin is not a terminal)")
              + "; rerun with --yes to publish the next version without these rows")
        return 0
    if done.get("declined"):
        print("nothing was forgotten")
        return 1
    print(f"{args.dataset}: v{done['version']} = v{done['from_version']} without {done['rows_forgotten']:,} rows "
          f"({done['rows']:,} left)")
    print(f"tombstone: {done['tombstone']}")
    print("later runs reject this content as dedup.forgotten (`sluice forget --undo` lifts it)")
    return 0


def _print_forget_plan(plan: dict) -> None:
    share = plan["rows_selected"] / max(plan["rows_total"], 1)
    print(f"{plan['selector']} selects {plan['rows_selected']:,} of {plan['rows_total']:,} rows of "
          f"{plan['dataset']} v{plan['version']} ({share:.1%})")
    for source, n in sorted(plan["rows_by_source"].items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>10,}  {source}")
    print(f"  e.g. ids: {', '.join(plan['sample_ids'])}")


def cmd_files(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name
    from tasks.io.versions import token_files, version_files

    check_safe_name(args.dataset, "dataset name")
    version = _version_number(args.version) if args.version else None
    listed = token_files if args.tokens else version_files
    for uri in listed(_storage(args.output, args.config), args.dataset, version):
        print(uri)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from schemas.config import check_safe_name
    from tasks.io.versions import DamagedVersion, VersionNotFound, newest_version, verify_version

    check_safe_name(args.dataset, "dataset name")
    storage = _storage(args.output, args.config)
    version = _version_number(args.version) if args.version else newest_version(storage, args.dataset)
    if version is None:
        raise VersionNotFound(f"dataset {args.dataset} has no published version under {storage.uri('datasets')}")
    problems = verify_version(storage, args.dataset, version, args.check)
    for problem in problems:
        print(f"damaged: {problem}")
    if problems:
        raise DamagedVersion(args.dataset, version, problems)
    print(f"{args.dataset} v{version}: every data file and index part matches its manifest ({args.check})")
    return 0
