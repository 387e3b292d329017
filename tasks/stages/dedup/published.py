"""Dedup against what a dataset has already published, and against what it was told to forget.

Publish writes one index part per published data part: each row's id, version, normalized-text hash and its MinHash
signature cut to 16 bits a value (200 bytes a row at the default 100 permutations, against 800 for the full
signature; equal 16-bit values still estimate Jaccard: a false match of one value has probability 1/65,536). An
incremental run's dedup reads the index part by part, so memory follows one part and the increment, never the
dataset, and no published text is read:

  exact  the normalized-text hash equals a published row's;
  near   the row shares an LSH band with a published row (band keys folded from the 16-bit values) and the
         signatures agree on at least `threshold` of their values (the same Jaccard threshold as within a run;
         estimated, since the published shingles are not kept).

`sluice forget` keeps the index rows of what it removed as blocked parts; a row matching one is `dedup.forgotten`,
in every publish mode, so forgotten content does not come back with a later run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from schemas.config import DedupConfig
from tasks.runtime.stage import ROW
from tasks.stages.dedup.within_run import normalized, signatures

SIG_DTYPE = np.uint16
FOLD = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: folds a band's values into one 64-bit key


def index_format(params: DedupConfig) -> dict:
    """What must match for an index to be comparable with this run's features. The hashes come from polars'
    hash functions, which polars does not promise to keep stable across releases."""
    return {"polars": pl.__version__, "ngram": params.near.ngram, "bands": params.near.bands,
            "rows": params.near.rows, "near": params.near.enabled, "sig_bits": 16}


def index_rows(batch: pl.DataFrame, params: DedupConfig, version: int) -> pl.DataFrame:
    """The index part of a published data part (the same hashes dedup's features compute)."""
    df = batch.select("id", "text").with_row_index(ROW)
    out = df.select("id", version=pl.lit(version, pl.Int32), norm_hash=normalized(pl.col("text")).hash(seed=17))
    if params.near.enabled:
        perms = params.near.bands * params.near.rows
        sig = signatures(df, params.near.ngram, perms, device=params.device)
        out = out.with_columns(pl.Series("sig16", short_signature(sig), dtype=pl.Array(pl.UInt16, perms)))
    return out


def short_signature(sig: np.ndarray) -> np.ndarray:
    return (sig & np.uint64(0xFFFF)).astype(SIG_DTYPE)


def band_keys(sig16: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one key per band of `rows` 16-bit values (equal values -> equal key)."""
    keys = np.zeros((sig16.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = (keys ^ sig16[:, j::rows][:, :bands].astype(np.uint64)) * FOLD
    return keys


def _sig_matrix(frame: pl.DataFrame, perms: int) -> np.ndarray:
    if frame.height == 0:
        return np.zeros((0, perms), dtype=SIG_DTYPE)
    return frame["sig16"].to_numpy().reshape(frame.height, perms).astype(SIG_DTYPE)


def _near_candidates(new_keys: np.ndarray, part_keys: np.ndarray) -> pl.DataFrame:
    """(new row, part row) pairs that share at least one band key (a hash join per band)."""
    found = []
    for b in range(new_keys.shape[1]):
        left = pl.DataFrame({"i": np.arange(new_keys.shape[0]), "k": new_keys[:, b]})
        right = pl.DataFrame({"j": np.arange(part_keys.shape[0]), "k": part_keys[:, b]})
        found.append(left.join(right, on="k").select("i", "j"))
    return pl.concat(found).unique() if found else pl.DataFrame(schema={"i": pl.Int64, "j": pl.Int64})


MATCH_SCHEMA = {"i": pl.Int64, "match_id": pl.String, "match_version": pl.Int32, "similarity": pl.Float64,
                "exact": pl.Boolean}


def best_matches(new: pl.DataFrame, parts: Iterable[pl.DataFrame], params: DedupConfig) -> pl.DataFrame:
    """For each row of `new` (columns norm_hash, and sig16 when near dedup is on), its best match among the index
    parts: an exact hash match first, else the highest estimated Jaccard >= threshold. Column `i` is the row's
    position in `new`; rows without a match are absent. Parts are read one at a time."""
    perms = params.near.bands * params.near.rows
    near = params.near.enabled and "sig16" in new.columns
    new_sig = _sig_matrix(new, perms) if near else None
    new_keys = band_keys(new_sig, params.near.bands, params.near.rows) if near else None
    hashes = new.select(pl.col("norm_hash"), i=pl.int_range(pl.len(), dtype=pl.Int64))
    found = []
    for part in parts:
        if part.height == 0:
            continue
        exact = hashes.join(part.select("norm_hash", match_id="id", match_version="version"), on="norm_hash")
        found.append(exact.select("i", "match_id", "match_version", similarity=pl.lit(1.0), exact=pl.lit(True)))
        if near and "sig16" in part.columns and new.height:
            part_sig = _sig_matrix(part, perms)
            pairs = _near_candidates(new_keys, band_keys(part_sig, params.near.bands, params.near.rows))
            if pairs.height:
                i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
                sim = (new_sig[i] == part_sig[j]).mean(axis=1)
                ok = sim >= params.near.threshold
                found.append(pl.DataFrame({
                    "i": i[ok], "match_id": part["id"].to_numpy()[j[ok]],
                    "match_version": part["version"].to_numpy()[j[ok]], "similarity": sim[ok],
                    "exact": np.zeros(int(ok.sum()), dtype=bool)}, schema=MATCH_SCHEMA))
    if not found:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    return (pl.concat([f.cast(MATCH_SCHEMA) for f in found])
            .sort(["i", "exact", "similarity", "match_version", "match_id"], descending=[False, True, True, False,
                                                                                        False])
            .unique("i", keep="first", maintain_order=True))
