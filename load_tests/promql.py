"""Which metrics a PromQL expression reads, and whether a scrape exports them.

The dashboards and alert rules in ``deploy/monitoring`` must only name series that the
platform really exports; a renamed metric otherwise turns a panel silently empty and an
alert silently dead. This module extracts every metric selector (name and the label
names it matches on) from PromQL without a full parser, lists what a Prometheus text
scrape exports, and reports the differences.

The extractor understands the PromQL that dashboards use: functions and aggregations,
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` label lists, range
and subquery brackets, ``offset``, strings, and Grafana variables (``$model``,
``${x}``, ``$__rate_interval``). A selector without a metric name (``{__name__=~..}``)
is rejected: it cannot be checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

# Series every Prometheus server adds to each target by itself.
PROMETHEUS_SYNTHETIC = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)
# Labels every scraped series gets from Prometheus (target labels).
TARGET_LABELS = frozenset({"job", "instance", "__name__"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "@"}
)
_LABEL_LIST_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<var>\$\{[^}]*\}|\$\w+)
    | (?P<number>\d[\w.]*(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """An expression this extractor cannot read; the message names it and why."""


@dataclass(frozen=True)
class Selector:
    """One metric selector in an expression.

    Attributes:
        metric: the metric (series) name, e.g. ``equiserve_batch_atoms_bucket``.
        labels: label names matched on inside ``{...}`` (values are not checked:
            they are often Grafana variables).
    """

    metric: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Problem:
    """An expression that reads something the scrape does not export."""

    where: str
    expr: str
    message: str


def _tokens(expr: str) -> list[tuple[str, str]]:
    """Split an expression into (kind, text) tokens, dropping white space.

    Raises:
        PromQLError: on a character that starts no PromQL token.
    """
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(
                f"cannot read PromQL at offset {pos} ({expr[pos : pos + 20]!r}) in "
                f"{expr!r}; expected a name, number, string or operator"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _skip_group(tokens: list[tuple[str, str]], start: int, close: str) -> int:
    """Index just past the bracket that closes the one opened at ``start``."""
    opener = tokens[start][1]
    depth = 0
    for i in range(start, len(tokens)):
        text = tokens[i][1]
        if text == opener:
            depth += 1
        elif text == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise PromQLError(f"unbalanced {opener!r} in PromQL")


def _matcher_labels(tokens: list[tuple[str, str]], start: int, end: int) -> set[str]:
    """Label names inside the ``{...}`` spanning tokens[start:end]."""
    labels = set()
    for i in range(start + 1, end - 1):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < end else ""
        if kind == "ident" and nxt in {"=", "!=", "=~", "!~"}:
            labels.add(text)
    return labels


def selectors(expr: str) -> list[Selector]:
    """Every metric selector in a PromQL expression, in order of appearance.

    Args:
        expr: a PromQL expression, possibly with Grafana variables.

    Returns:
        One :class:`Selector` per metric name read (repeats kept).

    Raises:
        PromQLError: if the expression cannot be tokenised or holds a selector
            without a metric name.
    """
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""

        # label lists after by/without/on/...: names of labels, not metrics
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS:
            i = _skip_group(tokens, i + 1, ")") if nxt == "(" else i + 1
        # range or subquery brackets hold durations only
        elif text == "[":
            i = _skip_group(tokens, i, "]")
        elif text == "{":
            raise PromQLError(
                f"selector without a metric name in {expr!r}: name the metric "
                "(e.g. foo{...}) so that it can be checked against the scrape"
            )
        elif kind == "ident" and (nxt == "(" or nxt in {"by", "without"}):
            i += 1  # a function, or an aggregation (`sum by (x) (...)`)
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            labels: set[str] = set()
            i += 1
            if nxt == "{":
                end = _skip_group(tokens, i, "}")
                labels = _matcher_labels(tokens, i, end)
                i = end
            found.append(Selector(text, frozenset(labels)))
        else:
            i += 1
    return found


def exported_series(scrape_text: str) -> dict[str, frozenset[str] | None]:
    """Series names a Prometheus text scrape exports, with their label names.

    A family with no sample yet (a labelled metric never observed) still counts, its
    labels unknown (``None``): its type says which series it will export.

    Args:
        scrape_text: the body of a ``/metrics`` response.

    Returns:
        Series name -> label names seen on its samples, or ``None`` when unknown.
    """
    suffixes = {
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "counter": ("_total", "_created"),
    }
    out: dict[str, frozenset[str] | None] = {}
    for family in text_string_to_metric_families(scrape_text):
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, None)
        for sample in family.samples:
            seen = out.get(sample.name) or frozenset()
            out[sample.name] = seen | frozenset(sample.labels)
    return out


def check_expressions(
    expressions: Iterable[tuple[str, str]],
    exported: Mapping[str, frozenset[str] | None],
    recorded: Iterable[str] = (),
) -> list[Problem]:
    """Every metric or label an expression reads that the scrape lacks.

    Args:
        expressions: (where, expr) pairs, ``where`` naming the panel or rule.
        exported: from :func:`exported_series`.
        recorded: names produced by recording rules (readable, labels unchecked).

    Returns:
        The problems found, empty when every expression is satisfied.
    """
    known = set(recorded) | PROMETHEUS_SYNTHETIC
    problems: list[Problem] = []
    for where, expr in expressions:
        try:
            found = selectors(expr)
        except PromQLError as err:
            problems.append(Problem(where, expr, str(err)))
            continue
        if not found:
            problems.append(Problem(where, expr, "reads no metric at all"))
        for sel in found:
            if sel.metric in known:
                continue
            if sel.metric not in exported:
                problems.append(
                    Problem(where, expr, f"metric {sel.metric!r} is not exported")
                )
                continue
            labels = exported[sel.metric]
            missing = sel.labels - TARGET_LABELS - (labels or sel.labels)
            if missing:
                problems.append(
                    Problem(
                        where,
                        expr,
                        f"{sel.metric} has no label(s) {sorted(missing)}; "
                        f"it has {sorted(labels or ())}",
                    )
                )
    return problems


def rule_expressions(rules: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every rule of a Prometheus rules document."""
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("record") or rule.get("alert") or "?"
            yield f"rule {group.get('name')}/{name}", str(rule["expr"])


def recorded_names(rules: Mapping[str, Any]) -> list[str]:
    """Series names the recording rules of a rules document produce."""
    return [
        str(rule["record"])
        for group in rules.get("groups", [])
        for rule in group.get("rules", [])
        if "record" in rule
    ]


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<body>.*),\s*(?P<label>\w+)\s*\)\s*$")


def dashboard_expressions(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target and query variable of a Grafana dashboard.

    ``label_values(expr, label)`` variables yield ``expr{label=~".*"}`` so that both
    the metric and the label are checked.
    """
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r}", str(target["expr"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query)
        match = _LABEL_VALUES.match(query)
        if match:
            body, label = match.group("body"), match.group("label")
            if "{" in body:
                body = body.replace("{", "{" + label + '=~".*",', 1)
            else:
                body += "{" + label + '=~".*"}'
            yield f"variable {var.get('name')!r}", body
        elif query:
            yield f"variable {var.get('name')!r}", query


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """Panels, with those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))
