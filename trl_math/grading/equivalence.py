"""Safe, bounded symbolic equality: our replacement for ``parse_expr`` + ``simplify``.

Model output is untrusted, so it never reaches ``eval``, ``sympify`` or ``parse_expr``.  This
module tokenises the small arithmetic language graders need (numbers, ``+ - * / ** ^``,
parentheses, implicit multiplication, ``sqrt``, ``pi``, ``!`` and one-letter symbols),
parses it with a recursive-descent parser into a tuple tree, and decides ``a - b == 0`` by
evaluating the tree with mpmath at fixed complex sample points for the symbols (a
polynomial-identity style test: what ``simplify(a - b) == 0`` proves, we observe).

Everything is bounded: input length, token count, nesting depth, digits per literal,
exponent size and factorial argument.  Anything outside the language or the bounds raises
``Unsupported`` and callers count it as "not equal", so a call costs well under a
millisecond whatever the input.

``python_syntax=True`` reproduces how the course's ``parse_expr`` (standard transformations
+ implicit multiplication/application, ``^`` -> ``**``) reads an already-normalised string:
multi-letter names split into one-letter symbols, ``x(2)`` is ``2x``, ``2e`` is ``2*e``.
"""

from __future__ import annotations

import cmath
import math
import random
import re
import threading

import mpmath

__all__ = ["Unsupported", "parse_math", "evaluate", "is_zero", "equal_values",
           "course_sympy_equal", "should_allow_eval"]

MAX_CHARS = 2000
MAX_TOKENS = 600
MAX_DEPTH = 60
MAX_DIGITS = 400          # per numeric literal
MAX_POW_EXP = 4096        # |integer exponent| allowed for |base| not in {0, 1}
MAX_RESULT_BITS = 1 << 20  # magnitude of any intermediate (|log2|)
MAX_FACTORIAL = 500
WORK_PREC = 256           # bits
N_POINTS = 3


class Unsupported(ValueError):
    """Input outside the safe language or its bounds: callers treat as "not equal"."""


# ---------------------------------------------------------------------------------------
# Tokens

_NUM = re.compile(r"(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?")

# Names sympy's namespace binds to objects we do not model (csc, frac, ln, oo, re, ...):
# equality involving them is reported unsupported rather than guessed.
_FOREIGN_NAMES = frozenset(
    "csc eye ff fft frac fu gff hn1 hn2 im jn li ln nan ntt oo re rf yn zoo "
    "as if in is or and not def del for try with from else elif pass true false none "
    "lambda while class yield raise break global import return assert except finally "
    "continue nonlocal await async".split()
)
_GREEK_UNSPLIT = frozenset({"mu", "nu", "xi"})  # two-letter Greek names parse_expr keeps


def _tokenize(s: str, python_syntax: bool) -> list[tuple[str, object]]:
    """Tokens: ("num", (text, is_float)), ("name", str), ("op", str)."""
    if len(s) > MAX_CHARS:
        raise Unsupported("too long")
    toks: list[tuple[str, object]] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c.isdigit() and not c.isascii():
            raise Unsupported("non-ascii digit")
        if c.isascii() and (c.isdigit() or (c == "." and i + 1 < n and s[i + 1].isdigit())):
            m = _NUM.match(s, i)
            text = m.group()
            if text[-1] in "jJ":
                raise Unsupported("imaginary literal")
            digits = text.replace("_", "")
            if len(digits) > MAX_DIGITS:
                raise Unsupported("long literal")
            is_float = "." in digits or "e" in digits or "E" in digits
            if not is_float and len(digits) > 1 and digits[0] == "0" and digits.strip("0"):
                raise Unsupported("leading zero")  # a SyntaxError for Python as well
            toks.append(("num", (digits, is_float)))
            i = m.end()
            continue
        if c.isalpha() or c == "_":
            j = i + 1
            while j < n and (s[j].isalnum() or s[j] == "_"):
                j += 1
            name = s[i:j]
            if not name.isidentifier():
                raise Unsupported("bad name")
            toks.append(("name", name))
            i = j
            continue
        if c == "*" and s.startswith("**", i):
            toks.append(("op", "**"))
            i += 2
            continue
        if c == "^":
            toks.append(("op", "**"))
            i += 1
            continue
        if c in "+-*/()!":
            toks.append(("op", c))
            i += 1
            continue
        raise Unsupported(f"character {c!r}")
        # ",", "=", "<", "[", "|", unicode symbols, ...: outside the language
    if len(toks) > MAX_TOKENS:
        raise Unsupported("too many tokens")
    return toks


