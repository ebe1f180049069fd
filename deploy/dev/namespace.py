#!/usr/bin/env python3
"""Rewrite the repository's imports to the one namespace ``alchimia`` (issue 13 §3).

The folders agent/, coordinator/, broker/, models/ and deploy/ are installed as
``alchimia.agent``, ``alchimia.coordinator``, ... (setup.py maps them with package_dir).
This script rewrites what names them as modules, and nothing else:

* Python files: ``from agent.x import y`` / ``from agent import y`` /
  ``import agent.x as y`` statements (any indentation, TYPE_CHECKING blocks included);
  string literals that are code or module paths (``"from models.spec import ..."``
  given to ``python -c``, ``mock.patch("agent.service.X")``, logger names, ``"-m",
  "agent.x"``), where a dotted name counts as a module path only if its first two parts
  name a module or package that exists (``"agent.toml"``, ``"coordinator.sqlite"``,
  ``"broker.steel.example"`` stay); a bare ``"agent"`` only as the argument of
  import_module/find_spec/__import__ or a sys.modules key. Docstrings and comments are
  prose and are left as they are.
* Markdown: the same rules over the whole text (code blocks, ``python -m``, backticked
  module paths).
* Shell, Makefile, Dockerfile, systemd, YAML: ``python -m agent.x`` and code given to
  ``python -c``.
* pyproject.toml: module names in [tool.importlinter] and [[tool.mypy.overrides]].

Idempotent: a name already under ``alchimia.`` is never matched again, so it can be run on
a newer main. Usage, from the repository root:

    python3 deploy/dev/namespace.py [--check]

--check changes nothing and exits 1 if something would change. Also exits 1 when it finds
something it cannot rewrite safely (``import agent.x`` without ``as``, which binds the name
``agent``), listed for a hand fix.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

NS = "alchimia"
OLD = ("agent", "coordinator", "broker", "models", "deploy")
_OLD = "|".join(OLD)
SELF = Path(__file__).resolve()


def known_modules(root: Path) -> set[str]:
    """Dotted names (``agent.service``, ``agent.store``) of the modules in the folders."""
    names: set[str] = set()
    for top in OLD:
        base = root / top
        for path in base.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            names.add(".".join(parts))
        for init in base.rglob("__init__.py"):
            names.add(".".join(init.parent.relative_to(root).parts))
    return names


class Rewriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.known = known_modules(root)
        self.problems: list[str] = []
        self._dotted = re.compile(rf"(?<![\w.\-/]){'('}{_OLD}{')'}((?:\.\w+)+)")
        self._from = re.compile(rf"(?<![\w.])(from\s+)({_OLD})(?=\.\w|\s+import\b)")
        self._import = re.compile(rf"(?<![\w.])(import\s+)({_OLD})(?=\.\w)")
        self._dash_m = re.compile(rf"(?<![\w.])(-m\s+)({_OLD})(?=\.\w|\s|$|[\"'])", re.M)

    # -- text rules -------------------------------------------------------------------
    def text(self, s: str, dotted: bool = True) -> str:
        """Code and module paths inside a piece of text (a string literal, markdown)."""
        s = self._from.sub(rf"\g<1>{NS}.\g<2>", s)
        s = self._import.sub(rf"\g<1>{NS}.\g<2>", s)
        s = self._dash_m.sub(rf"\g<1>{NS}.\g<2>", s)
        if dotted:
            s = self._dotted.sub(self._dotted_sub, s)
        return s

    def _dotted_sub(self, m: re.Match[str]) -> str:
        first = m.group(1) + "." + m.group(2).split(".")[1]
        return f"{NS}.{m.group(0)}" if first in self.known else m.group(0)

    # -- python -----------------------------------------------------------------------
    def python(self, path: Path, src: str) -> str:
        tree = ast.parse(src)
        lines = src.splitlines(keepends=True)
        skip: set[tuple[int, int]] = set()  # start of docstrings and bare string statements
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                skip.add((node.lineno, node.col_offset))
        edits: dict[int, str] = {}  # line index -> new line
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in OLD:
                    i = node.lineno - 1
                    line = edits.get(i, lines[i])
                    new = re.sub(rf"^(\s*from\s+)({_OLD})\b", rf"\g<1>{NS}.\g<2>", line, count=1)
                    if new == line:
                        self.problems.append(f"{path}:{node.lineno}: unexpected from-import form")
                    edits[i] = new
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in OLD:
                        continue
                    if alias.asname is None:
                        self.problems.append(
                            f"{path}:{node.lineno}: `import {alias.name}` binds a name that "
                            f"changes; write `from {NS} import ...` or `import {NS}.{alias.name}"
                            " as ...` by hand"
                        )
                        continue
                    i = node.lineno - 1
                    line = edits.get(i, lines[i])
                    pattern = rf"(?<![\w.]){re.escape(alias.name)}(?=\s+as\s+{alias.asname}\b)"
                    edits[i] = re.sub(pattern, f"{NS}.{alias.name}", line, count=1)
        for i, line in edits.items():
            lines[i] = line
        src = "".join(lines)
        return self._python_strings(src, skip)

    def _python_strings(self, src: str, skip: set[tuple[int, int]]) -> str:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
        lines = src.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        out, pos = [], 0
        for k, tok in enumerate(toks):
            if tok.type != tokenize.STRING or tok.start in skip:
                continue
            new = self._string_token(tok.string, toks, k)
            if new != tok.string:
                a = offsets[tok.start[0] - 1] + tok.start[1]
                b = offsets[tok.end[0] - 1] + tok.end[1]
                out.append(src[pos:a])
                out.append(new)
                pos = b
        out.append(src[pos:])
        return "".join(out)

    def _string_token(self, s: str, toks: list[tokenize.TokenInfo], k: int) -> str:
        prefix = re.match(r"[A-Za-z]*", s).group(0).lower()  # type: ignore[union-attr]
        body = s[len(prefix) :]
        quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
        inner = body[len(quote) : -len(quote)]
        if inner in OLD:  # a bare package name: only where it is a module name
            before = " ".join(t.string for t in toks[max(0, k - 6) : k])
            if re.search(
                r"(import_module|find_spec|__import__)\s*\($|sys \. modules \[$|"
                r"sys \. modules ,?$",
                before.replace("  ", " "),
            ):
                return f"{s[: len(prefix) + len(quote)]}{NS}.{inner}{quote}"
            return s
        if "f" in prefix:  # leave the {expressions} of f-strings alone
            parts = re.split(r"(\{\{|\}\}|\{[^{}]*\})", inner)
            inner = "".join(p if p.startswith(("{", "}")) else self.text(p) for p in parts)
        else:
            # a dotted name counts only as the whole string ("agent.service.Agent", a logger
            # name); in a message it is prose, like a docstring
            whole = re.fullmatch(r"[\w.]+", inner) is not None
            inner = self.text(inner, dotted=whole)
        return s[: len(prefix)] + quote + inner + quote

    # -- pyproject ----------------------------------------------------------------------
    def pyproject(self, src: str) -> str:
        sections = re.split(r"(?m)^(?=\[)", src)
        out = []
        for sec in sections:
            head = sec.split("\n", 1)[0]
            if head.startswith(
                ("[tool.importlinter", "[[tool.importlinter", "[[tool.mypy.overrides]]")
            ):
                sec = re.sub(r'"([^"\n]*)"', self._toml_string, sec)
                roots = re.compile(r"(?m)^(root_packages\s*=\s*)\[[^\]]*\]")
                sec = roots.sub(lambda m: f'{m.group(1)}["{NS}"]', sec)
            out.append(sec)
        return "".join(out)

    def cli_modules(self) -> list[str]:
        base = self.root / NS
        mods = {f"{NS}.{p.stem}" for p in base.glob("*.py") if p.stem != "__init__"}
        mods |= {f"{NS}.{p.parent.name}" for p in base.glob("*/__init__.py")}
        return sorted(mods)

    def _toml_string(self, m: re.Match[str]) -> str:
        value = m.group(1)
        sides = [x.strip() for x in value.split("->")]
        new = []
        for side in sides:
            if re.fullmatch(rf"({_OLD})(\.[\w.*]+)?", side):
                side = f"{NS}.{side}"
            elif side == NS and len(sides) == 1:
                # "alchimia" meant the command-line package; it now contains the other
                # folders too, and import-linter then checks nothing against it (a
                # forbidden ancestor of the source is ignored). Its modules, as they are now:
                return ", ".join(f'"{m}"' for m in self.cli_modules())
            new.append(side)
        return '"' + " -> ".join(new) + '"' if len(sides) > 1 else f'"{new[0]}"'


def tracked(root: Path) -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    return [root / n for n in names if n and (root / n).is_file()]


OTHER_TEXT = re.compile(r"(\.sh|\.yaml|\.yml|\.service|\.conf|Makefile|Dockerfile|/run)$")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    root = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    rw = Rewriter(root)
    changed = []
    for path in tracked(root):
        if path.resolve() == SELF or path.suffix in {".png", ".json", ".npz", ".onnx"}:
            continue
        rel = path.relative_to(root).as_posix()
        src = path.read_text()
        if path.suffix == ".py":
            new = rw.python(path.relative_to(root), src)
        elif path.suffix == ".md":
            new = rw.text(src)
        elif rel == "pyproject.toml":
            new = rw.pyproject(src)
        elif OTHER_TEXT.search(rel):
            new = rw.text(src, dotted=False)
        else:
            continue
        if new != src:
            changed.append(rel)
            if not check:
                path.write_text(new)
    for rel in changed:
        print(("would rewrite " if check else "rewrote ") + rel)
    py = [rel for rel in changed if rel.endswith(".py")]
    if py and not check:
        # `alchimia.agent` now sorts beside `alchimia.cli`, and long from-imports need wrapping:
        # ruff's isort fix does both (line length and sections from pyproject.toml).
        ruff = root / ".venv" / "bin" / "ruff"
        cmd = str(ruff) if ruff.exists() else shutil.which("ruff")
        if cmd:
            subprocess.run(
                [cmd, "check", "--fix", "--select", "I001", "--quiet", *py], cwd=root, check=False
            )
        else:
            print("no ruff found: run `ruff check --fix --select I001 .` now", file=sys.stderr)
    for p in rw.problems:
        print("FIX BY HAND:", p, file=sys.stderr)
    if check:
        return 1 if changed or rw.problems else 0
    return 1 if rw.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
