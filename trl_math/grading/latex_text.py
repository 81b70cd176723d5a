"""LaTeX -> plain text, the way the course grader flattens answers before comparing them.

The course's ``_normalize`` runs pylatexenc's ``LatexNodes2Text`` on any answer containing a
backslash.  We reproduce the behaviour that matters for grading (fractions become ``a/b``,
``\\sqrt{x}`` becomes ``√(x)``, symbols become unicode, unknown macros vanish but their
``{...}`` groups stay, matrices become ``[ a b; c d ]``) with a small iterative-friendly
parser of our own, so no extra dependency is needed and nesting depth is bounded.
"""

from __future__ import annotations

import re

__all__ = ["latex_to_text", "LatexTooDeep"]


class LatexTooDeep(ValueError):
    """Raised for input nested deeper than ``MAX_DEPTH`` (the caller keeps the raw text)."""


MAX_DEPTH = 60

# macro -> (argument spec, replacement).  Spec letters: "{" mandatory, "[" optional.
# Replacement: str with %s / %(n)s placeholders, "" to drop, None to render the args' text.
_SYMBOLS = {
    "pi": "π", "infty": "∞", "cup": "∪", "cap": "∩", "cdot": "·", "times": "×", "div": "÷",
    "pm": "±", "mp": "∓", "le": "≤", "leq": "≤", "ge": "≥", "geq": "≥", "neq": "≠",
    "lt": "<", "gt": ">", "approx": "≈", "sim": "∼", "circ": "∘", "in": "∈", "notin": "∉",
    "emptyset": "∅", "varnothing": "∅", "to": "→", "rightarrow": "→", "Rightarrow": "⇒",
    "leftarrow": "←", "infin": "∞", "int": "∫", "sum": "∑", "prod": "∏", "partial": "∂",
    "nabla": "∇", "setminus": "∖", "mid": "|", "vert": "|", "lvert": "|", "rvert": "|",
    "langle": "⟨", "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉",
    "forall": "∀", "exists": "∃", "subset": "⊂", "subseteq": "⊆", "perp": "⊥",
    "parallel": "∥", "angle": "∠", "triangle": "△", "dots": "…", "ldots": "…",
    "cdots": "⋯", "vdots": "⋮", "ddots": "⋱", "quad": "  ", "qquad": "    ",
    "sin": "sin", "cos": "cos", "tan": "tan", "arcsin": "arcsin", "arccos": "arccos",
    "arctan": "arctan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "log": "log",
    "ln": "ln", "exp": "exp", "lim": "lim", "max": "max", "min": "min", "det": "det",
    "gcd": "gcd", "deg": "deg", "dim": "dim", "ker": "ker", "arg": "arg", "sup": "sup",
    "inf": "inf", "mod": "mod", "bmod": "mod", "ell": "ℓ", "hbar": "ℏ", "Re": "ℜ",
    "Im": "ℑ", "aleph": "ℵ", "prime": "′", "ldotp": ".", "cdotp": "·", "colon": ":",
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ",
    "varepsilon": "ε", "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ",
    "iota": "ι", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ",
    "rho": "ρ", "sigma": "σ", "tau": "τ", "upsilon": "υ", "phi": "ϕ", "varphi": "φ",
    "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ",
    "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
    "S": "§", "P": "¶", "copyright": "©", "dag": "†", "ddag": "‡", "neg": "", "lnot": "¬",
    "%": "%", "$": "$", "#": "#", "&": "&", "_": "_", "{": "{", "}": "}", ",": " ",
    ";": " ", ":": " ", " ": " ", "!": "", "\\": "\n", "-": "\xad", "/": "",
}
_ONE_ARG_KEEP = {  # the argument's text, nothing else
    "text", "textrm", "textit", "textbf", "textsc", "textsl", "textup", "textnormal",
    "emph", "mathrm", "mathit", "mathsf", "mathtt", "overline", "underline",
    "operatorname", "textsf", "texttt", "hbox",
}
_ONE_ARG_DROP = {"mbox", "label", "ref", "cite", "hspace", "vspace", "phantom", "footnote"}
_ACCENTS = {"hat": "\u0302", "bar": "\u0304", "vec": "\u20d7", "dot": "\u0307",
            "tilde": "\u0303", "acute": "\u0301", "grave": "\u0300", "ddot": "\u0308"}
_MATRIX_ENVS = {"pmatrix", "bmatrix", "array", "smallmatrix", "psmallmatrix", "bsmallmatrix"}

_TOKEN = re.compile(
    r"\\[a-zA-Z]+\s*|\\.|\\$|\$\$|[{}$%&~\[\]]|--?-?|``|''|[^\\{}$%&~\[\]\-`']+|[`']",
    re.DOTALL,
)


def _bold_char(c: str, style: str) -> str:
    import unicodedata

    kind = "CAPITAL" if c.isupper() else "SMALL"
    try:
        if style == "bb":
            if c in "CHNPQRZ":
                return {"C": "ℂ", "H": "ℍ", "N": "ℕ", "P": "ℙ", "Q": "ℚ", "R": "ℝ", "Z": "ℤ"}[c]
            return unicodedata.lookup(f"MATHEMATICAL DOUBLE-STRUCK {kind} {c.upper()}")
        if c.isdigit():
            name = unicodedata.name(c).split()[-1]
            return unicodedata.lookup(f"MATHEMATICAL BOLD DIGIT {name}")
        return unicodedata.lookup(f"MATHEMATICAL BOLD {kind} {c.upper()}")
    except (KeyError, ValueError):
        return c


