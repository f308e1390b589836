"""Files shipped with the package: corpus, scenes, registers and training data.

They live in the repository's ``fixtures/`` folder, installed as the
``pytest_scenelora.fixtures`` package, so a checkout and a wheel find them alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def fixtures_dir() -> Path:
    """The directory holding the shipped fixtures."""
    return Path(str(resources.files("pytest_scenelora.fixtures")))


def suites_dir() -> Path:
    """The shipped suites (the repository's ``suites/``)."""
    return Path(str(resources.files("pytest_scenelora.suites")))


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
