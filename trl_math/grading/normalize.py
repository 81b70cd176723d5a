"""Course-compatible answer normalisation (the two string normalisers of the course grader).

* ``mathd_normalize`` - Hendrycks' MATH normaliser as the course applies it (``\\text{}``
  unwrapping, unit words, ``\\frac12`` -> ``\\frac{1}{2}``, ``a/b`` -> ``\\frac{a}{b}``, ...).
* ``sympy_normalize`` - the normaliser in front of the course's sympy comparison (lower-cased,
  LaTeX flattened to text, spaces and braces dropped, integers canonicalised).

Both are pure string code with the course's quirks kept on purpose: the default grading mode
must agree with the course's numbers.  Ground truths repeat, so results are cached.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .latex_text import LatexTooDeep, latex_to_text

__all__ = ["mathd_normalize", "sympy_normalize", "strip_properly_formatted_commas",
           "str_is_int", "str_to_int", "is_frac"]

# Unit words removed by the MATH normaliser (MathQA's list, as the course uses it).
_UNIT_TEXTS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .",
    "monkey", "prime", "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per",
    "dm", "lt", "gain", "ab", "way", "west", "a .", "b .", "c .", "d .", "e .", "f .", "g .",
    "h .", "t", "a", "h", "no change", "men", "soldier", "pie", "bc", "excess", "st", "inches",
    "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq",
    "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women",
    "feet", "am", "pm", "hr", "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic",
    "cc", "mtr", "s", "ohm", "number", "kmph", "day", "hour", "minute", "min", "second", "man",
    "woman", "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³", "hectare", "more", "sec", "unit",
    "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter",
    "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface", "litre",
    "pi sq m", "s .", "metre", "meter", "inch",
]
_UNIT_TEXTS = _UNIT_TEXTS + [t + "s" for t in _UNIT_TEXTS]
# (literal needed for a match, compiled pattern).  In the patterns "." is a regex wildcard,
# as in the course, so the literal filter is the text before the first ".".
_UNIT_RULES = [
    (u.split(".")[0], re.compile(r"(^|\W)" + u + r"($|\W)")) for u in _UNIT_TEXTS
]

_TEXT_WRAP = re.compile(r"^\\text\{(?P<text>.+?)\}$")
_ARRAY_BEGIN = re.compile(r"\\begin\{array\}\{.*?\}")
_TRAILING_TEXT = re.compile(r"\\text{.*?}$")


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr[0] == "{":  # IndexError on a trailing "\frac" is the course's behaviour
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        if len(splits) != 2:
            raise ValueError("ambiguous units")
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split[0] != "{":  # IndexError on a trailing "\sqrt", as in the course
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def _strip_string(string: str) -> str:
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    if "array" in string:
        string = _ARRAY_BEGIN.sub(r"\\begin{pmatrix}", string)
        string = string.replace("\\end{array}", "\\end{pmatrix}")
    string = string.replace("bmatrix", "pmatrix")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    string = string.replace("\\left", "").replace("\\right", "")
    if "\\text{" in string:
        _string = _TRAILING_TEXT.sub("", string).strip()
        if _string != "" and _string != string:
            string = _string
    for _ in range(2):
        for literal, pattern in _UNIT_RULES:
            if literal in string:
                _string = pattern.sub(r"\1\2", string)
                if _string != "":
                    string = _string
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    eq = string.split("=")
    if len(eq) == 2 and len(eq[0]) <= 2:
        string = eq[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


@lru_cache(maxsize=65536)
def mathd_normalize(answer: str) -> str:
    """MATH-style normal form; on any internal failure the stripped input (course rule)."""
    answer = answer.strip()
    try:
        m = _TEXT_WRAP.search(answer)
        if m is not None:
            answer = m.group("text").strip()
        return _strip_string(answer)
    except (IndexError, ValueError):
        return answer


# ---------------------------------------------------------------------------------------
# The normaliser in front of the sympy comparison.

_SYMPY_UNITS = [
    re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?")
    for unit in ["degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour",
                 "day", "week", "month", "year", "foot", "feet", "inch", "yard"]
]
_SYMPY_UNIT_LITERALS = ["degree", "cm", "centimeter", "meter", "mile", "second", "minute",
                        "hour", "day", "week", "month", "year", "foot", "feet", "inch", "yard"]
_CIRC = re.compile(r"\^ *\\circ")
_COMMA_BANG = re.compile(r",\\! *")
_MINUS_SPACE = re.compile(r"- *")
_MIXED = re.compile(r"([0-9]) +([0-9])")
_GOOD_COMMAS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRAC_RE = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")


def _py_float(s: str):
    """``float(s)`` (Python's own rules, unicode digits included) or ``None``."""
    try:
        return float(s)
    except ValueError:
        return None


def _is_int_value(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def strip_properly_formatted_commas(expr: str) -> str:
    if "," not in expr:
        return expr
    while True:
        next_expr = _GOOD_COMMAS.sub(r"\1\3\4", expr)
        if next_expr == expr:
            return next_expr
        expr = next_expr


def str_is_int(x: str) -> bool:
    v = _py_float(strip_properly_formatted_commas(x))
    return v is not None and _is_int_value(v)


def str_to_int(x: str) -> int:
    v = _py_float(x.replace(",", ""))
    return int(v)


def is_frac(expr: str) -> bool:
    return _FRAC_RE.search(expr) is not None


def _flatten_latex(expr: str) -> str:
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    expr = expr.replace("\\frac", " \\frac")  # mixed numbers: 1\frac12 -> "1 1/2"
    expr = latex_to_text(expr)
    for a, b in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        expr = expr.replace(a, b)
    return expr.strip()


@lru_cache(maxsize=65536)
def sympy_normalize(expr: str) -> str:
    """The course's ``_normalize``: the string its sympy comparison starts from."""
    m = _TEXT_WRAP.search(expr)
    if m is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9")
    expr = expr.replace("trillion", "*10^12")
    for literal, pattern in zip(_SYMPY_UNIT_LITERALS, _SYMPY_UNITS):
        if literal in expr:
            expr = pattern.sub("", expr)
    if "\\circ" in expr:
        expr = _CIRC.sub("", expr)
    if len(expr) > 0 and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    if ",\\!" in expr:
        expr = _COMMA_BANG.sub("", expr)
    v = _py_float(expr)
    if v is not None and _is_int_value(v):
        expr = str(int(round(v)))
    if "\\" in expr:
        try:
            expr = _flatten_latex(expr)
        except (LatexTooDeep, RecursionError):
            pass
    expr = _MINUS_SPACE.sub("-", expr)
    expr = _MIXED.sub(r"\1+\2", expr)
    expr = expr.replace(" ", "").replace("{", "").replace("}", "")
    expr = expr.lower()
    if str_is_int(expr):
        expr = str(str_to_int(expr))
    return expr
