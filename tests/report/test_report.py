"""``gradcam report``: the page's embedded data, thumbnails (made, coloured, reused), evaluation parts, CLI errors."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gradcam.assets import sample_path
from gradcam.cli import main
from gradcam.imaging.draw import colormap
from gradcam.report import THUMBNAIL_SIZE, curves_svg, embed_json, metric_table, write_html_report
from report.report_support import NASTY_LABEL, copy_run, fake_run

DATA_RE = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def page_data(page: str) -> dict:
    """The JSON embedded in a report page (everything up to the first ``</script>``)."""
    match = DATA_RE.search(page)
    assert match, "no embedded data"
    return json.loads(match.group(1))


def test_embed_json_escapes_what_html_would_read() -> None:
    data = {"label": "a </script><script>alert(1)</script> & <!-- b -->", "sep": "x\u2028y\u2029z", "n": [1.5, None]}
    text = embed_json(data)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == data


def test_labels_with_script_end_and_ampersand_survive_the_page(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["items"][0]["outputs"][0]["label"] = NASTY_LABEL
    manifest["failed"] = [{"input": "x</script>.jpg", "error": "bad & <worse>"}]
    (out / "manifest.json").write_text(json.dumps(manifest))
    page = write_html_report(out).path.read_text()
    data = page_data(page)
    assert NASTY_LABEL in data["labels"]
    assert data["failed"] == [{"n": "x</script>.jpg", "e": "bad & <worse>"}]
    assert page.count("</script>") == 2  # the data's and the code's: no label ends an element
    assert "<b>bold" not in page


def test_items_carry_predictions_outputs_and_relative_thumbnails(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run", items=3, size=(400, 300))
    summary = write_html_report(out)
    assert (summary.items, summary.failed, summary.made, summary.reused, summary.missing) == (3, 0, 6, 0, 0)
    data = page_data(summary.path.read_text())
    assert data["root"] == str(out) + os.sep and data["items"][0]["n"] == "photo0.png"
    item = data["items"][0]
    assert data["labels"][item["p"][0][0]] == "cat & dog" and item["p"][0][1] == 0.75
    (method, label, score, key) = item["o"][0]
    assert (data["methods"][method], data["labels"][label], score) == ("gradcam", "cat & dog", 2.5)
    photo = Image.open(out / "report_files" / f"{item['k']}.jpg")
    assert photo.format == "JPEG" and photo.size == (THUMBNAIL_SIZE, 192) == (item["w"], item["h"])
    heat = Image.open(out / "report_files" / f"{key}.png")
    assert heat.format == "PNG" and heat.size == photo.size  # the map at the photo's size, to lie over it
    pixels = np.asarray(heat.convert("RGB"))
    jet = colormap("jet")
    assert (pixels[10, 10] == jet[255]).all() and (pixels[-10, -10] == jet[0]).all()  # hot top-left, cold else


def test_rerun_reuses_thumbnails_newer_than_their_sources(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run", items=2)
    first = write_html_report(out)
    thumbs = sorted((out / "report_files").iterdir())
    assert first.made == len(thumbs) == 4
    old = {p: p.stat().st_mtime_ns for p in thumbs}
    second = write_html_report(out)
    assert (second.made, second.reused) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in thumbs} == old
    later = time.time() + 5
    os.utime(out / "map1.npy", (later, later))  # a newer map: its thumbnail alone is made again
    third = write_html_report(out)
    assert (third.made, third.reused) == (1, 3)
    changed = [p for p in thumbs if p.stat().st_mtime_ns != old[p]]
    key = page_data((out / "report.html").read_text())["items"][1]["o"][0][3]
    assert changed == [out / "report_files" / f"{key}.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["items"][1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "report_files" / "notes.txt").write_text("kept")
    write_html_report(out)  # the thumbnails of items gone are removed, nothing else
    assert sorted(p.name for p in (out / "report_files").iterdir()) == sorted(
        [f"{item['k']}.jpg" for item in page_data((out / "report.html").read_text())["items"]]
        + [f"{item['o'][0][3]}.png" for item in page_data((out / "report.html").read_text())["items"]]
        + ["notes.txt"]
    )


def test_unreadable_photo_or_map_is_left_out_not_fatal(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run", items=2)
    (out / "photo0.png").write_bytes(b"not a picture")
    (out / "map1.npy").unlink()
    summary = write_html_report(out)
    assert summary.missing == 2
    data = page_data(summary.path.read_text())
    assert "k" not in data["items"][0] and "photo0.png" in data["items"][0]["x"]
    assert data["items"][1]["o"][0][3] is None and "k" in data["items"][1]


def test_evaluation_table_curves_and_examples(evaluated: Path) -> None:
    summary = json.loads((evaluated / "summary.json").read_text())
    table = metric_table(summary)
    rows = re.findall(r"<tr[^>]*><th>(.*?)</th>", table)[1:]  # after the header
    assert rows == ["Grad-CAM", "Score-CAM", "Baseline: random map", "CAM &lt;head&gt;"]  # baselines, then failures
    assert "<td>62.5</td>" in table and "<td>0.123</td>" in table and "<td>–</td>" in table
    assert "not evaluated: CAM needs a GAP + linear head &amp; this is not one</td>" in table
    svg = curves_svg(json.loads((evaluated / "curves.json").read_text()), {"gradcam": "Grad-CAM"})
    polylines = re.findall(r'<polyline data-method="([^"]+)"[^>]*points="([^"]+)"', svg)
    assert [name for name, _ in polylines] == ["gradcam", "scorecam", "random"] * 2
    first = [tuple(map(float, p.split(","))) for p in polylines[0][1].split()]
    assert len(first) == 57 and first[0][1] < first[-1][1]  # deletion falls: SVG y grows downwards
    page = write_html_report(evaluated).path.read_text()
    assert 'src="examples/gradcam.png"' in page and 'src="examples/random.png"' in page
    assert "report-data" not in page  # no explain run here: no item browser


def test_cli_report_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = fake_run(tmp_path / "run", items=1)
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"report: {out / 'report.html'} (1 images, 0 failed; thumbnails: 2 made, 0 reused)"
    )
    assert (out / "report.html").is_file()


def test_cli_report_on_a_folder_without_outputs_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "nothing here"
    empty.mkdir()
    assert main(["report", str(empty)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradcam report: error: ") and str(empty) in lines[0]
    assert "manifest.json" in lines[0] and "summary.json" in lines[0]
    assert not (empty / "report.html").exists()


def test_cli_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    assert main(["report", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot read {bad / 'manifest.json'}" in err[0]
    missing = tmp_path / "missing"
    assert main(["report", str(missing)]) == 1
    assert f"{missing} is not a folder" in capsys.readouterr().err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["report", str(a_file)]) == 2  # a usage error: OUT must be a folder
    assert capsys.readouterr().err.strip() == (
        f"gradcam report: error: {a_file} is a file; expected the --out folder of gradcam explain or gradcam evaluate"
    )


def test_explain_html_writes_the_page_even_when_an_item_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    out = tmp_path / "out"
    args = ["explain", str(sample_path("coffee")), str(broken), "--method", "gradcam", "--outputs", "heatmap",
            "--out", str(out), "--quiet", "--html"]  # fmt: skip
    assert main(args) == 1  # the failed item's exit code, after the page is written
    assert f"report: {out / 'report.html'} (1 images, 1 failed;" in capsys.readouterr().out
    data = page_data((out / "report.html").read_text())
    assert [Path(item["n"]).name for item in data["items"]] == ["coffee.jpg"]
    assert [Path(f["n"]).name for f in data["failed"]] == ["broken.jpg"] and data["failed"][0]["e"]
    assert data["items"][0]["o"][0][3] is not None  # the map's thumbnail from heatmap-only outputs


def test_evaluate_html_writes_the_page_after_the_tables(
    evaluated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate --html``: the page from the files write_report wrote (the evaluation itself faked: minutes)."""
    import gradcam.evaluation as evaluation
    import gradcam.evaluation.report as tables

    out = tmp_path / "run"
    result = SimpleNamespace(methods=[], evaluated_images=8, reused_images=0)
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: result)
    monkeypatch.setattr(tables, "write_report", lambda result, folder, plots: {"x": copy_run(evaluated, Path(folder))})
    monkeypatch.setattr(tables, "describe", lambda result: "described")
    monkeypatch.setattr(tables, "format_table", lambda result: "table")
    assert main(["evaluate", "all", "--synthetic", "--images", "1", "--out", str(out), "--quiet", "--html"]) == 0
    assert f"report: {out / 'report.html'} (evaluation tables, curves and examples)" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert "<td>62.5</td>" in page and "<svg" in page and 'src="examples/gradcam.png"' in page


def test_a_zero_map_is_flagged_and_the_flag_survives_reused_thumbnails(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "run", items=2)
    np.save(out / "map1.npy", np.zeros((300, 400), np.float32))  # e.g. a counterfactual where nothing lowers y
    for run in range(2):  # made, then reused
        summary = write_html_report(out)
        assert (summary.made, summary.reused) == ((4, 0) if run == 0 else (0, 4))
        items = page_data(summary.path.read_text())["items"]
        assert len(items[0]["o"][0]) == 4  # a map with a hot square: no flag
        assert items[1]["o"][0][4] == 1
    assert "map is zero" in summary.path.read_text()  # the page's script writes it under the map
