"""Reading a learner's notebook without running it: its module, its code, forbidden calls.

Everything here is static (JSON and `ast`), so it is safe to run in the grader's process.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

__all__ = ["NotebookError", "load_notebook", "notebook_module", "code_cells",
           "forbidden_uses", "forbidden_uses_in_source", "evasions"]


class NotebookError(ValueError):
    """The file is not a Jupyter notebook the grader can read."""


def load_notebook(data: bytes, name: str = "notebook") -> dict:
    """Parse notebook JSON (nbformat 4) from bytes; NotebookError if it is not one."""
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotebookError(f"{name} is not a Jupyter notebook (invalid JSON: {exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{name} is not a Jupyter notebook (no list of cells)")
    return nb


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def notebook_module(nb: dict, filename: str) -> str | None:
    """The module a notebook belongs to: metadata["bncourse"]["module"], else the file's
    two-digit prefix ("02_forward_exercises.ipynb" -> "02")."""
    meta = nb.get("metadata", {})
    meta = meta.get("bncourse", {}) if isinstance(meta, dict) else {}
    if isinstance(meta, dict) and isinstance(meta.get("module"), str):
        return meta["module"]
    match = re.match(r"(\d\d)_", Path(filename).name)
    return match.group(1) if match else None


def _strip_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python: comment them out."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append(f"# (skipped by the grader) {line}" if stripped.startswith(("%", "!"))
                     else line)
    return "\n".join(lines)


def _is_check_call(node: ast.AST) -> bool:
    """`bncourse.check(...)` or `check(...)` as a statement."""
    if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
        return False
    func = node.value.func
    return (isinstance(func, ast.Attribute) and func.attr == "check") or (
        isinstance(func, ast.Name) and func.id == "check")


# A code cell the grader does not run (the notebook still runs it for the learner).
NOT_GRADED_TAG = "bncourse-not-graded"


def code_cells(nb: dict) -> list[tuple[int, str]]:
    """(cell index, source) of each code cell to execute when grading: magics commented out,
    `bncourse.check(...)` statements dropped (the grader runs its own checks), and cells tagged
    `bncourse-not-graded` (a demonstration with the course's own layers, which a sealed
    grading process cannot import) left out."""
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        tags = (cell.get("metadata") or {}).get("tags") or []
        if isinstance(tags, list) and NOT_GRADED_TAG in tags:
            continue
        source = _strip_magics(_source(cell))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            cells.append((index, source))  # the child reports the syntax error
            continue
        kept = [node for node in tree.body if not _is_check_call(node)]
        if not kept:
            continue
        if len(kept) != len(tree.body):
            lines = source.splitlines()
            source = "\n".join(
                "\n".join(lines[node.lineno - 1:node.end_lineno]) for node in kept)
        cells.append((index, source))
    return cells


# Subclassing torch's batch norm is using it: forbidding `_BatchNorm.forward` forbids these.
_BN_CLASSES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
               "LazyBatchNorm2d", "LazyBatchNorm3d"}


def _forbidden_parts(forbidden) -> set[str]:
    """The names to look for: `batch_norm` for `torch.batch_norm`, the class for a method."""
    parts = {name.split(".")[-2] if name.endswith(".forward") else name.split(".")[-1]
             for name in forbidden}
    return parts | _BN_CLASSES if "_BatchNorm" in parts else parts


def _forbidden_modules(forbidden) -> set[str]:
    return {name.rsplit(".", 1)[0] for name in forbidden}


def _import_aliases(tree: ast.AST, forbidden) -> dict[str, str]:
    """Local names bound to a forbidden function or class by an import statement."""
    parts = _forbidden_parts(forbidden)
    modules = _forbidden_modules(forbidden) | {"torch.nn", "bncourse.nn"}
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if alias.name in parts and (node.module in modules
                                            or node.module.startswith(("torch", "bncourse"))):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def forbidden_uses_in_source(source: str, name: str, forbidden, aliases=None) -> list[str]:
    """Forbidden names used inside the definition of `name` (def or class, bases included)."""
    if not forbidden:
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    parts = _forbidden_parts(forbidden)
    aliases = _import_aliases(tree, forbidden) if aliases is None else aliases
    found = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name != name:
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and sub.attr in parts:
                found.append(ast.unparse(sub))
            elif isinstance(sub, ast.Name) and sub.id in aliases and sub.id != name:
                found.append(aliases[sub.id])
    return list(dict.fromkeys(found))


# Reaching into the grader's frames or objects, or running code built at run time: no exercise
# needs them, and they are how a submission would look for the grader's inputs or references.
_INTROSPECTION = {"_getframe": "frame introspection (sys._getframe)",
                  "currentframe": "frame introspection (inspect.currentframe)",
                  "stack": None, "f_back": "frame introspection (f_back)",
                  "f_locals": "frame introspection (f_locals)",
                  "f_globals": "frame introspection (f_globals)",
                  "tb_frame": "frame introspection (tb_frame)",
                  "gi_frame": "frame introspection (gi_frame)",
                  "get_referrers": "object introspection (gc.get_referrers)",
                  "get_objects": "object introspection (gc.get_objects)",
                  "spec_from_file_location": "loading code from a file "
                                             "(importlib.util.spec_from_file_location)",
                  "SourceFileLoader": "loading code from a file (SourceFileLoader)"}
_BUILT_CODE = {"exec": "exec of a built string", "eval": "eval of a built string",
               "compile": "compile of a built string", "__import__": "an import of a computed name",
               "import_module": "an import of a computed name (importlib.import_module)"}


def evasions(cells: list[tuple[int, str]]) -> list[str]:
    """What in the notebook's code reaches around the static checks: frame or object
    introspection, `exec`/`eval`/`compile` of a non-literal string, imports of computed names."""
    found = []
    for _, source in cells:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _INTROSPECTION.get(node.attr):
                found.append(_INTROSPECTION[node.attr])
            elif (isinstance(node, ast.Attribute) and node.attr == "stack"
                  and isinstance(node.value, ast.Name) and node.value.id == "inspect"):
                found.append("frame introspection (inspect.stack)")
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else (
                    func.attr if isinstance(func, ast.Attribute) else None)
                if called in _BUILT_CODE and not (
                        node.args and isinstance(node.args[0], ast.Constant)):
                    if called in ("exec", "eval", "compile", "__import__") and not isinstance(
                            func, ast.Name):
                        continue  # model.eval() and the like
                    found.append(_BUILT_CODE[called])
    return list(dict.fromkeys(found))


def forbidden_uses(cells: list[tuple[int, str]], name: str, forbidden) -> list[str]:
    """Forbidden names used by the (last) definition of `name` in the notebook's code cells,
    and, for an exercise with forbidden names, any evasion anywhere in the notebook."""
    if not forbidden:
        return []
    evaded = evasions(cells)
    aliases = {}
    for _, source in cells:
        try:
            aliases.update(_import_aliases(ast.parse(source), forbidden))
        except SyntaxError:
            continue
    found = []
    for _, source in cells:
        uses = forbidden_uses_in_source(source, name, forbidden, aliases)
        if uses or _defines(source, name):
            found = uses  # a later definition replaces an earlier one
    return list(dict.fromkeys(evaded + found))


def _defines(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               and node.name == name for node in tree.body)
