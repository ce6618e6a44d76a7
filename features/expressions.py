"""Row expressions: parsed once from the user's text into plain, serialisable plan nodes.

A feature written as ``expr="amount * fx_rate"`` becomes a small tree of :class:`Expr` nodes that every engine
evaluates from the plan, never from the user's text. The grammar is a safe subset of Python expressions:

- column names, and literals (int, float, str, bool);
- arithmetic ``+ - * / %`` (``+`` also joins strings), unary ``-``;
- comparisons ``== != < <= > >=``, and ``and``, ``or``, ``not``;
- functions: ``abs(x)``, ``coalesce(a, b, ...)``, ``lower(s)``, ``upper(s)``, ``length(s)``,
  ``if_else(cond, a, b)``, ``is_null(x)``, ``cast(x, "float64")``.

Typing is strict: an int mixes with a float (the result is a float), anything else needs ``cast``.
Semantics follow SQL, identically in Spark (``offline.spark.translate``) and in :mod:`features.evaluator`, as
``tests/conformance`` proves on generated data:

- any null input gives a null result, except ``coalesce``, ``is_null`` and the three-valued (Kleene)
  ``and``/``or``; ``if_else(null, a, b)`` gives ``b``;
- every operator is total, no row ever raises: ``x / 0`` and ``x % 0`` are null, int64 overflow
  (``+ - *``, unary ``-``, ``abs``) is null, a ``cast`` of a value that does not convert is null;
- ``/`` always gives a float64; ``%`` follows Python's sign rule (``-7 % 3 == 2``, ``-3.0 % 3.0 == 0.0``);
- float64 arithmetic is IEEE 754, bit for bit (``-0.0`` included; which NaN is unspecified); comparisons use
  SQL's total order: ``NaN == NaN``, NaN above every number including infinity, ``-0.0 == 0.0``; an int64
  compared with a float64 is converted to float64 first;
- strings are Unicode code points (``length``, ordering); ``lower``/``upper`` use Unicode 16 full case
  mappings without locale (``upper("ß") == "SS"``);
- ``cast`` from text accepts only ``[+-]digits`` (int64), decimal/scientific numbers, ``inf``, ``infinity``,
  ``nan`` (float64), ``t true y yes 1 f false n no 0`` (bool), case-insensitive, with surrounding ASCII
  spaces/controls; float64 to int64 truncates (null outside int64, NaN, infinities); numbers to bool are
  ``x != 0``; ``cast(True, "string")`` is ``"true"``; timestamps print as ``YYYY-MM-DD HH:MM:SS[.ffffff]``
  (UTC, trailing zeros dropped). ``cast(<float64>, "string")`` is not supported (its text depends on the
  JVM): the engines raise ``UnsupportedExpressionError``.

The full statement, with the reasons, is in ``docs/ARCHITECTURE.md`` ("Expression semantics").
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from features.dtypes import DType
from features.errors import ExpressionError

ARITHMETIC_OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Mod: "mod"}
COMPARISON_OPS = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}
FUNCTIONS = ("abs", "coalesce", "lower", "upper", "length", "if_else", "is_null", "cast")

# How deeply plan nodes may nest (``a + b`` is 2 levels; a sum of n columns, n). The parser, the evaluator and
# the Spark translation recurse once per level (a few Python frames each: far inside Python's limit of 1000),
# and Spark converts each level into several nested JVM nodes: a sum of 80 int64 columns overflowed the
# default 1 MB JVM thread stack where 60 passed (measured), so 50 leaves a margin.
MAX_EXPRESSION_DEPTH = 50


@dataclass(frozen=True, slots=True)
class Expr:
    """Base of plan expression nodes. ``dtype`` is the inferred result type."""

    dtype: DType

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def columns(self) -> frozenset[str]:
        """Source columns this expression reads."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Column(Expr):
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": "column", "name": self.name, "dtype": self.dtype.value}

    def columns(self) -> frozenset[str]:
        return frozenset({self.name})


