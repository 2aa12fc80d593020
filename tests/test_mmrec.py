"""MMRec-format import: ids and split kept, bad lines counted with their line, npy features checked."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.mmrec import import_mmrec
from store import schemas
from store.errors import StoreError
from store.layout import dataset_paths
from store.tables import read_json, read_metadata, read_table
from store.vectors import read_features

ASINS = ["B000000A01", "B000000A02", "B000000A03", "B000000A04", "B000000A05", "B000000A06"]
USERS = ["AUSER0", "AUSER1", "AUSER2", "AUSER3"]
# (userID, itemID, timestamp, x_label)
ROWS = [
    (0, 0, 100, 0),
    (0, 1, 101, 0),
    (0, 2, 102, 1),
    (0, 3, 103, 2),
    (1, 1, 200, 0),
    (1, 4, 201, 0),
    (1, 5, 202, 1),
    (1, 0, 203, 2),
    (2, 2, 300, 0),
    (2, 3, 301, 1),
    (2, 4, 302, 2),
    (3, 5, 400, 0),
    (3, 0, 401, 0),
    (3, 1, 402, 1),
    (3, 2, 403, 2),
]


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_mmrec(
    root: Path,
    *,
    name: str = "toy",
    inter_lines: list[str] | None = None,
    timestamp: bool = True,
    text: bool = True,
    user_mapping: bool = True,
    features: dict[str, np.ndarray] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if inter_lines is None:
        if timestamp:
            inter_lines = ["userID\titemID\ttimestamp\tx_label"] + ["\t".join(map(str, r)) for r in ROWS]
        else:
            inter_lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{x}" for u, i, _, x in ROWS]
    _write(root / f"{name}.inter", inter_lines)
    _write(root / "i_id_mapping.tsv", ["asin\titemID"] + [f"{a}\t{i}" for i, a in enumerate(ASINS)])
    if user_mapping:
        _write(root / "u_id_mapping.tsv", ["user_id\tuserID"] + [f"{u}\t{i}" for i, u in enumerate(USERS)])
    if text:
        _write(
            root / "item_text.tsv",
            ["itemID\tasin\tkeywords"] + [f"{i}\t{a}\tred ball number {i}" for i, a in enumerate(ASINS)],
        )
    for fname, mat in (features or {}).items():
        np.save(root / fname, mat)
    return root


def test_import_keeps_ids_split_text_and_features(tmp_path: Path, home: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(len(ASINS), 5)).astype(np.float32)
    text = rng.normal(size=(len(ASINS), 3)).astype(np.float64)
    src = make_mmrec(tmp_path / "src", features={"image_feat.npy": image, "text_feat.npy": text})
    report = import_mmrec(src, "toy", progress=False)
    paths = dataset_paths("toy")
    assert paths.root.parent == home

    items = read_table(paths.items, schemas.ITEMS).to_pydict()
    assert items["item_id"] == list(range(6)) and items["asin"] == ASINS
    assert items["text"] == [f"red ball number {i}" for i in range(6)]
    assert items["title"] == [None] * 6 and items["categories"] == [[]] * 6
    users = read_table(paths.users, schemas.USERS).to_pydict()
    assert users == {"user_id": [0, 1, 2, 3], "reviewer_id": USERS}

    inter = read_table(paths.interactions, schemas.INTERACTIONS).to_pydict()
    got = sorted(zip(inter["user_id"], inter["item_id"], inter["timestamp"], inter["split"]))
    want = sorted((u, i, t, schemas.SPLITS[x]) for u, i, t, x in ROWS)
    assert got == want
    assert inter["rating"] == [None] * len(ROWS)
    assert report["split"]["sizes"] == {"train": 7, "valid": 4, "test": 4}
    assert report["output"] == {"items": 6, "users": 4, "interactions": 15}
    assert report["bad_records"]["total"] == 0
    assert read_json(paths.prepare_report) == report
    assert read_metadata(paths.interactions)["split_hash"] == report["split"]["hash"]

    for name, mat, modality in (("image-mmrec", image, "image"), ("text-mmrec", text, "text")):
        feat = read_features(paths.feature(name))
        assert feat.asins == ASINS and feat.item_ids.tolist() == list(range(6))
        np.testing.assert_allclose(feat.vectors, mat.astype(np.float32))
        assert feat.valid.all()
        assert feat.metadata["modality"] == modality and feat.metadata["source"] == "MMRec npy"
        assert feat.metadata["dim"] == str(mat.shape[1])
    assert report["features"]["image-mmrec"]["dim"] == 5


def test_bad_lines_are_counted_with_their_line_and_skipped(tmp_path: Path, home: Path) -> None:
    lines = ["userID\titemID\ttimestamp\tx_label"] + ["\t".join(map(str, r)) for r in ROWS]
    lines[3] = "0\t2"  # line 4: too few fields
    lines.insert(6, "")  # line 7: empty line
    lines.insert(8, "1\tabc\t5\t0")  # line 9: itemID not an integer
    lines.append("2\t0\t9\t3")  # line 19: x_label 3
    lines.append("3\t99\t9\t0")  # line 20: itemID not in the mapping
    lines.append("0\t0\t500\t2")  # line 21: duplicate of line 2 (user 0, item 0)
    lines.append("9\t0\t9\t0")  # line 22: userID not in the mapping
    lines.append("1\t3\t7\t0\textra")  # line 23: too many fields
    src = make_mmrec(tmp_path / "src", inter_lines=lines)
    report = import_mmrec(src, "toy", progress=False)

    bad = report["bad_records"]
    assert bad["total"] == bad["dropped"] == 8
    where = {reason: [(e["file"], e["line"]) for e in ex] for reason, ex in bad["examples"].items()}
    assert where["wrong number of fields"] == [("toy.inter", 4), ("toy.inter", 23)]
    assert where["empty line"] == [("toy.inter", 7)]
    assert where["itemID is not a non-negative integer"] == [("toy.inter", 9)]
    assert where["x_label not in {0, 1, 2}"] == [("toy.inter", 19)]
    assert where["itemID not in i_id_mapping.tsv (0..5)"] == [("toy.inter", 20)]
    assert where["userID not in u_id_mapping.tsv (0..3)"] == [("toy.inter", 22)]
    assert where["duplicate (userID, itemID) pair"] == [("toy.inter", 21)]
    assert report["duplicates_removed"] == 1
    # The 14 good original rows survive, with the first split of the duplicated pair.
    inter = read_table(dataset_paths("toy").interactions).to_pydict()
    assert len(inter["user_id"]) == 14 == report["output"]["interactions"]
    first = [s for u, i, s in zip(inter["user_id"], inter["item_id"], inter["split"]) if (u, i) == (0, 0)]
    assert first == ["train"]


def test_wrong_npy_row_count_is_a_clear_error_and_writes_nothing(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src", features={"image_feat.npy": np.zeros((5, 4), np.float32)})
    with pytest.raises(StoreError, match=r"image_feat\.npy.*\(5, 4\).*6 items"):
        import_mmrec(src, "toy", progress=False)
    paths = dataset_paths("toy")
    assert not paths.items.exists() and not paths.interactions.exists() and not paths.prepare_report.exists()


def test_non_finite_npy_rows_become_invalid_vectors(tmp_path: Path, home: Path) -> None:
    mat = np.ones((6, 2), np.float32)
    mat[4, 1] = np.nan
    src = make_mmrec(tmp_path / "src", features={"text_feat.npy": mat})
    report = import_mmrec(src, "toy", progress=False)
    feat = read_features(dataset_paths("toy").feature("text-mmrec"))
    assert feat.valid.tolist() == [True, True, True, True, False, True]
    assert feat.reasons[4] == "non-finite values in npy row"
    assert report["features"]["text-mmrec"]["invalid_rows"] == 1


def test_non_contiguous_item_ids_are_refused(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src")
    _write(src / "i_id_mapping.tsv", ["asin\titemID"] + [f"{a}\t{i if i < 3 else i + 1}" for i, a in enumerate(ASINS)])
    with pytest.raises(StoreError, match=r"i_id_mapping\.tsv.*not contiguous.*id 3 is missing"):
        import_mmrec(src, "toy", progress=False)


def test_mapping_must_be_one_to_one(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src")
    _write(src / "u_id_mapping.tsv", ["user_id\tuserID", "AUSER0\t0", "AUSER1\t1", "AUSER0\t2", "AUSER3\t3"])
    with pytest.raises(StoreError, match=r"u_id_mapping\.tsv.*'AUSER0' maps to 2 different userIDs \(lines \[2, 4\]\)"):
        import_mmrec(src, "toy", progress=False)
    _write(src / "u_id_mapping.tsv", ["user_id\tuserID", "AUSER0\t0", "AUSER1\t1", "AUSER2\t1", "AUSER3\t3"])
    with pytest.raises(StoreError, match=r"userID 1 appears twice \(line 4\)"):
        import_mmrec(src, "toy", progress=False)


def test_missing_column_names_the_file(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src", inter_lines=["userID\titemID", "0\t1"])
    with pytest.raises(StoreError, match=r"toy\.inter.*lacks column\(s\) \['x_label'\]"):
        import_mmrec(src, "toy", progress=False)


def test_item_text_with_a_wrong_asin_is_counted_not_used(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src")
    lines = (src / "item_text.tsv").read_text().splitlines()
    lines[3] = "2\tB0WRONG000\tgreen cube"
    _write(src / "item_text.tsv", lines)
    report = import_mmrec(src, "toy", progress=False)
    ex = report["bad_records"]["examples"]["asin differs from i_id_mapping.tsv"]
    assert [(e["file"], e["line"]) for e in ex] == [("item_text.tsv", 4)]
    text = read_table(dataset_paths("toy").items).column("text").to_pylist()
    assert text[2] is None and text[3] == "red ball number 3"
    assert report["missing"]["text"] == 1


def test_optional_files_absent(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src", timestamp=False, text=False, user_mapping=False)
    report = import_mmrec(src, "toy", progress=False)
    paths = dataset_paths("toy")
    inter = read_table(paths.interactions).to_pydict()
    assert set(inter["timestamp"]) == {0}
    assert read_table(paths.users).column("reviewer_id").to_pylist() == [f"mmrec-user-{u}" for u in range(4)]
    assert read_table(paths.items).column("text").null_count == 6
    assert report["missing"]["user_mapping"] is True and report["features"] == {}


def test_which_inter_file(tmp_path: Path, home: Path) -> None:
    src = make_mmrec(tmp_path / "src")
    _write(src / "other.inter", ["userID\titemID\tx_label", "0\t0\t0"])
    with pytest.raises(StoreError, match="keep one <name>.inter in the --source folder"):
        import_mmrec(src, "toy", progress=False)
    assert import_mmrec(src, "toy", name="other", progress=False)["output"]["interactions"] == 1
    assert import_mmrec(src, "toy", name="toy", progress=False)["output"]["interactions"] == 15


@pytest.mark.integration
def test_sports_imports_with_published_counts(shared_data: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    report = import_mmrec(shared_data / "mmrec-sports", "sports", home=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 15
    assert report["output"] == {"interactions": 296_337, "users": 35_598, "items": 18_357}
    assert report["split"]["sizes"] == {"train": 218_409, "valid": 37_899, "test": 40_029}
    assert report["bad_records"]["total"] == 0 and report["missing"]["text"] == 0
    paths = dataset_paths("sports", tmp_path)
    items = read_table(paths.items, schemas.ITEMS)
    assert items.column("asin").to_pylist()[:2] == ["1881509818", "2094869245"]
    assert items.column("text").to_pylist()[0] == "ghost armorers tool 332 punch hunting fishing"
    users = read_table(paths.users, schemas.USERS)
    assert users.column("reviewer_id").to_pylist()[:2] == ["AIXZKN4ACSKI", "A1L5P841VIO02V"]
    inter = read_table(paths.interactions, schemas.INTERACTIONS)
    assert inter.num_rows == 296_337
    # The file's first line (user 0, item 5458) is a training interaction.
    u, i = inter.column("user_id").to_numpy(), inter.column("item_id").to_numpy()
    row = np.flatnonzero((u == 0) & (i == 5458))
    assert inter.column("split").to_pylist()[int(row[0])] == "train"


@pytest.mark.integration
def test_baby_imports_with_published_counts(shared_data: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    report = import_mmrec(shared_data / "mmrec-baby", "baby", home=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 15
    assert report["output"] == {"interactions": 160_792, "users": 19_445, "items": 7_050}
    assert report["split"]["sizes"] == {"train": 119_674, "valid": 20_559, "test": 20_559}
    assert report["missing"]["text"] == 7_050 and report["bad_records"]["total"] == 0
    inter = read_table(dataset_paths("baby", tmp_path).interactions, schemas.INTERACTIONS)
    assert set(inter.column("timestamp").to_pylist()) == {0}


def test_optional_rating_column_is_kept(tmp_path: Path, home: Path) -> None:
    lines = ["userID\titemID\trating\tx_label", "0\t0\t4.0\t0", "0\t1\tn/a\t0", "1\t2\t5\t2"]
    src = make_mmrec(tmp_path / "src", inter_lines=lines)
    report = import_mmrec(src, "toy", progress=True)
    inter = read_table(dataset_paths("toy").interactions, schemas.INTERACTIONS).to_pydict()
    assert inter["rating"] == [4.0, None, 5.0] and inter["split"] == ["train", "train", "test"]
    ex = report["bad_records"]["examples"]["rating is not a number (kept as null)"]
    assert [(e["line"], e["dropped"]) for e in ex] == [(3, False)]
    assert report["bad_records"]["dropped"] == 0
