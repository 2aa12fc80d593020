"""The one normalized record format every source (Amazon 2014/2018/2023, demo) is parsed into.

Keeping a single shape means prepare.py (k-core, ids, split, text) has exactly one input to
handle, whatever release the data came from. `BadRecords` is how a parser says "this line was
wrong" without stopping: real dumps always contain a few broken lines, and losing a whole ingest
to one of them is worse than counting it and telling the user where it was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa


@dataclass(slots=True)
class Product:
    """One catalog item; text fields are raw (HTML and all) until prepare cleans them."""

    asin: str
    title: str | None = None
    description: str | None = None
    brand: str | None = None
    categories: list[str] = field(default_factory=list)
    image_url: str | None = None


@dataclass(slots=True)
class Review:
    """One user–item interaction; `timestamp` is in Unix seconds for every release."""

    reviewer_id: str
    asin: str
    rating: float | None
    timestamp: int


REVIEW_BATCH_SCHEMA = pa.schema(
    [
        pa.field("reviewer_id", pa.string(), nullable=False),
        pa.field("asin", pa.string(), nullable=False),
        pa.field("rating", pa.float64()),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)


# A batch may carry a given split (codes 0 train, 1 valid, 2 test; null = not given) as a fifth
# column: user-supplied interaction files (pipelines.tabular) can come with their own split.
SPLIT_FIELD = pa.field("split", pa.int8())
REVIEW_SPLIT_SCHEMA = REVIEW_BATCH_SCHEMA.append(SPLIT_FIELD)


@dataclass(frozen=True)
class ReviewBatch:
    """Many `Review`s as Arrow columns (REVIEW_BATCH_SCHEMA).

    The same records in columnar form: large review files are read straight into Arrow by the
    fast path of pipelines.amazon, and a Python object per review would cost more than parsing.
    """

    table: pa.Table

    def __post_init__(self) -> None:
        if self.table.schema.remove_metadata() not in (REVIEW_BATCH_SCHEMA, REVIEW_SPLIT_SCHEMA):
            raise ValueError(f"ReviewBatch.table must have schema {REVIEW_BATCH_SCHEMA}, got {self.table.schema}")

    @property
    def has_split(self) -> bool:
        return "split" in self.table.schema.names

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def from_reviews(cls, reviews: Sequence[Review]) -> "ReviewBatch":
        return cls(
            pa.table(
                [
                    pa.array([r.reviewer_id for r in reviews], pa.string()),
                    pa.array([r.asin for r in reviews], pa.string()),
                    pa.array([r.rating for r in reviews], pa.float64()),
                    pa.array([r.timestamp for r in reviews], pa.int64()),
                ],
                schema=REVIEW_BATCH_SCHEMA,
            )
        )

    def reviews(self) -> Iterator[Review]:
        """The records without any given split (a `Review` has no split)."""
        cols = [self.table.column(n).to_pylist() for n in REVIEW_BATCH_SCHEMA.names]
        for user, asin, rating, ts in zip(*cols):
            yield Review(user, asin, rating, ts)


@dataclass
class BadRecords:
    """Counts problems by reason and keeps a few (file, line, detail) examples of each.

    `dropped` reasons lost the record; the others were repaired (e.g. undecodable bytes replaced)
    and the record was kept. Neither is ever fatal: the report says what happened and where.
    """

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    dropped_counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    by_file: Counter = field(default_factory=Counter)  # problems per file name (all reasons)
    # Row accounting of interaction files (meta files are not counted here): every line read is
    # a header, a blank line, a rejected record (dropped_by_file_reason) or a record handed on.
    lines_read: Counter = field(default_factory=Counter)
    header_lines: Counter = field(default_factory=Counter)
    blank_lines: Counter = field(default_factory=Counter)
    dropped_by_file_reason: Counter = field(default_factory=Counter)  # (file name, reason) -> n

    def add(
        self,
        file: str | Path,
        line: int | None,
        reason: str,
        detail: str = "",
        *,
        dropped: bool = True,
    ) -> None:
        self.counts[reason] += 1
        self.by_file[Path(file).name] += 1
        if dropped:
            self.dropped_counts[reason] += 1
            self.dropped_by_file_reason[(Path(file).name, reason)] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append({"file": Path(file).name, "line": line, "detail": detail[:200], "dropped": dropped})

    def count_lines(self, file: str | Path, lines: int, *, header: int = 0, blank: int = 0) -> None:
        """Lines an interaction reader consumed (header and blank lines included, and counted)."""
        name = Path(file).name
        self.lines_read[name] += lines
        self.header_lines[name] += header
        self.blank_lines[name] += blank

    def count_blank(self, file: str | Path, n: int = 1) -> None:
        self.blank_lines[Path(file).name] += n

    def rejected(self, files: Sequence[str], not_rows: tuple[str, ...] = ()) -> dict[str, int]:
        """Records of these files dropped, by reason (reasons that are no line, e.g. a cut gzip, left out)."""
        out: Counter = Counter()
        for (name, reason), n in self.dropped_by_file_reason.items():
            if name in files and reason not in not_rows:
                out[reason] += n
        return dict(sorted(out.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def dropped(self) -> int:
        return sum(self.dropped_counts.values())

    def merge(self, other: "BadRecords") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
        for reason, n in other.dropped_counts.items():
            self.dropped_counts[reason] += n
        self.by_file.update(other.by_file)
        for mine_c, theirs in (
            (self.lines_read, other.lines_read),
            (self.header_lines, other.header_lines),
            (self.blank_lines, other.blank_lines),
            (self.dropped_by_file_reason, other.dropped_by_file_reason),
        ):
            mine_c.update(theirs)
        for reason, shown in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(shown[: max(0, self.max_examples - len(mine))])

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "dropped": self.dropped,
            "by_reason": dict(sorted(self.counts.items())),
            "by_file": dict(sorted(self.by_file.items())),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
        }
