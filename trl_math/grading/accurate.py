"""Accurate grading mode: what a careful human grader would accept.

The course grader misses many right answers ("The answer is 325", "0.8.", "10 dollars",
``\\div``, a unicode minus, ``1\\,000``) and accepts some hedges.  This mode:

1. cleans the text: unicode (NFKC, any decimal digits, minus signs, zero-width and bidi
   marks, emoji, CJK words), markdown and code fences, ``$``/``\\(``/``\\[`` delimiters,
   ``\\boxed``/``\\text``-style wrappers, a sentence around the answer ("the answer is"),
   a leading ``x =`` (unless the truth has its own left-hand side), trailing punctuation,
   unit words, ``\\$``, ``%``, degrees, thousands separators (``,`` ``{,}`` ``\\,`` ``\\!``);
2. rejects hedges: "a or b", ``\\pm``/``±`` when the truth has none, more values than the
   truth;
3. compares structure (tuples/lists ordered, intervals with their brackets, matrices) and
   each element as text or, when both parse, by exact value with the bounded evaluator of
   ``equivalence`` (symbols included: ``6h^2`` is not ``6r^2``; decimals must be equal, not
   close; mixed numbers ``2\\frac{1}{6}`` are 13/6).

No eval anywhere; every step is linear-ish string work or the bounded evaluator.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction
from functools import lru_cache

from .equivalence import Unsupported, equal_values, parse_math
from .extract import course_extract_answer, extract_boxed_answer

__all__ = ["grade_accurate", "canonical_answer", "is_hedge"]

# ---------------------------------------------------------------------------------------
# 1. unicode and markup cleanup

_DROP_CHARS = dict.fromkeys(
    [0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064,
     0xFEFF, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0xAD]
)
_UNICODE_MATH = {
    "−": "-", "–": "-", "—": "-", "‒": "-", "﹣": "-", "－": "-",
    "×": r" \times ", "÷": r" \div ", "·": r" \cdot ", "⋅": r" \cdot ", "∙": r" \cdot ",
    "π": r" \pi ", "∞": r" \infty ", "∪": r" \cup ", "∩": r" \cap ", "√": r"\sqrt",
    "°": r"^\circ ", "≤": r" \le ", "≥": r" \ge ", "≠": r" \ne ", "±": r" \pm ", "∓": r" \mp ",
    "。": ".", "，": ",", "：": ":", "⁄": "/", "∕": "/",
}
_VULGAR = re.compile(r"(\d*)([¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞])")


def _vulgar(m: re.Match) -> str:
    whole, frac = m.group(1), m.group(2)
    value = Fraction(unicodedata.numeric(frac)).limit_denominator(20)
    num, den = value.numerator, value.denominator
    f = rf"\frac{{{num}}}{{{den}}}"
    return f"{whole}{f}" if whole else f


def _clean_unicode(s: str) -> str:
    s = s.translate(_DROP_CHARS)
    s = _VULGAR.sub(_vulgar, s)
    for a, b in _UNICODE_MATH.items():
        if a in s:
            s = s.replace(a, b)
    if s.isascii():
        return s
    s = unicodedata.normalize("NFKC", s)
    out = []
    for ch in s:
        if ch.isascii():
            out.append(ch)
            continue
        cat = unicodedata.category(ch)
        if cat == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        elif cat.startswith("Z"):
            out.append(" ")
        elif cat in ("Mn", "Me", "Cf", "So", "Sk", "Cs", "Co", "Lo"):
            continue  # combining marks, format chars, emoji/symbols, CJK words
        else:
            out.append(ch)
    return "".join(out)


_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mathsf|mbox|"
    r"operatorname|boldsymbol|emph|hbox)\s*\{([^{}]*)\}"
)
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad\b|~|\\displaystyle|\\limits")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)\s*(\\[{}|]|[()\[\]|.])")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|\^\{\\circ\}")
_ANSWER_IS = re.compile(r"\b(?:answer|result|solution)\b[^.:=]*?\b(?:is|are|=|:)\s*(.+)$",
                        re.IGNORECASE | re.DOTALL)
_LEAD_LABEL = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.IGNORECASE)
_UNIT_WORDS = (
    "dollars?|cents?|degrees?|percent|units?|square units|sq units|cubic units|meters?|"
    "metres?|centimeters?|cm|km|kilometers?|mm|m|inches|inch|feet|foot|ft|yards?|miles?|mph|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|points?|ways?|"
    "people|students?|integers?|numbers?|times|pounds?|lbs?|ounces?|oz|gallons?|liters?|"
    "litres?|kg|grams?|g|cups?|pages?|apples?|books?|marbles?|coins?|eggs?|cookies?|"
    "tickets?|games?|items?|pieces?|boxes|box|bags?|hands|handshakes|triangles|squares|"
    "outfits|digits|divisors|factors|pairs|solutions|terms|sides|edges|vertices|diagonals"
)
_TRAILING_UNITS = re.compile(
    r"^(?P<v>.*?[0-9a-zA-Z}\)\]])\s*(?:\\?\s*(?:" + _UNIT_WORDS + r")\b\.?\s*(?:\^\s*\{?[23]\}?)?\s*)+$",
    re.IGNORECASE | re.DOTALL,
)
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:,|\{,\}|\\,|\s|,\\!)\d{3})+(?:\.\d+)?$")
_LHS = re.compile(r"^\s*([a-zA-Z](?:_\{?\w+\}?)?|[a-zA-Z]\([a-z]\))\s*=\s*(?!=)")
_HEDGE = re.compile(r"\bor\b|\beither\b|\\pm|\\mp|\band/or\b", re.IGNORECASE)


def _strip_markdown(s: str) -> str:
    s = re.sub(r"```[a-zA-Z]*", " ", s).replace("`", " ").strip()
    while s.startswith(("**", "__")) or s.endswith(("**", "__")):
        if s.startswith(("**", "__")):
            s = s[2:]
        if s.endswith(("**", "__")):
            s = s[:-2]
        s = s.strip()
    return s


def _unwrap(s: str) -> str:
    for _ in range(4):
        new = _WRAPPERS.sub(r" \1 ", s)
        if new == s:
            break
        s = new
    if "\\boxed" in s:
        inner = extract_boxed_answer(s)
        if inner is not None:
            s = inner
    return s


def _strip_delims(s: str) -> str:
    s = s.replace("\\$", " ").replace("$", " ")
    for d in ("\\(", "\\)", "\\[", "\\]"):
        s = s.replace(d, " ")
    return s


def _strip_trailing_punct(s: str) -> str:
    s = s.strip()
    while s and s[-1] in ".!;:,?" and not s.endswith("\\!") and not s.endswith("\\,"):
        s = s[:-1].rstrip()
    return s


def _drop_sentence(s: str) -> str:
    m = _ANSWER_IS.search(s)
    if m is not None and len(m.group(1).strip()) > 0:
        return m.group(1)
    s = _LEAD_LABEL.sub("", s)
    s = re.sub(r"^(?:so|thus|therefore|hence|approximately|about|roughly|approx\.?)\s*,?\s+",
               "", s, flags=re.IGNORECASE)
    return s


def _clean(s: str) -> str:
    """Shared cleanup (both sides): unicode, markup, delimiters, spacing macros."""
    s = _clean_unicode(s)
    s = _strip_markdown(s)
    s = s.replace("\\\\", " \\cr ")  # matrix row breaks, kept apart from spacing macros
    s = _FRAC_VARIANTS.sub(r"\\frac", s)
    s = _LEFT_RIGHT.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = _unwrap(s)
    s = _strip_delims(s)
    s = re.sub(r"(?<=\d)(?:,\\!|\{,\})(?=\d{3})", "", s)  # LaTeX thousands separators
    s = s.replace("{,}", ",").replace(",\\!", ",")
    s = re.sub(r"(?<=\d)\\[,;:! ](?=\d{3}\b)", "", s)  # thin-space thousands
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub(" ", s)
    s = s.replace("\\%", " ").replace("%", " ")
    s = re.sub(r"\bpercent\b", " ", s, flags=re.IGNORECASE)
    s = s.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    s = re.sub(r"\s+", " ", s).strip()
    return s


def _collapse_thousands(s: str) -> str:
    """``1,500`` / ``1 500`` / ``$1,000,000`` (whole answer) -> digits only."""
    core = _strip_trailing_punct(s)
    if _THOUSANDS.match(core):
        return re.sub(r"[^\d.\-]", "", core)
    return s


def _answer_core(s: str) -> str:
    """Model-side extras: sentences, labels, trailing punctuation and units."""
    s = _drop_sentence(s)
    s = _strip_trailing_punct(s)
    m = _TRAILING_UNITS.match(s)
    if m is not None and re.search(r"\d", m.group("v")):
        s = m.group("v")
    s = _strip_trailing_punct(s)
    low = s.lower()
    if low in _NUMBER_WORDS:
        s = _NUMBER_WORDS[low]
    return s.strip()


@lru_cache(maxsize=16384)
def canonical_answer(s: str) -> str:
    """Cleaned answer text (the string both sides are compared from)."""
    return _answer_core(_clean(s))


def is_hedge(answer: str, truth: str) -> bool:
    """An answer offering alternatives the truth does not: "a or b", ``\\pm a``."""
    return bool(_HEDGE.search(answer)) and not _HEDGE.search(truth)


# ---------------------------------------------------------------------------------------
# 2. structure

_OPEN = "([{"
_CLOSE = ")]}"


def _split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split at separators outside brackets/braces."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i):
                    parts.append(s[start:i])
                    i += len(sep)
                    start = i
                    break
            else:
                i += 1
                continue
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _outer(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) if ``s`` is one bracketed group."""
    if len(s) < 2:
        return None
    o = s[0]
    if s.startswith("\\{") and s.endswith("\\}"):
        return "{", s[2:-2], "}"
    if o not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return None
    return o, s[1:-1], s[-1]


