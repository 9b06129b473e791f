"""MkDocs hooks for dgm's site: results tables rendered from the benchmarks' own JSON.

A page line that reads

    {{ table("NAME") }}

(alone on its line, outside fenced code) is replaced by the Markdown that ``table(summary)`` in
``benchmarks/NAME.py`` returns for the summary in ``docs/measurements/NAME.json``. The table is
drawn by the same function that prints it when the benchmark runs, so the page and the
benchmark's own output cannot disagree. A missing or unreadable JSON file, or a benchmark
without ``table``, is logged as a warning naming the file and the command that makes it; under
``strict: true`` (dgm's mkdocs.yml) that fails the build.

The tutorials' kernels inherit this process's environment: :func:`on_config` silences tqdm's
notice that the notebook progress bars need ipywidgets (dgm imports ``tqdm.auto``; the
tutorials show no progress bars), which would otherwise be printed into the first cell.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("mkdocs.hooks.dgm")

MACRO = re.compile(r'^[ \t]*\{\{\s*table\(\s*["\']([A-Za-z0-9_\-]+)["\']\s*\)\s*\}\}[ \t]*$')
FENCE = re.compile(r"^[ \t]*(```|~~~)")

_modules: dict[Path, ModuleType] = {}


def _benchmark(path: Path) -> ModuleType:
    """``benchmarks/NAME.py`` imported by path (once per build), without running its main."""
    if path not in _modules:
        spec = importlib.util.spec_from_file_location(f"_dgm_docs_benchmark_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[path] = module
    return _modules[path]


def render_table(name: str, docs_dir: Path, root: Path) -> str:
    """The Markdown of ``benchmarks/NAME.py``'s ``table`` for ``docs/measurements/NAME.json``;
    raises ValueError with a message for the reader of the build log."""
    data = docs_dir / "measurements" / f"{name}.json"
    script = root / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise ValueError(f'table("{name}"): no benchmark {script}')
    if not data.is_file():
        raise ValueError(
            f'table("{name}"): the measurement {data} is missing; run '
            f"`python benchmarks/{name}.py` and copy its summary JSON there"
        )
    try:
        summary: Any = json.loads(data.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f'table("{name}"): cannot read {data} ({err})') from None
    table = getattr(_benchmark(script), "table", None)
    if not callable(table):
        raise ValueError(f'table("{name}"): {script} has no table(summary) function')
    try:
        return str(table(summary)).strip("\n")
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as err:
        raise ValueError(
            f'table("{name}"): {data} does not have the shape {script.name} expects '
            f"({type(err).__name__}: {err})"
        ) from None


QUIET = "ignore:IProgress not found"


def on_config(config: Any) -> Any:
    current = os.environ.get("PYTHONWARNINGS", "")
    if QUIET not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{QUIET}" if current else QUIET
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "table(" not in markdown:
        return markdown
    docs_dir = Path(config["docs_dir"])
    root = Path(config["config_file_path"]).resolve().parent
    out, fence = [], None
    for line in markdown.split("\n"):
        opened = FENCE.match(line)
        if opened and (fence is None or opened.group(1) == fence):
            fence = opened.group(1) if fence is None else None
        match = MACRO.match(line) if fence is None else None
        if match is None:
            out.append(line)
            continue
        try:
            out.append(render_table(match.group(1), docs_dir, root))
        except ValueError as err:
            log.warning("%s: %s", page.file.src_path, err)
            out.append(f'!!! failure "Missing measurement"\n    {err}')
    return "\n".join(out)
