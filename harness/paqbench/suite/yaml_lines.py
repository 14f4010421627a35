"""Load YAML and remember the line of every key and item, for error messages."""

from __future__ import annotations

from typing import Any

import yaml

LineMap = dict[tuple[str | int, ...], int]

#: Most nodes a suite may expand to once aliases are followed. Real suites have hundreds;
#: a "billion laughs" document has billions and would exhaust memory while expanding.
MAX_EXPANDED_NODES = 100_000


def load_with_lines(text: str) -> tuple[Any, LineMap]:
    """Parse ``text``; return the data and a map from field path to its 1-based line.

    Duplicate keys are errors: YAML would silently keep the last one, which hides
    exactly the kind of typo a suite author needs to see.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: LineMap = {}
    if node is None:
        return None, lines
    _check_expanded_size(node)
    return _Builder(lines).build(node, ()), lines


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_EXPANDED_NODES`, or refer to themselves.

    Composing keeps an alias as a second reference to one node, so counting with a memo
    is linear in the file's size; only building Python objects would expand it.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the node that contains it (a recursive document)", node.start_mark)
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values "
                    "(an alias bomb?); refusing to expand it", child.start_mark)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


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
