"""The node budget: what a query would return, counted before it runs (GitHub's GraphQL rule).

Each list of objects counts its size times the sizes of the lists it sits in: a list's size
is its `first` argument, else that argument's default, else the most the field can return in
this index (`intervalSamples`: the run's intervals; `topExamples` with no `first`: its top k).
Scalar arrays (`tokens`, `activations`, `binEdges`, ...) are values of the node that holds
them, not lists of nodes. So
`features(first: 100) { edges { node { topExamples(first: 20) { tokens } } } }` costs
100 + 100 x 20 = 2,100 nodes, and a query over the budget is refused with its cost before
any of it runs.

The rule reads arguments from literals and variables. Validation results are cached per
document and rule, so the rule class is made per distinct *cost-relevant* variable values
(`first`, `topK`, the length of `text`): a REST call that only varies `$index` reuses one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    Undefined,
    ValidationContext,
    ValidationRule,
    Visitor,
    get_named_type,
    is_leaf_type,
    parse,
    value_from_ast_untyped,
    visit,
)
from strawberry.extensions import AddValidationRules

from saedex.config import IndexConfig, ServeConfig
from saedex.data import SaeInfo
from saedex.steering import SteerRequest
from saedex.store.matches import MAX_CHILDREN

NODE_LIMIT = "MAX_NODE_LIMIT_EXCEEDED"

# Arguments that change a query's cost: a list's size, the text live inference tokenises, its k.
COST_ARGS = frozenset({"first", "topK", "text", "nTokens", "nShifts"})


@dataclass(frozen=True)
class ListSizes:
    """The most items each list can hold in this index when no `first` says otherwise."""

    saes: int = 1
    top_k: int = IndexConfig.top_k
    n_logits: int = IndexConfig.n_logits
    n_neighbours: int = IndexConfig.n_neighbours
    n_intervals: int = IndexConfig.n_intervals
    examples_per_interval: int = IndexConfig.examples_per_interval
    max_page_size: int = ServeConfig.max_page_size
    max_text_chars: int = ServeConfig.max_text_chars
    max_window_features: int = ServeConfig.max_window_features
    max_steer_features: int = ServeConfig.max_steer_features
    max_steer_new_tokens: int = ServeConfig.max_steer_new_tokens

    @classmethod
    def of(cls, saes: Iterable[SaeInfo], config: ServeConfig) -> ListSizes:
        """The largest of each size over the index's runs (their stored settings)."""
        runs = [s.settings or {} for s in saes]

        def most(name: str) -> int:
            default = getattr(IndexConfig, name)
            return max((int(r.get(name) or default) for r in runs), default=default)

        return cls(
            saes=max(1, len(runs)),
            top_k=most("top_k"),
            n_logits=most("n_logits"),
            n_neighbours=most("n_neighbours"),
            n_intervals=most("n_intervals"),
            examples_per_interval=most("examples_per_interval"),
            max_page_size=config.max_page_size,
            max_text_chars=config.max_text_chars,
            max_window_features=config.max_window_features,
            max_steer_features=config.max_steer_features,
            max_steer_new_tokens=config.max_steer_new_tokens,
        )


Args = Mapping[str, Any]
SHIFTS = SteerRequest.n_shifts  # tokens raised/lowered per step when nShifts is not given
Bound = Callable[[ListSizes, Args], "int | None"]

# How many items a list of objects holds when no `first` of its own sets it, by
# "Type.field"; `args` are the cost arguments of the field and the fields around it (a
# connection's `first` sizes its `edges`; `text` arrives as its length). A list missing here
# counts `max_page_size` (tests/test_limits.py checks that none is missing).
BOUNDS: dict[str, Bound] = {
    "Query.saes": lambda s, a: s.saes,
    "FeatureConnection.edges": lambda s, a: a.get("first"),
    "Feature.topExamples": lambda s, a: s.top_k,
    "Feature.topLogits": lambda s, a: s.n_logits,
    "Feature.bottomLogits": lambda s, a: s.n_logits,
    "Feature.neighbours": lambda s, a: s.n_neighbours,
    "Feature.intervalSamples": lambda s, a: s.n_intervals,
    "IntervalSample.examples": lambda s, a: s.examples_per_interval,
    "ActiveFeatures.positions": lambda s, a: a.get("text") or s.max_text_chars,
    "ActiveFeatures.features": lambda s, a: a.get("topK"),
    "TokenFeatures.features": lambda s, a: a.get("topK"),
    "DocumentWindow.features": lambda s, a: s.max_window_features,
    # explanations (saedex/store/edits.py) are not capped per feature: counted as one page
    "Feature.explanations": lambda s, a: s.max_page_size,
    "Steering.features": lambda s, a: s.max_steer_features,
    "Completion.steps": lambda s, a: a.get("nTokens") or s.max_steer_new_tokens,
    "SteerStep.raised": lambda s, a: a.get("nShifts", SHIFTS),
    "SteerStep.lowered": lambda s, a: a.get("nShifts", SHIFTS),
    "Ablation.raised": lambda s, a: a.get("nShifts", SHIFTS),
    "Ablation.lowered": lambda s, a: a.get("nShifts", SHIFTS),
    # feature splitting (issue 17): matches are paged by `first`; a family has a parent per SAE
    "Feature.matches": lambda s, a: 10,
    "FeatureFamily.parents": lambda s, a: s.saes,
    "FeatureFamily.children": lambda s, a: MAX_CHILDREN,
}


