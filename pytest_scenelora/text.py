"""Untrusted text made safe to show: every layer that prints a name, metadata or model
output (progress lines, the CLI, the reports) goes through :func:`printable`."""

from __future__ import annotations

import re

#: Characters a terminal or a CI log acts on instead of showing: C0 and C1 controls (ESC
#: starts colour, cursor and hyperlink sequences) and the bidirectional overrides that
#: make text read differently from what it holds.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """*text* with every control character written out as its escape (``\\x1b``, ``\\n``).

    Names, metadata and sample texts come from files anyone can propose (adapter names,
    suite check names, scene ids, model output): shown through this, they print as
    themselves and cannot colour the terminal, move the cursor or open a hyperlink.
    """
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