_MATRIX = re.compile(r"^\\begin\{([pbv]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}$", re.DOTALL)


def _structure(s: str):
    """("matrix", rows) | ("union", parts) | ("seq", open, close, elems) | ("atom", s)."""
    s = s.strip()
    m = _MATRIX.match(s)
    if m is not None:
        rows = [r for r in (x.strip() for x in m.group(2).split("\\cr")) if r]
        return ("matrix", [[c.strip() for c in r.split("&")] for r in rows])
    if "\\cup" in s:
        parts = _split_top(s, ("\\cup",))
        if len(parts) > 1:
            return ("union", parts)
    out = _outer(s)
    if out is not None:
        o, inner, c = out
        elems = _split_top(inner, (",",))
        if len(elems) > 1 or o in "[{" or c == "]":
            return ("seq", o, c, elems)
    elems = _split_top(s, (",", ";"))
    if len(elems) > 1:
        return ("seq", "", "", elems)
    return ("atom", s)


# ---------------------------------------------------------------------------------------
# 3. scalar comparison

_LATEX_TOKEN = re.compile(r"\\[a-zA-Z]+|\\.|[{}]|[^\\{}]")
_FUNCS_TEXT = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "arcsin",
               "arccos", "arctan", "lim", "sum", "int", "prod", "max", "min", "gcd", "lcm"}


