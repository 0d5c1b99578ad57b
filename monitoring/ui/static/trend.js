// Trend of one analyte across laboratories: one colour per laboratory, every point in the
// canonical unit; the tooltip says which laboratory sent it and what it sent (value and unit).
// Data comes from the page's JSON data block (no second request, no second audit row).
(function () {
  "use strict";
  var block = document.getElementById("trend-data");
  var canvas = document.getElementById("trend-chart");
  if (!block || !canvas || !window.Chart) return;
  var series = JSON.parse(block.textContent);
  var palette = ["#127ea3", "#b06b00", "#7b3fa0", "#1c7c3a", "#a3316f", "#55606b"];
  var byLab = {};
  var order = [];
  series.points.forEach(function (p) {
    if (!(p.lab in byLab)) { byLab[p.lab] = []; order.push(p.lab); }
    byLab[p.lab].push({ x: p.t, y: p.value, p: p });
  });
  var datasets = order.map(function (lab, i) {
    var colour = palette[i % palette.length];
    return { label: lab, data: byLab[lab], borderColor: colour, backgroundColor: colour,
             pointRadius: 5, pointHoverRadius: 7, showLine: true, borderWidth: 1.5, tension: 0 };
  });

  // Dates in the region's local time (the page labels its times Europe/Paris).
  var dayFormat = new Intl.DateTimeFormat("en-CA", { timeZone: "Europe/Paris",
                                                     year: "numeric", month: "2-digit", day: "2-digit" });
  function day(ms) { return dayFormat.format(new Date(ms)); }

  // The x axis spans the points with a margin; one point (or several the same day) gets a
  // week around it, not the years Chart.js would otherwise spread over an empty range.
  var DAY = 86400000;
  var times = series.points.map(function (p) { return p.t; });
  var first = Math.min.apply(null, times), last = Math.max.apply(null, times);
  var pad = last - first < DAY ? 3.5 * DAY : (last - first) * 0.05;

  new window.Chart(canvas, {
    type: "scatter",
    data: { datasets: datasets },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: {
        x: { type: "linear", min: first - pad, max: last + pad,
             title: { display: true, text: "date (Europe/Paris)" },
             ticks: { callback: function (v) { return day(v); }, maxTicksLimit: 8 } },
        y: { title: { display: true, text: series.unit } }
      },
      plugins: {
        legend: { position: "bottom" },
        tooltip: {
          callbacks: {
            title: function (items) { return items.length ? items[0].raw.p.at : ""; },
            label: function (item) {
              var p = item.raw.p;
              var line = p.lab + ": " + p.value + " " + series.unit;
              if (p.original_value !== null && p.original_value !== undefined &&
                  (String(p.original_value) !== String(p.value) || p.original_unit !== series.unit)) {
                line += "  (sent " + p.original_value + " " + (p.original_unit || "") + ")";
              }
              return line;
            }
          }
        }
      }
    }
  });
  canvas.setAttribute("data-ready", "1");
})();
