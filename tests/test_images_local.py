"""fetch_images(images_dir=…): images the user already has, from a folder or a CSV/TSV."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_images import FAST, _by_asin, _jpeg, _write_items

from pipelines.images import fetch_images, read_audit
from pipelines.local_images import find_local_images
from store.hashing import file_sha256
from store.layout import dataset_paths

DEAD = "http://img.anchorrec-test.invalid/I/{}.jpg"  # never resolves: a local image must win


def _as(src: Path, fmt: str, mode: str = "RGB") -> bytes:
    with Image.open(src) as img:
        out = io.BytesIO()
        img.convert(mode).save(out, format=fmt)
        return out.getvalue()


@pytest.fixture()
def photos(shared_data) -> list[Path]:
    files = sorted((shared_data / "amazon2018-giftcards" / "images").glob("*.jpg"))[:6]
    assert len(files) == 6
    return files


@pytest.mark.integration
def test_folder_of_real_photos_is_used_before_urls(home, http_server, tmp_path, photos, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "mine"
    folder.mkdir()
    a = [p.stem for p in photos]
    shutil.copy(photos[0], folder / f"{a[0]}.jpg")
    shutil.copy(photos[1], folder / f"{a[1]}.JPEG")  # extensions are case-insensitive
    (folder / f"{a[2]}.png").write_bytes(_as(photos[2], "PNG", "RGBA"))
    (folder / f"{a[3]}.WebP").write_bytes(_as(photos[3], "WEBP"))
    (folder / f"{a[4]}.jpg").write_bytes(b"<html>not a photo</html>")
    (folder / "notes.txt").write_text("ignored")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(photos[5], served / "p5.jpg")
    http_server.serve(served)
    rows = [(asin, DEAD.format(i)) for i, asin in enumerate(a[:5])]
    rows += [(a[5], http_server.url_for("p5.jpg")), ("NOIMAGE01", None), ("ONLYLOCAL", None)]
    shutil.copy(photos[0], folder / "ONLYLOCAL.jpg")  # no URL at all, but a local photo
    paths = dataset_paths("local")
    _write_items(paths, rows)

    summary = fetch_images(paths, images_dir=str(folder), **FAST)

    assert summary["line"] == "images: 6 ok (5 local), 1 failed (undecodable: 1), 1 without url"
    assert summary["sources"] == {"local_dir": 6, "url": 1}
    audit = _by_asin(paths)
    assert [audit[x]["source"] for x in a] == ["local_dir"] * 5 + ["url"]
    assert audit["NOIMAGE01"]["source"] is None and audit["NOIMAGE01"]["status"] == "no_url"
    only = folder / "ONLYLOCAL.jpg"  # by name and content hash: the audit never names the machine
    assert (
        audit["ONLYLOCAL"]["status"] == "ok"
        and audit["ONLYLOCAL"]["origin"] == f"ONLYLOCAL.jpg sha256:{file_sha256(only)[:16]}"
    )
    assert paths.image(a[0]).read_bytes() == photos[0].read_bytes()  # a JPEG is kept byte for byte
    assert paths.image(a[1]).read_bytes() == photos[1].read_bytes()
    for x, original in ((a[2], photos[2]), (a[3], photos[3])):
        with Image.open(paths.image(x)) as img, Image.open(original) as ref:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == ref.size
    bad = audit[a[4]]
    assert (bad["status"], bad["reason"], bad["path"]) == ("undecodable", "undecodable", None)
    assert bad["detail"].startswith(f"{a[4]}.jpg: ") and bad["origin"].startswith(f"{a[4]}.jpg sha256:")
    assert not any(str(tmp_path) in str(v) for row in audit.values() for v in row.values())
    assert not paths.image(a[4]).exists()
    assert paths.image(a[5]).read_bytes() == photos[5].read_bytes()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # rerun, same folder: nothing is read again
    again = fetch_images(paths, images_dir=str(folder), **FAST)
    assert again["line"] == "images: 6 ok (6 cached), 1 failed (undecodable: 1), 1 without url"
    assert _by_asin(paths)[a[0]]["source"] == "cache"
    assert len(http_server.requests_for("p5.jpg")) == 1

    # a photo replaced in place (newer file) is taken again; a fixed broken one too
    shutil.copy(photos[5], folder / f"{a[0]}.jpg")
    shutil.copy(photos[4], folder / f"{a[4]}.jpg")
    future = paths.image(a[0]).stat().st_mtime + 10
    os.utime(folder / f"{a[0]}.jpg", (future, future))
    third = fetch_images(paths, images_dir=str(folder), **FAST)
    assert third["line"] == "images: 7 ok (5 cached, 2 local), 1 without url"
    assert paths.image(a[0]).read_bytes() == photos[5].read_bytes()
    assert paths.image(a[4]).read_bytes() == photos[4].read_bytes()


@pytest.mark.integration
def test_changing_or_dropping_images_dir_retakes_images(home, http_server, tmp_path, photos):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    shutil.copy(photos[0], one / "X1.jpg")
    shutil.copy(photos[1], two / "X1.jpg")  # same asin, another photo
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(photos[2], served / "x1.jpg")
    http_server.serve(served)
    paths = dataset_paths("switch")
    _write_items(paths, [("X1", http_server.url_for("x1.jpg"))])

    assert fetch_images(paths, images_dir=one, **FAST)["line"] == "images: 1 ok (1 local)"
    assert paths.image("X1").read_bytes() == photos[0].read_bytes()
    assert fetch_images(paths, images_dir=two, **FAST)["line"] == "images: 1 ok (1 local)"
    assert paths.image("X1").read_bytes() == photos[1].read_bytes()
    assert fetch_images(paths, **FAST)["line"] == "images: 1 ok"  # no folder: the URL again
    assert paths.image("X1").read_bytes() == photos[2].read_bytes()
    assert read_audit(paths).column("source").to_pylist() == ["url"]
    assert fetch_images(paths, **FAST)["line"] == "images: 1 ok (1 cached)"
    assert len(http_server.requests_for("x1.jpg")) == 1


@pytest.mark.integration
def test_csv_and_tsv_of_real_photos(home, tmp_path, photos, caplog):
    caplog.set_level(logging.WARNING)
    lib = tmp_path / "library"
    (lib / "sub").mkdir(parents=True)
    shutil.copy(photos[0], lib / "sub" / "first.jpg")
    (lib / "second.webp").write_bytes(_as(photos[1], "WEBP"))
    a = [p.stem for p in photos]
    table = lib / "images.csv"
    table.write_text(
        "asin,path,comment\n"
        f"{a[0]},sub/first.jpg,relative to the CSV\n"
        f"{a[1]},{lib / 'second.webp'},absolute\n"
        f"{a[2]},,no path\n"
        f"{a[0]},sub/other.jpg,duplicate\n"
        f"{a[3]},sub/missing.jpg,listed but absent\n"
    )
    paths = dataset_paths("csv")
    _write_items(paths, [(x, DEAD.format(i)) for i, x in enumerate(a[:4])])

    summary = fetch_images(paths, images_dir=table, host_down_after=1, **FAST)

    audit = _by_asin(paths)
    assert [audit[x]["source"] for x in a[:4]] == ["local_csv", "local_csv", "url", "local_csv"]
    assert paths.image(a[0]).read_bytes() == photos[0].read_bytes()
    assert Image.open(paths.image(a[1])).format == "JPEG"
    assert audit[a[2]]["reason"] == "dns"  # its CSV row was skipped, so its URL was tried
    assert audit[a[3]]["status"] == "error" and audit[a[3]]["detail"].startswith(f"{table.name}:6: no such file:")
    assert summary["line"] == "images: 2 ok (2 local), 2 failed (dns: 1, error: 1)"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1
    assert f"{table}:4: empty path for asin {a[2]}" in warned[0]
    assert f"{table}:5: duplicate asin {a[0]} (first on line 2)" in warned[0] and "2 entries skipped" in warned[0]

    tsv = lib / "images.tsv"
    tsv.write_text(f"ASIN\tPath\n{a[2]}\tsub/first.jpg\n")
    found = find_local_images(tsv)
    assert found.get(a[2]).path == (lib / "sub" / "first.jpg").resolve() and found.get(a[2]).source == "local_csv"


def test_png_and_webp_generated(home, tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    img = Image.new("RGBA", (30, 20), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (0, 0, 15, 20))
    img.save(folder / "P1.png")
    Image.new("RGB", (25, 25), (0, 200, 0)).save(folder / "W1.webp")
    (folder / "J1.jpg").write_bytes(_jpeg(16, 16))
    (folder / "J1.png").write_bytes(b"also J1")  # ambiguous: the .jpg wins, reported
    paths = dataset_paths("gen")
    _write_items(paths, [("P1", None), ("W1", None), ("J1", None)])
    found = find_local_images(folder)
    assert found.get("J1").path.name == "J1.jpg"
    assert found.problems == [(str(folder), None, "2 files for asin J1 (J1.jpg, J1.png): using J1.jpg")]
    summary = fetch_images(paths, images_dir=folder, **FAST)
    assert summary["line"] == "images: 3 ok (3 local)"
    with Image.open(paths.image("P1")) as p:
        assert p.format == "JPEG" and min(p.getpixel((3, 10))) > 240  # transparent → white
    with Image.open(paths.image("W1")) as w:
        assert w.format == "JPEG" and w.size == (25, 25) and w.getpixel((12, 12))[1] > 150


def test_bad_images_dir_is_a_clear_error(home, tmp_path):
    paths = dataset_paths("bad")
    _write_items(paths, [("A", None)])
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"images_dir {missing}: no such file or folder.*--images "):
        fetch_images(paths, images_dir=str(missing), **FAST)
    wrong = tmp_path / "list.csv"
    wrong.write_text("id,file\nA,a.jpg\n")
    with pytest.raises(ValueError, match=r"list.csv:1: header must name columns asin and path"):
        fetch_images(paths, images_dir=wrong, **FAST)
    other = tmp_path / "list.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match=r"must end in .csv or .tsv"):
        fetch_images(paths, images_dir=other, **FAST)
    assert not paths.image_audit.exists()
