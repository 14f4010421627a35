"""Load YAML and remember the line of every key and item, for error messages."""

from __future__ import annotations

from typing import Any

import yaml

LineMap = dict[tuple[str | int, ...], int]


def load_with_lines(text: str) -> tuple[Any, LineMap]:
    """Parse ``text``; return the data and a map from field path to its 1-based line.

    Duplicate keys are errors: YAML would silently keep the last one, which hides
    exactly the kind of typo a suite author needs to see.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: LineMap = {}
    if node is None:
        return None, lines
    return _Builder(lines).build(node, ()), lines


class _Builder:
    def __init__(self, lines: LineMap) -> None:
        self.lines = lines
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)  # merge keys (<<)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.constructor.construct_object(key_node, deep=True)
                if key in result:
                    raise yaml.constructor.ConstructorError(
                        "while loading a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark,
                    )
                child = (*path, key)
                self.lines[child] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.lines[child] = item.start_mark.line + 1
                items.append(self.build(item, child))
            return items
        return self.constructor.construct_object(node, deep=True)
