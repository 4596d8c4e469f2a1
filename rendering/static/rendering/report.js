// The report editor: autosave of the draft, and live key images (their state changes on the
// server, which renders them again). Everything is sent as JSON to the report's own routes.
// Django's JavaScript catalogue (base.html loads it before this module) translates; without it,
// the English as written here.
const gettext = window.gettext || ((text) => text);
const interpolate = window.interpolate
  || ((format, values) => format.replace(/%\(\s*([^)]+)\s*\)s/g, (match, name) => String(values[name])));
const report = document.getElementById("report");
const status = document.querySelector(".autosave");
const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const SAVE_DELAY_MS = 800;
let timer = null;
const removed = new Set();

function say(text) { status.textContent = text; }

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function draft() {
  const sections = {};
  for (const area of report.querySelectorAll(".text-section textarea")) sections[area.name] = area.value;
  const keyImages = [...report.querySelectorAll(".key-image")].map((item) => ({
    id: item.dataset.id, caption: item.querySelector(".caption").value,
  }));
  return {
    title: report.querySelector("input[name=title]").value,
    sections,
    grid: report.querySelector("select[name=grid]").value.split("x").map(Number),
    include_findings: report.querySelector("input[name=include_findings]").checked,
    key_images: keyImages,
    removed: [...removed],
  };
}

async function save() {
  timer = null;
  say(gettext("Saving…"));
  try {
    const answer = await post(report.dataset.save, draft());
    say(interpolate(gettext("Saved %(time)s"), { time: answer.saved }, true));
  } catch (error) {
    say(interpolate(gettext("Not saved: %(reason)s"), { reason: error.message }, true));
  }
}

function saveSoon() {
  say(gettext("Unsaved changes"));
  if (timer) clearTimeout(timer);
  timer = setTimeout(save, SAVE_DELAY_MS);
}

async function adjust(item, change) {
  const image = item.querySelector("img");
  try {
    const answer = await post(item.dataset.adjust, change);
    item.querySelector(".center").value = answer.window_center;
    item.querySelector(".width").value = answer.window_width;
    image.src = image.src.split("?")[0] + `?t=${Date.now()}`;
  } catch (error) {
    say(interpolate(gettext("Key image not changed: %(reason)s"), { reason: error.message }, true));
  }
}

function move(item, step) {
  const sibling = step < 0 ? item.previousElementSibling : item.nextElementSibling;
  if (!sibling) return;
  if (step < 0) sibling.before(item); else sibling.after(item);
  saveSoon();
}

report.addEventListener("input", (event) => {
  if (event.target.closest(".controls")) return;
  saveSoon();
});
report.addEventListener("change", (event) => {
  const item = event.target.closest(".key-image");
  if (!item || !event.target.closest(".controls")) return;
  const number = Number(event.target.value);
  if (event.target.classList.contains("center")) adjust(item, {window_center: number});
  if (event.target.classList.contains("width")) adjust(item, {window_width: number});
  if (event.target.classList.contains("opacity")) adjust(item, {opacity: number});
});
report.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  const item = button && button.closest(".key-image");
  if (!item) return;
  if (button.dataset.slices) adjust(item, {slices: Number(button.dataset.slices)});
  if (button.dataset.move) move(item, Number(button.dataset.move));
  if ("remove" in button.dataset) { removed.add(item.dataset.id); item.remove(); saveSoon(); }
});
document.querySelector("form.sign").addEventListener("submit", async (event) => {
  if (!timer) return;
  event.preventDefault();
  clearTimeout(timer);
  await save();
  event.target.submit();
});