@dataclass(frozen=True, slots=True)
class Literal(Expr):
    value: Any

    def to_dict(self) -> dict[str, Any]:
        return {"node": "literal", "value": self.value, "dtype": self.dtype.value}

    def columns(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """An operator or function applied to arguments: ``op`` is ``add``, ``eq``, ``and``, ``coalesce``..."""

    op: str
    args: tuple[Expr, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"node": "call", "op": self.op, "args": [a.to_dict() for a in self.args], "dtype": self.dtype.value}

    def columns(self) -> frozenset[str]:
        return frozenset().union(*(a.columns() for a in self.args))


def expr_from_dict(data: Mapping[str, Any]) -> Expr:
    """Rebuild an expression tree from its plan form."""
    dtype = DType(data["dtype"])
    node = data["node"]
    if node == "column":
        return Column(dtype, data["name"])
    if node == "literal":
        return Literal(dtype, data["value"])
    if node == "call":
        return Call(dtype, data["op"], tuple(expr_from_dict(a) for a in data["args"]))
    raise ValueError(f"unknown expression node {node!r}")


def parse_expression(text: str, columns: Mapping[str, DType]) -> Expr:
    """Parse ``text`` against the available ``columns`` and infer its type.

    >>> parse_expression("amount * 2", {"amount": DType.FLOAT64}).dtype
    <DType.FLOAT64: 'float64'>
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        if "too many nested parentheses" not in exc.msg:
            raise ExpressionError(f"not a valid expression: {exc.msg}", text) from None
        raise ExpressionError(
            f"expression too deeply nested: more than Python can parse, at most {MAX_EXPRESSION_DEPTH} levels",
            _shortened(text),
        ) from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on extreme nesting
        raise ExpressionError(
            f"expression too deeply nested: more than Python can parse, at most {MAX_EXPRESSION_DEPTH} levels",
            _shortened(text),
        ) from None
    _check_depth(_written_depth(tree.body), text)
    expr = _Parser(text.strip(), columns).visit(tree.body)
    check_expression_depth(expr, text)  # ``a and b and ...`` nests one level per term: only the plan shows it
    return expr


def expression_depth(expr: Expr) -> int:
    """How many levels of plan nodes nest in ``expr`` (a column is 1), counted without recursion."""
    deepest = 0
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, Call):
            stack.extend((arg, depth + 1) for arg in node.args)
    return deepest


def check_expression_depth(expr: Expr, text: str | None = None) -> None:
    """Refuse an expression nested deeper than :data:`MAX_EXPRESSION_DEPTH`: every engine calls it before it
    recurses over a plan's expression, so none can hit Python's recursion limit, whatever the plan holds."""
    _check_depth(expression_depth(expr), text if text is not None else _describe(expr))


def _check_depth(depth: int, text: str) -> None:
    if depth > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(
            f"expression too deeply nested: {depth} levels, at most {MAX_EXPRESSION_DEPTH}; "
            f"split it into simpler features",
            _shortened(text),
        )


def _written_depth(node: ast.expr) -> int:
    """The nesting of the syntax tree as the plan will nest it, counted without recursion (the parser
    recurses, so this runs first). ``src.field`` and ``-1`` are one level, as their plan nodes are."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(current, ast.Attribute):
            continue
        if isinstance(current, ast.UnaryOp) and isinstance(current.operand, ast.Constant):
            continue
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current) if isinstance(child, ast.expr))
    return deepest


