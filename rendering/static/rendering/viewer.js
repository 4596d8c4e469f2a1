// The viewer page: canvases that show server-rendered frames and send input.
// No pixel data ever arrives here except encoded frames of the rendered view
// and the server-rendered series thumbnails.
import { decodeFrame } from "./frames.js";

const root = document.getElementById("viewer");
const grid = document.getElementById("views");
const studyLabel = document.getElementById("study-label");
const errorLine = document.getElementById("error");
const probeLine = document.getElementById("probe");
const seriesStrip = document.getElementById("series");
const kindSelect = document.getElementById("view-kind");
const playButton = document.getElementById("cine-play");
const fpsInput = document.getElementById("cine-fps");
const reverseWheelBox = document.getElementById("reverse-wheel");
const study = root.dataset.study;

const views = [];
let socket = null;
let layout = "1x1";
let reconnectDelay = 500;
let failedAttempts = 0;
let ended = false;
let holdInputUntil = 0;
let activeView = 0;
let seriesByUid = new Map();
let seriesOrder = [];
let thumbnailsAsked = false;
const thumbnails = new Map();
const MAX_FAILED_ATTEMPTS = 6;
const ERROR_SHOWN_MS = 6000;
const DEFAULT_CINE_FPS = 15;
const REFORMAT_KINDS = ["axial", "coronal", "sagittal", "oblique", "3d"];
const REVERSE_WHEEL_KEY = "fusion-gateway.reverse-wheel";

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
  }
}

// Input is coalesced: deltas that arrive within one animation frame (a 144 Hz
// wheel, a fast drag) go out as one message per view and operation, and are
// held while the server has said it is rate limiting (docs/protocol.md).
const pendingInput = new Map();
let flushScheduled = false;

function queueInput(view, op, deltas) {
  const key = `${view}:${op}`;
  const pending = pendingInput.get(key) || { type: "input", view, op };
  for (const [name, value] of Object.entries(deltas)) {
    pending[name] = op === "zoom" ? (pending[name] || 1) * value : (pending[name] || 0) + value;
  }
  pendingInput.set(key, pending);
  scheduleFlush();
}

function scheduleFlush() {
  if (flushScheduled) return;
  flushScheduled = true;
  const wait = Math.max(0, holdInputUntil - performance.now());
  const flush = () => { flushScheduled = false; flushInput(); };
  if (wait > 0) setTimeout(flush, wait); else requestAnimationFrame(flush);
}

function inputHeld() {
  return performance.now() < holdInputUntil;
}

function flushInput() {
  if (inputHeld()) { scheduleFlush(); return; }
  for (const message of pendingInput.values()) {
    if (message.op === "scroll") message.delta = Math.max(-2000, Math.min(2000, message.delta));
    if (message.op === "zoom") message.factor = Math.max(0.05, Math.min(20, message.factor));
    if (message.op === "pan") { message.dx = clamp(message.dx, 4); message.dy = clamp(message.dy, 4); }
    if (message.op === "rotate") {
      message.dazimuth = clamp(message.dazimuth, 360); message.delevation = clamp(message.delevation, 360);
    }
    if (message.op === "window") { message.dc = clamp(message.dc, 10000); message.dw = clamp(message.dw, 10000); }
    if (message.op !== "scroll" || message.delta !== 0) send(message);
  }
  pendingInput.clear();
}

function clamp(value, limit) {
  return Math.max(-limit, Math.min(limit, value));
}

// --- status line: the study label and errors never share an element --------

let errorTimer = null;

function showError(text, { sticky = false } = {}) {
  clearTimeout(errorTimer);
  errorLine.replaceChildren(document.createTextNode(text));
  errorTimer = sticky ? null : setTimeout(clearError, ERROR_SHOWN_MS);
}

function clearError() {
  clearTimeout(errorTimer);
  errorTimer = null;
  errorLine.replaceChildren();
}

function describeStudy(studyInfo, seriesCount) {
  return `${(studyInfo && studyInfo.description) || "study"} · ${seriesCount} series`;
}

// --- series --------------------------------------------------------------

function seriesOfView(view) {
  return view && seriesByUid.get((view.layers || [])[0]);
}

