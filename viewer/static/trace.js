// One trace as a waterfall joined across services, with its critical path and slowest hop marked.
//
// Critical path: start at the root span; its child that ends last is on the path; going back in
// time from that child's start, the latest-ending child that ended by then is next, and so on (the
// gaps are the parent's own work); each chosen child's own critical path is found the same way.
// A child that ends after its parent (nobody waited for the rest) counts up to the parent's end.
//
// Slowest hop: a hop is a span whose parent is a span of another service (the edge caller -> callee).
// Its own time is its duration less the time covered by the next hops below it (calls it made to
// other services, reached through spans of its own service). The slowest hop is the hop with the
// greatest own time: the service that kept the request waiting, and the call that went to it.
"use strict";

(function () {
  const {el, clear, getJSON, showMessage, serviceColour, serviceTextColour, fmtMs, fmtTime, offsetMs, valueText} = TR;
  const POLL_MS = 2000;
  const MAX_POLL_MS = 30000;
  const MANY_ROWS = 200; // from here on, rows out of sight are left unrendered (style.css: .many)
  const traceId = decodeURIComponent(location.pathname.replace(/^\/trace\//, "").replace(/\/$/, ""));
  const waterfall = document.getElementById("waterfall");
  const detail = document.getElementById("detail");
  const collapsed = new Set();
  let selected = null;
  let lastJSON = "";
  let model = null;

  document.title = "Trace " + traceId.slice(0, 8) + " · trace-run view";

  function big(ns) {
    return BigInt(ns);
  }

  function buildModel(spans) {
    const byId = new Map(spans.map((s) => [s.span_id, s]));
    const children = new Map();
    const roots = [];
    let t0 = null;
    let t1 = null;
    for (const s of spans) {
      s._start = big(s.start_ns);
      s._end = big(s.end_ns);
      if (t0 === null || s._start < t0) t0 = s._start;
      if (t1 === null || s._end > t1) t1 = s._end;
      s._missing = Boolean(s.parent_span_id) && !byId.has(s.parent_span_id);
      if (!s.parent_span_id || s._missing) {
        roots.push(s);
      } else {
        if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
        children.get(s.parent_span_id).push(s);
      }
    }
    const byStart = (a, b) => (a._start < b._start ? -1 : a._start > b._start ? 1 : 0);
    roots.sort(byStart);
    for (const list of children.values()) list.sort(byStart);
    for (const s of spans) s._offsetMs = Number(s._start - t0) / 1e6;
    const kids = (s) => children.get(s.span_id) || [];
    const m = {spans, byId, kids, roots, t0, t1, total: Math.max(Number(t1 - t0) / 1e6, 0.001)};
    m.root = mainRoot(roots);
    m.critical = criticalPath(m);
    m.hop = slowestHop(m);
    return m;
  }

  // The trace's root: the span without a parent (the longest if several); failing that, the
  // longest of the spans whose parent never arrived.
  function mainRoot(roots) {
    const real = roots.filter((s) => !s.parent_span_id);
    const pool = real.length ? real : roots;
    let best = null;
    for (const s of pool) if (!best || s.duration_ms > best.duration_ms) best = s;
    return best;
  }

  function criticalPath(m) {
    const on = new Set();
    const walk = (span, limit) => {
      on.add(span.span_id);
      const end = span._end < limit ? span._end : limit;
      const byEnd = m.kids(span).slice().sort((a, b) => (a._end > b._end ? -1 : a._end < b._end ? 1 : 0));
      let cursor = end;
      let first = true;
      for (const c of byEnd) {
        if (c._start >= cursor) continue;
        if (!first && c._end > cursor) continue; // overlaps the child chosen after it
        walk(c, cursor);
        first = false;
        cursor = c._start;
        if (cursor <= span._start) break;
      }
    };
    if (m.root) walk(m.root, m.root._end);
    return on;
  }

  function isHop(m, s) {
    const parent = s.parent_span_id && m.byId.get(s.parent_span_id);
    return Boolean(parent) && parent.service !== s.service;
  }

  function slowestHop(m) {
    let best = null;
    for (const s of m.spans) {
      if (!isHop(m, s)) continue;
      // the next hops below s, reached through spans of s's own service, clipped to s
      const covered = [];
      const stack = m.kids(s).slice();
      while (stack.length) {
        const d = stack.pop();
        if (d.service !== s.service) {
          const a = d._start > s._start ? d._start : s._start;
          const b = d._end < s._end ? d._end : s._end;
          if (b > a) covered.push([a, b]);
        } else {
          stack.push(...m.kids(d));
        }
      }
      covered.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
      let union = 0n;
      let curA = null;
      let curB = null;
      for (const [a, b] of covered) {
        if (curB === null || a > curB) {
          if (curB !== null) union += curB - curA;
          curA = a;
          curB = b;
        } else if (b > curB) {
          curB = b;
        }
      }
      if (curB !== null) union += curB - curA;
      const own = Number(s._end - s._start - union) / 1e6;
      if (!best || own > best.own) best = {span: s, own, caller: m.byId.get(s.parent_span_id).service};
    }
    return best;
  }

  // -- the waterfall ------------------------------------------------------------------------------

  function renderSummary(m) {
    const summary = document.getElementById("summary");
    clear(summary);
    const root = m.root;
    const services = Array.from(new Set(m.spans.map((s) => s.service)));
    const errors = m.spans.filter((s) => s.status_code === "ERROR").length;
    const missing = m.spans.filter((s) => s._missing).length;
    summary.appendChild(el("h1", {},
      root ? el("span", {class: "svc"}, root.service) : "", root ? " " : "", root ? root.name : "(no spans)"));
    if (root) summary.querySelector(".svc").style.color = serviceTextColour(root.service);
    summary.appendChild(el("dl", {class: "facts"},
      el("dt", {}, "Trace"), el("dd", {class: "mono", id: "trace-id"}, traceId),
      el("dt", {}, "Start"), el("dd", {}, fmtTime(m.t0.toString())),
      el("dt", {}, "Duration"), el("dd", {id: "trace-duration"}, fmtMs(m.total)),
      el("dt", {}, "Spans"), el("dd", {id: "span-count"}, String(m.spans.length)),
      el("dt", {}, "Services"), el("dd", {}, String(services.length)),
      el("dt", {}, "Errors"), el("dd", {class: errors ? "error-count" : ""}, String(errors)),
      missing ? el("dt", {}, "Missing parents") : null,
      missing ? el("dd", {class: "flag"}, String(missing)) : null));
    if (m.hop) {
      const h = m.hop;
      summary.appendChild(el("p", {class: "hop-summary", id: "hop-summary"},
        el("span", {class: "hop-badge"}, "slowest hop"), " ",
        h.caller, " → ", h.span.service, " (", h.span.name, "): ", fmtMs(h.own), " in ", h.span.service));
    }
  }

  function renderLegend(m) {
    const legend = document.getElementById("legend");
    clear(legend);
    const services = Array.from(new Set(m.spans.map((s) => s.service))).sort();
    for (const s of services) {
      const swatch = el("span", {class: "swatch"});
      swatch.style.backgroundColor = serviceColour(s);
      legend.appendChild(el("span", {class: "legend-item", "data-service": s}, swatch, s));
    }
    legend.appendChild(el("span", {class: "legend-item"}, el("span", {class: "swatch critical-swatch"}), "critical path"));
  }

  function axis(m) {
    const ticks = el("div", {class: "axis"});
    for (let i = 0; i <= 4; i++) {
      const t = el("span", {class: "tick"}, fmtMs((m.total * i) / 4));
      t.style.left = i * 25 + "%";
      if (i === 4) t.classList.add("last");
      ticks.appendChild(t);
    }
    return el("div", {class: "wf-row wf-head"}, el("div", {class: "wf-label"}, "Service · span"), el("div", {class: "wf-track"}, ticks));
  }

  // One row per span, built without listeners (one delegated listener on the waterfall handles
  // clicks and keys), straight with createElement (the hot loop of a 1,000-span page), every
  // position a percentage so the browser lays the rows out once.
  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function badge(cls, title, text) {
    const b = node("span", cls, text);
    b.title = title;
    return b;
  }

  function spanRow(m, s, depth, colours) {
    const kids = m.kids(s);
    const isHopRow = m.hop && m.hop.span === s;
    let classes = "wf-row";
    if (m.critical.has(s.span_id)) classes += " critical";
    if (isHopRow) classes += " slowest-hop";
    if (s.status_code === "ERROR") classes += " error";
    if (s._missing) classes += " missing-parent";
    if (selected === s.span_id) classes += " selected";
    const colour = colours(s.service);
    const label = node("div", "wf-label");
    if (kids.length) {
      const shut = collapsed.has(s.span_id);
      const toggle = node("button", "toggle", shut ? "▸" : "▾");
      toggle.type = "button";
      toggle.setAttribute("aria-expanded", shut ? "false" : "true");
      toggle.title = "collapse or expand the " + kids.length + " child span(s)";
      label.appendChild(toggle);
    } else {
      label.appendChild(node("span", "toggle-space"));
    }
    const svc = label.appendChild(node("span", "svc", s.service));
    svc.style.color = colour.text;
    label.appendChild(document.createTextNode(" "));
    label.appendChild(node("span", "name", s.name));
    if (s.status_code === "ERROR") label.appendChild(badge("badge error-badge", s.status_message || "ERROR", "error"));
    if (s._missing) {
      label.appendChild(badge("badge flag missing-flag", "parent " + s.parent_span_id + " never arrived", "parent missing"));
    }
    if (isHopRow) label.appendChild(badge("badge hop-badge", "own time " + fmtMs(m.hop.own), "slowest hop"));
    label.style.paddingLeft = 4 + depth * 16 + "px";
    const startPct = (s._offsetMs / m.total) * 100;
    const endPct = ((s._offsetMs + s.duration_ms) / m.total) * 100;
    const dur = fmtMs(s.duration_ms);
    const track = node("div", "wf-track");
    const bar = track.appendChild(node("div", "bar"));
    bar.title = s.service + " · " + s.name + " · " + dur;
    bar.style.left = startPct + "%";
    bar.style.width = Math.max(endPct - startPct, 0.15) + "%";
    bar.style.backgroundColor = colour.bar;
    // the duration goes after the bar, or before it, or inside it when the bar fills the track
    const durNode = track.appendChild(node("span", "dur", dur));
    if (endPct <= 85) {
      durNode.style.left = endPct + "%";
    } else if (startPct >= 15) {
      durNode.style.right = 100 - startPct + "%";
    } else {
      durNode.className = "dur inside";
      durNode.style.right = Math.max(100 - endPct, 0) + "%";
    }
    const row = node("div", classes);
    row.setAttribute("role", "treeitem");
    row.tabIndex = 0;
    row.dataset.spanId = s.span_id;
    row.dataset.parentId = s.parent_span_id;
    row.dataset.service = s.service;
    row.dataset.depth = depth;
    row.appendChild(label);
    row.appendChild(track);
    return row;
  }

  function renderWaterfall(m) {
    const cache = new Map();
    const colours = (service) => {
      let c = cache.get(service);
      if (!c) cache.set(service, (c = {bar: serviceColour(service), text: serviceTextColour(service)}));
      return c;
    };
    const rows = document.createDocumentFragment();
    rows.appendChild(axis(m));
    // depth-first, children in start order, without recursion (a deep trace is not a deep stack)
    const stack = [];
    for (let i = m.roots.length - 1; i >= 0; i--) stack.push([m.roots[i], 0]);
    while (stack.length) {
      const [s, depth] = stack.pop();
      rows.appendChild(spanRow(m, s, depth, colours));
      const kids = m.kids(s);
      for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
    }
    clear(waterfall);
    waterfall.classList.toggle("many", m.spans.length > MANY_ROWS);
    waterfall.appendChild(rows);
    if (collapsed.size) applyCollapse();
    waterfall.dataset.rendered = String(m.spans.length);
    performance.mark("waterfall-rendered");
  }

  waterfall.addEventListener("click", (ev) => {
    const row = ev.target.closest(".wf-row[data-span-id]");
    if (!row) return;
    const id = row.dataset.spanId;
    const btn = ev.target.closest(".toggle");
    if (btn) {
      if (collapsed.has(id)) collapsed.delete(id);
      else collapsed.add(id);
      btn.textContent = collapsed.has(id) ? "▸" : "▾";
      btn.setAttribute("aria-expanded", collapsed.has(id) ? "false" : "true");
      applyCollapse();
      return;
    }
    select(id);
  });

  waterfall.addEventListener("keydown", (ev) => {
    const row = ev.target.closest(".wf-row[data-span-id]");
    if (row && ev.key === "Enter") select(row.dataset.spanId);
  });

  // Hide the rows under a collapsed span (rows are in depth-first order).
  function applyCollapse() {
    let hideBelow = Infinity;
    for (const row of waterfall.querySelectorAll(".wf-row[data-span-id]")) {
      const depth = Number(row.dataset.depth);
      if (depth <= hideBelow) hideBelow = Infinity;
      row.hidden = depth > hideBelow;
      if (!row.hidden && collapsed.has(row.dataset.spanId)) hideBelow = depth;
    }
  }

  // -- the detail panel ---------------------------------------------------------------------------

  function table(obj, cls) {
    const keys = Object.keys(obj || {}).sort();
    if (!keys.length) return el("p", {class: "none"}, "none");
    return el("table", {class: "kv " + (cls || "")},
      keys.map((k) => el("tr", {}, el("th", {}, k), el("td", {}, valueText(obj[k])))));
  }

  function eventBlock(m, ev) {
    const a = ev.attributes || {};
    const isException = ev.name === "exception";
    const rest = Object.assign({}, a);
    let stack = null;
    if (isException && typeof a["exception.stacktrace"] === "string") {
      stack = el("pre", {class: "stack"}, a["exception.stacktrace"]);
      delete rest["exception.stacktrace"];
    }
    return el("li", {class: isException ? "event exception" : "event"},
      el("div", {class: "event-head"}, el("span", {class: "event-time"}, "+" + fmtMs(offsetMs(ev.time_ns, m.t0))), " ",
        el("strong", {}, ev.name),
        isException ? el("span", {class: "exc"}, " ", valueText(a["exception.type"] || ""), ": ",
          valueText(a["exception.message"] || "")) : null),
      table(rest), stack);
  }

  function select(spanId) {
    selected = spanId;
    for (const row of waterfall.querySelectorAll(".wf-row.selected")) row.classList.remove("selected");
    const row = waterfall.querySelector('.wf-row[data-span-id="' + CSS.escape(spanId) + '"]');
    if (row) row.classList.add("selected");
    renderDetail(model, model.byId.get(spanId));
  }

  function renderDetail(m, s) {
    clear(detail);
    if (!s) {
      detail.hidden = true;
      return;
    }
    detail.hidden = false;
    const close = el("button", {type: "button", class: "close", title: "close"}, "×");
    close.addEventListener("click", () => {
      selected = null;
      for (const row of waterfall.querySelectorAll(".wf-row.selected")) row.classList.remove("selected");
      detail.hidden = true;
    });
    const svc = el("span", {class: "svc"}, s.service);
    svc.style.color = serviceTextColour(s.service);
    const parent = s.parent_span_id ? m.byId.get(s.parent_span_id) : null;
    detail.appendChild(el("div", {class: "detail-head"}, close, el("h2", {id: "detail-name"}, s.name), svc));
    detail.appendChild(el("dl", {class: "facts"},
      el("dt", {}, "Kind"), el("dd", {id: "detail-kind"}, s.kind),
      el("dt", {}, "Status"), el("dd", {id: "detail-status", class: s.status_code === "ERROR" ? "error-count" : ""},
        s.status_code + (s.status_message ? ": " + s.status_message : "")),
      el("dt", {}, "Duration"), el("dd", {}, fmtMs(s.duration_ms)),
      el("dt", {}, "Start"), el("dd", {}, "+" + fmtMs(offsetMs(s.start_ns, m.t0)) + "  (" + fmtTime(s.start_ns) + ")"),
      el("dt", {}, "Span id"), el("dd", {class: "mono"}, s.span_id),
      el("dt", {}, "Parent"), el("dd", {class: "mono"}, s.parent_span_id
        ? s.parent_span_id + (parent ? " (" + parent.service + " · " + parent.name + ")" : " (never arrived)")
        : "none: the trace's root"),
      m.critical.has(s.span_id) ? el("dt", {}, "Critical path") : null,
      m.critical.has(s.span_id) ? el("dd", {}, "on it") : null));
    detail.appendChild(el("h3", {}, "Attributes"));
    detail.appendChild(table(s.attributes, "attributes"));
    detail.appendChild(el("h3", {}, "Events"));
    detail.appendChild((s.events || []).length
      ? el("ul", {class: "events"}, s.events.map((ev) => eventBlock(m, ev)))
      : el("p", {class: "none"}, "none"));
    detail.appendChild(el("h3", {}, "Links"));
    detail.appendChild((s.links || []).length
      ? el("ul", {class: "links"}, s.links.map((l) => el("li", {},
        el("a", {href: "/trace/" + encodeURIComponent(l.trace_id), class: "mono"}, l.trace_id), " span ",
        el("span", {class: "mono"}, l.span_id), table(l.attributes))))
      : el("p", {class: "none"}, "none"));
    detail.appendChild(el("h3", {}, "Resource"));
    detail.appendChild(table(s.resource, "resource"));
    if (s.scope && s.scope.name) {
      detail.appendChild(el("h3", {}, "Instrumentation scope"));
      detail.appendChild(el("p", {class: "mono"}, s.scope.name + (s.scope.version ? " " + s.scope.version : "")));
    }
  }

  // Late parts of a trace (a process that flushes at exit) appear on their own; a trace that stopped
  // changing is asked for less and less often.
  let delay = POLL_MS;

  async function load() {
    try {
      const data = await getJSON("/api/traces/" + encodeURIComponent(traceId));
      performance.mark("trace-data");
      showMessage("");
      const text = JSON.stringify(data.spans);
      if (text === lastJSON) {
        delay = Math.min(delay * 2, MAX_POLL_MS);
        return;
      }
      delay = POLL_MS;
      lastJSON = text;
      model = buildModel(data.spans);
      renderSummary(model);
      renderLegend(model);
      renderWaterfall(model);
      if (selected && model.byId.has(selected)) renderDetail(model, model.byId.get(selected));
    } catch (e) {
      if (e.status === 404 && !model) showMessage("No trace " + traceId + " here (yet): " + e.message);
      else if (!e.status) showMessage("The viewer does not answer: " + e.message);
      else showMessage(e.message);
    }
  }

  async function poll() {
    if (!document.hidden) await load();
    setTimeout(poll, delay);
  }

  poll();
})();
