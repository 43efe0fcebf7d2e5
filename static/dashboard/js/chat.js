/* Playground: the conversation lives in the page; each turn goes over /ws/playground/ and the
   reply streams back token by token. */
(function () {
  "use strict";
  const { $, setText, fmt } = window.Nebula;

  const log = $("[data-chat-log]");
  const empty = $("[data-chat-empty]");
  const composer = $("[data-composer]");
  const input = $("#chat-input");
  const sendButton = $("[data-send]");
  const stopButton = $("[data-stop]");
  const settings = $("[data-chat-settings]");
  const temperature = $("#chat-temperature");
  const temperatureOut = $("[data-temperature-out]");
  const stat = (name) => $(`[data-stat="${name}"]`);

  const history = []; // {role, content}
  let current = null; // the reply being generated: {node, text, started, firstAt, chunks}

  temperature.addEventListener("input", () => (temperatureOut.textContent = Number(temperature.value).toFixed(1)));

  function bubble(className, text) {
    if (empty) empty.remove();
    const node = document.createElement("div");
    node.className = "msg " + className;
    node.textContent = text;
    log.appendChild(node);
    log.scrollTop = log.scrollHeight;
    return node;
  }

  function meta(text) {
    const node = document.createElement("div");
    node.className = "msg-meta";
    node.textContent = text;
    log.appendChild(node);
    log.scrollTop = log.scrollHeight;
  }

  function busy(on) {
    sendButton.hidden = on;
    stopButton.hidden = !on;
    if (on) stopButton.focus();
    else input.focus();
  }

  function finish(state) {
    if (current) {
      current.node.classList.remove("streaming");
      if (current.text) history.push({ role: "assistant", content: current.text });
      else current.node.remove();
    }
    current = null;
    setText(stat("state"), state);
    busy(false);
  }

  const socket = window.Nebula.live("/ws/playground/", {
    message(message) {
      if (message.type === "started") {
        setText(stat("state"), "generating");
      } else if (message.type === "delta" && current) {
        if (!current.firstAt) {
          current.firstAt = performance.now();
          setText(stat("ttft"), fmt.ms(message.ttft_ms));
        }
        current.text += message.text;
        current.chunks += 1;
        current.node.textContent = current.text;
        log.scrollTop = log.scrollHeight;
      } else if (message.type === "done" && current) {
        const usage = message.usage;
        const seconds = (performance.now() - (current.firstAt || current.started)) / 1000;
        setText(stat("ttft"), fmt.ms(message.ttft_ms));
        setText(stat("tokens"), `${usage.prompt_tokens} in · ${usage.completion_tokens} out`);
        setText(stat("speed"), seconds > 0 ? `${(usage.completion_tokens / seconds).toFixed(0)} tok/s` : "—");
        const node = current.node;
        finish(message.finish_reason === "length" ? "done (max tokens)" : "done");
        if (node.isConnected) meta(`${usage.completion_tokens} tokens · first token after ${fmt.ms(message.ttft_ms)}`);
      } else if (message.type === "stopped") {
        const had = current && current.text;
        finish("stopped");
        if (had) meta("Stopped");
      } else if (message.type === "error") {
        finish("error");
        bubble("msg-error", message.message);
      }
    },
    close() {
      if (current) {
        finish("disconnected");
        bubble("msg-error", "The connection dropped while the reply was generating. Send again once it is back.");
      }
    },
  });

  function send() {
    const text = input.value.trim();
    if (!text || current) return;
    const messages = [];
    const system = settings.elements.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history, { role: "user", content: text });
    const ok = socket.send({
      type: "chat",
      key: settings.elements.key.value,
      model: settings.elements.model.value,
      temperature: Number(temperature.value),
      max_tokens: settings.elements.max_tokens.value,
      ignore_eos: settings.elements.ignore_eos.checked,
      messages,
    });
    if (!ok) {
      bubble("msg-error", "Not connected yet. Wait a moment and send again.");
      return;
    }
    history.push({ role: "user", content: text });
    bubble("msg-user", text);
    input.value = "";
    current = { node: bubble("msg-assistant streaming", ""), text: "", started: performance.now(), firstAt: 0, chunks: 0 };
    setText(stat("ttft"), "…");
    setText(stat("tokens"), "—");
    setText(stat("speed"), "—");
    setText(stat("state"), "queued");
    busy(true);
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", () => socket.send({ type: "stop" }));
  $("[data-clear]").addEventListener("click", () => {
    if (current) return;
    history.length = 0;
    log.innerHTML = "";
    setText(stat("state"), "idle");
  });
})();