function canReformat(view) {
  const series = seriesOfView(view);
  return !series || series.mpr !== false;
}

function defaultFps(series) {
  const frameTime = series && series.frame_time_ms;
  if (!frameTime || frameTime <= 0) return DEFAULT_CINE_FPS;
  return Math.max(1, Math.min(60, Math.round(1000 / frameTime)));
}

function countLabel(series) {
  const noun = series.kind === "cine" ? "frame" : "image";
  return `${series.images} ${noun}${series.images === 1 ? "" : "s"}`;
}

function seriesItem(series) {
  const item = element("button", "series-item");
  item.type = "button";
  item.dataset.series = series.uid;
  const thumbnail = element("canvas", "thumbnail");
  thumbnail.width = 96;
  thumbnail.height = 96;
  item.append(thumbnail, element("span", "series-title",
    [series.modality, series.description].filter(Boolean).join(" · ")));
  if (series.available) {
    item.append(element("span", "series-count", countLabel(series)));
    item.addEventListener("click", () => showSeries(activeView, series.uid));
  } else {
    item.classList.add("unavailable");
    item.setAttribute("aria-disabled", "true");
    item.append(element("span", "series-reason", series.reason || "cannot be shown"));
  }
  return item;
}

function buildSeriesStrip() {
  seriesStrip.replaceChildren(...seriesOrder.map(seriesItem));
  for (const [uid, bitmap] of thumbnails) drawThumbnail(uid, bitmap);
  markSelectedSeries();
}

function markSelectedSeries() {
  const shown = (views[activeView] && views[activeView].layers[0]) || null;
  for (const item of seriesStrip.querySelectorAll(".series-item")) {
    const selected = item.dataset.series === shown;
    item.classList.toggle("selected", selected);
    item.setAttribute("aria-pressed", String(selected));
  }
}

function thumbnailCanvas(uid) {
  for (const item of seriesStrip.querySelectorAll(".series-item")) {
    if (item.dataset.series === uid) return item.querySelector("canvas");
  }
  return null;
}

function drawThumbnail(uid, bitmap) {
  const canvas = thumbnailCanvas(uid);
  if (!canvas) return;
  const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
  const width = bitmap.width * scale;
  const height = bitmap.height * scale;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, (canvas.width - width) / 2, (canvas.height - height) / 2, width, height);
  canvas.dataset.drawn = "true";
}

async function receiveThumbnail(message) {
  if (!seriesByUid.has(message.series) || typeof message.image !== "string") return;
  let bitmap;
  try {
    const bytes = Uint8Array.from(atob(message.image), (character) => character.charCodeAt(0));
    bitmap = await createImageBitmap(new Blob([bytes], { type: `image/${message.encoding || "jpeg"}` }));
  } catch (error) {
    return;
  }
  if (ended) { bitmap.close(); return; }
  const previous = thumbnails.get(message.series);
  if (previous) previous.close();
  thumbnails.set(message.series, bitmap);
  drawThumbnail(message.series, bitmap);
}

function showSeries(index, uid) {
  const view = views[index];
  const series = seriesByUid.get(uid);
  if (!view || !series || !series.available) return;
  stopCine(view);
  view.layers = [uid];
  view.kind = "native";
  view.slice = null;
  view.fps = defaultFps(series);
  send({ type: "set", view: index, name: "series", value: uid });
  refreshControls();
}

// --- views ---------------------------------------------------------------

function buildViews(viewSpecs) {
  for (const view of views) stopCine(view);
  grid.replaceChildren();
  grid.dataset.layout = layout;
  views.length = 0;
  for (const [index, spec] of viewSpecs.entries()) {
    const cell = document.createElement("div");
    cell.className = "view";
    const canvas = document.createElement("canvas");
    canvas.tabIndex = 0;
    canvas.dataset.view = String(index);
    canvas.setAttribute("aria-label", `view ${index + 1}`);
    const overlay = document.createElement("div");
    overlay.className = "overlay";
    cell.append(canvas, overlay);
    grid.append(cell);
    const state = { index, canvas, overlay, lastSequence: 0, shownRank: -1, frames: 0,
                    since: performance.now(), showCrosshair: true, slab: -1, preset: 0,
                    kind: spec.kind, layers: [...(spec.layers || [])], slice: null,
                    cine: null, cineIndex: null, fps: DEFAULT_CINE_FPS };
    state.fps = defaultFps(seriesOfView(state));
    views.push(state);
    attachInput(state);
  }
  activeView = Math.min(activeView, Math.max(0, views.length - 1));
  refreshControls();
  requestAnimationFrame(sendSizes);
}