class _Parser:
    """Recursive descent over regex tokens; depth-limited."""

    def __init__(self, text: str):
        self.toks = _TOKEN.findall(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def skip_space(self) -> None:
        while self.i < len(self.toks) and self.toks[self.i].isspace():
            self.i += 1

    # ---- arguments -------------------------------------------------------------------
    def arg(self, depth: int) -> str | None:
        """A mandatory argument: a ``{group}``, a macro or one character."""
        self.skip_space()
        t = self.peek()
        if t is None or t == "}":
            return None
        if t == "{":
            self.i += 1
            return self.seq(depth + 1, closer="}")
        if t.startswith("\\"):
            return self.node(depth + 1)
        # a plain run of characters: take one character, leave the rest
        self.toks[self.i] = t[1:]
        if not self.toks[self.i]:
            self.i += 1
        return t[0]

    def opt_arg(self, depth: int) -> str | None:
        j = self.i
        while j < len(self.toks) and self.toks[j].isspace():
            j += 1
        if j < len(self.toks) and self.toks[j] == "[":
            self.i = j + 1
            return self.seq(depth + 1, closer="]")
        return None

    # ---- sequences -------------------------------------------------------------------
    def seq(self, depth: int, closer: str | None = None, stop_env: str | None = None) -> str:
        if depth > MAX_DEPTH:
            raise LatexTooDeep
        out: list[str] = []
        while self.i < len(self.toks):
            t = self.toks[self.i]
            if closer is not None and t == closer:
                self.i += 1
                return "".join(out)
            if stop_env is not None and t.startswith("\\end"):
                return "".join(out)
            if t == "}" and closer is None:
                self.i += 1  # stray closing brace: dropped
                continue
            out.append(self.node(depth))
        return "".join(out)

    def node(self, depth: int) -> str:
        t = self.toks[self.i]
        self.i += 1
        if t == "{":
            return self.seq(depth + 1, closer="}")
        if t in ("$", "$$"):
            inner = self.seq(depth + 1, closer=t)
            return f"\n    {inner}\n" if t == "$$" else inner
        if t == "%":  # comment: to end of line
            while self.i < len(self.toks) and "\n" not in self.toks[self.i]:
                self.i += 1
            if self.i < len(self.toks):
                rest = self.toks[self.i]
                self.toks[self.i] = rest[rest.index("\n"):]
            return ""
        if t == "~":
            return "\xa0"
        if t == "--":
            return "–"
        if t == "---":
            return "—"
        if t == "``":
            return "“"
        if t == "''":
            return "”"
        if t == "&":
            return "   "
        if t.startswith("\\"):
            return self.macro(t, depth)
        return t

    def macro(self, t: str, depth: int) -> str:
        name = t[1:].rstrip() if t[1:2].isalpha() else t[1:]
        if name == "frac":
            a, b = self.arg(depth), self.arg(depth)
            if a is None or b is None:
                return "%s/%s" + (a or "")
            return f"{a}/{b}"
        if name == "sqrt":
            self.opt_arg(depth)
            a = self.arg(depth)
            return f"√({a or ''})"
        if name in ("(", ")"):
            return ""
        if name == "[":
            inner = self.seq(depth + 1, closer="\\]")
            return f"\n    {inner}\n"
        if name == "]":
            return ""
        if name in _ONE_ARG_KEEP:
            a = self.arg(depth)
            return a or ""
        if name in _ONE_ARG_DROP:
            self.arg(depth)
            return ""
        if name in ("mathbf", "boldsymbol", "mathbb"):
            a = self.arg(depth) or ""
            style = "bb" if name == "mathbb" else "bf"
            return "".join(_bold_char(c, style) if c.isalnum() and c.isascii() else c for c in a)
        if name in _ACCENTS:
            a = self.arg(depth) or ""
            return a + _ACCENTS[name] if a else " " + _ACCENTS[name]
        if name == "begin":
            env = self.arg(depth) or ""
            return self.environment(env, depth)
        if name == "end":
            self.arg(depth)
            return ""
        if name in ("^", "'", "`", '"', "~", "=", "."):
            accent = {"^": "\u0302", "'": "\u0301", "`": "\u0300", '"': "\u0308",
                      "~": "\u0303", "=": "\u0304", ".": "\u0307"}[name]
            a = self.arg(depth) or " "
            return a + accent
        return _SYMBOLS.get(name, "")

    def environment(self, env: str, depth: int) -> str:
        if env == "array":
            self.arg(depth)  # column spec
        if env in _MATRIX_ENVS:
            rows: list[list[str]] = [[]]
            cell: list[str] = []
            while self.i < len(self.toks):
                t = self.toks[self.i]
                if t.startswith("\\end"):
                    self.i += 1
                    self.arg(depth)
                    break
                if t == "&":
                    self.i += 1
                    rows[-1].append("".join(cell).strip())
                    cell = []
                    continue
                if t == "\\\\":
                    self.i += 1
                    self.opt_arg(depth)
                    rows[-1].append("".join(cell).strip())
                    cell = []
                    rows.append([])
                    continue
                cell.append(self.node(depth + 1))
            rows[-1].append("".join(cell).strip())
            if rows and rows[-1] == [""] and len(rows) > 1:
                rows.pop()
            return "[ " + "; ".join(" ".join(r) for r in rows) + " ]"
        inner = self.seq(depth + 1, stop_env=env)
        if self.i < len(self.toks) and self.toks[self.i].startswith("\\end"):
            self.i += 1
            self.arg(depth)
        return inner


def latex_to_text(text: str) -> str:
    """Flatten LaTeX to text (pylatexenc-compatible for the macros graders meet).

    Raises ``LatexTooDeep`` for pathological nesting; callers keep the input then.
    """
    return _Parser(text).seq(0)
