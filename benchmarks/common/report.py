"""What the training benchmarks print: one line per epoch while they run, and the result table at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def epoch_logger(prefix: str = "") -> Callable[[int, dict], None]:
    """A trainer `on_epoch` callback printing loss, times and validation Recall/NDCG@20, flushed:
    these runs take hours and are watched through a log file."""

    def log(epoch: int, rec: dict) -> None:
        v = rec.get("valid", {})
        print(
            f"{prefix}epoch {epoch:3d} loss {rec['loss']:.4f} train {rec['train_s']:.1f}s "
            f"eval {rec.get('eval_s', 0):.1f}s valid R@20 {v.get('recall@20', float('nan')):.4f} "
            f"N@20 {v.get('ndcg@20', float('nan')):.4f}",
            flush=True,
        )

    return log


def save_and_show(path: Path, lines: list[str]) -> None:
    """Write a result table (its folder made) and show it: the file is what BENCHMARKS.md links."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n".join(lines))