def _expand_names(toks, python_syntax: bool):
    """Resolve names: pi, sqrt, symbols; parse_expr's splitting of multi-letter names."""
    out = []
    for kind, val in toks:
        if kind != "name":
            out.append((kind, val))
            continue
        name = val
        if name == "pi":
            out.append(("const", "pi"))
        elif name == "sqrt":
            out.append(("func", "sqrt"))
        elif name.lower() in _FOREIGN_NAMES and name == name.lower():
            raise Unsupported(f"name {name}")
        elif len(name) == 1 or "_" in name or name in _GREEK_UNSPLIT or not python_syntax:
            if not python_syntax and len(name) > 1:
                raise Unsupported(f"name {name}")
            out.append(("sym", name))
        else:  # parse_expr's split_symbols: letters one by one, digit runs as numbers
            k = 0
            while k < len(name):
                ch = name[k]
                if ch.isdigit():
                    m = k
                    while m < len(name) and name[m].isdigit():
                        m += 1
                    if not name[k:m].isascii():
                        raise Unsupported("non-ascii digit")
                    out.append(("num", (name[k:m], False)))
                    k = m
                else:
                    out.append(("sym", ch))
                    k += 1
    # implicit multiplication between adjacent operands
    res = []
    for tok in out:
        if res:
            prev = res[-1]
            ends = prev[0] in ("num", "sym", "const") or prev == ("op", ")") or prev == ("op", "!")
            starts = tok[0] in ("num", "sym", "const", "func") or tok == ("op", "(")
            if ends and starts:
                res.append(("op", "*"))
        res.append(tok)
    return res


# ---------------------------------------------------------------------------------------
# Parser: Python precedence.  expr := term (("+"|"-") term)*; term := factor (("*"|"/") factor)*
# factor := ("+"|"-") factor | power; power := postfix ("**" factor)?; postfix := atom "!"*

class _P:
    def __init__(self, toks):
        self.t = toks
        self.i = 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expr(self, d):
        if d > MAX_DEPTH:
            raise Unsupported("too deep")
        node = self.term(d)
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            node = ("add" if op == "+" else "sub", node, self.term(d))
        return node

    def term(self, d):
        node = self.factor(d)
        while self.peek() in (("op", "*"), ("op", "/")):
            op = self.take()[1]
            node = ("mul" if op == "*" else "div", node, self.factor(d))
        return node

    def factor(self, d):
        if d > MAX_DEPTH:
            raise Unsupported("too deep")
        tok = self.peek()
        if tok in (("op", "+"), ("op", "-")):
            self.take()
            inner = self.factor(d + 1)
            return ("neg", inner) if tok[1] == "-" else inner
        return self.power(d)

    def power(self, d):
        base = self.postfix(d)
        if self.peek() == ("op", "**"):
            self.take()
            return ("pow", base, self.factor(d + 1))
        return base

    def postfix(self, d):
        node = self.atom(d)
        while self.peek() == ("op", "!"):
            self.take()
            node = ("fact", node)
        return node

    def atom(self, d):
        kind, val = self.take()
        if kind == "num":
            return ("num", val)
        if kind == "sym":
            return ("sym", val)
        if kind == "const":
            return ("pi",)
        if kind == "func":
            if self.peek() != ("op", "("):
                raise Unsupported("function without parentheses")
            self.take()
            arg = self.expr(d + 1)
            if self.take() != ("op", ")"):
                raise Unsupported("unbalanced")
            return ("sqrt", arg)
        if (kind, val) == ("op", "("):
            node = self.expr(d + 1)
            if self.take() != ("op", ")"):
                raise Unsupported("unbalanced")
            return node
        raise Unsupported("syntax")


def parse_math(s: str, python_syntax: bool = True):
    """Parse ``s`` into a tuple tree; ``Unsupported`` if outside the safe language."""
    toks = _expand_names(_tokenize(s, python_syntax), python_syntax)
    if not toks:
        raise Unsupported("empty")
    p = _P(toks)
    node = p.expr(0)
    if p.i != len(toks):
        raise Unsupported("trailing tokens")
    return node


# ---------------------------------------------------------------------------------------
# Evaluation

_local = threading.local()


def _ctx() -> mpmath.ctx_mp.MPContext:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = mpmath.MPContext()  # private context: thread-safe precision
        ctx.prec = WORK_PREC
        _local.ctx = ctx
    return ctx


def _float_prec_bits(digits: str) -> int:
    mant = digits.lower().split("e")[0].replace(".", "").lstrip("0")
    return max(53, int(len(mant) * 3.3219) + 1)


_INEXACT = 1  # derived from a decimal literal (sympy Float semantics)
_ATOM = 2     # involves pi, a symbol or an irrational power


