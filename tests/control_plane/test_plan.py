"""Unit tests of the pure parts: retry delays, expressions and templates."""

from __future__ import annotations

import pytest

from control_plane.expressions import (
    ExpressionError,
    condition_tree,
    evaluate,
    item_template,
    render,
    template_references,
)
from control_plane.plan import retry_delay_ms
from statepipe_api.v1 import statepipe_pb2 as pb


@pytest.mark.parametrize(
    ("strategy", "delays"),
    [
        ("fixed", [100, 100, 100, 100]),
        ("", [100, 100, 100, 100]),
        ("linear", [100, 200, 300, 400]),
        ("exponential", [100, 200, 400, 800]),
    ],
)
def test_retry_delays_by_strategy(strategy: str, delays: list[int]) -> None:
    policy = pb.RetryPolicy(max_attempts=5, backoff_ms=100, strategy=strategy)
    assert [retry_delay_ms(policy, attempt, 0.5) for attempt in range(1, 5)] == delays


def test_retry_delay_is_capped_and_jittered() -> None:
    policy = pb.RetryPolicy(backoff_ms=100, strategy="exponential", max_backoff_ms=250, jitter=0.2)
    assert retry_delay_ms(policy, 10, 0.5) == 250
    assert retry_delay_ms(policy, 10, 0.0) == 200  # -20 %
    assert retry_delay_ms(policy, 10, 1.0) == 300  # +20 %
    assert all(80 <= retry_delay_ms(policy, 1, r / 10) <= 120 for r in range(11))


SCOPE = {
    "input": {"x": 3, "name": "ada", "tags": ["a", "b"]},
    "nodes": {"fetch-page": {"output": {"ok": True, "items": [{"id": 7}]}, "status": "SUCCEEDED"}},
}


def test_a_whole_placeholder_keeps_its_type_and_embedded_ones_become_text() -> None:
    assert render("{{ input.x }}", SCOPE) == 3
    assert render("  {{input.tags}} ", SCOPE) == ["a", "b"]
    assert render("{{ nodes.fetch-page.output.items[0].id }}", SCOPE) == 7
    assert render("x={{ input.x }}, tags={{ input.tags }}", SCOPE) == 'x=3, tags=["a", "b"]'
    assert render({"a": ["{{ input.name }}", 1], "b": None}, SCOPE) == {"a": ["ada", 1], "b": None}
    assert render("no templates", SCOPE) == "no templates"
    # A string that starts and ends with placeholders holds two, not one.
    assert render("{{ input.x }} by {{ input.name }}", SCOPE) == "3 by ada"
    assert render("{{ input.tags }}{{ input.x }}", SCOPE) == '["a", "b"]3'


def test_a_map_item_template_moves_its_names_under_the_item_input() -> None:
    moved = item_template(
        {"a": "{{ item.url }}", "b": "#{{ index }} of {{ nodes.fetch-page.output.ok }}", "c": 1}
    )
    assert moved == {
        "a": "{{ input.item.url }}",
        "b": "#{{ input.index }} of {{ input.nodes['fetch-page'].output.ok }}",
        "c": 1,
    }
    scope = {"input": {"item": {"url": "u"}, "index": 2, **SCOPE}}
    assert render(moved, scope) == {"a": "u", "b": "#2 of true", "c": 1}


def test_conditions() -> None:
    def check(text: str) -> object:
        return evaluate(condition_tree(text), SCOPE, text)

    assert check("nodes.fetch-page.output.ok") is True
    assert check("{{ input.x > 2 and input.name == 'ada' }}") is True
    assert check("'c' in input.tags or not nodes['fetch-page'].output.ok") is False
    assert check("input.x >= 3 == 3") is True


def test_bad_expressions_are_named() -> None:
    with pytest.raises(ExpressionError, match="no key 'missing'"):
        render("{{ input.missing }}", SCOPE)
    with pytest.raises(ExpressionError, match="index 5 out of range"):
        render("{{ input.tags[5] }}", SCOPE)
    with pytest.raises(ExpressionError, match="Call is not allowed"):
        condition_tree("__import__('os').system('true')")
    with pytest.raises(ExpressionError, match="unknown name 'os'"):
        condition_tree("os.environ")
    with pytest.raises(ExpressionError, match="cannot parse"):
        condition_tree("input.x >")
    with pytest.raises(ExpressionError, match="q: "):
        template_references({"q": "{{ input. }}"})


def test_template_references_find_every_node() -> None:
    refs = template_references(
        {
            "a": "{{ nodes.one.output }} and {{ nodes['two'].output.x }}",
            "b": ["{{ nodes.three-3.status }}"],
            "c": "{{ input.x }}",
        }
    )
    assert refs == {"a": {"one", "two"}, "b[0]": {"three-3"}, "c": set()}
