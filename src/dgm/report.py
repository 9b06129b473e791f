r"""A run on one page: ``report.html``, self-contained (images as ``data:`` URIs, no script, no
request to anywhere: its Content-Security-Policy allows only inline styles and data images).

The page holds what the run directory holds, for every kind of run; a section with nothing to
show is left out:

- the configuration (the sections of other model kinds left out) and the last metrics row;
- the training curves (``curves.png``, or drawn from ``metrics.jsonl``), the samples, the
  reconstructions and the latent view (:mod:`dgm.latent`; drawn and written into the run when
  it is missing and the run has an encoder);
- every ``eval-*.json``, ``score*.json``, ``gap.json`` and ``gradvar*.json`` as a table, beside
  its picture; any other picture dgm wrote;
- the versions: those the run recorded in ``dgm-run.json``, if any, and those of the report.

>>> write_report("runs/first")                                # doctest: +SKIP
PosixPath('runs/first/report.html')
"""

from __future__ import annotations

import base64
import fnmatch
import html
import json
import math
import platform
from pathlib import Path
from typing import Any

import dgm.export as export
import dgm.families as families
import dgm.manifest as manifest
from dgm.config import CLASSICAL, FAMILIES, Config, load_run_config
from dgm.errors import DGMError, one_line
from dgm.files import atomic_write_text, read_bounded, read_json

REPORT = "report.html"
#: the evaluations shown as tables, in this order
EVALUATIONS = ("eval-*.json", "score*.json", "gap.json", "gradvar*.json")
#: pictures with a section of their own: (title, names)
PICTURES = (
    ("Samples", ("samples.png", "train_vs_generated.png", "progress.png")),
    ("Reconstructions", ("reconstructions.png",)),
)
#: a picture or an evaluation larger than this is left out (named, with why)
MAX_IMAGE_BYTES, MAX_JSON_BYTES = 32 * 1024**2, 4 * 1024**2
#: a list longer than this shows its first values and its length
MAX_LIST = 60
_PNG = b"\x89PNG\r\n\x1a\n"
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #777; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
.cards h3 { margin-bottom: 0.2em; }
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, *, device: str | None = None
) -> Path:
    """Write the page of the run in ``run_dir`` to ``out`` (default ``run_dir/report.html``),
    atomically, recorded in the run's manifest when inside the run; return its path. A missing
    latent view of a run with an encoder is drawn first (on ``device``)."""
    outputs = _outputs(run_dir)
    path = Path(out) if out is not None else outputs / REPORT
    text = report_html(run_dir, device=device)
    atomic_write_text(path, text)
    manifest.record(outputs, path)
    return path


def _outputs(run_dir: str | Path) -> Path:
    """Where the page and a missing latent view go: the run itself, or for a model that ships
    with dgm (``pretrained:NAME``, inside the package) ``./pretrained-NAME``."""
    if export.is_pretrained(run_dir):
        return Path.cwd() / f"pretrained-{export.resolve(run_dir).name}"
    return Path(run_dir)


def report_html(run_dir: str | Path, *, device: str | None = None) -> str:
    """The page of the run in ``run_dir`` (see the module doc) as one HTML string."""
    name, outputs = str(run_dir), _outputs(run_dir)
    run_dir = export.resolve(run_dir)  # a run, an export or pretrained:NAME
    config = load_run_config(run_dir / "config.json")  # one line if it is not a run
    latent, missing = _ensure_latent(name, run_dir, outputs, config, device)
    rows = _metrics(run_dir)
    files = {**_files(run_dir), **(_files(outputs) if outputs.is_dir() else {})}
    shown: set[str] = set()
    parts = [_header(run_dir, config, rows)]
    parts.append(_section("Configuration", _config_table(config)))
    if rows:
        parts.append(_section("Final metrics", _table(rows[-1])))
    parts.append(_curves(run_dir, config, rows, files, shown))
    for title, names in PICTURES:
        parts.append(_section(title, "".join(_figure(run_dir, n, files, shown) for n in names)))
    view = _figure(run_dir, latent, files, shown) if latent else _note(missing) if missing else ""
    parts.append(_section("Latent space", view))
    parts.append(_evaluations(run_dir, files, shown))
    others = [n for n in files if n.endswith(".png") and n not in shown]
    parts.append(
        _section("Other pictures", "".join(_figure(run_dir, n, files, shown) for n in others))
    )
    parts.append(_section("Versions", _versions(run_dir)))
    title = html.escape(f"dgm run {run_dir.name}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body>\n</html>\n"
    )


def _ensure_latent(
    name: str, run_dir: Path, outputs: Path, config: Config, device: str | None
) -> tuple[str | None, str | None]:
    """``latent.png``'s name when the run has one or (an encoder) once it is drawn, or None
    and why a run with an encoder has none (it could not be loaded: say, no checkpoint yet)."""
    from dgm.latent import LATENT, refusal, write_view

    for where in (outputs, run_dir):
        path = where / LATENT
        if path.is_file() and not path.is_symlink():
            return LATENT, None
    if refusal(config) is not None:
        return None, None
    from dgm.api import load_run

    try:
        write_view(load_run(name, device=device), outputs)
    except DGMError as err:
        return None, f"the latent view could not be drawn: {one_line(err, 200)}"
    return LATENT, None


def _files(run_dir: Path) -> dict[str, Path]:
    """The regular files directly in ``run_dir`` (never through a symbolic link), by name."""
    found = (p for p in run_dir.iterdir() if p.is_file() and not p.is_symlink())
    return {p.name: p for p in sorted(found)}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, or an export's last row (all it keeps)."""
    from dgm.api import read_metrics

    if export.is_export(run_dir):
        try:
            row = export.read_export(run_dir).info.get("metrics")
        except DGMError:
            return []
        return [row] if isinstance(row, dict) else []
    return read_metrics(run_dir)