class _Eval:
    """Evaluates a tree at one point as ``coefficient * atoms``, mimicking sympy.

    sympy keeps irrational atoms (``pi``, ``sqrt(3)``, symbols) symbolic and does the
    arithmetic of their numeric coefficients in Rationals, or in 53-bit Floats once a
    decimal literal is involved (an exact operand is rounded first, ``a/b`` is
    ``a * (1/b)``).  So ``pi/4 - pi/4.`` is 0 but ``224*sqrt(3)/3 - 224*sqrt(3)/3.`` is
    not.  Values are ``(coef, atoms, flags)``; like terms are recognised numerically.
    ``scale`` is the largest operand magnitude met in a sum (for the exact-case tolerance).
    """

    def __init__(self, ctx, point: dict):
        self.ctx = ctx
        self.point = point
        self.scale = ctx.mpf(0)
        self.bits = 53
        self.one = ctx.mpf(1)

    def _check(self, v):
        ctx = self.ctx
        if not ctx.isfinite(v):
            raise Unsupported("non-finite")
        if v != 0 and abs(ctx.mag(v)) > MAX_RESULT_BITS:
            raise Unsupported("magnitude")
        return v

    def _round(self, v):
        ctx = self.ctx
        with ctx.workprec(self.bits):
            return +v if isinstance(v, ctx.mpf) else ctx.mpc(+v.real, +v.imag)

    def _same(self, a, b) -> bool:
        return abs(a - b) <= abs(a) * self.ctx.mpf(2) ** (-(WORK_PREC - 40))

    def _coef_op(self, fn, fa, fb, a, b):
        if (fa | fb) & _INEXACT:
            return self._round(self._check(fn(self._round(a), self._round(b))))
        return self._check(fn(a, b))

    def ev(self, node):
        ctx = self.ctx
        op = node[0]
        one = self.one
        if op == "num":
            digits, is_float = node[1]
            if is_float:
                self.bits = max(self.bits, _float_prec_bits(digits))
                return self._round(ctx.mpf(digits)), one, _INEXACT
            return ctx.mpf(digits), one, 0
        if op == "sym":
            if node[1] not in self.point:
                raise Unsupported(f"no value for symbol {node[1]}")
            return one, self.point[node[1]], _ATOM
        if op == "pi":
            return one, +ctx.pi, _ATOM
        if op == "neg":
            c, a, f = self.ev(node[1])
            return -c, a, f
        if op == "add" or op == "sub":
            ca, aa, fa = self.ev(node[1])
            cb, ab, fb = self.ev(node[2])
            if op == "sub":
                cb = -cb
            m = max(abs(ca * aa), abs(cb * ab))
            if m > self.scale:
                self.scale = m
            if self._same(aa, ab):
                return self._coef_op(lambda x, y: x + y, fa, fb, ca, cb), aa, fa | fb
            v = self._check(ca * aa + cb * ab)
            return one, v, fa | fb | _ATOM
        if op == "mul":
            ca, aa, fa = self.ev(node[1])
            cb, ab, fb = self.ev(node[2])
            return (self._coef_op(lambda x, y: x * y, fa, fb, ca, cb),
                    self._check(aa * ab), fa | fb)
        if op == "div":
            ca, aa, fa = self.ev(node[1])
            cb, ab, fb = self.ev(node[2])
            if cb == 0 or ab == 0:
                raise Unsupported("division by zero")
            inv = self._round(one / cb) if fb & _INEXACT else one / cb
            return (self._coef_op(lambda x, y: x * y, fa, fb, ca, inv),
                    self._check(aa / ab), fa | fb)
        if op == "pow":
            ca, aa, fa = self.ev(node[1])
            cb, ab, fb = self.ev(node[2])
            if fb & _ATOM:
                return one, self._check(self._pow(ca * aa, cb * ab)), fa | fb | _ATOM
            e = cb
            if ctx.im(e) == 0 and ctx.re(e) == int(ctx.re(e)):
                if fa & _ATOM and fb & _INEXACT:
                    raise Unsupported("float exponent on a symbolic base")
                n = int(ctx.re(e))
                c = self._pow(ca, ctx.mpf(n))
                if fa & _INEXACT:
                    c = self._round(c)
                return c, self._check(self._pow(aa, ctx.mpf(n))), fa | fb
            if fb & _INEXACT or fa & _INEXACT:
                if fa & _ATOM:
                    raise Unsupported("float exponent on a symbolic base")
                return self._round(self._pow(self._round(ca), self._round(e))), one, fa | fb
            v = self._check(self._pow(ca * aa, e))
            if not fa & _ATOM and v == int(ctx.re(v)) and ctx.im(v) == 0:
                return v, one, fa | fb  # a rational power that came out exact
            return one, v, fa | fb | _ATOM
        if op == "sqrt":
            c, a, f = self.ev(node[1])
            v = ctx.sqrt(c * a)
            if f & _INEXACT and not f & _ATOM:
                return self._round(v), one, f
            if not f & _ATOM:
                r = ctx.re(v)
                if ctx.im(v) == 0 and r == int(r):
                    return v, one, f
            return one, v, f | _ATOM
        if op == "fact":
            c, a, f = self.ev(node[1])
            v = c * a
            re_v = ctx.re(v)
            if f & _ATOM or ctx.im(v) != 0 or re_v != int(re_v) or not 0 <= re_v <= MAX_FACTORIAL:
                raise Unsupported("factorial")
            return ctx.factorial(int(re_v)), one, f
        raise Unsupported(op)

    def _pow(self, a, b):
        ctx = self.ctx
        if ctx.im(b) == 0 and ctx.re(b) == int(ctx.re(b)):
            e = int(ctx.re(b))
            if abs(e) > MAX_POW_EXP and abs(a) not in (0, 1):
                raise Unsupported("big exponent")
            if a == 0 and e < 0:
                raise Unsupported("division by zero")
            return self._check(a ** e)
        if abs(b) > MAX_POW_EXP:
            raise Unsupported("big exponent")
        if a == 0:
            if ctx.re(b) > 0:
                return ctx.mpf(0)
            raise Unsupported("0 ** non-positive")
        return self._check(ctx.power(a, b))


