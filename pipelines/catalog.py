"""Where the public Amazon review releases live: one catalog of download URLs and mirrors.

The McAuley lab has moved its files between hosts several times (snap.stanford.edu,
jmcauley.ucsd.edu, deepyeti.ucsd.edu, datarepo.eng.ucsd.edu, mcauleylab.ucsd.edu, Hugging Face).
Keeping every known location of a file in one place lets `download.fetch` fall back from a dead
host to a live one, and lets a user see at a glance what the project would fetch. Any URL,
`file://` URL or local path can replace these (ingest's --meta/--reviews), so nothing here is
required to be reachable.

Mirror caveat: the Hugging Face copy of the 2023 release serves *uncompressed* JSONL under the
same logical name. It is listed last; readers should open files by sniffing the gzip magic
bytes (1f 8b) rather than trusting the `.gz` suffix.
"""

from __future__ import annotations

import difflib
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

KINDS = ("meta", "reviews")
LOCAL_FIX = "pass --reviews/--meta with local files (download them elsewhere)"  # what a user does when offline
HOSTS_ENV = "ANCHORREC_AMAZON_HOSTS"
"""Comma-separated base URLs that replace a release's known hosts (a lab's local mirror laid out
like the original directories, or a test's unreachable host); the Hugging Face copy is then not tried."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a release: the main URL, fallbacks in order, and the name it is stored under."""

    kind: str
    url: str
    mirrors: list[str] = field(default_factory=list)
    filename: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RemoteFile.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.url:
            raise ValueError("RemoteFile.url must not be empty")
        if not self.filename:
            object.__setattr__(self, "filename", self.url.rstrip("/").rsplit("/", 1)[-1])

    @property
    def urls(self) -> list[str]:
        """Main URL first, then mirrors: the order `fetch` tries them in."""
        return [self.url, *self.mirrors]


# --- 2014: "Image-based recommendations on styles and substitutes" (McAuley et al., SIGIR'15) ---
# Page: http://jmcauley.ucsd.edu/data/amazon/links.html (index_2014.html); files on SNAP.
CATEGORIES_2014 = [
    "Books",
    "Electronics",
    "Movies_and_TV",
    "CDs_and_Vinyl",
    "Clothing_Shoes_and_Jewelry",
    "Home_and_Kitchen",
    "Kindle_Store",
    "Sports_and_Outdoors",
    "Cell_Phones_and_Accessories",
    "Health_and_Personal_Care",
    "Toys_and_Games",
    "Video_Games",
    "Tools_and_Home_Improvement",
    "Beauty",
    "Apps_for_Android",
    "Office_Products",
    "Pet_Supplies",
    "Automotive",
    "Grocery_and_Gourmet_Food",
    "Patio_Lawn_and_Garden",
    "Baby",
    "Digital_Music",
    "Musical_Instruments",
    "Amazon_Instant_Video",
]
_HOSTS_2014 = [
    "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles",
    "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles",
    "http://jmcauley.ucsd.edu/data/amazon/categoryFiles",
]

# --- 2018: "Justifying recommendations using distantly-labeled reviews" (Ni et al., EMNLP'19) ---
# Page: https://nijianmo.github.io/amazon/index.html. The files first lived on deepyeti.ucsd.edu
# and jmcauley.ucsd.edu/data/amazon_v2; datarepo.eng.ucsd.edu is where the lab serves them now,
# so it is tried first.
CATEGORIES_2018 = [
    "AMAZON_FASHION",
    "All_Beauty",
    "Appliances",
    "Arts_Crafts_and_Sewing",
    "Automotive",
    "Books",
    "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry",
    "Digital_Music",
    "Electronics",
    "Gift_Cards",
    "Grocery_and_Gourmet_Food",
    "Home_and_Kitchen",
    "Industrial_and_Scientific",
    "Kindle_Store",
    "Luxury_Beauty",
    "Magazine_Subscriptions",
    "Movies_and_TV",
    "Musical_Instruments",
    "Office_Products",
    "Patio_Lawn_and_Garden",
    "Pet_Supplies",
    "Prime_Pantry",
    "Software",
    "Sports_and_Outdoors",
    "Tools_and_Home_Improvement",
    "Toys_and_Games",
    "Video_Games",
]
_HOSTS_2018 = [
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2",
    "http://deepyeti.ucsd.edu/jianmo/amazon",
    "https://jmcauley.ucsd.edu/data/amazon_v2",
]

