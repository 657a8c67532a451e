"""A self-contained HTML page to browse what ``gradcam explain`` and ``gradcam evaluate`` wrote.

:func:`write_html_report` reads ``OUT/manifest.json`` (explain) and/or ``OUT/summary.json`` (evaluate) and
writes ``OUT/report.html``: one file, no server and no network (it works from ``file://``). Images are
referenced relatively: small thumbnails under ``OUT/report_files/`` (the photo, max side
:data:`THUMBNAIL_SIZE`, JPEG; per output the map coloured with jet at the same size, PNG, shown over the
photo with an opacity slider). A rerun reuses the thumbnails that are newer than their sources and removes
those no longer shown. The explain data is embedded as JSON (:func:`embed_json`) and rendered by a small
vanilla-JS script, 48 items per page; the evaluation parts (metric table, deletion/insertion curves as
inline SVG, best/worst examples) are static HTML.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from ..errors import GradCAMError
from ..imaging.curves import CURVE_COLOURS
from ..imaging.draw import apply_colormap
from ._page import METHOD_FILTER, PAGE_SIZE, render_page

__all__ = ["PAGE_SIZE", "THUMBNAIL_SIZE", "ReportError", "ReportSummary", "embed_json", "write_html_report"]

#: Longest side of the thumbnails, in pixels.
THUMBNAIL_SIZE = 256
#: The folder, under OUT, holding the thumbnails.
FILES_FOLDER = "report_files"
JPEG_QUALITY = 85
_THUMB_NAME = re.compile(r"[0-9a-f]{12}\.(?:jpg|png)")
#: PNG text key of a map thumbnail: "1" when the map is identically zero (the page says so under it).
ZERO_KEY = "gradcam-zero-map"
#: At most this many points per curve in the SVG (evenly picked, the last one kept).
CURVE_POINTS = 101


class ReportError(GradCAMError):
    """The folder holds nothing to report on, or its files cannot be read as ``gradcam`` outputs."""


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_html_report` did: the page, the items, the thumbnails made and reused."""

    path: Path
    items: int
    failed: int
    made: int
    reused: int
    missing: int
    evaluation: bool


def embed_json(data: Any) -> str:
    """``data`` as JSON that is safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&``
    (so no ``</script>`` or ``<!--``) and the JavaScript line separators are written as ``\\uXXXX``
    escapes; ``JSON.parse`` of the element's text gives ``data`` back."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


# ------------------------------------------------------------------------------------------ reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def _resolve(out: Path, value: Any) -> Path | None:
    """An output path of the manifest (relative to OUT, or absolute) as a path; None when not given."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else out / path


