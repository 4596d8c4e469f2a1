// The raw import runs within the form's request: say so while it does, and allow one press only.
(() => {
  const form = document.querySelector("form.raw-import");
  const busy = document.getElementById("raw-import-busy");
  if (!form || !busy) return;
  form.addEventListener("submit", () => {
    busy.hidden = false;
    for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
  });
})();