function sendSizes() {
  for (const view of views) {
    const box = view.canvas.parentElement.getBoundingClientRect();
    const width = Math.max(64, Math.min(2048, Math.round(box.width)));
    const height = Math.max(64, Math.min(2048, Math.round(box.height)));
    view.canvas.width = width;
    view.canvas.height = height;
    send({ type: "resize", view: view.index, width, height });
  }
}

function activate(index) {
  if (index === activeView || !views[index]) return;
  activeView = index;
  refreshControls();
}

// The toolbar always describes the active view.
function refreshControls() {
  const view = views[activeView];
  views.forEach((each) => each.canvas.parentElement.classList.toggle("active", each === view));
  if (view) {
    const reformat = canReformat(view);
    for (const option of kindSelect.options) option.disabled = option.value !== "native" && !reformat;
    kindSelect.value = view.kind;
    fpsInput.value = String(view.fps);
  }
  showCineState(view);
  markSelectedSeries();
}

function setKind(index, kind) {
  const view = views[index];
  if (!view) return;
  if (REFORMAT_KINDS.includes(kind) && !canReformat(view)) {
    showError("this series cannot be reformatted");
    refreshControls();
    return;
  }
  if (kind !== view.kind) stopCine(view);
  view.kind = kind;
  view.slice = null;
  send({ type: "set", view: index, name: "kind", value: kind });
  refreshControls();
}

// --- cine ------------------------------------------------------------------

// A series' own frames (native plane, or a series without reformats) are
// stepped by index and wrap; a reformat or 3-D view scrolls (3-D: rotates).
function cineByFrame(view) {
  return view.kind === "native" || !canReformat(view);
}

function frameCount(view) {
  const series = seriesOfView(view);
  return (view.slice && view.slice[1]) || (series && series.images) || 1;
}

function nextFrameIndex(view) {
  const shown = view.cineIndex ?? (view.slice ? view.slice[0] - 1 : -1);
  return (shown + 1) % frameCount(view);
}

function cineTick(view) {
  if (cineByFrame(view)) {
    if (inputHeld()) return;
    view.cineIndex = nextFrameIndex(view);
    send({ type: "input", view: view.index, op: "frame", index: view.cineIndex });
  } else {
    queueInput(view.index, "scroll", { delta: 1 });
  }
}

function startCine(view) {
  stopCine(view);
  view.cineIndex = null;
  view.cine = setInterval(() => cineTick(view), 1000 / view.fps);
  if (view.index === activeView) showCineState(view);
}

function stopCine(view) {
  if (!view || !view.cine) return;
  clearInterval(view.cine);
  view.cine = null;
  if (view.index === activeView) showCineState(view);
}

function toggleCine(view) {
  if (!view) return;
  if (view.cine) stopCine(view); else startCine(view);
}

function showCineState(view) {
  const playing = Boolean(view && view.cine);
  playButton.textContent = playing ? "Pause" : "Play";
  playButton.setAttribute("aria-pressed", String(playing));
}

function changeFps() {
  const view = views[activeView];
  const fps = Math.round(Number(fpsInput.value));
  if (!view || !Number.isFinite(fps)) return;
  view.fps = Math.max(1, Math.min(60, fps));
  fpsInput.value = String(view.fps);
  if (view.cine) startCine(view);
}

// --- frames and overlay ------------------------------------------------------

