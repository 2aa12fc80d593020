"""pipelines.images: tiny generated images served over a real local HTTP server, plus real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.images import fetch_images, read_audit
from store import schemas
from store.layout import dataset_paths
from store.tables import write_table

FAST = dict(workers=4, timeout=2.0, retries=2, progress=False, backoff=0.01)


def _jpeg(w: int, h: int, color=(200, 30, 30), noise: bool = False) -> bytes:
    arr = np.zeros((h, w, 3), np.uint8) + np.array(color, np.uint8)
    if noise:
        arr = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _png_rgba(w: int, h: int) -> bytes:
    img = Image.new("RGBA", (w, h), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (0, 0, w // 2, h))  # left half transparent
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _write_items(paths, rows: list[tuple[str, str | None]]) -> None:
    n = len(rows)
    table = pa.table(
        {
            "item_id": pa.array(range(n), pa.int32()),
            "asin": [a for a, _ in rows],
            "title": [f"title {a}" for a, _ in rows],
            "description": [None] * n,
            "brand": [None] * n,
            "categories": pa.array([[] for _ in rows], pa.list_(pa.string())),
            "image_url": pa.array([u for _, u in rows], pa.string()),
            "text": [f"title {a}" for a, _ in rows],
        }
    )
    write_table(table, paths.items, schemas.ITEMS)


def _counts(summary: dict) -> dict:
    return {k: summary[k] for k in (*schemas.IMAGE_STATUSES, "total")}


def _by_asin(paths) -> dict[str, dict]:
    return {r["asin"]: r for r in read_audit(paths).to_pylist()}


@pytest.fixture()
def served(tmp_path: Path) -> Path:
    d = tmp_path / "served"
    d.mkdir()
    (d / "ok.jpg").write_bytes(_jpeg(64, 48))
    (d / "alpha.png").write_bytes(_png_rgba(40, 20))
    (d / "page.jpg").write_bytes(b"<html><body>Image not found</body></html>")
    full = _jpeg(120, 90, noise=True)
    (d / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (d / "big.jpg").write_bytes(_jpeg(400, 400, noise=True))  # ~100 kB of noise
    bomb = io.BytesIO()
    Image.new("L", (2000, 1500), 0).save(bomb, format="PNG")  # 3 Mpx in a few kB
    (d / "bomb.png").write_bytes(bomb.getvalue())
    (d / "retry.jpg").write_bytes(_jpeg(32, 32, (0, 200, 0)))
    (d / "cut.jpg").write_bytes(_jpeg(80, 80, noise=True))
    (d / "stall.jpg").write_bytes(_jpeg(16, 16))
    (d / "chunked.jpg").write_bytes(_jpeg(300, 300, noise=True))
    return d


def test_every_outcome_is_audited(home, http_server, served):
    http_server.serve(served)
    http_server.fault("retry.jpg", "status", times=1, code=503)
    http_server.fault("cut.jpg", "cut", times=1, after=100)
    http_server.fault("stall.jpg", "stall", times=1, seconds=10)
    http_server.fault("chunked.jpg", "no_length", times=1)
    u = http_server.url_for
    paths = dataset_paths("imgs")
    rows = [
        ("A_OK", u("ok.jpg")),
        ("A_PNG", u("alpha.png")),
        ("A_404", u("missing.jpg")),
        ("A_HTML", u("page.jpg")),
        ("A_TRUNC", u("trunc.jpg")),
        ("A_BIG", u("big.jpg")),
        ("A_BOMB", u("bomb.png")),
        ("A_NONE", None),
        ("A_EMPTY", "  "),
        ("A_FILEURL", (served / "ok.jpg").as_uri()),
        ("A_LOCAL", str(served / "alpha.png")),
        ("A_NOFILE", str(served / "nope.jpg")),
        ("A_RETRY", u("retry.jpg")),
        ("A_CUT", u("cut.jpg")),
        ("A_STALL", u("stall.jpg")),
        ("A_CHUNKED", u("chunked.jpg")),
    ]
    _write_items(paths, rows)

    summary = fetch_images(paths, max_bytes=50_000, max_pixels=1_000_000, **{**FAST, "timeout": 0.5})

    assert _counts(summary) == {
        "ok": 7,
        "cached": 0,
        "no_url": 2,
        "http_error": 1,
        "undecodable": 2,
        "too_large": 3,
        "error": 1,
        "total": 16,
    }
    assert (
        summary["line"]
        == "images: 7 ok, 7 failed (too_large: 3, undecodable: 2, error: 1, http_error: 1), 2 without url"
    )
    assert summary["sources"] == {"url": 14}
    a = _by_asin(paths)
    assert [r["asin"] for r in read_audit(paths).to_pylist()] == [r[0] for r in rows]  # item order
    assert a["A_OK"]["status"] == "ok" and a["A_OK"]["http_status"] == 200
    assert a["A_OK"]["path"] == "images/A_OK.jpg"
    assert paths.image("A_OK").read_bytes() == (served / "ok.jpg").read_bytes()  # JPEG kept as served
    assert a["A_OK"]["bytes"] == (served / "ok.jpg").stat().st_size
    png = Image.open(paths.image("A_PNG"))
    assert png.format == "JPEG" and png.mode == "RGB" and png.size == (40, 20)
    left, right = png.getpixel((5, 10)), png.getpixel((35, 10))
    assert min(left) > 240 and right[2] > 200 and right[0] < 40  # transparent → white, blue kept
    assert a["A_404"]["status"] == "http_error" and a["A_404"]["http_status"] == 404
    assert a["A_404"]["path"] is None and not paths.image("A_404").exists()
    assert a["A_HTML"]["status"] == "undecodable" and "html" in a["A_HTML"]["detail"]
    assert a["A_TRUNC"]["status"] == "undecodable" and not paths.image("A_TRUNC").exists()
    assert a["A_BIG"]["status"] == "too_large" and "Content-Length" in a["A_BIG"]["detail"]
    assert a["A_BOMB"]["status"] == "too_large" and "2000x1500" in a["A_BOMB"]["detail"]
    assert a["A_CHUNKED"]["status"] == "too_large" and "aborted" in a["A_CHUNKED"]["detail"]
    assert a["A_NONE"]["status"] == a["A_EMPTY"]["status"] == "no_url"
    assert a["A_FILEURL"]["status"] == "ok" and a["A_FILEURL"]["http_status"] is None
    assert a["A_LOCAL"]["status"] == "ok" and Image.open(paths.image("A_LOCAL")).format == "JPEG"
    assert a["A_NOFILE"]["status"] == "error" and "no such file" in a["A_NOFILE"]["detail"]
    for asin in ("A_RETRY", "A_CUT", "A_STALL"):
        assert a[asin]["status"] == "ok", a[asin]
    assert [r["fault"] for r in http_server.requests_for("retry.jpg")] == ["status", None]
    assert [r["fault"] for r in http_server.requests_for("cut.jpg")] == ["cut", None]
    assert [r["fault"] for r in http_server.requests_for("stall.jpg")] == ["stall", None]
    assert sorted(p.name for p in paths.images_dir.glob("*.jpg")) == sorted(
        f"{k}.jpg" for k, r in a.items() if r["status"] == "ok"
    )
    assert not list(paths.images_dir.glob(".*.tmp"))


def test_rerun_keeps_valid_images_as_cached(home, http_server, served):
    http_server.serve(served)
    u = http_server.url_for
    paths = dataset_paths("resume")
    _write_items(paths, [("B1", u("ok.jpg")), ("B2", u("retry.jpg")), ("B3", u("missing.jpg")), ("B4", u("cut.jpg"))])
    first = fetch_images(paths, **FAST)
    assert (first["ok"], first["http_error"]) == (3, 1)

    paths.image("B4").write_bytes(paths.image("B4").read_bytes()[:200])  # damaged on disk
    second = fetch_images(paths, **FAST)
    assert (second["cached"], second["ok"], second["http_error"], second["total"]) == (2, 1, 1, 4)
    a = _by_asin(paths)
    assert a["B1"]["status"] == "cached" and a["B1"]["path"] == "images/B1.jpg"
    assert a["B4"]["status"] == "ok"  # the damaged file was fetched again
    assert len(http_server.requests_for("ok.jpg")) == 1
    assert len(http_server.requests_for("cut.jpg")) == 2
    assert len(http_server.requests_for("missing.jpg")) == 2  # failures are retried on a rerun

    # a changed URL is not served from the cache
    _write_items(paths, [("B1", u("retry.jpg")), ("B2", u("retry.jpg")), ("B3", None), ("B4", u("cut.jpg"))])
    third = fetch_images(paths, **FAST)
    a = _by_asin(paths)
    assert a["B1"]["status"] == "ok"
    assert paths.image("B1").read_bytes() == (served / "retry.jpg").read_bytes()
    assert _counts(third) == {
        "ok": 1,
        "cached": 2,
        "no_url": 1,
        "http_error": 0,
        "undecodable": 0,
        "too_large": 0,
        "error": 0,
        "total": 4,
    }
    assert third["line"] == "images: 3 ok (2 cached), 1 without url"
    assert [a[k]["source"] for k in ("B1", "B2", "B3", "B4")] == ["url", "cache", None, "cache"]


def test_unreachable_host_is_an_error_row(home):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = dataset_paths("down")
    _write_items(paths, [("C1", f"http://127.0.0.1:{port}/x.jpg")])
    summary = fetch_images(paths, **{**FAST, "retries": 1})
    assert summary["error"] == 1 and summary["reasons"] == {"refused": 1}
    row = _by_asin(paths)["C1"]
    assert "unreachable" in row["detail"] and row["reason"] == "refused" and row["source"] == "url"


def test_invalid_arguments_name_the_field(home):
    with pytest.raises(ValueError, match="max_bytes"):
        fetch_images(dataset_paths("x"), max_bytes=0)


@pytest.mark.integration
def test_real_product_photos_over_http(home, http_server, shared_data):
    src = shared_data / "amazon2018-giftcards" / "images"
    files = sorted(src.glob("*.jpg"))[:20]
    assert len(files) == 20
    http_server.serve(src)
    paths = dataset_paths("giftcards_imgs")
    rows = [(f.stem, http_server.url_for(f.name)) for f in files] + [("B000NOIMG0", None)]
    _write_items(paths, rows)

    summary = fetch_images(paths, **FAST)

    assert summary["ok"] == 20 and summary["no_url"] == 1 and summary["total"] == 21
    for f in files:
        assert paths.image(f.stem).read_bytes() == f.read_bytes()
        with Image.open(paths.image(f.stem)) as img:
            assert img.format == "JPEG" and max(img.size) >= 200
    again = fetch_images(paths, **FAST)
    assert again["cached"] == 20
    assert len([r for r in http_server.requests if r["method"] == "GET"]) == 20


def test_sharded_fetch_then_merge_equals_one_pass(home, tmp_path):
    """The flow's fan-out: n shard fetches + merge write the same audit as one pass."""
    from pipelines.images import merge_audits

    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(7):
        if i == 3:
            rows.append((f"A{i}", None))
            continue
        f = src / f"{i}.jpg"
        f.write_bytes(_jpeg(20 + i, 20, (10 * i, 0, 0)) if i != 5 else b"not an image")
        rows.append((f"A{i}", f.as_uri()))
    one, many = dataset_paths("one"), dataset_paths("many")
    for p in (one, many):
        _write_items(p, rows)
    whole = fetch_images(one, **FAST)
    parts = [fetch_images(many, shard=(i, 3), **FAST) for i in range(3)]
    assert sum(p["total"] for p in parts) == 7
    assert not many.image_audit.exists()  # nothing final until the merge
    merged = merge_audits(many, 3)
    assert merged == whole
    a, b = read_audit(one), read_audit(many)
    assert a.column("asin").to_pylist() == b.column("asin").to_pylist()
    for col in ("status", "reason", "source", "origin", "detail"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    assert merged["line"] == "images: 5 ok, 1 failed (undecodable: 1), 1 without url"
    assert sorted(p.name for p in many.images_dir.glob(".audit.shard-*")) == []
    with pytest.raises(ValueError, match="shard"):
        fetch_images(many, shard=(3, 3), **FAST)


def test_audit_of_an_older_version_still_reads_and_caches(home, tmp_path):
    """Audits written before reason/source/origin existed: provenance reads as null, and the
    images they vouch for stay cached (their `url` stands in for the origin)."""
    src = tmp_path / "a.jpg"
    src.write_bytes(_jpeg(20, 20))
    paths = dataset_paths("old")
    _write_items(paths, [("O1", src.as_uri()), ("O2", None)])
    fetch_images(paths, **FAST)
    core = read_audit(paths).select([f.name for f in schemas.IMAGE_AUDIT])
    write_table(core, paths.image_audit, schemas.IMAGE_AUDIT)  # as the old fetcher wrote it
    old = read_audit(paths)
    assert old.column("reason").to_pylist() == [None, None] and old.column("source").null_count == 2
    again = fetch_images(paths, **FAST)
    assert again["line"] == "images: 1 ok (1 cached), 1 without url"
    assert read_audit(paths).column("origin").to_pylist() == [src.as_uri(), None]
