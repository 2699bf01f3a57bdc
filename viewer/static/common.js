// Shared helpers of the viewer's pages. Every text that comes from spans goes into the page
// through textContent or createTextNode (see el()), never as HTML.
"use strict";

const TR = (function () {
  // el("td", {class: "num", title: "..."}, "text", childNode, ...): text children become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key.startsWith("on")) throw new Error("no handlers through el(): " + key);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  async function getJSON(url) {
    const resp = await fetch(url, {headers: {"Accept": "application/json"}, cache: "no-store"});
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const why = body && body.error ? body.error : "HTTP " + resp.status;
      const err = new Error(why);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function showMessage(text) {
    const node = document.getElementById("message");
    if (!node) return;
    node.textContent = text || "";
    node.hidden = !text;
  }

  // A stable colour per service name: the same name gets the same hue on every page and every day.
  function nameHash(name) {
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) {
      h ^= name.charCodeAt(i);
      h = Math.imul(h, 16777619) >>> 0;
    }
    return h;
  }

  function serviceColour(name) {
    const h = nameHash(name);
    return "hsl(" + (h % 360) + ", 62%, " + (42 + ((h >>> 9) % 3) * 8) + "%)";
  }

  // The same hue, dark enough to read as text on white.
  function serviceTextColour(name) {
    return "hsl(" + (nameHash(name) % 360) + ", 70%, 30%)";
  }

  function fmtMs(ms) {
    if (ms === undefined || ms === null || isNaN(ms)) return "";
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 1 : 2) + " s";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    if (ms >= 1) return ms.toFixed(2) + " ms";
    return (ms * 1000).toFixed(0) + " µs";
  }

  // Absolute times are strings of nanoseconds since the epoch (too big for a double).
  function nsToDate(ns) {
    return new Date(Number(BigInt(ns) / 1000000n));
  }

  function pad(n, width) {
    return String(n).padStart(width || 2, "0");
  }

  function fmtTime(ns) {
    const d = nsToDate(ns);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  // Milliseconds from `base` to `ns` (both nanosecond strings or BigInts).
  function offsetMs(ns, base) {
    return Number(BigInt(ns) - BigInt(base)) / 1e6;
  }

  function valueText(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  return {el, svg, clear, getJSON, showMessage, serviceColour, serviceTextColour, fmtMs, fmtTime, nsToDate, offsetMs, valueText};
})();
