/* Overview: the first snapshot comes with the page, later ones over /ws/overview/. */
(function () {
  "use strict";
  const { $, $$, setText, fmt, charts } = window.Nebula;

  function minuteLabel(point) {
    return fmt.clock(point.minute);
  }

  function drawCharts(series) {
    charts.bars($('[data-chart="requests"]'), series, {
      value: (p) => p.requests,
      part: (p) => p.errors,
      label: minuteLabel,
      tooltip: (p) => `${fmt.clock(p.minute)} · ${p.requests} requests, ${p.errors} errors`,
    });
    charts.bars($('[data-chart="tokens"]'), series, {
      value: (p) => p.tokens,
      barClass: "bar-tokens",
      label: minuteLabel,
      tooltip: (p) => `${fmt.clock(p.minute)} · ${fmt.compact(p.tokens)} tokens`,
    });
  }

  function bump(selector, text) {
    const node = $(`[data-o="${selector}"]`);
    if (!node || node.textContent === String(text)) return;
    node.textContent = text;
    const card = node.closest(".kpi");
    if (card) {
      card.classList.remove("flash");
      void card.offsetWidth; // restart the animation
      card.classList.add("flash");
    }
  }

  function renderWorkers(workers) {
    const body = $('[data-o="worker-rows"]');
    if (!body) return;
    body.innerHTML = "";
    if (!workers.list.length) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 3;
      cell.className = "empty";
      cell.innerHTML = "<strong>No live workers</strong>";
      cell.append("Start one with ");
      const code = document.createElement("code");
      code.textContent = "celery -A nebula_site worker";
      cell.append(code, ".");
      return;
    }
    for (const worker of workers.list) {
      const row = body.insertRow();
      const host = row.insertCell();
      host.className = "primary";
      host.textContent = worker.host;
      const pid = row.insertCell();
      pid.className = "num";
      pid.textContent = worker.pid;
      const share = worker.concurrency ? worker.busy / worker.concurrency : 0;
      const meter = row.insertCell();
      meter.innerHTML =
        '<div class="meter"><div class="meter-track"><div class="meter-fill"></div></div><span class="meter-label"></span></div>';
      const fill = $(".meter-fill", meter);
      fill.style.width = Math.round(share * 100) + "%";
      fill.classList.toggle("warn", share >= 0.75 && share < 0.95);
      fill.classList.toggle("bad", share >= 0.95);
      $(".meter-label", meter).textContent = `${worker.busy} / ${worker.concurrency}`;
    }
  }

  function render(report) {
    const health = report.health;
    const banner = $('[data-o="banner"]');
    banner.classList.toggle("bad", !health.ok);
    setText($('[data-o="status"]'), health.ok ? "All systems operational" : "Degraded: " + health.failing.join(", "));
    setText($('[data-o="uptime"]'), fmt.uptime(health.uptime_seconds));
    for (const [name, check] of Object.entries(health.checks)) {
      const chip = $(`[data-check="${name}"]`);
      if (!chip) continue;
      chip.classList.toggle("bad", !check.ok);
      setText($(".muted", chip), name === "workers" ? `${report.workers.live} live` : fmt.ms(check.latency_ms));
    }
    const t = report.traffic;
    bump("requests", t.requests);
    setText($('[data-o="rpm"]'), fmt.decimal(t.requests_per_minute));
    bump("tokens", fmt.compact(t.tokens));
    setText($('[data-o="tpm"]'), fmt.compact(t.tokens_per_minute));
    // Only server errors (5xx) are the service's; client errors (4xx) are shown apart.
    bump("server_error_rate", fmt.percent(t.server_error_rate));
    setText($('[data-o="server_errors"]'), t.server_errors);
    setText($('[data-o="client_errors"]'), t.client_errors);
    setText($('[data-o="client_error_rate"]'), fmt.percent(t.client_error_rate));
    setText($('[data-o="lat50"]'), fmt.ms(t.latency_ms.p50));
    setText($('[data-o="lat95"]'), fmt.ms(t.latency_ms.p95));
    setText($('[data-o="ttft50"]'), fmt.ms(t.ttft_ms.p50));
    setText($('[data-o="ttft95"]'), fmt.ms(t.ttft_ms.p95));
    bump("workers", report.workers.live);
    setText($('[data-o="busy"]'), report.workers.busy);
    setText($('[data-o="slots"]'), report.workers.slots);
    renderWorkers(report.workers);
    const fleet = $("[data-fleet]");
    if (fleet) window.Nebula.fleet.render(fleet, report.models);
    drawCharts(report.series);
  }

  const initial = JSON.parse($("#overview-data").textContent);
  drawCharts(initial.series);
  window.Nebula.live("/ws/overview/", {
    message(message) {
      if (message.type === "overview") render(message.report);
    },
  });
})();
