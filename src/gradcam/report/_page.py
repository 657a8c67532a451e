"""The HTML, CSS and vanilla JavaScript of ``report.html`` (no framework, no network: works from file://)."""

from __future__ import annotations

import html

#: Items (cards) per page of the browser.
PAGE_SIZE = 48

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f4f4f4}
header.top{background:#fff;padding:10px 16px;border-bottom:1px solid #ccc;position:sticky;top:0;z-index:2}
h1{font-size:18px;margin:0 0 4px}
.facts{color:#555;margin:0 0 6px}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center}
.controls label{white-space:nowrap}
.pager{display:flex;gap:8px;align-items:center;margin:8px 16px}
main{padding:0 16px 24px}
#grid{display:flex;flex-direction:column;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card.failed{border-color:#d62728;background:#fff6f6}
.card h3{font-size:13px;margin:0 0 6px;font-weight:600;overflow-wrap:anywhere}
.error{color:#b00;white-space:pre-wrap;margin:0}
.row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0}
.photo img,.stack img{display:block;width:160px;height:auto;background:#ddd}
.preds{margin:4px 0 0;padding-left:20px;font-size:12px}
.cls h4{font-size:12px;margin:0 0 4px;font-weight:600}
.maps{display:flex;gap:8px}
.stack{position:relative;width:160px}
.stack img.heat{position:absolute;left:0;top:0;width:100%;height:100%}
.map figcaption{font-size:12px}
.map input{width:160px}
.missing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#777;
font-size:12px;text-align:center}
#evaluation{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
table.metrics{border-collapse:collapse;font-size:12px}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 6px;text-align:right}
table.metrics th:first-child{text-align:left}
table.metrics tr.baseline{color:#666}
table.metrics tr.error td{text-align:left;color:#b00}
svg.curves{max-width:100%;height:auto;font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px}
.legend i{display:inline-block;width:14px;height:3px;margin-right:4px;vertical-align:middle}
.examples{display:flex;flex-wrap:wrap;gap:12px}
.examples img{max-width:100%;height:auto}
img.wide{max-width:100%;height:auto}
.empty{color:#666}
.zero-note{margin:2px 0 0;font-size:12px;color:#8a5a00;font-style:italic}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE = __PAGE__;
  var state = {cls: "", method: "", failed: false, page: 0, opacity: 50};
  var $ = function (id) { return document.getElementById(id); };
  var grid = $("grid");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function label(i) { return D.labels[i]; }
  function name(n) { return n.split(/[\\/]/).pop(); }
  function pct(p) { return p === null || p === undefined ? "" : " " + (100 * p).toFixed(1) + " %"; }

  var facts = [];
  if (D.model) facts.push("model " + D.model);
  if (D.layer) facts.push("layer " + D.layer);
  if (D.task) facts.push("task " + D.task);
  facts.push(D.items.length + " images", D.failed.length + " failed");
  if (D.root) facts.push("under " + D.root);
  $("facts").textContent = facts.join(", ");
  $("failed-count").textContent = "(" + D.failed.length + ")";
  var methodSelect = $("method");
  D.methods.forEach(function (m) { var o = el("option", null, m); o.value = m; methodSelect.appendChild(o); });
  var classList = $("class-list");
  D.labels.forEach(function (l) { var o = el("option"); o.value = l; classList.appendChild(o); });

  function outputsOf(item) {
    var q = state.cls.toLowerCase();
    var outs = item.o.filter(function (o) { return !state.method || D.methods[o[0]] === state.method; });
    if (q) {
      var matching = outs.filter(function (o) { return label(o[1]).toLowerCase().indexOf(q) >= 0; });
      if (matching.length) return matching;
      var predicted = item.p.some(function (p) { return label(p[0]).toLowerCase().indexOf(q) >= 0; });
      return predicted ? outs : null;
    }
    return state.method && !outs.length ? null : outs;
  }

  function selection() {
    if (state.failed) return D.failed.map(function (f) { return {failed: f}; });
    var list = [];
    D.items.forEach(function (item) {
      var outs = outputsOf(item);
      if (outs) list.push({item: item, outs: outs});
    });
    if (!state.cls && !state.method) D.failed.forEach(function (f) { list.push({failed: f}); });
    return list;
  }

  function photo(item) {
    if (!item.k) return el("div", "missing", item.x ? "photo unreadable" : "no photo");
    var img = el("img");
    img.loading = "lazy";
    img.src = "report_files/" + item.k + ".jpg";
    img.width = item.w; img.height = item.h;
    img.alt = name(item.n);
    return img;
  }

  function mapFigure(item, out) {
    var fig = el("figure", "map");
    fig.dataset.method = D.methods[out[0]];
    fig.dataset.label = label(out[1]);
    var stack = el("div", "stack");
    if (out[3]) {
      stack.appendChild(photo(item));
      var heat = el("img", "heat");
      heat.loading = "lazy";
      heat.src = "report_files/" + out[3] + ".png";
      heat.alt = D.methods[out[0]] + " map of " + label(out[1]);
      heat.style.opacity = state.opacity / 100;
      stack.appendChild(heat);
    } else {
      stack.appendChild(el("div", "missing", "map missing"));
    }
    fig.appendChild(stack);
    var score = out[2] === null ? "" : " (score " + Number(out[2]).toPrecision(3) + ")";
    fig.appendChild(el("figcaption", null, D.methods[out[0]] + score));
    if (out[4]) {  // a blank overlay is not a drawing error: say the map is zero
      fig.classList.add("zero");
      fig.appendChild(el("p", "zero-note", "map is zero"));
    }
    if (out[3]) {
      var slider = el("input", "opacity");
      slider.type = "range"; slider.min = 0; slider.max = 100; slider.value = state.opacity;
      slider.setAttribute("aria-label", "opacity of the " + D.methods[out[0]] + " map of " + label(out[1]));
      fig.appendChild(slider);
    }
    return fig;
  }

  function card(entry) {
    var node;
    if (entry.failed) {
      node = el("article", "card failed");
      node.appendChild(el("h3", null, entry.failed.n));
      node.appendChild(el("p", "error", entry.failed.e));
      return node;
    }
    var item = entry.item;
    node = el("article", "card");
    node.appendChild(el("h3", null, item.n));
    if (item.x) node.appendChild(el("p", "error", item.x));
    var row = el("div", "row");
    var left = el("figure", "photo");
    left.appendChild(photo(item));
    var preds = el("ol", "preds");
    item.p.forEach(function (p) { preds.appendChild(el("li", null, label(p[0]) + pct(p[1]))); });
    left.appendChild(preds);
    row.appendChild(left);
    var groups = [], byLabel = {};
    entry.outs.forEach(function (o) {
      if (!(o[1] in byLabel)) { byLabel[o[1]] = []; groups.push(o[1]); }
      byLabel[o[1]].push(o);
    });
    groups.forEach(function (l) {
      var outs = byLabel[l].slice().sort(function (a, b) {  // the counterfactual beside the others, last
        return (D.methods[a[0]] === "counterfactual") - (D.methods[b[0]] === "counterfactual");
      });
      var cls = el("div", "cls");
      cls.dataset.label = label(l);
      cls.appendChild(el("h4", null, label(l)));
      var maps = el("div", "maps");
      outs.forEach(function (o) { maps.appendChild(mapFigure(item, o)); });
      cls.appendChild(maps);
      row.appendChild(cls);
    });
    node.appendChild(row);
    return node;
  }

  function render() {
    var list = selection();
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var start = state.page * PAGE, shown = list.slice(start, start + PAGE);
    var fragment = document.createDocumentFragment();
    shown.forEach(function (entry) { fragment.appendChild(card(entry)); });
    grid.replaceChildren(fragment);
    if (!list.length) grid.appendChild(el("p", "empty", "No item matches the filters."));
    var text = list.length ? "items " + (start + 1) + "–" + (start + shown.length) + " of " + list.length : "0 items";
    document.querySelectorAll(".page-info").forEach(function (n) {
      n.textContent = text + ", page " + (state.page + 1) + " of " + pages;
    });
    document.querySelectorAll(".prev").forEach(function (b) { b.disabled = state.page === 0; });
    document.querySelectorAll(".next").forEach(function (b) { b.disabled = state.page >= pages - 1; });
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  }

  function refilter() { state.page = 0; render(); }
  $("class").addEventListener("input", function (e) { state.cls = e.target.value.trim(); refilter(); });
  methodSelect.addEventListener("change", function (e) { state.method = e.target.value; refilter(); });
  $("failed").addEventListener("change", function (e) { state.failed = e.target.checked; refilter(); });
  $("all-opacity").addEventListener("input", function (e) {
    state.opacity = Number(e.target.value);
    grid.querySelectorAll("input.opacity").forEach(function (s) { s.value = state.opacity; });
    grid.querySelectorAll("img.heat").forEach(function (h) { h.style.opacity = state.opacity / 100; });
  });
  grid.addEventListener("input", function (e) {
    if (!e.target.classList.contains("opacity")) return;
    e.target.closest("figure").querySelector("img.heat").style.opacity = Number(e.target.value) / 100;
  });
  document.querySelectorAll(".prev").forEach(function (b) {
    b.addEventListener("click", function () { state.page -= 1; render(); window.scrollTo(0, 0); });
  });
  document.querySelectorAll(".next").forEach(function (b) {
    b.addEventListener("click", function () { state.page += 1; render(); window.scrollTo(0, 0); });
  });
  render();
})();
"""

_PAGER = (
    '<div class="pager"><button type="button" class="prev">← previous</button><span class="page-info"></span>'
    '<button type="button" class="next">next →</button></div>'
)

_CONTROLS = """<p class="facts" id="facts"></p>
<div class="controls">
<label>Class <input type="search" id="class" list="class-list" placeholder="label text"></label>
<datalist id="class-list"></datalist>
<label>Method <select id="method"><option value="">all</option></select></label>
<label><input type="checkbox" id="failed"> failed only <span id="failed-count"></span></label>
<label>Opacity of every map <input type="range" id="all-opacity" min="0" max="100" value="50"></label>
</div>"""


#: The evaluation part's filter: methods whose name or title lacks the text are hidden from the table, the
#: curves, their legend and the examples.
METHOD_FILTER = (
    '<p class="method-filter"><label>Methods <input type="search" id="method-filter" '
    'placeholder="name or title, e.g. grad" aria-label="show only the methods matching"></label></p>'
)

_EVALUATION_SCRIPT = r"""
(function () {
  var box = document.getElementById("method-filter");
  if (!box) return;
  box.addEventListener("input", function () {
    var q = box.value.trim().toLowerCase();
    document.querySelectorAll("#evaluation [data-method]").forEach(function (node) {
      var text = (node.dataset.method + " " + node.textContent).toLowerCase();
      var hide = q !== "" && text.indexOf(q) < 0;
      if (node.tagName.toLowerCase() === "polyline") node.style.display = hide ? "none" : "";
      else node.hidden = hide;
    });
  });
})();
"""


def render_page(title: str, data_json: str | None, evaluation_html: str | None) -> str:
    """The whole page: ``data_json`` (already made safe by :func:`~gradcam.report.embed_json`) drives the
    item browser; ``evaluation_html`` (static, escaped) goes above it. Either may be None."""
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>'
    )
    parts = [head, f'<header class="top"><h1>{html.escape(title)}</h1>']
    if data_json is not None:
        parts.append(_CONTROLS)
    parts.append("</header><main>")
    if evaluation_html:
        parts.append(evaluation_html)
        parts.append(f"<script>{_EVALUATION_SCRIPT}</script>")
    if data_json is not None:
        parts += [_PAGER, '<div id="grid"></div>', _PAGER]
        parts.append(f'<script type="application/json" id="report-data">{data_json}</script>')
        parts.append(f"<script>{_SCRIPT.replace('__PAGE__', str(PAGE_SIZE))}</script>")
    parts.append("</main></body></html>\n")
    return "".join(parts)
