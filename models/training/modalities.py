"""Which content the recommender gets, decided from how many items each modality really covers.

Real catalogs lose whole modalities: image hosts that do not resolve leave every image vector
null, metadata that matches no reviewed item leaves every text null. Training on a null feature
(or pretraining ICA on one) gives a silent, meaningless model, so the decision is made once,
here, from the extraction counts: a modality below `min_coverage` is left out, the recommender's
three inputs (v, t, mm) fall back to the modality that is there, ICA is pretrained only when both
are usable, and a dataset with neither trains ID-only models or stops with a message.
"""

from __future__ import annotations

from dataclasses import dataclass

ID_ONLY_MODELS = ("lightgcn",)


@dataclass(frozen=True)
class Coverage:
    """One extracted feature table: its name and how many of the catalog's items have a vector."""

    name: str
    n_vectors: int
    n_items: int

    @property
    def share(self) -> float:
        return self.n_vectors / self.n_items if self.n_items else 0.0


@dataclass(frozen=True)
class ModalityPlan:
    image: str | None  # feature table names of the usable modalities
    text: str | None
    note: str  # one line for the log and the run's artifact; empty when both are used

    @property
    def pretrain(self) -> bool:
        return self.image is not None and self.text is not None

    @property
    def usable(self) -> list[str]:
        return [m for m, name in (("image", self.image), ("text", self.text)) if name]

    def features(self, mm: str | None) -> dict[str, str]:
        """The recommender's v/t/mm tables; a missing modality takes the one that is there."""
        if self.image is None and self.text is None:
            return {}
        text = self.text or self.image
        image = self.image or self.text
        return {"v": image, "t": text, "mm": mm or text}  # type: ignore[dict-item]


def _why(modality: str, cov: Coverage | None, min_coverage: float, off: bool) -> str | None:
    """Why a modality is left out, or None when it is usable."""
    if off:
        return f"{modality} off"
    if cov is None:
        return f"no {modality} feature"
    if cov.share < min_coverage or cov.n_vectors == 0:
        return f"{modality} vectors for {cov.n_vectors} of {cov.n_items} items ({cov.share:.0%} < {min_coverage:.0%})"
    return None


def plan_modalities(
    coverage: dict[str, Coverage], min_coverage: float, model: str, image_off: bool = False
) -> ModalityPlan:
    """Decide the inputs; raise ValueError when a content model has no content at all."""
    image_why = _why("image", coverage.get("image"), min_coverage, image_off)
    text_why = _why("text", coverage.get("text"), min_coverage, False)
    image = None if image_why else coverage["image"].name
    text = None if text_why else coverage["text"].name
    if image and text:
        return ModalityPlan(image, text, "")
    if image or text:
        kept = "text only" if text else "images only"
        return ModalityPlan(image, text, f"{kept} ({image_why or text_why}); ICA pretraining skipped")
    if model in ID_ONLY_MODELS:
        return ModalityPlan(None, None, f"ID-only ({image_why}; {text_why}): {model} uses no content")
    raise ValueError(
        f"no usable content for {model}: {image_why}; {text_why}. "
        "Give images with --images DIR, metadata with --meta FILE, or train an ID-only model with --model lightgcn"
    )
