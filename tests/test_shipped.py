"""The shipped fixtures and suites are found from an installed package and from a checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytest_scenelora import shipped

CHECKOUT = Path(__file__).resolve().parents[1]


def test_the_installed_package_finds_its_fixtures_and_suites() -> None:
    assert (shipped.fixtures_dir() / "scenes.yaml").is_file()
    assert (shipped.suites_dir() / "registers.yaml").is_file()
    assert [p.name for p in shipped.corpus_files()] == ["en.txt", "ru.txt"]
    assert shipped.training_data_file().is_file()


def test_a_checkout_that_shadows_the_installed_package_finds_them_too() -> None:
    """`python -m pytest_scenelora.cli.main` run from the repository root imports the
    checkout, where fixtures/ and suites/ are not subpackages; -S keeps the installed
    copy (and its import hooks) out, as a non-editable install would."""
    code = ("from pytest_scenelora import shipped; "
            "print(shipped.fixtures_dir()); print(shipped.suites_dir())")
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=CHECKOUT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(CHECKOUT / "fixtures"), str(CHECKOUT / "suites")]