# --- 2023: "Bridging Language and Items for Retrieval and Recommendation" (Hou et al., 2024) ---
# Page: https://amazon-reviews-2023.github.io/ ; HF: McAuley-Lab/Amazon-Reviews-2023.
CATEGORIES_2023 = [
    "All_Beauty",
    "Amazon_Fashion",
    "Appliances",
    "Arts_Crafts_and_Sewing",
    "Automotive",
    "Baby_Products",
    "Beauty_and_Personal_Care",
    "Books",
    "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry",
    "Digital_Music",
    "Electronics",
    "Gift_Cards",
    "Grocery_and_Gourmet_Food",
    "Handmade_Products",
    "Health_and_Household",
    "Health_and_Personal_Care",
    "Home_and_Kitchen",
    "Industrial_and_Scientific",
    "Kindle_Store",
    "Magazine_Subscriptions",
    "Movies_and_TV",
    "Musical_Instruments",
    "Office_Products",
    "Patio_Lawn_and_Garden",
    "Pet_Supplies",
    "Software",
    "Sports_and_Outdoors",
    "Subscription_Boxes",
    "Tools_and_Home_Improvement",
    "Toys_and_Games",
    "Video_Games",
    "Unknown",
]
_HOSTS_2023 = [
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw",
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw",
]
_HF_2023 = "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main/raw"

_CATEGORIES = {"2014": CATEGORIES_2014, "2018": CATEGORIES_2018, "2023": CATEGORIES_2023}
HOMEPAGES = {
    "2014": "http://jmcauley.ucsd.edu/data/amazon/links.html",
    "2018": "https://nijianmo.github.io/amazon/index.html",
    "2023": "https://amazon-reviews-2023.github.io/",
}


def releases() -> list[str]:
    return list(_CATEGORIES)


def _check_release(release: str | int) -> str:
    name = str(release).strip()
    if name not in _CATEGORIES:
        close = difflib.get_close_matches(name, list(_CATEGORIES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown Amazon release {release!r}: known releases are {releases()}{hint}")
    return name


def categories(release: str | int) -> list[str]:
    """Category names of a release, spelled as in its file names."""
    return list(_CATEGORIES[_check_release(release)])


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_").replace("&", "and")


def canonical_category(release: str | int, category: str) -> str:
    """The catalog's spelling of `category` (case, spaces and hyphens forgiven) or ValueError."""
    known = categories(release)
    by_key = {_key(c): c for c in known}
    if _key(category) in by_key:
        return by_key[_key(category)]
    close = difflib.get_close_matches(_key(category), list(by_key), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(by_key[c]) for c in close)}?" if close else ""
    raise ValueError(f"unknown category {category!r} for Amazon {release}{hint} Known categories: {', '.join(known)}")


def hosts(known: list[str]) -> list[str]:
    """The base URLs to try: $ANCHORREC_AMAZON_HOSTS when set, else the release's known hosts."""
    override = [h.strip().rstrip("/") for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
    return override or known


def unreachable(urls: list[str], timeout: float = 5.0) -> list[tuple[str, str]]:
    """(url, why) for every URL when none of their hosts resolves and accepts a connection; [] as soon
    as one does (the download then handles HTTP errors, retries and mirrors).

    Called before any work (cli preflight), so a machine without network is told in a second, not
    after the workflow engine started. Only the stdlib: the check must cost nothing when online.
    Skipped behind a proxy, where the machine itself is expected not to reach the hosts.
    """
    if urllib.request.getproxies():
        return []
    failures = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return []
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                return []
        except socket.gaierror:
            failures.append((url, f"unreachable (name does not resolve: cannot resolve {parts.hostname!r})"))
        except ConnectionRefusedError:
            failures.append((url, "unreachable (connection refused)"))
        except OSError as exc:
            failures.append((url, f"unreachable ({exc.strerror or type(exc).__name__})"))
    return failures


def resolve(release: str | int, category: str) -> list[RemoteFile]:
    """The metadata and review files of one category: [meta, reviews], each with its mirrors."""
    rel = _check_release(release)
    cat = canonical_category(rel, category)
    if rel == "2014":
        meta, reviews = f"meta_{cat}.json.gz", f"reviews_{cat}_5.json.gz"
        meta_urls = [f"{h}/{meta}" for h in hosts(_HOSTS_2014)]
        review_urls = [f"{h}/{reviews}" for h in hosts(_HOSTS_2014)]
    elif rel == "2018":
        meta, reviews = f"meta_{cat}.json.gz", f"{cat}_5.json.gz"
        meta_urls = [f"{h}/metaFiles2/{meta}" for h in hosts(_HOSTS_2018)]
        review_urls = [f"{h}/categoryFilesSmall/{reviews}" for h in hosts(_HOSTS_2018)]
    else:
        meta, reviews = f"meta_{cat}.jsonl.gz", f"{cat}.jsonl.gz"
        meta_urls = [f"{h}/meta_categories/{meta}" for h in hosts(_HOSTS_2023)]
        review_urls = [f"{h}/review_categories/{reviews}" for h in hosts(_HOSTS_2023)]
        if not os.environ.get(HOSTS_ENV, "").strip():
            meta_urls.append(f"{_HF_2023}/meta_categories/meta_{cat}.jsonl")
            review_urls.append(f"{_HF_2023}/review_categories/{cat}.jsonl")
    return [
        RemoteFile("meta", meta_urls[0], meta_urls[1:], meta),
        RemoteFile("reviews", review_urls[0], review_urls[1:], reviews),
    ]
