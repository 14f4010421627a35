"""Catalogue text written as prose in the source.

A plugin's ``description`` is a paragraph for ``paqbench plugins`` and the docs. Written as
one triple-quoted block and folded here, it reads and edits like text (no quoted fragments
whose joining spaces can go missing); the value is the same single-spaced line.
"""

from __future__ import annotations


def prose(text: str) -> str:
    """``text`` with every run of white space (line breaks and indentation included)
    folded to one space, and none at either end."""
    return " ".join(text.split())
