"""Model aliases and groups as a plain object: what name routing plans for a request."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.core.aliases import (
    AliasError,
    AliasRule,
    Group,
    GroupMember,
    ModelResolver,
    Resolution,
    validate_aliases,
    validate_groups,
)
from fastproxy.core.balance import make_balancer

BACKENDS = {"openai.1", "openai.2", "anthropic"}

FAST = Group(
    "fast",
    "weighted",
    (GroupMember("openai.1", "gpt-4o-mini", 3), GroupMember("openai.2", "gpt-4o-mini", 1)),
)


def resolver(*rules: tuple[str, str], **groups: Group) -> ModelResolver:
    return ModelResolver([AliasRule(p, t) for p, t in rules], groups, backends=BACKENDS)


def test_back_references_rewrite_the_whole_name() -> None:
    r = resolver((r"^claude-(.*)$", r"anthropic:claude-\1"))
    assert r.resolve("claude-sonnet-4-5") == Resolution(
        "claude-sonnet-4-5", "anthropic:claude-sonnet-4-5", None, 0
    )
    named = resolver((r"(?P<family>gpt-4o)-latest", r"openai.2:\g<family>"))
    assert named.resolve("gpt-4o-latest").model == "openai.2:gpt-4o"


def test_patterns_match_the_whole_name_only() -> None:
    # No ^ or $ written, and still no match on a part of the name.
    r = resolver(("gpt-4", "openai.2:gpt-4.1"))
    assert r.resolve("gpt-4").model == "openai.2:gpt-4.1"
    assert r.resolve("gpt-4o").model == "gpt-4o"
    assert r.resolve("my-gpt-4").model == "my-gpt-4"


def test_first_match_wins() -> None:
    r = resolver(
        (r"gpt-4o-mini", "openai.2:gpt-4o-mini"),
        (r"gpt-4o.*", "openai.1:gpt-4o"),
        (r".*", "never"),
    )
    assert r.resolve("gpt-4o-mini") == Resolution("gpt-4o-mini", "openai.2:gpt-4o-mini", None, 0)
    assert r.resolve("gpt-4o-2024") == Resolution("gpt-4o-2024", "openai.1:gpt-4o", None, 1)
    assert r.resolve("other").rule == 2


def test_no_match_leaves_the_name_as_asked() -> None:
    r = resolver((r"claude-(.*)", r"anthropic:claude-\1"))
    res = r.resolve("gpt-4o")
    assert res == Resolution("gpt-4o", "gpt-4o")
    assert res.failover_keys == ("gpt-4o",)


def test_aliases_are_applied_once_not_chained() -> None:
    r = resolver(("a", "b"), ("b", "c"), ("c", "a"))
    assert r.resolve("a").model == "b"
    assert r.resolve("b").model == "c"


def test_case_sensitive_unless_asked() -> None:
    r = resolver(("claude", "x"), ("(?i)gpt", "y"))
    assert r.resolve("Claude").model == "Claude"
    assert r.resolve("GPT").model == "y"


def test_groups_resolve_their_members() -> None:
    r = resolver(fast=FAST)
    res = r.resolve("fast")
    assert res.group == FAST
    assert res.model == "fast"
    assert [(m.backend, m.model, m.weight) for m in res.group.members] == [
        ("openai.1", "gpt-4o-mini", 3),
        ("openai.2", "gpt-4o-mini", 1),
    ]
    assert res.group.member_weights() == {
        ("openai.1", "gpt-4o-mini"): 3,
        ("openai.2", "gpt-4o-mini"): 1,
    }


def test_a_group_name_wins_over_aliases_and_an_alias_may_name_a_group() -> None:
    r = resolver((r"fast", "openai.1:gpt-4o"), (r"gpt-4o-mini-.*", "fast"), fast=FAST)
    assert r.resolve("fast").group == FAST
    res = r.resolve("gpt-4o-mini-2024")
    assert res.group == FAST
    assert res.rule == 1
    assert res.failover_keys == ("gpt-4o-mini-2024", "fast")


def test_failover_keys_asked_name_first() -> None:
    r = resolver((r"claude-(.*)", r"anthropic:claude-\1"))
    assert r.resolve("claude-x").failover_keys == ("claude-x", "anthropic:claude-x")


def test_group_members_feed_the_balancer_weights() -> None:
    import random
    from collections import Counter
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class B:
        name: str

    group = resolver(fast=FAST).resolve("fast").group
    assert group is not None
    b = make_balancer(
        group.strategy, name=group.name, member_weights=group.member_weights(), rng=random.Random(9)
    )
    assert b is not None
    cs = [(B(m.backend), m.model) for m in group.members]
    counts = Counter(b.order(cs)[0][0].name for _ in range(1000))
    assert 0.70 <= counts["openai.1"] / 1000 <= 0.80, counts


def test_resolve_is_memoised_within_a_bound() -> None:
    r = ModelResolver([AliasRule("m(.*)", r"x\1")], cache_size=2)
    first = r.resolve("m1")
    assert r.resolve("m1") is first
    for i in range(10):
        assert r.resolve(f"m{i}").model == f"x{i}"
    assert len(r._cache) <= 2


def test_active_only_with_something_to_resolve() -> None:
    assert not ModelResolver().active
    assert ModelResolver([AliasRule("a", "b")]).active
    assert ModelResolver(groups={"fast": FAST}).active


# -- validation ------------------------------------------------------------------------


def test_invalid_regex_is_refused_naming_the_rule() -> None:
    with pytest.raises(AliasError) as info:
        resolver(("ok", "x"), (r"^claude-(.*$", r"anthropic:claude-\1"))
    (error,) = info.value.errors
    assert error.startswith("model_aliases[1].pattern: '^claude-(.*$' is not a valid regular")
    assert "missing ), unterminated subpattern" in error
    assert error.endswith(r"(rule '^claude-(.*$' -> 'anthropic:claude-\\1')")


def test_bad_back_references_are_refused_at_load_not_per_request() -> None:
    errors = validate_aliases(
        [
            AliasRule("(a)", r"\2"),
            AliasRule("(a)", r"\g<nope>"),
            AliasRule("(a)", r"\q"),
            AliasRule("(a)", r"x\1"),
        ]
    )
    assert len(errors) == 3
    assert errors[0].startswith(r"model_aliases[0].target: '\\2' is not a valid replacement")
    assert "invalid group reference 2" in errors[0]
    assert errors[1].startswith("model_aliases[1].target:")
    assert "nope" in errors[1]
    assert errors[2].startswith("model_aliases[2].target:")


def test_empty_pattern_or_target_refused() -> None:
    errors = validate_aliases([AliasRule("", "x"), AliasRule("a", " "), AliasRule("b", " c")])
    assert errors == [
        "model_aliases[0].pattern: got ''; a non-empty regular expression",
        "model_aliases[1].target: got ' '; a non-empty model name (rule 'a' -> ' ')",
        "model_aliases[2].target: ' c' has surrounding spaces (rule 'b' -> ' c')",
    ]


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(AliasError) as info:
        ModelResolver(
            [AliasRule("(", "x"), AliasRule("ok", "y"), AliasRule("[", "z")],
            {"g": Group("g", "fastest", ())},  # type: ignore[arg-type]
        )
    assert [e.split(":")[0] for e in info.value.errors] == [
        "model_aliases[0].pattern",
        "model_aliases[2].pattern",
        "groups['g'].strategy",
        "groups['g'].members",
    ]
    assert str(info.value) == "; ".join(info.value.errors)


def test_validate_groups_names_the_group_and_member() -> None:
    assert validate_groups({"fast": FAST}, BACKENDS) == []
    bad = Group(
        "g",
        "weighted",
        (
            GroupMember("openai.9", "m", 1),
            GroupMember("openai.1", "", 1),
            GroupMember("openai.1", "m", -2),
            GroupMember("openai.1", "m", 0),
        ),
    )
    assert validate_groups({"g": bad}, BACKENDS) == [
        "groups['g'].members[0].backend: got 'openai.9'; configured: anthropic, openai.1, openai.2",
        "groups['g'].members[1].model: got ''; a non-empty model name",
        "groups['g'].members[2].weight: got -2; allowed: a number >= 0",
        "groups['g'].members[3]: openai.1:m is listed twice",
    ]
    zero = Group("z", "weighted", (GroupMember("openai.1", "m", 0),))
    assert validate_groups({"z": zero}, BACKENDS) == [
        "groups['z'].members: every weight is 0; at least one must be positive"
    ]
    # Under another strategy a weight of 0 means nothing and is not an error.
    assert validate_groups({"z": Group("z", "least_busy", zero.members)}, BACKENDS) == []


def test_group_name_that_reads_as_backend_model_is_refused() -> None:
    g = Group("openai.1:fast", "ordered", (GroupMember("openai.1", "m"),))
    assert validate_groups({"openai.1:fast": g}, BACKENDS) == [
        "groups['openai.1:fast']: the name reads as backend:model for backend 'openai.1'; "
        "choose a name that does not start with a backend's name and ':'"
    ]
    assert validate_groups({"ft:fast": g}, BACKENDS) == []
    assert validate_groups({" g": g}, BACKENDS) == [
        "groups[' g']: a group name must be a non-empty name without surrounding spaces"
    ]


# -- properties ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    rest=st.text(alphabet="abc-.:0123456789", max_size=12),
    other=st.text(alphabet="xyz-.", max_size=12),
)
def test_back_reference_round_trip(prefix: str, rest: str, other: str) -> None:
    r = ModelResolver([AliasRule(rf"{re.escape(prefix)}-(.*)", rf"backend:{prefix}-\1")])
    assert r.resolve(f"{prefix}-{rest}").model == f"backend:{prefix}-{rest}"
    if not other.startswith(f"{prefix}-"):
        assert r.resolve(other) == Resolution(other, other)