function describeOverlay(view, overlay) {
  const lines = [];
  const series = seriesOfView(view);
  if (series) lines.push([series.modality, series.description].filter(Boolean).join(" · "));
  if (overlay.kind) lines.push(overlay.kind);
  if (Array.isArray(overlay.slice)) lines.push(`${overlay.slice[0]} / ${overlay.slice[1]}`);
  if (overlay.position !== undefined) lines.push(`pos ${Number(overlay.position).toFixed(1)} mm`);
  if (overlay.zoom) lines.push(`zoom ${Number(overlay.zoom).toFixed(2)}×`);
  for (const [index, layer] of (overlay.windows || []).entries()) {
    const unit = layer.unit ? ` ${layer.unit}` : "";
    lines.push(`L${index + 1} W ${Math.round(layer.width * 10) / 10} C ${Math.round(layer.center * 10) / 10}${unit}`);
  }
  if (overlay.slab) lines.push(overlay.slab);
  return lines;
}

// Reference lines: where the other views' planes cut this one (they all pass
// through the shared focus point).
function drawCrosshair(context, view, overlay) {
  if (!overlay.crosshair || !view.showCrosshair) return;
  const [x, y] = overlay.crosshair;
  context.save();
  context.strokeStyle = "rgba(80, 200, 255, 0.55)";
  context.lineWidth = 1;
  context.beginPath();
  context.moveTo(0, y + 0.5); context.lineTo(view.canvas.width, y + 0.5);
  context.moveTo(x + 0.5, 0); context.lineTo(x + 0.5, view.canvas.height);
  context.stroke();
  context.restore();
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Built with DOM calls, not HTML strings: the CSP forbids inline styles and
// nothing the server sends is ever interpreted as markup.
function drawOverlay(view, frame, fps) {
  const overlay = frame.overlay || {};
  const orientation = overlay.orientation || {};
  const nodes = ["top", "bottom", "left", "right"]
    .map((edge) => element("span", `edge ${edge}`, orientation[edge] || ""));
  const facts = element("div", "facts");
  for (const line of describeOverlay(view, overlay)) facts.append(element("div", "", line));
  facts.append(element("div", "", `${fps.toFixed(0)} fps · ${frame.quality}`));
  nodes.push(facts);
  if (overlay.mm_per_pixel) {
    const pixels = Math.round(50 / overlay.mm_per_pixel);
    if (pixels > 10 && pixels < view.canvas.width) {
      const scale = element("div", "scale", "50 mm");
      scale.style.width = `${pixels}px`;
      nodes.push(scale);
    }
  }
  view.overlay.replaceChildren(...nodes);
}

// Frames are decoded concurrently (a PNG still decodes slower than a JPEG), so
// the order is decided after decoding: a frame older than the one on screen —
// or the interactive twin of a still already shown — is dropped, never painted.
function frameRank(frame) {
  return frame.sequence * 2 + (frame.quality === "still" ? 1 : 0);
}

async function showFrame(buffer) {
  let frame;
  try {
    frame = decodeFrame(buffer);
  } catch (error) {
    showError(`bad frame: ${error.message}`);
    return;
  }
  const view = views[frame.view];
  if (!view) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(frame.image);
  } catch (error) {
    send({ type: "ack", view: frame.view, seq: frame.sequence });
    return;
  }
  if (ended || frameRank(frame) <= view.shownRank) {
    bitmap.close();
    send({ type: "ack", view: frame.view, seq: frame.sequence });
    return;
  }
  paintFrame(view, frame, bitmap);
  send({ type: "ack", view: frame.view, seq: frame.sequence });
}

function paintFrame(view, frame, bitmap) {
  view.shownRank = frameRank(frame);
  view.lastSequence = frame.sequence;
  const overlay = frame.overlay || {};
  if (Array.isArray(overlay.slice) && overlay.slice.length === 2) view.slice = overlay.slice;
  const context = view.canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, view.canvas.width, view.canvas.height);
  bitmap.close();
  drawCrosshair(context, view, overlay);
  view.frames += 1;
  const now = performance.now();
  const fps = (view.frames * 1000) / Math.max(1, now - view.since);
  if (now - view.since > 2000) { view.frames = 0; view.since = now; }
  drawOverlay(view, frame, fps);
  view.canvas.dataset.sequence = String(frame.sequence);
  view.canvas.dataset.quality = frame.quality;
  clearError();
}

// --- messages ----------------------------------------------------------------

