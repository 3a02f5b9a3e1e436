// Dashboard charts. Each <canvas data-chart="ID" data-kind="stacked|bar"> is drawn from the JSON
// that Django's json_script put in <script id="ID" type="application/json">:
//   {"labels": [...], "datasets": [{"label": "...", "data": [dollars, ...]}, ...]}
// Labels that look like dates (YYYY-MM-DD) are local days. The pages carry the same numbers in
// tables, so nothing is lost without JavaScript. No eval, no inline script.
(() => {
  "use strict";

  // Dollars by the tables' rule (apps/reporting/templatetags/reporting_format.py, usd): from $1
  // up cents with thousands separators; below $1 three significant digits and at least two
  // decimals; below $0.000001 "<$0.000001". Exposed as window.costrFormat for the browser test
  // that holds it to the Python filter.
  const cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2 });
  function dollars(value) {
    const size = Math.abs(value);
    const sign = value < 0 ? "-" : "";
    if (size === 0) return "$0.00";
    if (size < 0.000001) return `${sign}<$0.000001`;
    if (size < 1) {
      const rounded = Number(size.toPrecision(3));
      if (rounded < 1) {
        const places = Math.max(2, 2 - Math.floor(Math.log10(size)));
        let text = rounded.toFixed(places).replace(/0+$/, "");
        if (text.split(".")[1].length < 2) text = rounded.toFixed(2);
        return `${sign}$${text}`;
      }
    }
    return cents.format(value);
  }
  window.costrFormat = Object.freeze({ dollars });

  if (typeof window.Chart === "undefined") return;

  const LIGHT = ["#2f5bea", "#e07b00", "#1f9d6b", "#c2352b", "#7c4dcc", "#0f8fa8", "#b0487f", "#6b7a1f", "#8a8f98"];
  const DARK = ["#7b9cff", "#ffad4d", "#5fd49a", "#ff7b72", "#b794ff", "#4fd1e8", "#f28cc0", "#c3d467", "#9aa1ad"];
  const dark = window.matchMedia("(prefers-color-scheme: dark)");
  const drawn = [];

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const isDay = (label) => /^\d{4}-\d{2}-\d{2}$/.test(label);
  const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
  const longDayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });
  const asDay = (label, format) => (isDay(label) ? format.format(new Date(label + "T00:00:00Z")) : label);

  function draw(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) return;
    const data = JSON.parse(source.textContent);
    const colors = dark.matches ? DARK : LIGHT;
    const text = cssVar("--muted") || "#5f6670";
    const grid = cssVar("--border") || "#e2e4e8";
    const stacked = canvas.dataset.kind !== "bar";
    const chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.datasets.map((set, index) => ({
          label: set.label,
          data: set.data,
          backgroundColor: colors[index % colors.length],
          borderWidth: 0,
          maxBarThickness: 48,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        indexAxis: stacked ? "x" : "y",
        interaction: { mode: stacked ? "index" : "nearest", intersect: false },
        scales: {
          [stacked ? "x" : "y"]: {
            stacked,
            grid: { display: false },
            ticks: { color: text, autoSkip: true, maxRotation: 0, callback(value) { return asDay(this.getLabelForValue(value), dayFormat); } },
          },
          [stacked ? "y" : "x"]: {
            stacked,
            beginAtZero: true,
            grid: { color: grid },
            border: { display: false },
            ticks: { color: text, callback: (value) => dollars(value) },
          },
        },
        plugins: {
          legend: { display: data.datasets.length > 1, position: "bottom", labels: { color: text, boxWidth: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? asDay(items[0].label, longDayFormat) : ""),
              label: (item) => `${item.dataset.label}: ${dollars(item.parsed[stacked ? "y" : "x"])}`,
              footer: (items) => (stacked && items.length > 1 ? `Total: ${dollars(items.reduce((sum, item) => sum + item.parsed.y, 0))}` : ""),
            },
          },
        },
      },
    });
    drawn.push(chart);
  }

  function drawAll() {
    while (drawn.length) drawn.pop().destroy();
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  drawAll();
  dark.addEventListener("change", drawAll);
})();
