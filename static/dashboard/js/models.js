/* Models: live state badges over /ws/fleet/, and a memory-fit hint on the deploy form. */
(function () {
  "use strict";
  const { $, fmt } = window.Nebula;

  const fleet = $("[data-fleet]");
  window.Nebula.live("/ws/fleet/", {
    message(message) {
      if (message.type === "fleet" && fleet) window.Nebula.fleet.render(fleet, message.models);
    },
  });

  // Advisory only: the deployment itself decides (and fails with the reason) when loading.
  const form = $("[data-deploy-form]");
  const catalogue = $("#gpu-catalogue");
  if (!form || !catalogue) return;
  const { gpus, headroom } = JSON.parse(catalogue.textContent);
  const hint = $("[data-fit]", form);

  function update() {
    const size = parseFloat(form.elements.params_billions.value);
    const gpu = gpus[form.elements.gpu_type.value];
    const count = parseInt(form.elements.gpus_per_replica.value, 10);
    if (!(size > 0) || !gpu || !(count > 0)) {
      hint.hidden = true;
      return;
    }
    const needed = size * 2; // bf16: two bytes a parameter
    const usable = gpu.memory_gb * count * headroom;
    const fits = needed <= usable;
    hint.hidden = false;
    hint.classList.toggle("bad", !fits);
    hint.innerHTML = "";
    const line = document.createElement("div");
    const strong = document.createElement("strong");
    strong.textContent = fits ? "Fits" : "Does not fit";
    line.append(strong, ` · weights need ${fmt.decimal(needed)} GB; ${count} × ${gpu.name} leave ${usable.toFixed(1)} GB usable.`);
    const meter = document.createElement("div");
    meter.className = "meter";
    meter.innerHTML = '<div class="meter-track"><div class="meter-fill"></div></div><span class="meter-label"></span>';
    const share = Math.min(needed / usable, 1);
    const fill = meter.querySelector(".meter-fill");
    fill.style.width = Math.round(share * 100) + "%";
    fill.classList.toggle("bad", !fits);
    fill.classList.toggle("warn", fits && share > 0.85);
    meter.querySelector(".meter-label").textContent = Math.round((needed / usable) * 100) + "%";
    hint.append(line, meter);
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
})();
