/* Small SVG bar charts (requests with their errors stacked in red; tokens).
   Drawn at the container's pixel size, so text stays crisp; redrawn on resize. */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const PAD = { top: 8, right: 8, bottom: 22, left: 40 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  // A y axis with "nice" steps (1, 2 or 5 times a power of ten) and whole numbers for counts:
  // the top and the step between grid lines.
  function scale(value) {
    if (value <= 0) return { top: 1, step: 1 };
    const rough = value / 3;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    step = Math.max(step, 1);
    return { top: step * Math.ceil(value / step), step };
  }

  function frame(container, points, axis, label) {
    const max = axis.top;
    container.innerHTML = "";
    const width = Math.max(container.clientWidth, 200);
    const height = Math.max(container.clientHeight, 120);
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height });
    const inner = {
      x: PAD.left,
      y: PAD.top,
      w: width - PAD.left - PAD.right,
      h: height - PAD.top - PAD.bottom,
    };
    for (let tick = 0; tick <= max + 1e-9; tick += axis.step) {
      const y = inner.y + inner.h - (inner.h * tick) / max;
      el("line", { class: "grid-line", x1: inner.x, x2: inner.x + inner.w, y1: y, y2: y }, svg);
      const text = el("text", { class: "axis-label", x: inner.x - 8, y: y + 4, "text-anchor": "end" }, svg);
      text.textContent = window.Nebula.fmt.compact(tick);
    }
    const ticks = points.length > 1 ? [0, Math.floor((points.length - 1) / 2), points.length - 1] : [0];
    const labels = [];
    for (const index of ticks) {
      const x = inner.x + (inner.w * (index + 0.5)) / points.length;
      const anchor = index === 0 ? "start" : index === points.length - 1 ? "end" : "middle";
      const text = el("text", { class: "axis-label axis-x", x, y: height - 4, "text-anchor": anchor }, svg);
      text.textContent = label(points[index]);
      labels.push(text);
    }
    const tip = document.createElement("div");
    tip.className = "chart-tip";
    container.appendChild(svg);
    container.appendChild(tip);
    declutter(labels);
    return { svg, inner, tip };
  }

  // On a narrow chart the axis labels can run into each other: drop the middle one, then the
  // last, until the rest stand apart (measured once the SVG is in the page).
  function declutter(labels) {
    const apart = (a, b) => a.getBBox().x + a.getBBox().width + 6 <= b.getBBox().x;
    while (labels.length > 1) {
      const crowded = labels.some((text, i) => i > 0 && !apart(labels[i - 1], text));
      if (!crowded) return;
      const drop = labels.length > 2 ? Math.floor(labels.length / 2) : labels.length - 1;
      labels[drop].remove();
      labels.splice(drop, 1);
    }
  }

  function hover(container, tip, x, y, text) {
    tip.textContent = text;
    tip.style.left = x + "px";
    tip.style.top = y - 6 + "px";
    tip.classList.add("on");
  }

  // points: [{...}], value(p) and part(p) (the red share of a bar, e.g. errors).
  function bars(container, points, options) {
    const values = points.map(options.value);
    const axis = scale(Math.max(0, ...values));
    const max = axis.top;
    const { svg, inner, tip } = frame(container, points, axis, options.axisLabel || options.label);
    const slot = inner.w / Math.max(points.length, 1);
    const gap = slot > 6 ? Math.min(3, slot * 0.25) : 0.5;
    points.forEach((point, index) => {
      const x = inner.x + slot * index + gap / 2;
      const w = Math.max(slot - gap, 1);
      const total = values[index];
      const part = options.part ? options.part(point) : 0;
      const h = (inner.h * total) / max;
      const partH = (inner.h * part) / max;
      if (total > 0) {
        el("rect", { class: options.barClass || "bar", x, y: inner.y + inner.h - h, width: w, height: Math.max(h - partH, 0), rx: Math.min(2, w / 2) }, svg);
      }
      if (part > 0) {
        el("rect", { class: "bar-error", x, y: inner.y + inner.h - partH, width: w, height: partH }, svg);
      }
      const hit = el("rect", { class: "bar-hit", x: inner.x + slot * index, y: inner.y, width: slot, height: inner.h }, svg);
      hit.addEventListener("mouseenter", () =>
        hover(container, tip, x + w / 2, inner.y + inner.h - h, options.tooltip(point))
      );
      hit.addEventListener("mouseleave", () => tip.classList.remove("on"));
    });
  }

  // Redraw on resize (phones rotate; sidebars collapse).
  const drawn = new Map();
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => drawn.forEach((draw) => draw()), 120);
  });

  window.Nebula.charts = {
    bars(container, points, options) {
      const draw = () => bars(container, points, options);
      drawn.set(container, draw);
      draw();
    },
  };
})();
