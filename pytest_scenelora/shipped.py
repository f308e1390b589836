"""Files shipped with the package: corpus, scenes, registers and training data.

They live in the repository's ``fixtures/`` and ``suites/`` folders, installed as the
``pytest_scenelora.fixtures`` and ``pytest_scenelora.suites`` packages. A source
checkout that shadows the installed package (``python -m pytest_scenelora.cli.main`` run
from the repository root) has no such subpackages on disk, so the folders next to
the package are used instead: a checkout and a wheel find the same files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _shipped(package: str, folder: str) -> Path:
    try:
        return Path(str(resources.files(f"pytest_scenelora.{package}")))
    except ModuleNotFoundError:
        in_checkout = _CHECKOUT / folder
        if in_checkout.is_dir():
            return in_checkout
        raise


def fixtures_dir() -> Path:
    """The directory holding the shipped fixtures."""
    return _shipped("fixtures", "fixtures")


def suites_dir() -> Path:
    """The shipped suites (the repository's ``suites/``)."""
    return _shipped("suites", "suites")


def corpus_files() -> list[Path]:
    """The tiny base's pretraining corpus, in a fixed order."""
    return sorted((fixtures_dir() / "corpus").glob("*.txt"))


def scenes_file() -> Path:
    return fixtures_dir() / "scenes.yaml"


def registers_file() -> Path:
    return fixtures_dir() / "registers.yaml"


def topics_file() -> Path:
    return fixtures_dir() / "topics.yaml"


def training_data_file() -> Path:
    return fixtures_dir() / "train" / "roles.jsonl"
