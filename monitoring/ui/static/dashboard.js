// Dashboard: poll /ui/api/dashboard every few seconds and update the numbers and the chart.
// Values are written with textContent only (never innerHTML): channel and destination names
// come from routes.yaml and must stay text.
(function () {
  "use strict";
  var POLL_MS = 3000;
  var canvas = document.getElementById("throughput");
  var chart = null;

  function ageText(s) {
    s = Number(s || 0);
    if (s <= 0) return "\u2014";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function stateClass(s) {
    s = String(s || "").toLowerCase();
    if (["listening", "polling", "ok"].indexOf(s) >= 0) return "ok";
    if (["backlog"].indexOf(s) >= 0) return "warn";
    if (["dead letters", "stopped", "down", "removed"].indexOf(s) >= 0) return "bad";
    return "idle";
  }

  function setCell(row, key, value) {
    var cell = row.querySelector('[data-k="' + key + '"]');
    if (cell && cell.textContent !== String(value)) {
      cell.textContent = String(value);
    }
  }

  function setState(row, state, detail) {
    var pill = row.querySelector(".pill");
    if (!pill) return;
    pill.textContent = state;
    pill.className = "pill " + stateClass(state);
    if (detail !== undefined) pill.title = detail;
  }

  function findRow(table, name) {
    var rows = table.querySelectorAll("tbody tr");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-name") === name) return rows[i];
    }
    return null;
  }

  function update(data) {
    var channels = document.getElementById("channels");
    var dests = document.getElementById("destinations");
    var rate = 0, down = 0, queue = 0, dead = 0;
    data.channels.forEach(function (c) {
      rate += c.per_minute;
      if (!c.up) down += 1;
      var row = findRow(channels, c.name);
      if (!row) return;
      setState(row, c.state, c.detail);
      ["received", "per_minute", "errors", "duplicates", "reuses", "connections"].forEach(function (k) {
        setCell(row, k, c[k]);
      });
    });
    data.destinations.forEach(function (d) {
      queue += d.queue;
      dead += d.dead_now;
      var row = findRow(dests, d.name);
      if (!row) return;
      setState(row, d.state);
      setCell(row, "queue", d.queue);
      setCell(row, "oldest", ageText(d.oldest_seconds));
      ["per_minute", "delivered", "retried", "dead_now"].forEach(function (k) {
        setCell(row, k, d[k]);
      });
    });
    document.getElementById("card-rate").textContent = rate.toFixed(1);
    document.getElementById("card-down").textContent = down;
    document.getElementById("card-down-box").className = "card" + (down ? " bad" : "");
    document.getElementById("card-queue").textContent = queue;
    document.getElementById("card-dead").textContent = dead;
    document.getElementById("card-dead-box").className = "card" + (dead ? " bad" : "");
    if (data.partitions) {
      document.getElementById("card-partitions").textContent =
        data.partitions.owned + " / " + data.partitions.total;
      var m = data.partitions.members;
      document.getElementById("card-members").textContent =
        m + " engine process" + (m === 1 ? "" : "es");
    }
    var backlog = document.querySelector("#card-backlog a");
    if (backlog) backlog.textContent = data.backlog_codes;
    document.getElementById("updated").textContent =
      "updated " + data.at.replace("T", " ").replace("+00:00", "") + " UTC";
    drawChart(data.throughput);
  }

  function drawChart(t) {
    if (!canvas || !window.Chart || !t) return;
    if (chart) {
      chart.data.labels = t.labels;
      chart.data.datasets[0].data = t.received;
      chart.data.datasets[1].data = t.delivered;
      chart.data.datasets[2].data = t.failed;
      chart.update("none");
      return;
    }
    chart = new window.Chart(canvas, {
      type: "line",
      data: {
        labels: t.labels,
        datasets: [
          { label: "received", data: t.received, borderColor: "#127ea3",
            backgroundColor: "rgba(18,126,163,.12)", fill: true, cubicInterpolationMode: "monotone", pointRadius: 0 },
          { label: "delivered", data: t.delivered, borderColor: "#1c7c3a",
            backgroundColor: "rgba(28,124,58,.0)", cubicInterpolationMode: "monotone", pointRadius: 0 },
          { label: "failed (AE/AR, dead letter)", data: t.failed, borderColor: "#b3261e",
            backgroundColor: "rgba(179,38,30,.15)", fill: true, cubicInterpolationMode: "monotone", pointRadius: 0 }
        ]
      },
      options: {
        animation: false, maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { maxTicksLimit: 12 } },
          y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "messages / min" } }
        },
        plugins: { legend: { position: "bottom" } }
      }
    });
    canvas.setAttribute("data-ready", "1");
  }

  function poll() {
    fetch("/ui/api/dashboard", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location = "/ui/login?next=/ui/dashboard"; return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) { if (data) update(data); })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }

  poll();
})();