def _shortened(text: str, limit: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-limit // 2 :]}"


def _describe(expr: Expr) -> str:
    return f"{type(expr).__name__.lower()} of type {expr.dtype.value}"


class _Parser:
    def __init__(self, text: str, columns: Mapping[str, DType]) -> None:
        self.text = text
        self.available = columns

    def fragment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or self.text

    def fail(self, message: str, node: ast.AST) -> ExpressionError:
        return ExpressionError(message, self.fragment(node))

    def visit(self, node: ast.expr) -> Expr:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.fail(
                f"unsupported syntax {type(node).__name__}; use columns, literals, "
                f"+ - * / %, comparisons, and/or/not, or the functions {', '.join(FUNCTIONS)}",
                node,
            )
        result: Expr = method(node)
        return result

    def visit_Name(self, node: ast.Name) -> Expr:
        if node.id not in self.available:
            known = ", ".join(sorted(self.available))
            raise self.fail(f"unknown column '{node.id}'; known: {known}", node)
        return Column(self.available[node.id], node.id)

    def visit_Attribute(self, node: ast.Attribute) -> Expr:
        """``source.field``: how on-demand features name a request field or another view's feature."""
        if not isinstance(node.value, ast.Name):
            raise self.fail("only 'source.field' references are supported", node)
        name = f"{node.value.id}.{node.attr}"
        if name not in self.available:
            known = ", ".join(sorted(self.available))
            raise self.fail(f"unknown input '{name}'; known: {known}", node)
        return Column(self.available[name], name)

    def visit_Constant(self, node: ast.Constant) -> Expr:
        value = node.value
        if isinstance(value, bool):
            return Literal(DType.BOOL, value)
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise self.fail("integer literal out of int64 range", node)
            return Literal(DType.INT64, value)
        if isinstance(value, float):
            return Literal(DType.FLOAT64, value)
        if isinstance(value, str):
            return Literal(DType.STRING, value)
        raise self.fail(f"unsupported literal {value!r}", node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Expr:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            if not operand.dtype.is_numeric:
                raise self.fail(f"unary minus needs a number, got {operand.dtype.value}", node)
            if isinstance(operand, Literal):
                return Literal(operand.dtype, -operand.value)
            return Call(operand.dtype, "neg", (operand,))
        if isinstance(node.op, ast.Not):
            self.require(operand, DType.BOOL, node)
            return Call(DType.BOOL, "not", (operand,))
        raise self.fail("unsupported unary operator", node)

    def visit_BinOp(self, node: ast.BinOp) -> Expr:
        op = ARITHMETIC_OPS.get(type(node.op))
        if op is None:
            raise self.fail("unsupported operator; use + - * / %", node)
        left, right = self.visit(node.left), self.visit(node.right)
        if op == "add" and left.dtype is DType.STRING and right.dtype is DType.STRING:
            return Call(DType.STRING, "concat", (left, right))
        if not (left.dtype.is_numeric and right.dtype.is_numeric):
            raise self.fail(
                f"cannot apply '{op}' to {left.dtype.value} and {right.dtype.value}; cast one side first", node
            )
        if op == "div":
            return Call(DType.FLOAT64, op, (left, right))
        both_int = left.dtype is DType.INT64 and right.dtype is DType.INT64
        return Call(DType.INT64 if both_int else DType.FLOAT64, op, (left, right))

    def visit_Compare(self, node: ast.Compare) -> Expr:
        if len(node.ops) != 1:
            raise self.fail("chained comparisons are not supported; combine with 'and'", node)
        op = COMPARISON_OPS.get(type(node.ops[0]))
        if op is None:
            raise self.fail("unsupported comparison; use == != < <= > >=", node)
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        comparable = left.dtype is right.dtype or (left.dtype.is_numeric and right.dtype.is_numeric)
        if not comparable:
            raise self.fail(f"cannot compare {left.dtype.value} with {right.dtype.value}; cast one side", node)
        return Call(DType.BOOL, op, (left, right))

    def visit_BoolOp(self, node: ast.BoolOp) -> Expr:
        op = "and" if isinstance(node.op, ast.And) else "or"
        args = [self.visit(v) for v in node.values]
        for arg, raw in zip(args, node.values, strict=True):
            self.require(arg, DType.BOOL, raw)
        result = args[0]
        for arg in args[1:]:
            result = Call(DType.BOOL, op, (result, arg))
        return result

    def visit_Call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise self.fail(f"unknown function; valid choices: {', '.join(FUNCTIONS)}", node.func)
        if node.keywords:
            raise self.fail("keyword arguments are not supported", node)
        name = node.func.id
        if name == "cast":
            return self.cast(node)
        args = tuple(self.visit(a) for a in node.args)
        return self.function(name, args, node)

    def cast(self, node: ast.Call) -> Expr:
        if len(node.args) != 2 or not isinstance(node.args[1], ast.Constant):
            raise self.fail('cast takes a value and a type name, e.g. cast(x, "float64")', node)
        try:
            target = DType.parse(str(node.args[1].value))
        except ValueError as exc:
            raise self.fail(str(exc), node.args[1]) from None
        value = self.visit(node.args[0])
        if target is DType.TIMESTAMP or (value.dtype is DType.TIMESTAMP and target is not DType.STRING):
            raise self.fail(f"cannot cast {value.dtype.value} to {target.value}", node)
        if value.dtype is DType.FLOAT64 and target is DType.STRING:
            # The JVM and Python print some doubles differently: no engine could promise the same text.
            raise self.fail("cannot cast float64 to string (engines print floats differently); round first", node)
        return Call(target, "cast", (value,))

    def function(self, name: str, args: tuple[Expr, ...], node: ast.Call) -> Expr:
        def arity(n: int) -> None:
            if len(args) != n:
                raise self.fail(f"{name}() takes {n} argument(s), got {len(args)}", node)

        if name == "abs":
            arity(1)
            if not args[0].dtype.is_numeric:
                raise self.fail(f"abs() needs a number, got {args[0].dtype.value}", node)
            return Call(args[0].dtype, name, args)
        if name in ("lower", "upper"):
            arity(1)
            self.require(args[0], DType.STRING, node)
            return Call(DType.STRING, name, args)
        if name == "length":
            arity(1)
            self.require(args[0], DType.STRING, node)
            return Call(DType.INT64, name, args)
        if name == "is_null":
            arity(1)
            return Call(DType.BOOL, name, args)
        if name == "if_else":
            arity(3)
            self.require(args[0], DType.BOOL, node)
            return Call(self.common_type(args[1:], node), name, args)
        if name == "coalesce":
            if len(args) < 2:
                raise self.fail("coalesce() takes at least 2 arguments", node)
            return Call(self.common_type(args, node), name, args)
        raise self.fail(f"unknown function {name}", node)  # unreachable: FUNCTIONS is checked first

    def common_type(self, args: tuple[Expr, ...], node: ast.AST) -> DType:
        types = {a.dtype for a in args}
        if len(types) == 1:
            return types.pop()
        if types == {DType.INT64, DType.FLOAT64}:
            return DType.FLOAT64
        names = ", ".join(sorted(t.value for t in types))
        raise self.fail(f"arguments mix types ({names}); cast them to one type", node)

    def require(self, expr: Expr, dtype: DType, node: ast.AST) -> None:
        if expr.dtype is not dtype:
            raise self.fail(f"expected {dtype.value}, got {expr.dtype.value}", node)
