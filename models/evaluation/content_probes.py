"""What a content vector knows, measured on held-out items: linear probes and cross-modal retrieval.

Issue 15 asks whether the token ICA beats raw concatenation and the pooled ICA. Retrieval says
whether image and text land in one space; a linear probe says whether a vector still carries a
property a shopper cares about (colour, product type) in a linearly readable form. Both are read
on a held-out share of items the encoders never trained on, fixed by seed so every method and
every pretraining seed is judged on the same items.

Colour names in a catalogue are free text ('Heather Grey', 'Navy Blue', 'Multi-color', 'Noir',
'Red 2'); `normalize_colour` maps them to one of a few base colours by COLOUR_WORDS:
- the name is lower-cased and split into words (letters only);
- each word (plural 's' dropped) is looked up in COLOUR_WORDS (synonyms, shades and a few French / short forms map to
  a base colour; modifiers such as 'light', 'heather', 'dark' map to nothing);
- a name that says multi / multicolour / print / stripe / floral / plaid … is 'multi';
- one base colour among its words → that colour; two or more ('Black/White') → 'multi';
- none ('As shown', 'Picture color') → None: unknown, left out of the probe.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.evaluation.content_metrics import cross_modal_retrieval
from models.pretraining.pretrain import split_holdout

_BASES: dict[str, tuple[str, ...]] = {
    "black": ("black", "blk", "noir", "jet", "onyx", "ebony", "blacks"),
    "white": ("white", "wht", "ivory", "cream", "offwhite", "blanc", "snow", "pearl", "whites"),
    "grey": ("grey", "gray", "charcoal", "ash", "slate", "graphite", "silvergrey", "gris", "heathergrey", "greys"),
    "blue": (
        "blue",
        "navy",
        "royal",
        "royalblue",
        "skyblue",
        "ultramarine",
        "cobalt",
        "indigo",
        "denim",
        "chambray",
        "sapphire",
        "sky",
        "azure",
        "midnight",
        "blues",
        "bleu",
        "periwinkle",
        "cornflower",
        "navyblue",
    ),
    "teal": ("teal", "turquoise", "aqua", "jade", "cyan"),
    "red": (
        "red",
        "burgundy",
        "wine",
        "maroon",
        "cherry",
        "crimson",
        "scarlet",
        "rouge",
        "ruby",
        "poppy",
        "brick",
        "oxblood",
        "reds",
    ),
    "pink": ("pink", "rose", "blush", "fuchsia", "fuschia", "magenta", "berry", "raspberry", "salmon", "pinks"),
    "purple": ("purple", "violet", "lavender", "plum", "lilac", "mauve", "orchid", "grape", "eggplant", "amethyst"),
    "green": (
        "green",
        "olive",
        "mint",
        "lime",
        "army",
        "sage",
        "emerald",
        "kelly",
        "forest",
        "khakigreen",
        "hunter",
        "greens",
    ),
    "yellow": ("yellow", "mustard", "lemon", "canary"),
    "orange": ("orange", "coral", "peach", "rust", "tangerine", "apricot", "melon"),
    "beige": (
        "beige",
        "khaki",
        "tan",
        "nude",
        "sand",
        "taupe",
        "oatmeal",
        "camel",
        "natural",
        "stone",
        "champagne",
        "ecru",
        "linen",
    ),
    "brown": ("brown", "chocolate", "coffee", "mocha", "espresso", "cognac", "bronze", "chestnut"),
    "gold": ("gold", "golden"),
    "silver": ("silver", "metallic"),
}
COLOUR_WORDS: dict[str, str] = {w: base for base, words in _BASES.items() for w in words}
MULTI_WORDS = frozenset(
    {
        "multi",
        "multicolor",
        "multicolour",
        "multicolored",
        "multicoloured",
        "multicolors",
        "multicolours",
        "rainbow",
        "print",
        "printed",
        "stripe",
        "striped",
        "stripes",
        "floral",
        "plaid",
        "leopard",
        "paisley",
        "camo",
        "camouflage",
        "tie",
        "dye",
        "combo",
        "assorted",
        "mixed",
        "patterned",
        "check",
        "checked",
        "polka",
        "tiedye",
        "colorful",
        "colourful",
    }
)
_WORD = re.compile(r"[a-z]+")


def normalize_colour(name: str | None) -> str | None:
    """'Heather Grey' → 'grey', 'Navy Blue' → 'blue', 'Multi-color' → 'multi', 'As shown' → None."""
    if not name:
        return None
    text = name.lower()
    words = _WORD.findall(text)
    joined = "".join(words)
    if any(w in MULTI_WORDS for w in words) or joined.startswith("multi"):
        return "multi"
    bases = {COLOUR_WORDS[w] for w in (_singular(w) for w in words) if w in COLOUR_WORDS}
    if not bases and joined in COLOUR_WORDS:  # 'Off-White' → 'offwhite', 'Royal-Blue' → …
        bases = {COLOUR_WORDS[joined]}
    if len(bases) > 1:
        return "multi"
    return next(iter(bases), None)


def _singular(word: str) -> str:
    """'Grays', 'Oranges' → 'gray', 'orange' (a colour word in the plural)."""
    return word[:-1] if word not in COLOUR_WORDS and word.endswith("s") and word[:-1] in COLOUR_WORDS else word


def top_labels(labels: Sequence[str | None], k: int = 20) -> list[str | None]:
    """The labels, with all but the k most frequent (ties: alphabetical) replaced by None.

    A probe over hundreds of rare names would measure the rare names; the top k keep most items.
    """
    if k < 1:
        raise ValueError(f"top_labels: k must be ≥ 1, got {k}")
    counts = Counter(x for x in labels if x is not None)
    keep = {lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}
    return [x if x in keep else None for x in labels]


def holdout_mask(n: int, share: float = 0.1, seed: int = 0, eligible: np.ndarray | None = None) -> np.ndarray:
    """The held-out items (pretraining's own split_holdout, so benchmark and pretraining agree)."""
    both = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    return split_holdout(both, share, seed)


def _labelled(x: np.ndarray, y: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray([v if v is not None else "" for v in y], dtype=object)
    keep = labels != ""
    return np.asarray(x, dtype=np.float64)[keep], labels[keep]


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    return model.fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, seed: int, grid: Sequence[float] = (0.01, 0.1, 1.0)) -> float:
    """C of the probe by accuracy on a seeded 20% of the *training* items (the test part is never read)."""
    if len(grid) == 1:
        return float(grid[0])
    rng = np.random.default_rng([seed, 11])
    val = np.zeros(len(y), dtype=bool)
    val[rng.choice(len(y), max(1, len(y) // 5), replace=False)] = True
    if len(set(y[~val])) < 2:
        return float(grid[-1])
    scores = [float((_fit(x[~val], y[~val], c, seed).predict(x[val]) == y[val]).mean()) for c in grid]
    return float(grid[int(np.argmax(scores))])


def linear_probe(
    x_train: np.ndarray,
    y_train: Sequence[str | None],
    x_test: np.ndarray,
    y_test: Sequence[str | None],
    seed: int = 0,
    c: float | None = None,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardized features.

    Items whose label is None are left out of both parts. `c=None` picks C on the training part
    (choose_c); a test label never seen in training counts as a miss, as it would in use.
    """
    xtr, ytr = _labelled(x_train, y_train)
    xte, yte = _labelled(x_test, y_test)
    if len(set(ytr)) < 2:
        raise ValueError(f"linear_probe: the training part has {len(set(ytr))} label(s); a probe needs at least 2")
    if len(yte) == 0:
        raise ValueError("linear_probe: no test item has a label")
    c = choose_c(xtr, ytr, seed) if c is None else float(c)
    return float((_fit(xtr, ytr, c, seed).predict(xte) == yte).mean())


def majority_accuracy(y_train: Sequence[str | None], y_test: Sequence[str | None]) -> float:
    """The accuracy of always answering the training part's most common label: the probe's floor."""
    ytr = [v for v in y_train if v is not None]
    yte = [v for v in y_test if v is not None]
    if not ytr or not yte:
        raise ValueError("majority_accuracy: both parts need labelled items")
    top = Counter(ytr).most_common(1)[0][0]
    return sum(v == top for v in yte) / len(yte)


def retrieval(image: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """Held-out image→text / text→image Recall@1 and @10 and their means (rows = the same items)."""
    r = cross_modal_retrieval(image, text, ks=(1, 10))
    keys = (
        "mean_recall@1",
        "mean_recall@10",
        "i2t_recall@1",
        "t2i_recall@1",
        "i2t_recall@10",
        "t2i_recall@10",
        "chance@1",
        "chance@10",
    )
    return {k: float(r[k]) for k in keys}


def ridge_map(
    src_train: np.ndarray,
    tgt_train: np.ndarray,
    src_test: np.ndarray,
    seed: int = 0,
    alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
) -> np.ndarray:
    """Raw image vectors mapped into the raw text space by ridge regression fitted on training items.

    Raw concatenation has no shared space to retrieve in; this least-squares map is the honest
    raw baseline for retrieval. Alpha is chosen by held-in validation Recall@10 (a seeded 20% of
    the training items), then the map is refitted on all of them.
    """
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(a: float, x: np.ndarray, y: np.ndarray):
        return make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x, _unit(y))

    src_train, tgt_train = np.asarray(src_train, np.float64), np.asarray(tgt_train, np.float64)
    best = alphas[0]
    if len(alphas) > 1 and len(src_train) >= 20:
        rng = np.random.default_rng([seed, 13])
        val = np.zeros(len(src_train), dtype=bool)
        val[rng.choice(len(src_train), len(src_train) // 5, replace=False)] = True
        scores = [
            retrieval(fit(a, src_train[~val], tgt_train[~val]).predict(src_train[val]), tgt_train[val])[
                "mean_recall@10"
            ]
            for a in alphas
        ]
        best = alphas[int(np.argmax(scores))]
    return fit(best, src_train, tgt_train).predict(np.asarray(src_test, np.float64)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
