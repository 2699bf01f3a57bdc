// The service map: services in layers (callers left of callees), one arrow per edge, drawn as SVG.
"use strict";

(function () {
  const {el, svg, clear, getJSON, showMessage, serviceColour, serviceTextColour, fmtMs} = TR;
  const POLL_MS = 5000;
  const NODE_W = 160;
  const NODE_H = 40;
  const COL_GAP = 150;
  const ROW_GAP = 60;
  let lastJSON = "";

  // Layer of a service = the longest chain of callers above it (cycles are cut where met).
  function layers(services, edges) {
    const callers = new Map(services.map((s) => [s, []]));
    for (const e of edges) {
      if (!callers.has(e.child)) callers.set(e.child, []);
      if (!callers.has(e.parent)) callers.set(e.parent, []);
      if (e.parent !== e.child) callers.get(e.child).push(e.parent);
    }
    const layer = new Map();
    const visiting = new Set();
    const depth = (s) => {
      if (layer.has(s)) return layer.get(s);
      if (visiting.has(s)) return 0;
      visiting.add(s);
      let d = 0;
      for (const p of callers.get(s)) d = Math.max(d, depth(p) + 1);
      visiting.delete(s);
      layer.set(s, d);
      return d;
    };
    for (const s of callers.keys()) depth(s);
    return layer;
  }

  function edgeCounts(e) {
    return e.calls + " call" + (e.calls === 1 ? "" : "s") + (e.errors ? " · " + e.errors + " error" + (e.errors === 1 ? "" : "s") : "");
  }

  function edgeTimes(e) {
    return "p50 " + fmtMs(e.p50_ms) + " · p99 " + fmtMs(e.p99_ms);
  }

  function edgeLabel(e) {
    return edgeCounts(e) + " · " + edgeTimes(e);
  }

  function draw(data) {
    const map = document.getElementById("map");
    clear(map);
    const services = data.services.slice().sort();
    if (!services.length) {
      map.appendChild(el("p", {class: "empty"}, "No services yet."));
      return;
    }
    const layer = layers(services, data.edges);
    const columns = [];
    for (const s of Array.from(layer.keys()).sort()) {
      const d = layer.get(s);
      (columns[d] = columns[d] || []).push(s);
    }
    const pos = new Map();
    columns.forEach((col, i) => col.forEach((s, j) => pos.set(s, {x: 20 + i * (NODE_W + COL_GAP), y: 20 + j * (NODE_H + ROW_GAP)})));
    const width = 40 + columns.length * NODE_W + (columns.length - 1) * COL_GAP;
    const height = 40 + Math.max(...columns.map((c) => c.length)) * (NODE_H + ROW_GAP);
    const root = svg("svg", {id: "service-map", width, height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": "service map"});
    root.appendChild(svg("defs", {}, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
      markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse"}, svg("path", {d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head"}))));
    for (const e of data.edges) {
      const a = pos.get(e.parent);
      const b = pos.get(e.child);
      if (!a || !b) continue;
      let d;
      let lx;
      let ly;
      if (e.parent === e.child) {
        d = "M " + (a.x + NODE_W - 30) + " " + a.y + " c 20 -30 50 -10 30 10";
        lx = a.x + NODE_W - 20;
        ly = a.y - 14;
      } else {
        const x1 = a.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const x2 = b.x;
        const y2 = b.y + NODE_H / 2;
        const back = x2 <= x1;
        const mid = back ? Math.max(x1, b.x + NODE_W) + 40 : (x1 + x2) / 2;
        d = back
          ? "M " + x1 + " " + y1 + " C " + mid + " " + y1 + ", " + mid + " " + (y2 + 60) + ", " + (b.x + NODE_W / 2) + " " + (b.y + NODE_H)
          : "M " + x1 + " " + y1 + " C " + mid + " " + y1 + ", " + mid + " " + y2 + ", " + x2 + " " + y2;
        lx = (x1 + (back ? mid : x2)) / 2;
        ly = (y1 + y2) / 2 - 6;
      }
      const g = svg("g", {class: "edge" + (e.errors ? " has-errors" : ""), "data-parent": e.parent, "data-child": e.child},
        svg("title", {}, e.parent + " → " + e.child + ": " + edgeLabel(e)),
        svg("path", {d, "marker-end": "url(#arrow)"}),
        svg("text", {x: lx, y: ly - 14, "text-anchor": "middle", class: "edge-label"},
          svg("tspan", {x: lx, class: e.errors ? "edge-errors" : null}, edgeCounts(e)),
          svg("tspan", {x: lx, dy: "13"}, edgeTimes(e))));
      root.appendChild(g);
    }
    for (const [s, p] of pos) {
      const g = svg("g", {class: "node", "data-service": s},
        svg("rect", {x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6, stroke: serviceColour(s)}),
        svg("text", {x: p.x + NODE_W / 2, y: p.y + NODE_H / 2 + 5, "text-anchor": "middle", fill: serviceTextColour(s)},
          s.length > 21 ? s.slice(0, 20) + "…" : s),
        svg("title", {}, s));
      const link = svg("a", {href: "/?service=" + encodeURIComponent(s)}, g);
      root.appendChild(link);
    }
    map.appendChild(root);
  }

  function fillTable(edges) {
    const body = document.querySelector("#edges tbody");
    clear(body);
    const sorted = edges.slice().sort((a, b) => (a.parent + "\0" + a.child).localeCompare(b.parent + "\0" + b.child));
    if (!sorted.length) {  // one service, or none calling another yet: say so rather than show a bare header
      body.appendChild(el("tr", {class: "empty-row"}, el("td", {class: "empty", colspan: "6"},
        "No calls between services yet: a call appears here when a span's parent is in another service.")));
    }
    for (const e of sorted) {
      const caller = el("td", {class: "svc"}, e.parent);
      caller.style.color = serviceTextColour(e.parent);
      const callee = el("td", {class: "svc"}, e.child);
      callee.style.color = serviceTextColour(e.child);
      body.appendChild(el("tr", {"data-parent": e.parent, "data-child": e.child}, caller, callee,
        el("td", {class: "num calls"}, String(e.calls)),
        el("td", {class: "num errors"}, e.errors ? el("span", {class: "error-count"}, String(e.errors)) : "0"),
        el("td", {class: "num p50"}, fmtMs(e.p50_ms)),
        el("td", {class: "num p99"}, fmtMs(e.p99_ms))));
    }
  }

  async function load() {
    try {
      const data = await getJSON("/api/services");
      showMessage("");
      const text = JSON.stringify(data);
      if (text === lastJSON) return;
      lastJSON = text;
      draw(data);
      fillTable(data.edges);
    } catch (e) {
      showMessage(e.status ? "Cannot read the services: " + e.message : "The viewer does not answer: " + e.message);
    }
  }

  load();
  setInterval(() => {
    if (!document.hidden) load();
  }, POLL_MS);
})();