def _symbols(node, acc: set) -> set:
    if node[0] == "sym":
        acc.add(node[1])
    else:
        for child in node[1:]:
            if isinstance(child, tuple):
                _symbols(child, acc)
    return acc


def _points(names) -> list[dict]:
    """Deterministic complex sample points, a different value per symbol and point."""
    ctx = _ctx()
    pts = []
    for k in range(N_POINTS):
        pt = {}
        for name in sorted(names):
            rng = random.Random(f"{name}|{k}")
            r = rng.uniform(0.4, 1.9)
            th = rng.uniform(-math.pi, math.pi)
            z = cmath.rect(r, th)
            pt[name] = ctx.mpc(z.real, z.imag)
        pts.append(pt)
    return pts or [{}]


def is_zero(node) -> bool:
    """True iff the expression is 0 at every sample point.

    Exact inputs: zero within the working precision relative to the operand scale.
    Decimal inputs: exactly zero after sympy-style Float rounding, and never when an
    irrational atom is involved (sympy keeps it symbolic next to a Float coefficient).
    """
    ctx = _ctx()
    names = _symbols(node, set())
    pts = _points(names) if names else [{}]
    for pt in pts:
        e = _Eval(ctx, pt)
        try:
            c, a, flags = e.ev(node)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
            if isinstance(exc, Unsupported):
                raise
            raise Unsupported(str(exc)) from None
        if flags & _INEXACT:
            if c != 0 and a != 0:
                return False
            continue
        v = c * a
        scale = max(e.scale, abs(v))
        if abs(v) > scale * ctx.mpf(2) ** (-(WORK_PREC - 40)):
            return False
    return True


def evaluate(node, point: dict | None = None):
    """Value of a tree (symbols from ``point``); raises ``Unsupported``."""
    c, a, _ = _Eval(_ctx(), point or {}).ev(node)
    return c * a


def equal_values(a, b) -> bool:
    """``a - b`` is identically zero (trees from ``parse_math``)."""
    return is_zero(("sub", a, b))


# ---------------------------------------------------------------------------------------
# The course's sympy comparison, made safe

_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_REGEXES = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))


def _count_unknown_letters(expr: str) -> int:
    expr = expr.replace("sqrt", "").replace("frac", "")
    return len({x for x in expr if x.isalpha()})


def should_allow_eval(expr: str) -> bool:
    """The course's gate in front of sympy (few letters, no ``^{``, no long exponents)."""
    if _count_unknown_letters(expr) > 2:
        return False
    if any(b in expr for b in _BAD_SUBSTRINGS):
        return False
    return not any(r.search(expr) for r in _BAD_REGEXES)


def course_sympy_equal(ground_truth_normalized: str, given_normalized: str) -> bool:
    """Course's ``are_equal_under_sympy`` semantics without eval: ``(gt)-(given)`` is 0."""
    expr = f"({ground_truth_normalized})-({given_normalized})"
    if not should_allow_eval(expr):
        return False
    try:
        return is_zero(parse_math(expr, python_syntax=True))
    except (Unsupported, RecursionError, OverflowError, ValueError, ZeroDivisionError):
        return False
