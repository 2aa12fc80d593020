"""Catalog-only datasets: items (text + images) and no interactions.

A product catalog without reviews (e.g. ../shared/data/amazon-apparel-tops) is still worth
ingesting: the features and pretrain stages read only the catalog, and pretraining the
inter-content encoder on a large catalog is how a small dataset gets a good `mm` feature.
`anchorrec ingest --release csv --meta items.tsv` (no `--reviews`) lands here.

The item table is built by prepare's own pieces (duplicate policy, HTML cleaning, item text), so
a catalog item looks exactly like an item of an interaction dataset. Every asin of the metadata
file is kept (there is no k-core without interactions), ids follow sorted asins. The item text
is prepare's 'Title. Brand: B. Categories: …. Description': columns the metadata reader does not
map to a role (colour, product type, price in the apparel set) never enter it, so a probe that
predicts them from the text vector cannot read the answer.

What marks the dataset as catalog-only is that it has items.parquet and no interactions.parquet
(`DatasetPaths.catalog_only`); prepare.json says `"catalog_only": true` for people. Stale users /
interactions tables of an earlier ingest of the same name are removed after the new items table
is in place, so a dataset is never half catalog, half old interactions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from store.layout import DatasetPaths

if TYPE_CHECKING:  # the refusal is checked by the CLI before any heavy import
    from pipelines.prepare import PrepareConfig
    from pipelines.records import BadRecords, Product

NEEDS_INTERACTIONS = (
    "train",
    "tune",
    "pipeline",
    "recommend",
)  # publish: content vectors (store.index.publish_content)


class CatalogOnlyError(ValueError):
    """A command that needs interactions was run on a catalog-only dataset (a user error)."""


def prepare_catalog(
    paths: DatasetPaths,
    products: Iterable[Product],
    *,
    bad: BadRecords | None = None,
    sources: dict[str, Any] | None = None,
    config: PrepareConfig | None = None,
) -> dict[str, Any]:
    """Write items.parquet (and prepare.json) from metadata alone; return the report.

    Nothing is written when no product has an asin, so a wrong file leaves the old tables.
    """
    from pipelines.image_paths import rebase_images
    from pipelines.prepare import PrepareConfig, _collect_products, _items_table
    from pipelines.records import BadRecords
    from store import schemas
    from store.tables import write_json, write_table

    cfg = config or PrepareConfig()
    bad = bad if bad is not None else BadRecords()
    records = list(products)
    asins = sorted({p.asin for p in records})
    if not asins:
        raise ValueError(
            f"dataset {paths.name!r}: no item with an asin was read from the metadata file "
            f"({bad.dropped} bad line(s): {dict(bad.counts)}); check --meta (a CSV/TSV/Parquet with an asin column)"
        )
    catalog = _collect_products(records, set(asins))
    rebase_images(catalog.products.values(), paths)  # local images: dataset-relative, no machine path
    items, missing, cleaning = _items_table(asins, catalog.products, cfg.max_text_chars)
    report = {
        "dataset": paths.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog_only": True,
        "sources": sources or {},
        "metadata": catalog.report(),
        "missing": missing,
        "text_cleaning": cleaning,
        "bad_records": bad.as_dict(),
        "output": {"items": items.num_rows, "users": 0, "interactions": 0},
        "line": (
            f"catalog-only: {items.num_rows} items, no interactions; {missing['image']} without an image, "
            f"{missing['text']} without text; {bad.dropped} bad records dropped (see prepare.json)"
        ),
    }
    write_table(items, paths.items, schemas.ITEMS)
    for stale in (paths.users, paths.interactions):
        stale.unlink(missing_ok=True)
    write_json(report, paths.prepare_report)
    return report


def refusal(paths: DatasetPaths, command: str) -> str:
    """The one line that says why `command` cannot run here and how to get interactions in."""
    meta = _meta_source(paths) or "ITEMS.tsv"
    return (
        f"dataset {paths.name!r} is catalog-only (no interactions): it can run features, pretrain and publish "
        f"(content vectors for similar), not {command}; "
        f"to train, ingest interactions with --reviews FILE: anchorrec ingest --dataset {paths.name} --release csv "
        f"--meta {meta} --reviews FILE"
    )


def refuse_catalog_pipeline(dataset: str, release: str, reviews: str | None, meta: str | None) -> None:
    """`pipeline --release csv --meta M` without --reviews would ingest, extract and pretrain, then fail
    at train: refuse before any of it and say which two commands do what was meant."""
    if is_catalog_request(release, reviews, meta):
        raise CatalogOnlyError(
            f"--release csv with --meta and no --reviews makes dataset {dataset!r} catalog-only (no interactions), "
            f"and the pipeline trains: run anchorrec ingest --dataset {dataset} --release csv --meta {meta}, then "
            f"anchorrec pretrain --dataset {dataset}; or give --reviews FILE"
        )


def require_interactions(paths: DatasetPaths, command: str) -> None:
    """Stop `command` before any work when the dataset has items but no interactions."""
    if paths.catalog_only:
        raise CatalogOnlyError(refusal(paths, command))


def _meta_source(paths: DatasetPaths) -> str | None:
    """The --meta the catalog was ingested from (so the printed command can be pasted)."""
    try:
        report = json.loads(paths.prepare_report.read_text())
    except (OSError, ValueError):  # only a hint for the message
        return None
    meta = ((report or {}).get("sources") or {}).get("meta") or {}
    source = meta.get("source")
    return str(source) if source and " " not in str(source) else None


def is_catalog_request(release: str, reviews: str | None, meta: str | None) -> bool:
    """`--release csv --meta FILE` without `--reviews` asks for a catalog-only dataset."""
    return str(release) == "csv" and not reviews and bool(meta)
