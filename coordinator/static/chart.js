// SPDX-License-Identifier: AGPL-3.0-or-later
// Line chart of loss and validation bits-per-byte per outer step, drawn as inline SVG.
// Reads the history embedded in the page (<script id="lila-history" type="application/json">)
// and draws into <div id="chart">. No libraries, no network.
(function () {
  "use strict";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var WIDTH = 720, HEIGHT = 280;
  var MARGIN = { left: 56, right: 56, top: 34, bottom: 40 };
  var TICKS = 5;
  var SERIES = [
    { key: "loss", label: "train loss", color: "#2563eb", axis: "left" },
    { key: "val_bpb", label: "val bits/byte", color: "#dc2626", axis: "right" }
  ];

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG_NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function extent(values) {
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1000) { return v.toFixed(0); }
    if (a >= 10) { return v.toFixed(1); }
    return v.toFixed(2);
  }

  function draw(container, points) {
    container.textContent = "";
    if (!points.length) {
      container.appendChild(document.createTextNode("No metrics reported yet."));
      return;
    }
    var svg = el("svg", { viewBox: "0 0 " + WIDTH + " " + HEIGHT, width: "100%", role: "img",
                          "aria-label": "loss and validation bits per byte by outer step" });
    var x0 = MARGIN.left, x1 = WIDTH - MARGIN.right, y0 = HEIGHT - MARGIN.bottom, y1 = MARGIN.top;
    var steps = points.map(function (p) { return p.outer_step; });
    var xr = extent(steps);
    function sx(v) { return x0 + (v - xr[0]) / (xr[1] - xr[0]) * (x1 - x0); }
    svg.appendChild(el("rect", { x: x0, y: y1, width: x1 - x0, height: y0 - y1, fill: "#fff", stroke: "#ccc" }));
    // Outer steps are integers: tick every `every` steps so labels never repeat.
    var first = Math.ceil(xr[0]), last = Math.floor(xr[1]);
    var every = Math.max(1, Math.ceil((last - first) / TICKS));
    for (var xv = first; xv <= last; xv += every) {
      svg.appendChild(el("text", { x: sx(xv), y: y0 + 16, "text-anchor": "middle", class: "tick" }, String(xv)));
    }
    svg.appendChild(el("text", { x: (x0 + x1) / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "axis-label" }, "outer step"));
    SERIES.forEach(function (s, n) {
      var pts = points.filter(function (p) { return p[s.key] !== null && p[s.key] !== undefined; });
      if (!pts.length) { return; }
      var yr = extent(pts.map(function (p) { return p[s.key]; }));
      var sy = function (v) { return y0 - (v - yr[0]) / (yr[1] - yr[0]) * (y0 - y1); };
      var ax = s.axis === "left" ? x0 - 6 : x1 + 6;
      for (var t = 0; t <= TICKS; t++) {
        var yv = yr[0] + (yr[1] - yr[0]) * t / TICKS;
        svg.appendChild(el("text", { x: ax, y: sy(yv) + 4, "text-anchor": s.axis === "left" ? "end" : "start",
                                     fill: s.color, class: "tick" }, fmt(yv)));
      }
      var d = pts.map(function (p, k) { return (k ? "L" : "M") + sx(p.outer_step).toFixed(1) + "," + sy(p[s.key]).toFixed(1); }).join(" ");
      svg.appendChild(el("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2, class: "series series-" + s.key }));
      pts.forEach(function (p) {
        svg.appendChild(el("circle", { cx: sx(p.outer_step), cy: sy(p[s.key]), r: 3, fill: s.color, class: "point point-" + s.key }));
      });
      svg.appendChild(el("rect", { x: x0 + n * 150, y: 8, width: 12, height: 12, fill: s.color }));
      svg.appendChild(el("text", { x: x0 + 18 + n * 150, y: 18, class: "legend" }, s.label));
    });
    container.appendChild(svg);
  }

  function init() {
    var data = document.getElementById("lila-history");
    var container = document.getElementById("chart");
    if (!data || !container) { return; }
    draw(container, JSON.parse(data.textContent));
    container.setAttribute("data-rendered", "true");
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
