"""A griffe extension for the API reference: dgm's docstrings are plain prose with reST roles.

The docstrings write ``:func:`dgm.fit```, ``:class:`~dgm.objectives.ELBO```, ``:mod:`dgm.train```
and ``:math:`x \\in [0, 1]```, which Markdown would print as they are. Before mkdocstrings renders
them, this extension rewrites each role:

- ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``, ``:obj:``
  become code that links to the object's entry in the reference where it has one (an optional
  cross-reference: an object the reference does not show stays plain code, with no warning);
  a leading ``~`` shows only the last component, as in Sphinx;
- ``:math:`...``` becomes ``$...$``, which ``pymdownx.arithmatex`` renders.

It also gives an attribute without a docstring the comments that document it in the source: a
``#:`` or ``#`` comment block right above it and a ``#`` comment at the end of its line (the
configuration's fields, a dataclass's fields and module constants are documented that way).

Names are resolved the way Python would see them from the docstring's object (its module's
imports and members), and aliases (``dgm.fit``) are followed to where the object is defined
(``dgm.api.fit``), which is the identifier the reference registers.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|data|attr|exc|obj|math):`([^`]+)`")


def _lookup(pkg: griffe.Module, path: str) -> str | None:
    """The canonical path of ``path`` (dotted, starting with the package's name), or None."""
    parts = path.split(".")
    if parts[0] != pkg.name:
        return None
    obj: Any = pkg
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = obj.members[part]
        except (KeyError, AttributeError, griffe.AliasResolutionError):
            return ".".join([_canonical(obj), *parts[i:]]) if i > 1 else None
        if isinstance(obj, griffe.Alias):
            try:
                obj = obj.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return obj.target_path if i == len(parts) - 1 else None
    return _canonical(obj)


def _canonical(obj: Any) -> str:
    try:
        return obj.canonical_path
    except Exception:  # noqa: BLE001 (a half-resolved object: its own path will do)
        return obj.path


#: comments that are not documentation
TOOL_COMMENT = re.compile(r"^(noqa|type:|pragma|fmt:|ruff:|isort:)")


def _comment(line: str) -> str | None:
    """The text of a whole-line comment, or None if the line is not one."""
    stripped = line.strip()
    if not stripped.startswith("#"):
        return None
    text = stripped.lstrip("#").lstrip(":").strip()
    return None if TOOL_COMMENT.match(text) else text


def _trailing_comment(line: str) -> str | None:
    """The comment at the end of a line of code (outside strings), or None."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            text = line[i + 1 :].strip()
            return None if not text or TOOL_COMMENT.match(text) else text
    return None


def comment_docstring(lines: list[str], lineno: int, endlineno: int) -> str | None:
    """The documentation comments of a statement on lines ``lineno..endlineno`` (1-based)."""
    above: list[str] = []
    i = lineno - 2
    while i >= 0 and (text := _comment(lines[i])) is not None:
        above.insert(0, text)
        i -= 1
    inline = _trailing_comment(lines[endlineno - 1]) if endlineno <= len(lines) else None
    parts = [" ".join(t for t in above if t), inline or ""]
    text = " ".join(p for p in parts if p)
    return text or None


class Roles(griffe.Extension):
    """Rewrite reST roles in every docstring of the package (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in self._objects(pkg):
            if (
                obj.docstring is None
                and obj.is_attribute
                and not ("instance-attribute" in obj.labels and "class-attribute" not in obj.labels)
                and obj.lineno is not None
                and obj.filepath is not None
            ):
                lines = obj.lines_collection[obj.filepath]
                text = comment_docstring(lines, obj.lineno, obj.endlineno or obj.lineno)
                if text is not None:
                    obj.docstring = griffe.Docstring(
                        text,
                        parent=obj,
                        parser=loader.docstring_parser,
                        parser_options=loader.docstring_options,
                    )
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(
                    lambda m, obj=obj: self._role(pkg, obj, m), obj.docstring.value
                )

    def _objects(self, obj: griffe.Object):  # noqa: ANN202
        yield obj
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                yield from self._objects(member)

    def _role(self, pkg: griffe.Module, obj: griffe.Object, m: re.Match[str]) -> str:
        kind, text = m.group(1), m.group(2)
        if kind == "math":
            return f"${text}$"
        short = text.startswith("~")
        name = text.lstrip("~").lstrip(".").removesuffix("()")
        title = name.rsplit(".", 1)[-1] if short else name
        target = _lookup(pkg, name)
        if target is None:
            head, _, rest = name.partition(".")
            try:
                resolved = obj.resolve(head)
            except Exception:  # noqa: BLE001 (griffe's NameResolutionError and friends)
                resolved = None
            if resolved is not None:
                full = f"{resolved}.{rest}" if rest else resolved
                target = _lookup(pkg, full) or full
        target = target or name
        return (
            f'<autoref identifier="{html.escape(target)}" optional>'
            f"<code>{html.escape(title)}</code></autoref>"
        )
