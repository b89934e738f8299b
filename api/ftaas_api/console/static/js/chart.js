// A line chart drawn as SVG at the width of its box (so its text stays readable on a phone),
// redrawn when the data or the box changes. Points carry a <title>: hovering one says its value.

import { h, s, replace } from "./dom.js";
import { metric } from "./format.js";

const HEIGHT = 240;
const MARGIN = { top: 12, right: 16, bottom: 36, left: 56 };

/** About ``count`` round tick values covering [low, high]. */
function ticks(low, high, count) {
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((m) => m >= raw);
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step / 1e6; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

/** [low, high] around ``values``, never empty, with a little room above and below. */
function extent(values, pad) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (low === high) {
    const room = Math.abs(low) * 0.1 || 1;
    return [low - room, high + room];
  }
  const room = (high - low) * pad;
  return [low - room, high + room];
}

export class LineChart {
  /** ``name`` identifies the chart (data-chart), ``title`` heads it, ``yLabel`` names the axis. */
  constructor(name, title, yLabel) {
    this.yLabel = yLabel;
    this.series = [];
    this.legend = h("ul", { class: "legend" });
    this.plot = h("div", { class: "plot" });
    this.element = h(
      "figure",
      { class: "chart", dataset: { chart: name, points: "0" } },
      h("figcaption", {}, h("span", { class: "chart-title" }, title), this.legend),
      this.plot,
    );
    this.width = 0;
    new ResizeObserver(() => {
      if (this.plot.clientWidth !== this.width) this.render();
    }).observe(this.plot);
  }

  /** Show ``series``: [{name, key, points: [[step, value], ...]}]; key picks the colour. */
  update(series) {
    this.series = series;
    this.render();
  }

  render() {
    const drawn = this.series.filter((line) => line.points.length);
    const total = drawn.reduce((n, line) => n + line.points.length, 0);
    this.element.dataset.points = String(total);
    replace(
      this.legend,
      drawn.map((line) => h("li", { class: `key-${line.key}` }, h("span", { class: "swatch", "aria-hidden": "true" }), line.name)),
    );
    if (!total) {
      replace(this.plot, h("p", { class: "chart-empty" }, "No points yet: they appear here as the job reports its metrics."));
      return;
    }
    this.width = this.plot.clientWidth;
    const width = Math.max(280, Math.floor(this.width || 640));
    const inner = { width: width - MARGIN.left - MARGIN.right, height: HEIGHT - MARGIN.top - MARGIN.bottom };
    const all = drawn.flatMap((line) => line.points);
    const [x0, x1] = extent(all.map(([x]) => x), 0);
    const [y0, y1] = extent(all.map(([, y]) => y), 0.08);
    const x = (v) => MARGIN.left + ((v - x0) / (x1 - x0)) * inner.width;
    const y = (v) => MARGIN.top + (1 - (v - y0) / (y1 - y0)) * inner.height;
    const xTicks = ticks(x0, x1, Math.max(2, Math.floor(inner.width / 80))).filter(Number.isInteger);
    const yTicks = ticks(y0, y1, 5);

    const svg = s(
      "svg",
      {
        width,
        height: HEIGHT,
        viewBox: `0 0 ${width} ${HEIGHT}`,
        role: "img",
        "aria-label": drawn
          .map((line) => {
            const [step, value] = line.points[line.points.length - 1];
            return `${line.name}: ${metric(value)} at step ${step} (${line.points.length} points)`;
          })
          .join("; "),
      },
      yTicks.map((v) =>
        s(
          "g",
          { class: "tick" },
          s("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }),
          s("text", { x: MARGIN.left - 6, y: y(v), dy: "0.32em", "text-anchor": "end" }, metric(v)),
        ),
      ),
      xTicks.map((v) =>
        s("text", { class: "tick", x: x(v), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, String(v)),
      ),
      s("text", { class: "axis-label", x: MARGIN.left + inner.width / 2, y: HEIGHT - 4, "text-anchor": "middle" }, "step"),
      s(
        "text",
        { class: "axis-label", transform: `translate(12 ${MARGIN.top + inner.height / 2}) rotate(-90)`, "text-anchor": "middle" },
        this.yLabel,
      ),
      drawn.map((line) =>
        s(
          "g",
          { class: `series key-${line.key}` },
          s("polyline", { points: line.points.map(([px, py]) => `${x(px)},${y(py)}`).join(" ") }),
          line.points.map(([px, py]) =>
            s("circle", { cx: x(px), cy: y(py), r: 3 }, s("title", {}, `${line.name} at step ${px}: ${metric(py)}`)),
          ),
        ),
      ),
    );
    replace(this.plot, svg);
  }
}