def _key(path: Path) -> str:
    return hashlib.sha1(str(path).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _short(value: Any) -> float | None:
    """A finite number to 4 significant digits (what the page shows; keeps 10,000 items' JSON small)."""
    number = _finite(value)
    return None if number is None else float(f"{number:.4g}")


# ------------------------------------------------------------------------------------------ thumbnails


def _is_fresh(thumb: Path, source: Path) -> bool:
    try:
        return thumb.stat().st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def _save_atomic(picture: Image.Image, path: Path, **options: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        picture.save(temporary, **options)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _photo_thumbnail(source: Path, thumb: Path) -> tuple[int, int]:
    with Image.open(source) as opened:
        opened.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode at 1/2 .. 1/8 when that is enough
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    _save_atomic(picture, thumb, format="JPEG", quality=JPEG_QUALITY)
    return picture.size


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, THUMBNAIL_SIZE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _map_thumbnail(source: Path, thumb: Path, size: tuple[int, int] | None) -> bool:
    """The map ``source`` (a .npy (H, W) heatmap in [0, 1], or a picture) at ``size`` (default: fitted).
    Returns whether the map is identically zero (known for .npy maps only; kept in the PNG's
    :data:`ZERO_KEY` text chunk so a reused thumbnail still knows)."""
    zero = False
    if source.suffix.lower() == ".npy":
        values = np.asarray(np.load(source, allow_pickle=False), dtype=np.float32)
        values = np.squeeze(values)
        if values.ndim != 2:
            raise ValueError(f"expected an (H, W) heatmap, got shape {values.shape}")
        zero = not bool(np.any(values != 0))
        values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
        target = size or _fit((values.shape[1], values.shape[0]))
        resized = np.asarray(Image.fromarray(values, "F").resize(target, Image.Resampling.BILINEAR))
        picture = apply_colormap(resized, "jet")
    else:
        with Image.open(source) as opened:
            picture = opened.convert("RGB")
        picture = picture.resize(size or _fit(picture.size), Image.Resampling.BILINEAR)
    text = PngInfo()
    text.add_text(ZERO_KEY, "1" if zero else "0")
    _save_atomic(picture, thumb, format="PNG", pnginfo=text)
    return zero


def _thumbnail_is_zero(thumb: Path) -> bool:
    with Image.open(thumb) as opened:  # reads the header and text chunks only
        return opened.info.get(ZERO_KEY) == "1"


@dataclass
class _Job:
    kind: str  # "photo" or "map"
    source: Path
    thumb: Path
    photo: _Job | None = None  # for a map: the photo it is drawn over (for its size)
    size: tuple[int, int] | None = None
    ok: bool = False
    made: bool = False
    zero: bool = False  # a map that is identically zero
    error: str | None = None


def _run_job(job: _Job) -> None:
    try:
        if job.kind == "photo":
            if _is_fresh(job.thumb, job.source):
                with Image.open(job.thumb) as opened:
                    job.size = opened.size
            else:
                job.size = _photo_thumbnail(job.source, job.thumb)
                job.made = True
        else:
            if _is_fresh(job.thumb, job.source):
                job.zero = _thumbnail_is_zero(job.thumb)
            else:
                job.zero = _map_thumbnail(job.source, job.thumb, job.photo.size if job.photo and job.photo.ok else None)
                job.made = True
        job.ok = True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        job.error = f"{job.source}: {error}"


def _run_jobs(jobs: Iterable[_Job], threads: int) -> None:
    jobs = list(jobs)
    if threads <= 1 or len(jobs) < 8:
        for job in jobs:
            _run_job(job)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_run_job, jobs, chunksize=16))


def _remove_stale(folder: Path, used: set[str]) -> None:
    """Delete the thumbnails of ``folder`` (our names only: 12 hex digits) that the page no longer shows."""
    for path in folder.glob("*"):
        if path.name not in used and _THUMB_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ explain data


