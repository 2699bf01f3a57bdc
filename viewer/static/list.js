// The trace list: newest first, refreshed every 1.5 s; the filters live in the page's query string.
"use strict";

(function () {
  const {el, clear, getJSON, showMessage, fmtMs, fmtTime, serviceColour, serviceTextColour} = TR;
  const POLL_MS = 1500;
  const PAGE = 50;
  const form = document.getElementById("filters");
  const body = document.querySelector("#traces tbody");
  const fields = ["service", "name", "min_duration_ms", "attr", "trace_id"];
  let limit = PAGE;
  let lastJSON = "";
  let busy = false;

  function toLocalInput(ns) {
    const d = TR.nsToDate(ns);
    const local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 19);
  }

  function fromLocalInput(value) {
    const ms = new Date(value).getTime(); // a datetime-local value is read as local time
    return isNaN(ms) ? "" : (BigInt(ms) * 1000000n).toString();
  }

  // The page's query string -> the form (so a filtered list can be bookmarked and reloaded).
  function formFromURL() {
    const q = new URLSearchParams(location.search);
    const service = q.get("service");
    const select = form.elements.service;
    if (service && !Array.from(select.options).some((o) => o.value === service)) {
      select.appendChild(el("option", {value: service}, service)); // before the list of services arrives
    }
    for (const f of fields) form.elements[f].value = q.get(f) || "";
    form.elements.errors.checked = q.get("errors") === "1";
    form.elements.from.value = q.get("start_ns") ? toLocalInput(q.get("start_ns")) : "";
    form.elements.to.value = q.get("end_ns") ? toLocalInput(q.get("end_ns")) : "";
  }

  function queryFromForm() {
    const q = new URLSearchParams();
    for (const f of fields) {
      const v = form.elements[f].value.trim();
      if (v) q.set(f, f === "trace_id" ? v.toLowerCase() : v);
    }
    if (form.elements.errors.checked) q.set("errors", "1");
    const from = form.elements.from.value && fromLocalInput(form.elements.from.value);
    const to = form.elements.to.value && fromLocalInput(form.elements.to.value);
    if (from) q.set("start_ns", from);
    if (to) q.set("end_ns", to);
    return q;
  }

  function row(t) {
    const href = "/trace/" + encodeURIComponent(t.trace_id);
    const services = el("span", {class: "chips"},
      (t.services || []).map((s) => {
        const chip = el("span", {class: "chip", title: s}, s);
        chip.style.borderColor = serviceColour(s);
        return chip;
      }));
    const root = el("a", {href, class: "root"},
      el("span", {class: "svc"}, t.root_service || "?"), " ", el("span", {class: "name"}, t.root_name || "?"));
    const tr = el("tr", {"data-trace-id": t.trace_id, class: t.error_count ? "has-errors" : null},
      el("td", {}, root, t.missing_parents ? el("span", {class: "flag", title: "spans whose parent never arrived"},
        t.missing_parents + " missing parent" + (t.missing_parents > 1 ? "s" : "")) : null, services),
      el("td", {class: "start"}, el("a", {href}, fmtTime(t.start_ns))),
      el("td", {class: "num duration"}, fmtMs(t.duration_ms)),
      el("td", {class: "num spans"}, String(t.span_count)),
      el("td", {class: "num service-count"}, String(t.service_count)),
      el("td", {class: "num errors"}, t.error_count ? el("span", {class: "error-count"}, String(t.error_count)) : "0"));
    tr.querySelector(".svc").style.color = serviceTextColour(t.root_service || "?");
    tr.addEventListener("click", (ev) => {
      if (!ev.target.closest("a") && !window.getSelection().toString()) location.href = href;
    });
    return tr;
  }

  function render(traces) {
    const known = new Set(Array.from(body.rows, (r) => r.dataset.traceId));
    const fresh = known.size > 0;
    clear(body);
    for (const t of traces) {
      const tr = row(t);
      if (fresh && !known.has(t.trace_id)) tr.classList.add("new");
      body.appendChild(tr);
    }
    document.getElementById("empty").hidden = traces.length > 0;
    document.getElementById("more").hidden = traces.length < limit || limit >= 500;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    const q = queryFromForm();
    q.set("limit", String(limit));
    try {
      const data = await getJSON("/api/traces?" + q.toString());
      showMessage("");
      document.getElementById("live").classList.remove("down");
      const text = JSON.stringify(data.traces);
      if (text !== lastJSON) {
        lastJSON = text;
        render(data.traces);
      }
    } catch (e) {
      showMessage(e.status ? "Cannot list traces: " + e.message : "The viewer does not answer: " + e.message);
      document.getElementById("live").classList.add("down");
    } finally {
      busy = false;
    }
  }

  async function loadChoices() {
    try {
      const data = await getJSON("/api/services");
      const select = form.elements.service;
      const wanted = new URLSearchParams(location.search).get("service") || select.value;
      for (const s of data.services) {
        if (!Array.from(select.options).some((o) => o.value === s)) select.appendChild(el("option", {value: s}, s));
      }
      select.value = wanted;
      const names = await getJSON("/api/span_names" + (select.value ? "?service=" + encodeURIComponent(select.value) : ""));
      const list = document.getElementById("span-names");
      clear(list);
      for (const n of names.names) list.appendChild(el("option", {value: n}));
    } catch (e) {
      // the choices are a convenience; the list's own refresh reports a viewer that is down
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = queryFromForm();
    history.replaceState(null, "", q.toString() ? "?" + q.toString() : location.pathname);
    limit = PAGE;
    lastJSON = "";
    clear(body);
    refresh();
  });
  form.elements.service.addEventListener("change", () => {
    loadChoices();
    form.requestSubmit();
  });
  form.elements.errors.addEventListener("change", () => form.requestSubmit());
  document.getElementById("f-clear").addEventListener("click", () => {
    form.reset();
    form.elements.service.value = "";
    form.requestSubmit();
  });
  document.getElementById("more").addEventListener("click", () => {
    limit = Math.min(500, limit + PAGE);
    refresh();
  });

  formFromURL();
  loadChoices();
  refresh();
  setInterval(() => {
    if (!document.hidden) refresh();
  }, POLL_MS);
  setInterval(() => {
    if (!document.hidden) loadChoices();
  }, 10000);
})();
