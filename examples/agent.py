"""An agent-shaped workflow with no LLM and no network: plan, use a tool, answer.

Run it with::

    statepipe run examples/agent.py --input '{"question": "what is (17 + 4) * 3?"}'
    statepipe run examples/agent.py --input '{"question": "who wrote dune?"}'

``plan`` is a rule-based planner standing in for a model: a question holding
arithmetic goes to the ``calculate`` tool, anything else to ``search`` over a
small local knowledge base. The two tool nodes carry ``when`` conditions on the
plan's output, so exactly one runs and the other is SKIPPED; ``answer`` joins
both branches (a skipped node counts as done and its output is null).
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from statepipe import Retry, Workflow

wf = Workflow(
    "agent",
    description="Rule-based planner choosing between a calculator and a local search",
    input_schema={
        "type": "object",
        "properties": {"question": {"type": "string", "minLength": 1}},
        "required": ["question"],
    },
)

KNOWLEDGE: dict[str, str] = {
    "dune": "Dune is a 1965 science fiction novel by Frank Herbert.",
    "python": "Python is a programming language by Guido van Rossum, first released in 1991.",
    "postgres": "PostgreSQL is an open source relational database begun at Berkeley in 1986.",
    "pi": "Pi is the ratio of a circle's circumference to its diameter, about 3.14159.",
    "everest": "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
}
_STOP_WORDS = frozenset("a an and by in is it of on the to was what when where which who".split())

# Arithmetic: digits, operators, parentheses and spaces, with at least one operator.
_ARITHMETIC = re.compile(r"[-+*/%^().\d\s]*\d\s*[-+*/%^]\s*[-+*/%^().\d\s]*\d[\s)]*")
_WORDS = re.compile(r"[a-z0-9]+")

_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@wf.node
def plan(ctx: Any, question: str) -> dict[str, Any]:
    """Chooses the tool: ``calculate`` for arithmetic, else ``search``."""
    match = _ARITHMETIC.search(question)
    if match:
        step = {"tool": "calculate", "expression": match.group(0).strip().replace("^", "**")}
    else:
        step = {"tool": "search", "query": question.strip().rstrip("?")}
    ctx.log(f"plan: use {step['tool']}")
    return step


@wf.node(when="nodes.plan.output.tool == 'calculate'")
def calculate(ctx: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """The calculator tool: evaluates + - * / // % ** on numbers, nothing else."""
    expression = plan["expression"]
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    ctx.tool_call("calculator", {"expression": expression}, result=value)
    return {"expression": expression, "value": value}


@wf.node(when="nodes.plan.output.tool == 'search'", retry=Retry(max_attempts=2, backoff_ms=50))
def search(ctx: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """The search tool: entries named in the query, else the one sharing most words."""
    words = set(_WORDS.findall(plan["query"].lower())) - _STOP_WORDS
    hits = [key for key in KNOWLEDGE if key in words]
    if not hits:
        shared = {
            key: len(words & set(_WORDS.findall(text.lower()))) for key, text in KNOWLEDGE.items()
        }
        best = max(shared, key=lambda key: shared[key])
        hits = [best] if shared[best] else []
    results = [{"key": key, "text": KNOWLEDGE[key]} for key in hits]
    ctx.tool_call("search", {"query": plan["query"]}, result=[r["key"] for r in results])
    return {"query": plan["query"], "results": results}


@wf.node
def answer(
    ctx: Any,
    question: str,
    plan: dict[str, Any],
    calculate: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Joins both branches: whichever ran has an output, the skipped one is None."""
    if calculate is not None:
        text = f"{calculate['expression']} = {calculate['value']}"
    elif search is not None and search["results"]:
        text = search["results"][0]["text"]
    else:
        text = "I don't know."
    ctx.log(text)
    return {"question": question, "tool": plan["tool"], "answer": text}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("exponent too large")
        result: float = _OPERATORS[type(node.op)](left, right)
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        result = _OPERATORS[type(node.op)](_evaluate(node.operand))
        return result
    raise ValueError(f"not arithmetic: {ast.unparse(node)}")