def _explain_data(out: Path, manifest: Any, threads: int) -> tuple[dict[str, Any], list[_Job]]:
    """The page's JSON for a manifest, and the thumbnails it needs (run: photos first, then maps)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items", []), list):
        raise ReportError(f"{out / 'manifest.json'} is not a gradcam explain manifest (no 'items' list)")
    files = out / FILES_FOLDER
    files.mkdir(parents=True, exist_ok=True)
    methods: list[str] = [m for m in manifest.get("methods") or [] if isinstance(m, str)]
    labels: dict[str, int] = {}

    def method_index(name: str) -> int:
        if name not in methods:
            methods.append(name)
        return methods.index(name)

    def label_index(label: Any) -> int:
        return labels.setdefault("" if label is None else str(label), len(labels))

    photos: dict[Path, _Job] = {}
    maps: dict[Path, _Job] = {}
    items, records = [], []
    for entry in manifest.get("items") or []:
        if not isinstance(entry, dict):
            continue
        source = _resolve(out, entry.get("input"))
        photo = None
        if source is not None:
            photo = photos.setdefault(source, _Job("photo", source, files / f"{_key(source)}.jpg"))
        predictions = [
            [label_index(p.get("label", p.get("index"))), _short(p.get("probability"))]
            for p in entry.get("predictions") or []
            if isinstance(p, dict)
        ]
        outputs = []
        for output in entry.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            map_source = _resolve(out, output.get("heatmap")) or _resolve(out, output.get("overlay"))
            map_job = None
            if map_source is not None:
                map_job = maps.setdefault(map_source, _Job("map", map_source, files / f"{_key(map_source)}.png", photo))
            label = output.get("label")
            if label is None and output.get("target") is not None:
                label = f"class {output.get('target')}"
            outputs.append((method_index(str(output.get("method", "?"))), label_index(label),
                            _short(output.get("score")), map_job))  # fmt: skip
        items.append({"n": str(entry.get("input", "?")), "p": predictions})
        records.append((photo, outputs))
    _run_jobs(photos.values(), threads)
    _run_jobs(maps.values(), threads)
    for item, (photo, outputs) in zip(items, records):
        if photo is not None and photo.ok:
            item["k"] = photo.thumb.stem
            item["w"], item["h"] = photo.size
        elif photo is not None:
            item["x"] = photo.error
        item["o"] = [
            [m, label, score, job.thumb.stem if job is not None and job.ok else None]
            + ([1] if job is not None and job.ok and job.zero else [])
            for m, label, score, job in outputs
        ]
    failed = [
        {"n": str(f.get("input", "?")), "e": str(f.get("error", ""))}
        for f in manifest.get("failed") or []
        if isinstance(f, dict)
    ]
    names = [item["n"] for item in items] + [f["n"] for f in failed]
    root = _common_folder(names)
    if root:
        for record in items + failed:
            if record["n"].startswith(root):
                record["n"] = record["n"][len(root) :]
    data = {
        "model": manifest.get("model"),
        "layer": manifest.get("layer"),
        "task": manifest.get("task"),
        "root": root,
        "methods": methods,
        "labels": list(labels),
        "items": items,
        "failed": failed,
    }
    return data, [*photos.values(), *maps.values()]


def _common_folder(names: list[str]) -> str:
    """The folder (ending in a separator) holding every name; "" when none is shared."""
    folders = [os.path.dirname(name) for name in names]
    if not folders or not all(folders):
        return ""
    try:
        common = os.path.commonpath(folders)
    except ValueError:  # absolute and relative names mixed
        return ""
    if not common or common == os.path.dirname(common):  # nothing shared, or only the filesystem's root
        return ""
    return common.rstrip(os.sep) + os.sep


# ------------------------------------------------------------------------------------------ evaluation


def _table_columns(summary: dict[str, Any]) -> list[str]:
    from ..evaluation.report import TASK_COLUMNS, columns_for

    tasks = (summary.get("settings") or {}).get("tasks") or list(TASK_COLUMNS)
    return columns_for(tasks, {key for row in summary.get("methods") or [] if isinstance(row, dict) for key in row})


def metric_table(summary: dict[str, Any]) -> str:
    """The metric table of a ``summary.json`` as an HTML ``<table>`` (methods first, then baselines, then
    the methods that could not be evaluated, with why)."""
    from ..evaluation.report import COLUMNS

    rows = [row for row in summary.get("methods") or [] if isinstance(row, dict)]
    columns = _table_columns(summary)
    k = str(next((row.get("k") for row in rows if row.get("k")), (summary.get("settings") or {}).get("top_k", "k")))
    head = "".join(f"<th>{html.escape(COLUMNS[c][0].replace('{k}', k))}</th>" for c in columns)
    ordered = [r for r in rows if not r.get("baseline") and not r.get("error")]
    ordered += [r for r in rows if r.get("baseline") and not r.get("error")] + [r for r in rows if r.get("error")]
    body = []
    for row in ordered:
        title = html.escape(str(row.get("title") or row.get("method") or "?"))
        method = f' data-method="{html.escape(str(row.get("method") or "?"))}"'
        kind = ' class="baseline"' if row.get("baseline") else ""
        if row.get("error"):
            reason = html.escape(str(row["error"]).splitlines()[0][:200])
            body.append(f'<tr class="error"{method}><th>{title}</th><td colspan="{max(1, len(columns))}">'
                        f"not evaluated: {reason}</td></tr>")  # fmt: skip
            continue
        cells = []
        for column in columns:
            value = _finite(row.get(column))
            if isinstance(row.get(column), str):  # a verdict (the sanity checks' pass / FAIL)
                text = html.escape(row[column])
                cells.append(f'<td class="fail"><strong>{text}</strong></td>' if text == "FAIL" else f"<td>{text}</td>")
                continue
            cells.append("<td>–</td>" if value is None else f"<td>{COLUMNS[column][1].format(value)}</td>")
        body.append(f"<tr{kind}{method}><th>{title}</th>{''.join(cells)}</tr>")
    return f'<table class="metrics"><thead><tr><th>Method</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_COLOURS = tuple("#{:02x}{:02x}{:02x}".format(*colour) for colour in CURVE_COLOURS)  # as curves.png draws them


def _thin(values: list[float], count: int) -> list[int]:
    if len(values) <= count:
        return list(range(len(values)))
    step = (len(values) - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def curves_svg(curves: dict[str, Any], titles: dict[str, str] | None = None, score: str = "score") -> str:
    """The mean deletion and insertion curves of ``curves.json`` (method -> fractions, deletion, insertion)
    as one inline ``<svg>``: two plots side by side, a polyline per method (baselines dashed), a legend."""
    titles = titles or {}
    width, height, left, top, plot_w, plot_h = 900, 330, 50, 30, 360, 240
    usable = {
        name: c for name, c in curves.items()
        if isinstance(c, dict) and isinstance(c.get("fractions"), list) and c["fractions"]
    }  # fmt: skip
    values = [v for c in usable.values() for mode in ("deletion", "insertion") for v in c.get(mode) or []]
    top_value = max([1e-9] + [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)])
    top_value = 1.0 if top_value <= 1.0 else top_value
    parts = [f'<svg class="curves" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="deletion and insertion curves">']  # fmt: skip
    for index, mode in enumerate(("deletion", "insertion")):
        x0 = left + index * (plot_w + 80)
        parts.append(f'<g class="{mode}"><rect x="{x0}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
                     f'stroke="#333"/><text x="{x0 + plot_w / 2}" y="{top - 10}" text-anchor="middle">'
                     f"{mode.capitalize()}</text>")  # fmt: skip
        parts.append(f'<text x="{x0}" y="{top + plot_h + 16}" text-anchor="middle">0</text>'
                     f'<text x="{x0 + plot_w}" y="{top + plot_h + 16}" text-anchor="middle">1</text>'
                     f'<text x="{x0 - 6}" y="{top + 5}" text-anchor="end">{top_value:.2g}</text>'
                     f'<text x="{x0 - 6}" y="{top + plot_h}" text-anchor="end">0</text>'
                     f'<text x="{x0 + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle">fraction of pixels '
                     f'{"removed" if mode == "deletion" else "inserted"} ({html.escape(score)})</text>')  # fmt: skip
        for j, (name, c) in enumerate(usable.items()):
            ys = c.get(mode) or []
            points = []
            for i in _thin(c["fractions"], CURVE_POINTS):
                if i >= len(ys) or _finite(ys[i]) is None or _finite(c["fractions"][i]) is None:
                    continue
                x = x0 + float(c["fractions"][i]) * plot_w
                y = top + plot_h - float(ys[i]) / top_value * plot_h
                points.append(f"{x:.1f},{y:.1f}")
            dash = ' stroke-dasharray="5 3"' if name in ("center", "whole-image", "random") else ""
            title = html.escape(titles.get(name, name))
            parts.append(
                f'<polyline data-method="{html.escape(name)}" fill="none" stroke="{_COLOURS[j % 10]}" '
                f'stroke-width="1.5"{dash} points="{" ".join(points)}"><title>{title}</title></polyline>'
            )
        parts.append("</g>")
    legend = "".join(
        f'<span data-method="{html.escape(name)}"><i style="background:{_COLOURS[j % 10]}"></i>'
        f"{html.escape(titles.get(name, name))}</span>"
        for j, name in enumerate(usable)
    )
    parts.append("</svg>")
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _evaluation_html(out: Path, summary: Any, curves: Any) -> str:
    if not isinstance(summary, dict):
        raise ReportError(f"{out / 'summary.json'} is not a gradcam evaluate summary (not an object)")
    rows = [row for row in summary.get("methods") or [] if isinstance(row, dict)]
    titles = {str(row.get("method")): str(row.get("title") or row.get("method")) for row in rows}
    settings = summary.get("settings") or {}
    facts = [f"model {summary.get('model', '?')}", f"{summary.get('images', '?')} images"]
    classification = summary.get("classification") or {}
    facts += [f"{key.replace('_', ' ')} {value:.1f} %" for key, value in classification.items()
              if key != "images" and _finite(value) is not None]  # fmt: skip
    if summary.get("seconds") is not None:
        facts.append(f"{summary['seconds']} s")
    parts = ['<section id="evaluation"><h2>Evaluation</h2>', f'<p class="facts">{html.escape(", ".join(facts))}</p>',
             METHOD_FILTER, metric_table(summary)]  # fmt: skip
    if isinstance(curves, dict) and curves:
        parts.append("<h3>Deletion and insertion curves</h3>")
        parts.append(curves_svg(curves, titles, str(settings.get("score", "score"))))
    if (out / "sanity.png").is_file():
        parts.append(
            '<h3>Sanity checks: similarity to the trained model\'s maps, layer by layer</h3><img class="wide" '
            'loading="lazy" src="sanity.png" alt="model-parameter randomisation curves">'
        )
    if (out / "methods.png").is_file():
        parts.append(
            '<h3>Every method, same images</h3><img class="wide" loading="lazy" src="methods.png" '
            'alt="every method\'s maps of the same images">'
        )
    examples = sorted((out / "examples").glob("*.png")) if (out / "examples").is_dir() else []
    if examples:
        parts.append('<h3>Best and worst examples</h3><div class="examples">')
        order = {name: i for i, name in enumerate(titles)}
        for path in sorted(examples, key=lambda p: (order.get(p.stem, len(order)), p.stem)):
            title = html.escape(titles.get(path.stem, path.stem))
            src = html.escape(f"examples/{path.name}")
            parts.append(f'<figure data-method="{html.escape(path.stem)}">'
                         f'<img loading="lazy" src="{src}" alt="{title} best and worst">'
                         f"<figcaption>{title}</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------ the page


def write_html_report(
    out: str | os.PathLike[str],
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportSummary:
    """Write ``OUT/report.html`` (and the thumbnails under ``OUT/report_files/``) for the explain outputs
    (``manifest.json``) and/or the evaluation outputs (``summary.json``) in ``out``. Thumbnails newer than
    their sources are reused. Raises :class:`ReportError` when ``out`` holds neither file or one cannot be
    read; photos or maps that cannot be read are left out of the page (counted as ``missing``)."""
    out = Path(out)
    manifest_path, summary_path = out / "manifest.json", out / "summary.json"
    if not out.is_dir():
        raise ReportError(f"{out} is not a folder; expected the --out folder of gradcam explain or gradcam evaluate")
    if not manifest_path.is_file() and not summary_path.is_file():
        raise ReportError(
            f"{out} holds no manifest.json (written by gradcam explain) and no summary.json (written by gradcam "
            "evaluate): nothing to report"
        )
    threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    data: dict[str, Any] | None = None
    jobs: list[_Job] = []
    if manifest_path.is_file():
        if progress:
            progress(f"reading {manifest_path}")
        data, jobs = _explain_data(out, _read_json(manifest_path), threads)
    evaluation = None
    if summary_path.is_file():
        curves_path = out / "curves.json"
        curves = _read_json(curves_path) if curves_path.is_file() else None
        evaluation = _evaluation_html(out, _read_json(summary_path), curves)
    title = f"gradcam report: {out.resolve().name}"
    page = render_page(title, embed_json(data) if data is not None else None, evaluation)
    path = out / "report.html"
    temporary = path.with_name(f".report.html.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if data is not None:
        _remove_stale(out / FILES_FOLDER, {job.thumb.name for job in jobs})
    made = sum(job.made for job in jobs)
    return ReportSummary(
        path=path,
        items=len(data["items"]) if data else 0,
        failed=len(data["failed"]) if data else 0,
        made=made,
        reused=sum(job.ok for job in jobs) - made,
        missing=sum(not job.ok for job in jobs),
        evaluation=evaluation is not None,
    )
