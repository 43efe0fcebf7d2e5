/* The fleet table (models page and overview): rows are reconciled with each live snapshot,
   keyed by deployment id, and new rows are cloned from the server-rendered <template>. */
(function () {
  "use strict";
  const { $, $$, setText, fmt } = window.Nebula;
  const ENDED = ["stopped", "failed"];

  // Loading progress counts down between snapshots (the server sends one per state change).
  function tick(meter) {
    const label = $('[data-f="progress-label"]', meter);
    if (!meter.dataset.at) meter.dataset.at = performance.now(); // a row the server rendered
    const since = (performance.now() - Number(meter.dataset.at)) / 1000;
    const total = Number(meter.dataset.left);
    const start = Number(meter.dataset.percent);
    const left = Math.max(total - since, 0);
    const percent = total > 0 ? 100 - ((100 - start) * left) / total : 100;
    $('[data-f="progress-fill"]', meter).style.width = percent.toFixed(1) + "%";
    setText(label, `${Math.floor(percent)}% · ${Math.ceil(left)} s left`);
  }
  setInterval(() => $$('[data-f="progress"]:not([hidden])').forEach(tick), 500);

  function fill(row, m) {
    row.dataset.model = m.pk;
    row.classList.toggle("dim", m.state === "stopped" || m.state === "failed");
    setText($('[data-f="name"]', row), m.name);
    setText($('[data-f="kind"]', row), m.kind === "embedding" ? "embeddings" : "");
    const owner = $('[data-f="owner"]', row);
    if (owner) setText(owner, m.owner ? "by " + m.owner : "");
    const badge = $('[data-f="state"]', row);
    const stateClass = "badge badge-" + m.state;
    if (badge.className !== stateClass) badge.className = stateClass;
    setText($('[data-f="state-text"]', row), m.state);
    const reason = $('[data-f="failure_reason"]', row);
    if (reason) {
      const text = m.failure_reason || m.queue_reason || "";
      setText(reason, text);
      reason.hidden = !text;
      reason.classList.toggle("info", !m.failure_reason);
    }
    const meter = $('[data-f="progress"]', row);
    if (meter) {
      meter.hidden = !m.progress;
      if (m.progress) {
        meter.dataset.at = performance.now();
        meter.dataset.left = m.progress.seconds_left;
        meter.dataset.percent = m.progress.percent;
        tick(meter);
      }
    }
    setText($('[data-f="size"]', row), m.params_billions ? fmt.decimal(m.params_billions) + "B" : "—");
    const gpus = $('[data-f="gpus"]', row);
    if (gpus && m.upstream) renderEngines(gpus, m.upstream);
    else if (gpus) setText(gpus, `${m.gpus_per_replica} × ${m.gpu_type}`);
    const replicas = $('[data-f="replicas"]', row);
    if (replicas) setText(replicas, m.target_replicas ? `${m.replicas} → ${m.target_replicas}` : m.replicas);
    setText($('[data-f="capacity"]', row), m.capacity);
    setText($('[data-f="context"]', row), m.context_length);
    const actions = $('[data-f="actions"]', row);
    if (actions) actions.hidden = m.state === "stopping";
    const undeploy = $('[data-f="undeploy"]', row);
    if (undeploy) undeploy.hidden = ENDED.includes(m.state);
    const remove = $('[data-f="delete"]', row);
    if (remove) remove.hidden = !ENDED.includes(m.state);
    const scale = $('[data-f="scale"]', row);
    if (scale) {
      scale.hidden = m.state !== "ready" || Boolean(m.upstream); // engines: one replica per URL
      const input = $('input[name="replicas"]', scale);
      // Never overwrite what someone is typing.
      if (input && document.activeElement !== input && input.getAttribute("aria-invalid") !== "true") {
        input.value = m.target_replicas || m.replicas;
      }
    }
  }

  // An upstream deployment's engines, as templates/dashboard/_replicas.html draws them.
  function renderEngines(cell, upstream) {
    const el = (tag, className, text) => {
      const node = document.createElement(tag);
      if (className) node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    };
    const head = el("span", "sub", "engine model ");
    head.append(el("span", "mono", upstream.model || ""));
    const list = el("ul", "replicas");
    list.dataset.f = "replicas-list";
    for (const r of upstream.replicas) {
      const item = el("li", "replica");
      item.dataset.health = r.health;
      item.append(el("span", "dot"), el("span", "mono", r.url), " ", el("span", "sub", r.summary));
      if (r.error) item.append(el("span", "reason", r.error));
      list.append(item);
    }
    cell.replaceChildren(head, list);
  }

  function create(template, m) {
    const row = template.content.firstElementChild.cloneNode(true);
    const name = encodeURIComponent(m.name);
    $$("[action], [href]", row).forEach((node) => {
      for (const attr of ["action", "href"]) {
        const value = node.getAttribute(attr);
        if (value) node.setAttribute(attr, value.replace("__NAME__", name));
      }
    });
    $$("[data-name]", row).forEach((node) => (node.dataset.name = m.name));
    $$('[id^="replicas-"]', row).forEach((node) => (node.id = "replicas-" + m.pk));
    $$('label[for^="replicas-"]', row).forEach((node) => {
      node.htmlFor = "replicas-" + m.pk;
      node.textContent = "Replicas for " + m.name;
    });
    row.classList.add("appear");
    return row;
  }

  window.Nebula.fleet = {
    render(table, models) {
      const body = $("tbody", table);
      const template = table.parentElement.querySelector("template[data-row-template]");
      const existing = new Map($$("tr[data-model]", body).map((row) => [row.dataset.model, row]));
      const seen = new Set();
      models.forEach((m, index) => {
        const key = String(m.pk);
        seen.add(key);
        let row = existing.get(key);
        if (!row) {
          if (!template) return;
          row = create(template, m);
        }
        fill(row, m);
        if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
      });
      existing.forEach((row, key) => {
        if (!seen.has(key)) row.remove();
      });
      const empty = table.parentElement.querySelector("[data-fleet-empty]");
      if (empty) empty.hidden = models.length > 0;
    },
  };
})();
