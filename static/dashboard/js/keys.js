/* API keys: select the new secret so it is ready to copy. */
(function () {
  "use strict";
  const secret = document.querySelector("[data-secret-value]");
  if (secret) {
    secret.addEventListener("focus", () => secret.select());
    secret.closest("[data-secret]").scrollIntoView({ block: "nearest" });
  }
})();
