"""What a person reads about a run: report/index.html, report/card.md, GE Data Docs under report/contracts/, and
the card of a published version."""

from __future__ import annotations

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.ops.report.card import dataset_card, markdown_summary
from tasks.ops.report.contracts_page import write_contracts
from tasks.ops.report.html import render_html

__all__ = ["dataset_card", "markdown_summary", "render_html", "write_report"]


def write_report(ctx, run: dict, manifests: list[StageManifest], contracts) -> str:
    """Write the report; returns the URI of index.html."""
    run_id = ctx.run_id
    page = render_html(run, manifests, ctx.storage)
    ctx.storage.write_bytes(layout.report(run_id, "index.html"), page.encode())
    ctx.storage.write_bytes(layout.report(run_id, "card.md"), markdown_summary(run, manifests).encode())
    write_contracts(lambda rel, data: ctx.storage.write_bytes(layout.report(run_id, rel), data), run, manifests)
    if contracts is not None:
        contracts.copy_docs_to(lambda rel, data: ctx.storage.write_bytes(layout.report(run_id, f"contracts/{rel}"),
                                                                         data))
    return ctx.storage.uri(layout.report(run_id, "index.html"))