def reduce(value: Any) -> int | None:
    """What of an argument's value the cost depends on: an integer, or a text's length."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


class Counter:
    """Walks one operation's selections, with its fragments and variables."""

    def __init__(self, context: ValidationContext, sizes: ListSizes, variables: Args):
        self.context = context
        self.sizes = sizes
        self.variables = variables
        self.values: dict[str, Any] = dict(variables)

    def operation(self, node: OperationDefinitionNode) -> int:
        """The operation's cost; variables it is not given take their declared defaults."""
        root = self.context.schema.get_root_type(node.operation)
        defaults = {
            d.variable.name.value: reduce(value_from_ast_untyped(d.default_value))
            for d in node.variable_definitions or ()
            if d.default_value is not None
        }
        self.values = {**defaults, **self.variables}
        return self.selections(node.selection_set, root, 1, {}, frozenset()) if root else 0

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLNamedType,
        times: int,
        around: Args,
        seen: frozenset[str],
    ) -> int:
        """The cost of a selection set that is returned `times` times; `around` holds the
        cost arguments of the fields it sits in, `seen` the fragments it sits in."""
        total = 0
        for field, owner, inside in self.fields(selection_set, parent, seen):
            definition = getattr(owner, "fields", {}).get(field.name.value)
            if definition is None or field.selection_set is None:
                continue  # unknown fields are other rules' business; leaves cost nothing
            named = get_named_type(definition.type)
            if is_leaf_type(named):
                continue
            args = {**around, **self.arguments(field, definition.args)}
            size = 1
            if is_list(definition.type):
                size = self.size(f"{owner.name}.{field.name.value}", args, definition.args)
                total += times * size
            total += self.selections(field.selection_set, named, times * size, args, inside)
        return total

    def fields(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType, seen: frozenset[str]
    ) -> Iterator[tuple[FieldNode, GraphQLNamedType, frozenset[str]]]:
        """The fields selected on `parent`, through inline fragments and fragment spreads,
        each with the fragments it sits in (a fragment inside itself is not followed)."""
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection, parent, seen
                continue
            inside = seen
            if isinstance(selection, InlineFragmentNode):
                inner, condition = selection, selection.type_condition
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                inner = self.context.get_fragment(name)
                if inner is None or name in seen:
                    continue  # unknown or cyclic: reported by graphql-core's own rules
                inside, condition = seen | {name}, inner.type_condition
            else:
                continue
            owner = self.context.schema.get_type(condition.name.value) if condition else parent
            if owner is not None:
                yield from self.fields(inner.selection_set, owner, inside)

    def arguments(self, field: FieldNode, definitions: Mapping[str, Any]) -> dict[str, Any]:
        """The field's cost arguments: given (literal or variable), else their defaults."""
        given = {a.name.value: a.value for a in field.arguments or ()}
        out = {}
        for name in COST_ARGS & definitions.keys():
            value = Undefined
            if name in given:
                value = value_from_ast_untyped(given[name], self.values)
            if value is Undefined:
                value = definitions[name].default_value
            out[name] = None if value is Undefined else reduce(value)
        return out

    def size(self, coordinate: str, args: Args, definitions: Mapping[str, Any]) -> int:
        first = args.get("first") if "first" in definitions else None
        if first is None and coordinate in BOUNDS:
            first = BOUNDS[coordinate](self.sizes, args)
        return self.sizes.max_page_size if first is None else max(0, first)


def is_list(type_: Any) -> bool:
    return isinstance(type_.of_type if isinstance(type_, GraphQLNonNull) else type_, GraphQLList)


def message(cost: int, limit: int) -> str:
    count = f"{cost:,}" if cost < 10**15 else f"{cost:.3g}"  # nested lists multiply fast
    return (
        f"this query could return {count} nodes; the limit is {limit:,} (each list counts its "
        "`first` times the lists it sits in): ask for fewer items, or split the query"
    )


@functools.lru_cache(maxsize=512)
def budget_rule(limit: int, sizes: ListSizes, variables: tuple) -> type[ValidationRule]:
    """The rule for one set of cost-relevant variable values (cached: the same values give
    the same class, so strawberry's ValidationCache finds the document's earlier result)."""
    values = dict(variables)

    class NodeBudgetRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> Any:
            cost = Counter(self.context, sizes, values).operation(node)
            if cost > limit:
                error = GraphQLError(message(cost, limit), node, extensions={"code": NODE_LIMIT})
                self.report_error(error)
            return self.SKIP

    return NodeBudgetRule


@functools.lru_cache(maxsize=512)
def cost_variables(query: str) -> frozenset[str]:
    """The variables a document passes to cost arguments (parsed once per distinct query)."""
    names: set[str] = set()

    class Collect(Visitor):
        def enter_argument(self, node: Any, *_: Any) -> None:
            if node.name.value in COST_ARGS and node.value.kind == "variable":
                names.add(node.value.name.value)

    visit(parse(query, no_location=True), Collect())
    return frozenset(names)


class NodeBudget(AddValidationRules):
    """Adds the node-budget rule once the request's variables are known (at validation)."""

    def __init__(self, limit: int, sizes: ListSizes):
        super().__init__([])
        self.limit = limit
        self.sizes = sizes

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        variables = ec.variables or {}
        names = cost_variables(ec.query) if ec.query and variables else frozenset()
        key = tuple(sorted((n, reduce(variables[n])) for n in names if n in variables))
        rule = budget_rule(self.limit, self.sizes, key)
        ec.validation_rules = (*ec.validation_rules, rule)
        yield