class _NoMath(ValueError):
    pass


def _latex_to_python(s: str) -> str:
    """Arithmetic LaTeX -> our safe Python-like syntax; ``_NoMath`` for anything else."""
    toks = _LATEX_TOKEN.findall(s)
    pos = 0

    def group() -> str:
        nonlocal pos
        while pos < len(toks) and toks[pos].isspace():
            pos += 1
        if pos >= len(toks):
            raise _NoMath("missing argument")
        t = toks[pos]
        pos += 1
        if t == "{":
            return "(" + seq("}") + ")"
        if t.startswith("\\"):
            return "(" + macro(t) + ")"
        return t

    def macro(t: str) -> str:
        name = t[1:]
        if name == "frac":
            a = group()
            b = group()
            return f"(({a})/({b}))"
        if name == "sqrt":
            nonlocal pos
            if pos < len(toks) and toks[pos] == "[":
                end = toks.index("]", pos)
                idx = "".join(toks[pos + 1 : end])
                pos = end + 1
                a = group()
                return f"(({a})**(1/({idx})))"
            return f"sqrt({group()})"
        if name == "pi":
            return " pi "
        if name in ("cdot", "times"):
            return "*"
        if name == "div":
            return "/"
        if name in ("{", "}"):
            return {"{": "(", "}": ")"}[name]
        raise _NoMath(name)

    def seq(closer: str | None) -> str:
        nonlocal pos
        out = []
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            if closer is not None and t == closer:
                return "".join(out)
            if t == "{":
                out.append("(" + seq("}") + ")")
            elif t == "}":
                raise _NoMath("unbalanced")
            elif t.startswith("\\"):
                out.append(macro(t))
            elif t == "^":
                out.append("**" + group())
            elif t == "_" or t in "=<>|!,;:'\"?&%#@":
                raise _NoMath(t)
            else:
                out.append(t)
        if closer is not None:
            raise _NoMath("unclosed")
        return "".join(out)

    return seq(None)


_MIXED_LATEX = re.compile(r"^(-?)\s*(\d+)\s*\\frac\s*(\{[^{}]*\}|\d)\s*(\{[^{}]*\}|\d)$")
_MIXED_SLASH = re.compile(r"^(-?)\s*(\d+)\s+(\d+)\s*/\s*(\d+)$")
_WORDY = re.compile(r"[a-zA-Z]{2,}")


