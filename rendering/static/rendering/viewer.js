// The viewer page: canvases that show server-rendered frames and send input.
// No pixel data ever arrives here except encoded frames of the rendered view.
import { decodeFrame } from "./frames.js";

const root = document.getElementById("viewer");
const grid = document.getElementById("views");
const statusLine = document.getElementById("status");
const probeLine = document.getElementById("probe");
const study = root.dataset.study;

const views = [];
let socket = null;
let layout = "1x1";
let reconnectDelay = 500;
let failedAttempts = 0;
let ended = false;
let holdInputUntil = 0;
const MAX_FAILED_ATTEMPTS = 6;

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

function flushInput() {
  if (performance.now() < holdInputUntil) { scheduleFlush(); return; }
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

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function buildViews(count) {
  grid.replaceChildren();
  grid.dataset.layout = layout;
  views.length = 0;
  for (let index = 0; index < count; index += 1) {
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
                    since: performance.now(),
                    showCrosshair: true, slab: 0, preset: 0 };
    views.push(state);
    attachInput(state);
  }
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

function describeOverlay(overlay) {
  const lines = [];
  if (overlay.kind) lines.push(overlay.kind);
  if (overlay.position !== undefined) lines.push(`pos ${Number(overlay.position).toFixed(1)} mm`);
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
  for (const line of describeOverlay(overlay)) facts.append(element("div", "", line));
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
    setStatus(`bad frame: ${error.message}`, true);
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
  view.shownRank = frameRank(frame);
  view.lastSequence = frame.sequence;
  const context = view.canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, view.canvas.width, view.canvas.height);
  bitmap.close();
  drawCrosshair(context, view, frame.overlay || {});
  view.frames += 1;
  const now = performance.now();
  const fps = (view.frames * 1000) / Math.max(1, now - view.since);
  if (now - view.since > 2000) { view.frames = 0; view.since = now; }
  drawOverlay(view, frame, fps);
  view.canvas.dataset.sequence = String(frame.sequence);
  view.canvas.dataset.quality = frame.quality;
  send({ type: "ack", view: frame.view, seq: frame.sequence });
}

function handleText(message) {
  if (message.type === "ready") {
    layout = message.layout;
    buildViews(message.views.length);
    setStatus(`${message.study.description || "study"} · ${message.series.length} series`);
    document.getElementById("layout").value = layout;
  } else if (message.type === "probe") {
    probeLine.textContent = message.value === null ? "outside the volume"
      : `${message.value.toFixed(1)} ${message.unit} at (${message.point.map((v) => v.toFixed(1)).join(", ")}) mm`;
  } else if (message.type === "error") {
    if (message.code === "rate_limited") {
      holdInputUntil = performance.now() + (message.retry_after_ms || 0) + 50;
    }
    setStatus(`${message.code}: ${message.message}`, true);
  } else if (message.type === "closing") {
    end(`access ended: ${message.reason}`);
  }
}

// The study is no longer ours to see: nothing it showed stays on screen.
function clearViews() {
  for (const view of views) {
    view.canvas.getContext("2d").clearRect(0, 0, view.canvas.width, view.canvas.height);
    view.canvas.dataset.cleared = "true";
    view.overlay.replaceChildren();
  }
  probeLine.textContent = "";
}

function end(text, link) {
  ended = true;
  clearViews();
  statusLine.replaceChildren(document.createTextNode(text));
  if (link) {
    const anchor = element("a", "", link.text);
    anchor.href = link.href;
    statusLine.append(" — ", anchor);
  }
  statusLine.classList.add("error");
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
    reconnectDelay = 500; failedAttempts = 0; setStatus("connected");
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") handleText(JSON.parse(event.data));
    else showFrame(event.data);
  });
  socket.addEventListener("close", (event) => {
    if (ended) return;
    if (CLOSE_REASONS[event.code]) { CLOSE_REASONS[event.code](); return; }
    failedAttempts += 1;
    if (failedAttempts >= MAX_FAILED_ATTEMPTS) {
      setStatus("cannot reach the gateway — reload the page to try again", true);
      return;
    }
    setStatus("connection lost — reconnecting…", true);
    setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(8000, reconnectDelay * 2);
  });
}

function attachInput(view) {
  const { canvas, index } = view;
  let drag = null;
  let lastProbe = 0;
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    if (event.ctrlKey) queueInput(index, "zoom", { factor: event.deltaY < 0 ? 1.1 : 1 / 1.1 });
    else queueInput(index, "scroll", { delta: Math.sign(event.deltaY) || 1 });
  }, { passive: false });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    drag = { x: event.clientX, y: event.clientY, button: event.button, shift: event.shiftKey,
             moved: false };
  });
  canvas.addEventListener("pointermove", (event) => {
    const now = performance.now();
    if (!drag && now - lastProbe > 100) {
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
let cine = null;

function keyboard(event, index) {
  const key = event.key;
  if (key === "ArrowUp" || key === "PageUp") queueInput(index, "scroll", { delta: key === "PageUp" ? 10 : 1 });
  else if (key === "ArrowDown" || key === "PageDown") queueInput(index, "scroll", { delta: key === "PageDown" ? -10 : -1 });
  else if (WINDOW_KEYS[key]) send({ type: "set", view: index, name: "window_preset", value: WINDOW_KEYS[key] });
  else if (key === "r") send({ type: "input", view: index, op: "reset" });
  else if (key === "m") {
    const view = views[index];
    view.slab = (view.slab + 1) % SLAB_MODES.length;
    send({ type: "set", view: index, name: "slab_mode", value: SLAB_MODES[view.slab] });
  } else if (key === "n") send({ type: "set", view: index, name: "slab_mode", value: "none" });
  else if (key === "[" || key === "]") send({ type: "set", view: index, name: "slab_thickness", value: key === "]" ? 40 : 10 });
  else if (key === "o") send({ type: "set", view: index, name: "kind", value: "oblique" });
  else if (key === "p") {
    const view = views[index];
    view.preset = (view.preset + 1) % VOLUME_PRESETS.length;
    send({ type: "set", view: index, name: "volume_preset", value: VOLUME_PRESETS[view.preset] });
  } else if (key === "x") { views[index].showCrosshair = !views[index].showCrosshair; }
  else if (key === "a" || key === "c" || key === "s") send({ type: "set", view: index, name: "kind", value: { a: "axial", c: "coronal", s: "sagittal" }[key] });
  else if (key === "v") send({ type: "set", view: index, name: "kind", value: "3d" });
  else if (key === " ") {
    if (cine) { clearInterval(cine); cine = null; } else {
      cine = setInterval(() => send({ type: "input", view: index, op: "scroll", delta: 1 }), 66);
    }
  } else return;
  event.preventDefault();
}

document.getElementById("layout").addEventListener("change", (event) => {
  send({ type: "layout", layout: event.target.value });
});
window.addEventListener("resize", () => requestAnimationFrame(sendSizes));
connect();