# -- sections ---------------------------------------------------------------------------------


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n{body}\n</section>" if body else ""


def _header(run_dir: Path, config: Config, rows: list[dict[str, Any]]) -> str:
    epochs = [r["epoch"] for r in rows if isinstance(r.get("epoch"), int)]
    done = f", {epochs[-1]} of {config.train.epochs} epochs" if epochs else ""
    data = config.data.dataset
    return (
        f"<h1>{html.escape(f'dgm run {run_dir.name}')}</h1>\n"
        f"<p>{html.escape(f'model.kind = {config.model.kind!r} on {data}{done}')}<br>"
        f'<span class="note">{html.escape(str(run_dir.resolve()))}</span></p>'
    )


def _config_table(config: Config) -> str:
    kind = config.model.kind
    sections = {
        name: value
        for name, value in config.to_dict().items()
        if not (name in FAMILIES and name != kind) and not (name == "em" and kind not in CLASSICAL)
    }
    cards = "".join(
        f"<div><h3>{html.escape(name)}</h3>{_table(value)}</div>"
        for name, value in sections.items()
    )
    return f'<div class="cards">{cards}</div>{_note("sections of other model kinds left out")}'


def _curves(
    run_dir: Path,
    config: Config,
    rows: list[dict[str, Any]],
    files: dict[str, Path],
    shown: set[str],
) -> str:
    if "curves.png" in files:
        return _section("Training curves", _figure(run_dir, "curves.png", files, shown))
    from dgm.plots import VAE_CURVES, curves_figure, figure_png

    family = families.family(config.model.kind)
    panels = (family.curves if family is not None else ()) or VAE_CURVES
    first = next((r for r in rows if "epoch" in r), {})
    if not any(k in first for _, keys in panels for k in keys) and not any(
        k in first for k in ("train_recon", "test_recon")
    ):
        return ""
    fig = curves_figure(rows, panels)
    if fig is None:
        return ""
    caption = "drawn from metrics.jsonl"
    return _section("Training curves", _img(figure_png(fig), "training curves", caption))


def _evaluations(run_dir: Path, files: dict[str, Path], shown: set[str]) -> str:
    body = []
    for pattern in EVALUATIONS:
        for name in (n for n in files if fnmatch.fnmatch(n, pattern) and n not in shown):
            shown.add(name)
            try:
                value = read_json(files[name], MAX_JSON_BYTES)
            except (OSError, ValueError) as err:
                body.append(_note(f"{name}: not shown ({err})"))
                continue
            body.append(f"<h3>{html.escape(name)}</h3>\n{_table(value)}")
            picture = name[: -len(".json")] + ".png"
            if picture in files:
                body.append(_figure(run_dir, picture, files, shown))
    return _section("Evaluations", "\n".join(body))


def _versions(run_dir: Path) -> str:
    import torch

    from dgm import __version__

    here = {"dgm": __version__, "torch": torch.__version__, "python": platform.python_version()}
    rows = {}
    try:
        record = read_json(run_dir / manifest.MANIFEST, MAX_JSON_BYTES)
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict):
        recorded = record.get("versions", record)
        kept = {k: recorded[k] for k in here if isinstance(recorded, dict) and k in recorded}
        if kept:
            rows["recorded with the run (dgm-run.json)"] = kept
    if export.is_export(run_dir):
        try:
            written = export.read_export(run_dir).info.get("versions")
        except DGMError:
            written = None
        if isinstance(written, dict):
            rows[f"the export ({export.EXPORT})"] = {k: written[k] for k in here if k in written}
    rows["this report"] = here
    return _table(rows)


# -- pictures and tables ---------------------------------------------------------------------


def _figure(run_dir: Path, name: str, files: dict[str, Path], shown: set[str]) -> str:
    if name not in files or name in shown:
        return ""
    shown.add(name)
    try:
        data = read_bounded(files[name], MAX_IMAGE_BYTES)
    except (OSError, ValueError) as err:
        return _note(f"{name}: not shown ({err})")
    if not data.startswith(_PNG):
        return _note(f"{name}: not shown (not a PNG image)")
    return _img(data, name, name)


def _img(png: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="{uri}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _scalar(value: Any) -> str:
    """A JSON value in a cell: floats to 6 significant digits, lists cut at :data:`MAX_LIST`."""
    if isinstance(value, bool) or value is None:
        return html.escape(json.dumps(value))
    if isinstance(value, float):
        return html.escape(f"{value:.6g}" if math.isfinite(value) else str(value))
    if isinstance(value, int):
        return html.escape(str(value))
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        shown = ", ".join(_scalar(v) for v in value[:MAX_LIST])
        more = f", ... ({len(value)} values)" if len(value) > MAX_LIST else ""
        return f"[{shown}{html.escape(more)}]"
    return html.escape(str(value))


def _cell(value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, dict) or (
        isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
    ):
        return f"<td>{_table(value)}</td>"
    return f'<td class="num">{_scalar(value)}</td>' if numeric else f"<td>{_scalar(value)}</td>"


def _table(value: Any) -> str:
    """A JSON value as a table: an object as key / value rows (nested objects as nested
    tables), a list of objects as one row each under the union of their keys."""
    if isinstance(value, dict):
        if not value:
            return _note("(empty)")
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys: list[str] = []
        for row in value:
            keys += [k for k in row if k not in keys]
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(_cell(row.get(k, "")) for k in keys) + "</tr>" for row in value
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    return f"<p>{_scalar(value)}</p>"