function receiveReady(message) {
  layout = message.layout;
  seriesOrder = message.series || [];
  seriesByUid = new Map(seriesOrder.map((series) => [series.uid, series]));
  buildViews(message.views || []);
  buildSeriesStrip();
  studyLabel.textContent = describeStudy(message.study, seriesOrder.length);
  document.getElementById("layout").value = layout;
  if (!thumbnailsAsked) { thumbnailsAsked = true; send({ type: "thumbnails" }); }
}

function receiveProbe(message) {
  probeLine.textContent = message.value === null ? "outside the volume"
    : `${message.value.toFixed(1)} ${message.unit} at (${message.point.map((v) => v.toFixed(1)).join(", ")}) mm`;
}

function receiveError(message) {
  // The cursor left the readable volume (a 3-D view, a gap): nothing to report.
  if (message.code === "probe_failed") return;
  if (message.code === "rate_limited") {
    holdInputUntil = performance.now() + (message.retry_after_ms || 0) + 50;
  }
  showError(`${message.code}: ${message.message}`);
}

function handleText(message) {
  if (message.type === "ready") receiveReady(message);
  else if (message.type === "thumbnail") receiveThumbnail(message);
  else if (message.type === "probe") receiveProbe(message);
  else if (message.type === "error") receiveError(message);
  else if (message.type === "closing") end(`access ended: ${message.reason}`);
}

// The study is no longer ours to see: nothing it showed stays on screen.
function clearViews() {
  for (const view of views) {
    stopCine(view);
    view.canvas.getContext("2d").clearRect(0, 0, view.canvas.width, view.canvas.height);
    view.canvas.dataset.cleared = "true";
    view.overlay.replaceChildren();
  }
  for (const bitmap of thumbnails.values()) bitmap.close();
  thumbnails.clear();
  seriesStrip.replaceChildren();
  probeLine.textContent = "";
}

function end(text, link) {
  ended = true;
  clearViews();
  showError(text, { sticky: true });
  if (link) {
    const anchor = element("a", "", link.text);
    anchor.href = link.href;
    errorLine.append(" — ", anchor);
  }
}