@lru_cache(maxsize=16384)
def _as_math(s: str):
    """Parse an atom into an evaluator tree, or ``None`` if it is text/unsupported."""
    s = s.strip()
    if not s or len(s) > 300:
        return None
    m = _MIXED_LATEX.match(s) or _MIXED_SLASH.match(s)
    if m is not None:
        sign, whole, a, b = m.groups()
        a, b = a.strip("{}"), b.strip("{}")
        s = f"{sign}({whole}+({a})/({b}))"
    if _THOUSANDS.match(s):
        s = re.sub(r"[^\d.\-]", "", s)
    words = set(w.lower() for w in _WORDY.findall(re.sub(r"\\[a-zA-Z]+", " ", s)))
    if words - {"sqrt", "pi"}:
        return None
    try:
        py = _latex_to_python(s)
        return parse_math(py, python_syntax=False)
    except (_NoMath, Unsupported, ValueError, IndexError, RecursionError):
        return None


def _text_key(s: str) -> str:
    s = s.lower()
    s = re.sub(r"\\[a-zA-Z]+", lambda m: m.group()[1:], s)
    s = re.sub(r"[\s{}]", "", s)
    if len(s) >= 3 and s[0] == "(" and s[-1] == ")" and s[1:-1].isalpha():
        s = s[1:-1]  # "(D)" -> "d"
    return s


def _atom_equal(a: str, g: str) -> bool:
    if a == g or _text_key(a) == _text_key(g):
        return True
    ta, tg = _as_math(a), _as_math(g)
    if ta is None or tg is None:
        return False
    try:
        return equal_values(ta, tg)
    except (Unsupported, ValueError, ZeroDivisionError, OverflowError):
        return False


def _lhs(s: str) -> tuple[str | None, str]:
    m = _LHS.match(s)
    if m is None:
        return None, s
    return m.group(1).replace(" ", ""), s[m.end():]


def _equal_structured(a: str, g: str, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if a == g:
        return True
    sa, sg = _structure(a), _structure(g)
    if sg[0] == "atom" and sa[0] == "atom":
        return _atom_equal(a, g)
    if sg[0] == "matrix" or sa[0] == "matrix":
        if sa[0] != sg[0] or len(sa[1]) != len(sg[1]):
            return False
        return all(len(ra) == len(rg) and all(_atom_equal(x, y) for x, y in zip(ra, rg))
                   for ra, rg in zip(sa[1], sg[1]))
    if sg[0] == "union" or sa[0] == "union":
        if sa[0] != sg[0] or len(sa[1]) != len(sg[1]):
            return False
        return all(_equal_structured(x, y, depth + 1) for x, y in zip(sa[1], sg[1]))
    if sa[0] != "seq" or sg[0] != "seq":
        return False
    _, oa, ca, ea = sa
    _, og, cg, eg = sg
    if len(ea) != len(eg):
        return False
    if oa and og and (oa != og or ca != cg):
        return False  # interval brackets / tuple vs set must agree when both are given
    return all(_equal_structured(x, y, depth + 1) for x, y in zip(ea, eg))


@lru_cache(maxsize=16384)
def _truth_form(ground_truth: str) -> tuple[str | None, str]:
    if "\\boxed" in ground_truth or "####" in ground_truth:
        extracted = course_extract_answer(ground_truth)
        if extracted is not None:
            ground_truth = extracted
    g = _strip_trailing_punct(_clean(ground_truth))
    if "$" in ground_truth:  # a currency amount: "\\$115,000" is one number
        g = _collapse_thousands(g)
    m = _TRAILING_UNITS.match(g)
    if m is not None and re.search(r"\d", m.group("v")):
        g = m.group("v")
    lhs, rhs = _lhs(g)
    return lhs, rhs.strip()


MAX_CHARS = 1000  # longer answers/truths are compared as whitespace-free text only


def _too_long(answer: str, ground_truth: str) -> bool:
    return len(answer) > MAX_CHARS or len(ground_truth) > MAX_CHARS


def _plain_equal(answer: str, ground_truth: str) -> bool:
    return "".join(answer.split()) == "".join(ground_truth.split())


def grade_accurate(answer: str, ground_truth: str) -> bool:
    """Accurate verdict for an extracted answer against one ground-truth string."""
    if _too_long(answer, ground_truth):
        return _plain_equal(answer, ground_truth)
    g_lhs, g = _truth_form(ground_truth)
    a = canonical_answer(answer)
    if not a or not g:
        return False
    if is_hedge(a, g):
        return False
    a_lhs, a_rhs = _lhs(a)
    if a_lhs is not None:
        if g_lhs is not None and a_lhs != g_lhs:
            return False
        a = a_rhs.strip()
        # an equation chain "12 + 88 = 100": the last member is the answer
    if "=" in a and "=" not in g:
        a = a.rsplit("=", 1)[-1].strip()
    if _equal_structured(a, g):
        return True
    collapsed = _collapse_thousands(a)  # "1,500" read as one number
    return collapsed != a and _equal_structured(collapsed, g)
