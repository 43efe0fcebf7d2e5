/* Shared dashboard code: number formats, the live websocket, copy buttons, confirm dialogs.
   Plain JavaScript, no build step. Page scripts use window.Nebula. */
(function () {
  "use strict";

  const Nebula = (window.Nebula = {});

  // --- Formats: the same as dashboard/templatetags/nebula.py -----------------------------------
  const fmt = (Nebula.fmt = {
    compact(value) {
      if (value === null || value === undefined) return "—";
      const n = Number(value);
      const units = [
        [1e9, "B"],
        [1e6, "M"],
        [1e3, "k"],
      ];
      for (const [bound, suffix] of units) {
        if (Math.abs(n) >= bound) return (n / bound).toFixed(1).replace(/\.0$/, "") + suffix;
      }
      return Number.isInteger(n) ? String(n) : n.toFixed(1);
    },
    ms(value) {
      if (value === null || value === undefined) return "—";
      return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
    },
    percent(value) {
      if (value === null || value === undefined) return "—";
      return value < 0.1 ? (value * 100).toFixed(1) + "%" : Math.round(value * 100) + "%";
    },
    decimal(value) {
      const n = Number(value || 0);
      return Number.isInteger(n) ? String(n) : n.toFixed(1).replace(/\.0$/, "");
    },
    uptime(seconds) {
      if (seconds === null || seconds === undefined) return "—";
      let s = Math.floor(seconds);
      const d = Math.floor(s / 86400);
      s -= d * 86400;
      const h = Math.floor(s / 3600);
      s -= h * 3600;
      const m = Math.floor(s / 60);
      s -= m * 60;
      if (d) return `${d}d ${h}h`;
      if (h) return `${h}h ${m}m`;
      if (m) return `${m}m ${s}s`;
      return `${s}s`;
    },
    clock(iso) {
      const date = new Date(iso);
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    },
  });

  Nebula.$ = (selector, root) => (root || document).querySelector(selector);
  Nebula.$$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
  Nebula.setText = (el, text) => {
    if (el && el.textContent !== String(text)) el.textContent = text;
  };

  // --- The live connection ----------------------------------------------------------------------
  // One websocket per page. It reconnects with backoff whenever it closes (a restarted server,
  // a consumer that lost Redis); a 4401 close means the session ended, so go log in again.
  Nebula.live = function (path, handlers) {
    const pill = Nebula.$("[data-live-status]");
    const label = pill && Nebula.$("[data-live-label]", pill);
    let socket = null;
    let delay = 500;
    let timer = null;
    let stopped = false;

    function status(state, text) {
      if (!pill) return;
      pill.dataset.state = state;
      Nebula.setText(label, text);
    }

    function connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      socket = new WebSocket(`${scheme}://${location.host}${path}`);
      api.socket = socket;
      socket.addEventListener("open", () => {
        delay = 500;
        status("live", "Live");
        if (handlers.open) handlers.open();
      });
      socket.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        if (handlers.message) handlers.message(message);
      });
      socket.addEventListener("close", (event) => {
        if (handlers.close) handlers.close(event);
        if (stopped) return;
        if (event.code === 4401) {
          location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
          return;
        }
        status("reconnecting", "Reconnecting…");
        clearTimeout(timer);
        timer = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 8000);
      });
    }

    const api = {
      socket: null,
      send(message) {
        if (!socket || socket.readyState !== WebSocket.OPEN) return false;
        socket.send(JSON.stringify(message));
        return true;
      },
      get open() {
        return !!socket && socket.readyState === WebSocket.OPEN;
      },
      close() {
        stopped = true;
        if (socket) socket.close();
      },
    };
    connect();
    return api;
  };

  // --- Copy buttons -----------------------------------------------------------------------------
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (error) {
      // No clipboard API (an insecure origin): fall back to selecting and copying.
      const field = document.createElement("textarea");
      field.value = text;
      field.setAttribute("readonly", "");
      field.style.position = "fixed";
      field.style.opacity = "0";
      document.body.appendChild(field);
      field.select();
      const ok = document.execCommand("copy");
      field.remove();
      return ok;
    }
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = Nebula.$(button.dataset.copy);
    if (!source) return;
    source.select && source.select();
    const ok = await copyText(source.value || source.textContent);
    const label = Nebula.$("[data-copy-label]", button) || button;
    label.textContent = ok ? "Copied" : "Press Ctrl+C";
    setTimeout(() => (label.textContent = "Copy"), 2500);
  });

  // --- Confirm dialogs --------------------------------------------------------------------------
  // A destructive link goes to a confirmation page; with JavaScript it opens a dialog instead,
  // whose form posts to the same address.
  document.addEventListener("click", (event) => {
    const trigger = event.target.closest("a[data-confirm]");
    if (!trigger) return;
    const dialog = document.getElementById(trigger.dataset.confirm);
    if (!dialog || typeof dialog.showModal !== "function") return;
    event.preventDefault();
    const form = Nebula.$("[data-confirm-form]", dialog);
    form.action = trigger.getAttribute("href");
    Nebula.$$("[data-confirm-name]", dialog).forEach((el) => (el.textContent = trigger.dataset.name));
    dialog.showModal();
    const cancel = Nebula.$("[data-close]", dialog);
    if (cancel) cancel.focus();
  });
  document.addEventListener("click", (event) => {
    const close = event.target.closest("dialog [data-close]");
    if (close) close.closest("dialog").close();
  });

  // On a phone the navigation scrolls sideways: keep the current page's item in view.
  const current = document.querySelector('.nav a[aria-current="page"]');
  if (current) {
    const nav = current.parentElement;
    const past = current.getBoundingClientRect().right - nav.getBoundingClientRect().right;
    if (past > 0) nav.scrollLeft += past + 14;
  }
})();
