"""Helpers the ICA tests share (pooled and token runs resume the same way)."""

from __future__ import annotations

import pytest

from models.pretraining import pretrain as pretrain_mod


def killed_then_resumed(monkeypatch, run, kill_at: int) -> dict:
    """run() once with a crash at the start of epoch `kill_at`, then again to resume: the summary."""
    real = pretrain_mod._train_epoch

    def crash(model, opt, data, idx, cfg, epoch):
        if epoch == kill_at:
            raise KeyboardInterrupt("simulated crash")
        return real(model, opt, data, idx, cfg, epoch)

    monkeypatch.setattr(pretrain_mod, "_train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(pretrain_mod, "_train_epoch", real)
    return run()


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "train_items_per_s")} for h in history]