const CLOSE_REASONS = {
  4401: () => end("session ended", { text: "sign in again",
    href: `/accounts/login/?next=${encodeURIComponent(location.pathname)}` }),
  4403: () => end("access ended: the share expired or was revoked"),
  4404: () => end("this study is not available to you"),
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/viewer/${encodeURIComponent(study)}/`);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => {
    reconnectDelay = 500; failedAttempts = 0; thumbnailsAsked = false;
    if (!seriesOrder.length) studyLabel.textContent = "connected";
    clearError();
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") handleText(JSON.parse(event.data));
    else showFrame(event.data);
  });
  socket.addEventListener("close", (event) => {
    if (ended) return;
    if (CLOSE_REASONS[event.code]) { CLOSE_REASONS[event.code](); return; }
    for (const view of views) stopCine(view);
    failedAttempts += 1;
    if (failedAttempts >= MAX_FAILED_ATTEMPTS) {
      showError("cannot reach the gateway — reload the page to try again", { sticky: true });
      return;
    }
    showError("connection lost — reconnecting…", { sticky: true });
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(8000, reconnectDelay * 2);
  });
}

// --- input ---------------------------------------------------------------------

// Storage can be switched off (private windows, policy): the viewer works without it.
function readPreference(key) {
  try { return localStorage.getItem(key); } catch (error) { return null; }
}

function writePreference(key, value) {
  try { localStorage.setItem(key, value); } catch (error) { /* not remembered */ }
}

// Wheel down moves towards the feet (a lower slice), unless the reader reversed it.
function wheelSlices(deltaY) {
  const towardsFeet = -Math.sign(deltaY);
  return reverseWheelBox.checked ? -towardsFeet : towardsFeet;
}

function attachInput(view) {
  const { canvas, index } = view;
  let drag = null;
  let lastProbe = 0;
  canvas.addEventListener("focus", () => activate(index));
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    if (event.ctrlKey) queueInput(index, "zoom", { factor: event.deltaY < 0 ? 1.1 : 1 / 1.1 });
    else if (event.deltaY !== 0) queueInput(index, "scroll", { delta: wheelSlices(event.deltaY) });
  }, { passive: false });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("pointerdown", (event) => {
    activate(index);
    canvas.setPointerCapture(event.pointerId);
    drag = { x: event.clientX, y: event.clientY, button: event.button, shift: event.shiftKey,
             moved: false };
  });
  canvas.addEventListener("pointermove", (event) => {
    const now = performance.now();
    if (!drag && view.kind !== "3d" && now - lastProbe > 100) {
      lastProbe = now;
      send({ type: "probe", view: index, x: Math.round(event.offsetX), y: Math.round(event.offsetY) });
    }
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) < 2) return;
    drag.moved = true;
    drag.x = event.clientX;
    drag.y = event.clientY;
    if (drag.button === 1 || drag.shift) {
      queueInput(index, "pan", { dx: dx / canvas.width, dy: dy / canvas.height });
    } else if (drag.button === 2) {
      queueInput(index, "rotate", { dazimuth: dx * 0.5, delevation: dy * 0.5 });
    } else {
      queueInput(index, "window", { dc: dy * 2, dw: dx * 4 });
    }
  });
  canvas.addEventListener("pointerup", (event) => {
    if (drag && !drag.moved && drag.button === 0) {
      send({ type: "input", view: index, op: "focus", x: Math.round(event.offsetX), y: Math.round(event.offsetY) });
    }
    drag = null;
  });
  canvas.addEventListener("keydown", (event) => keyboard(event, index));
}

const SLAB_MODES = ["mip", "minip", "average", "none"];
const VOLUME_PRESETS = ["ct_bone", "ct_soft_tissue", "ct_lung", "pet_mip"];
const WINDOW_KEYS = { 1: "abdomen", 2: "lung", 3: "bone", 4: "brain", 5: "suv_0_5", 6: "suv_0_10" };
const KIND_KEYS = { i: "native", a: "axial", c: "coronal", s: "sagittal", o: "oblique", v: "3d" };
const SCROLL_KEYS = { ArrowUp: 1, ArrowDown: -1, PageUp: 10, PageDown: -10 };

function setting(index, name, value) {
  send({ type: "set", view: index, name, value });
}

function nextSlabMode(view) {
  view.slab = (view.slab + 1) % SLAB_MODES.length;
  return SLAB_MODES[view.slab];
}

function nextVolumePreset(view) {
  view.preset = (view.preset + 1) % VOLUME_PRESETS.length;
  return VOLUME_PRESETS[view.preset];
}

function keyboard(event, index) {
  const key = event.key;
  const view = views[index];
  if (SCROLL_KEYS[key]) queueInput(index, "scroll", { delta: SCROLL_KEYS[key] });
  else if (WINDOW_KEYS[key]) setting(index, "window_preset", WINDOW_KEYS[key]);
  else if (KIND_KEYS[key]) setKind(index, KIND_KEYS[key]);
  else if (key === "r") send({ type: "input", view: index, op: "reset" });
  else if (key === "m") setting(index, "slab_mode", nextSlabMode(view));
  else if (key === "n") { view.slab = SLAB_MODES.indexOf("none"); setting(index, "slab_mode", "none"); }
  else if (key === "[" || key === "]") setting(index, "slab_thickness", key === "]" ? 40 : 10);
  else if (key === "p") setting(index, "volume_preset", nextVolumePreset(view));
  else if (key === "x") view.showCrosshair = !view.showCrosshair;
  else if (key === " ") toggleCine(view);
  else return;
  event.preventDefault();
}

document.getElementById("layout").addEventListener("change", (event) => {
  send({ type: "layout", layout: event.target.value });
});
kindSelect.addEventListener("change", () => setKind(activeView, kindSelect.value));
playButton.addEventListener("click", () => toggleCine(views[activeView]));
fpsInput.addEventListener("change", changeFps);
reverseWheelBox.checked = readPreference(REVERSE_WHEEL_KEY) === "true";
reverseWheelBox.addEventListener("change", () => {
  writePreference(REVERSE_WHEEL_KEY, String(reverseWheelBox.checked));
});
window.addEventListener("resize", () => requestAnimationFrame(sendSizes));
connect();
