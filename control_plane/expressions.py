"""Templates and conditions over run data.

Params reference data with ``{{ input.x }}`` and ``{{ nodes.<id>.output... }}``.
A string that is exactly one ``{{ expr }}`` becomes the referenced value with
its type; otherwise each placeholder is replaced by its text (JSON for
non-strings). ``when`` conditions are the same expressions, with or without
braces, and may compare and combine: ``nodes.route.output.kind == "search"``.

Expressions are parsed with Python's ``ast`` and evaluated by a small
whitelist interpreter: names (``input``, ``nodes``), attribute and item
access, literals, comparisons, ``and``/``or``/``not``. Nothing else runs.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

# One placeholder: no "{{" or "}}" inside it, so that a whole string like
# "{{ a }} and {{ b }}" is two placeholders, not one reaching from the first
# "{{" to the last "}}".
PLACEHOLDER = re.compile(r"\{\{\s*((?:(?!\{\{|\}\}).)*?)\s*\}\}")
# nodes.some-id.output -> nodes["some-id"].output (ids may hold '-').
_DASHED_NODE = re.compile(r"\bnodes\.([A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)+)")
ROOTS = ("input", "nodes")
# A map node's item template (params.node) may also read the item and its
# index; each item renders it in its own child run (item_template).
ITEM_ROOTS = ("item", "index")


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated."""


_ALLOWED = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.Attribute,
    ast.Subscript,
    ast.Constant,
    ast.Compare,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.List,
    ast.Tuple,
)


def parse(expr: str, roots: tuple[str, ...] = ROOTS) -> ast.Expression:
    """Parses and checks an expression; raises ExpressionError naming the problem."""
    source = _DASHED_NODE.sub(lambda m: f'nodes["{m.group(1)}"]', expr.strip())
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"cannot parse {expr!r}: {err.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{expr!r}: {type(node).__name__} is not allowed in expressions")
        if isinstance(node, ast.Name) and node.id not in (*roots, "true", "false", "null"):
            where = (
                " (item and index exist in a map's params.node only)"
                if (node.id in ITEM_ROOTS)
                else ""
            )
            raise ExpressionError(
                f"{expr!r}: unknown name {node.id!r}; use {' or '.join(roots)}{where}"
            )
    return tree


def node_references(tree: ast.Expression) -> set[str]:
    """Ids of the nodes an expression reads (``nodes.<id>`` / ``nodes["<id>"]``)."""
    refs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Subscript) and _is_nodes(node.value):
            if isinstance(node, ast.Attribute):
                refs.add(node.attr)
            elif isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                refs.add(node.slice.value)
    return refs


def _is_nodes(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "nodes"


def evaluate(tree: ast.Expression, scope: Mapping[str, Any], text: str = "") -> Any:
    return _Eval(scope, text).visit(tree.body)


class _Eval:
    def __init__(self, scope: Mapping[str, Any], text: str) -> None:
        self.scope = scope
        self.text = text

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"{self.text!r}: {message}" if self.text else message)

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[node.id]
            return self.scope.get(node.id)
        if isinstance(node, ast.Attribute):
            return self.get(self.visit(node.value), node.attr, node)
        if isinstance(node, ast.Subscript):
            return self.get(self.visit(node.value), self.visit(node.slice), node)
        if isinstance(node, ast.List | ast.Tuple):
            return [self.visit(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            value = self.visit(node.operand)
            return (not value) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.BoolOp):
            values = (self.visit(v) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.visit(right_node)
                if not _compare(op, left, right):
                    return False
                left = right
            return True
        raise self.fail(f"{type(node).__name__} is not allowed")

    def get(self, container: Any, key: Any, node: ast.AST) -> Any:
        path = ast.unparse(node)
        if isinstance(container, Mapping):
            if key in container:
                return container[key]
            raise self.fail(f"{path}: no key {key!r} (keys: {sorted(map(str, container))[:10]})")
        if isinstance(container, list | tuple) and isinstance(key, int):
            if -len(container) <= key < len(container):
                return container[key]
            raise self.fail(f"{path}: index {key} out of range (length {len(container)})")
        raise self.fail(f"{path}: cannot look up {key!r} in {type(container).__name__}")


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    try:
        match op:
            case ast.Eq():
                return bool(a == b)
            case ast.NotEq():
                return bool(a != b)
            case ast.Lt():
                return bool(a < b)
            case ast.LtE():
                return bool(a <= b)
            case ast.Gt():
                return bool(a > b)
            case ast.GtE():
                return bool(a >= b)
            case ast.In():
                return a in b
            case ast.NotIn():
                return a not in b
            case ast.Is():
                return a is b
            case ast.IsNot():
                return a is not b
    except TypeError as err:
        raise ExpressionError(f"cannot compare {a!r} and {b!r}: {err}") from None
    raise ExpressionError(f"unsupported comparison {type(op).__name__}")


def iter_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from iter_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{path}[{i}]")


def template_references(
    value: Any, roots: tuple[str, ...] = ROOTS, prefix: str = ""
) -> dict[str, set[str]]:
    """For each string with placeholders: the node ids it references. Checks syntax."""
    refs: dict[str, set[str]] = {}
    for path, text in iter_strings(value, prefix):
        for match in PLACEHOLDER.finditer(text):
            try:
                tree = parse(match.group(1), roots)
            except ExpressionError as err:
                raise ExpressionError(f"{path}: {err}") from None
            refs.setdefault(path, set()).update(node_references(tree))
    return refs


def condition_tree(when: str, roots: tuple[str, ...] = ROOTS) -> ast.Expression:
    """The parsed form of a ``when`` condition (braces optional)."""
    text = when.strip()
    match = PLACEHOLDER.fullmatch(text)
    return parse(match.group(1) if match else text, roots)


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Resolves every placeholder inside a JSON value."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return evaluate(parse(whole.group(1)), scope, whole.group(1))

        def text(match: re.Match[str]) -> str:
            result = evaluate(parse(match.group(1)), scope, match.group(1))
            return result if isinstance(result, str) else json.dumps(result)

        return PLACEHOLDER.sub(text, value)
    if isinstance(value, Mapping):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value


class _UnderInput(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in (*ROOTS, *ITEM_ROOTS):
            return ast.Attribute(value=ast.Name("input", ast.Load()), attr=node.id, ctx=ast.Load())
        return node


def item_template(value: Any) -> Any:
    """A map's item template as the one node of each item's child run, whose
    input is {"item", "index", "input", "nodes"} (children.item_input):
    every placeholder's names move under ``input`` (``item.url`` becomes
    ``input.item.url``, ``nodes.a.output`` ``input.nodes.a.output``). Each item
    renders the template once, in its child run, from its own input: a value
    is never rendered twice."""
    if isinstance(value, str):
        if "{{" not in value:
            return value

        def moved(match: re.Match[str]) -> str:
            tree = _UnderInput().visit(parse(match.group(1), (*ROOTS, *ITEM_ROOTS)))
            return "{{ " + ast.unparse(tree) + " }}"

        return PLACEHOLDER.sub(moved, value)
    if isinstance(value, Mapping):
        return {k: item_template(v) for k, v in value.items()}
    if isinstance(value, list):
        return [item_template(v) for v in value]
    return value
