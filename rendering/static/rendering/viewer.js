// The viewer page: canvases that show server-rendered frames and send input.
// No pixel data ever arrives here except encoded frames of the rendered view
// and the server-rendered series thumbnails.
import { decodeFrame } from "./frames.js";

// Django's JavaScript catalogue (base.html loads it before this module) translates the page's
// words; a page without it reads the English as written here.
const gettext = window.gettext || ((text) => text);
const ngettext = window.ngettext || ((singular, plural, count) => (count === 1 ? singular : plural));
const pgettext = window.pgettext || ((context, text) => text);
const interpolate = window.interpolate
  || ((format, values) => format.replace(/%\(\s*([^)]+)\s*\)s/g, (match, name) => String(values[name])));

const root = document.getElementById("viewer");
const grid = document.getElementById("views");
const studyLabel = document.getElementById("study-label");
const errorLine = document.getElementById("error");
const probeLine = document.getElementById("probe");
const seriesStrip = document.getElementById("series");
const layoutSelect = document.getElementById("layout");
const kindSelect = document.getElementById("view-kind");
const windowPresetSelect = document.getElementById("window-preset");
const paletteSelect = document.getElementById("palette");
const paletteLayer = document.getElementById("palette-layer");
const opacityInput = document.getElementById("opacity");
const opacityShown = document.getElementById("opacity-value");
const slabModeSelect = document.getElementById("slab-mode");
const slabThicknessInput = document.getElementById("slab-thickness");
const volumePresetSelect = document.getElementById("volume-preset");
const help = document.getElementById("help");
const keyMapList = document.getElementById("key-map");
const mouseMapList = document.getElementById("mouse-map");
const modeBar = document.getElementById("mode-bar");
const quickBar = document.getElementById("quick-bar");
let mouseMode = null;  // the left button's mode (rendering/toolbox.py); null: the first announced
let linkedAll = false;
const playButton = document.getElementById("cine-play");
const fpsInput = document.getElementById("cine-fps");
const cineRepeatSelect = document.getElementById("cine-repeat");
const cineFirstInput = document.getElementById("cine-first");
const cineLastInput = document.getElementById("cine-last");
let inputRate = 120;  // ready.limits.messages_per_second: a movie's frames/s stay under it
const timeControl = document.getElementById("time-control");
const timeSlider = document.getElementById("time-slider");
const timeShown = document.getElementById("time-value");
const reverseWheelBox = document.getElementById("reverse-wheel");
const measureControls = document.getElementById("measure-controls");
const measureSelect = document.getElementById("measure-tool");
const radiusControl = document.getElementById("sphere-radius-control");
const radiusInput = document.getElementById("sphere-radius");
const growControls = document.getElementById("grow-controls");
const growBoxInput = document.getElementById("grow-box");
const growModeSelect = document.getElementById("grow-mode");
const growValueInput = document.getElementById("grow-value");
const growValueUnit = document.getElementById("grow-value-unit");
const measurePanel = document.getElementById("measure-panel");
const measureSection = document.getElementById("measure-section");
const measurementShown = document.getElementById("measurement");
const measureRefusedNote = document.getElementById("measure-refused");
const keepForm = document.getElementById("keep-form");
const keepLabel = document.getElementById("keep-label");
const keepButton = document.getElementById("keep");
const findingsList = document.getElementById("findings");
const findingsStoreButton = document.getElementById("findings-store");
const findingsStoreStatus = document.getElementById("findings-store-status");
const reportSection = document.getElementById("report-section");
const reportCaptureButton = document.getElementById("report-capture");
const reportStatus = document.getElementById("report-status");
const reportLink = document.getElementById("report-link");
const documentsSection = document.getElementById("documents-section");
const documentsList = document.getElementById("documents");
const segmentationSection = document.getElementById("segmentation-section");
const segChoose = document.getElementById("seg-choose");
const segList = document.getElementById("seg-list");
const segOpenButton = document.getElementById("seg-open");
const segCloseButton = document.getElementById("seg-close");
const segDeleteButton = document.getElementById("seg-delete");
const segNewForm = document.getElementById("seg-new");
const segNewLabel = document.getElementById("seg-new-label");
const segOpenPanel = document.getElementById("seg-open-panel");
const segLabel = document.getElementById("seg-label");
const segHistory = document.getElementById("seg-history");
const segUndoButton = document.getElementById("seg-undo");
const segRedoButton = document.getElementById("seg-redo");
const segSegmentsList = document.getElementById("seg-segments");
const segEdit = document.getElementById("seg-edit");
const segAddButton = document.getElementById("seg-add");
const segToolSelect = document.getElementById("seg-tool");
const segSettings = document.getElementById("seg-settings");
const segApplyButton = document.getElementById("seg-apply");
const segStoreButton = document.getElementById("seg-store");
const segFractionalChoice = document.getElementById("seg-store-fractional");
const segFractional = document.getElementById("seg-fractional");
const segModels = document.getElementById("seg-models");
const segModelSelect = document.getElementById("seg-model");
const segModelRun = document.getElementById("seg-model-run");
const segStatus = document.getElementById("seg-status");
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
let studyUids = [];
let relatedStudies = [];
let openAsked = null;
let openTimer = null;
const thumbnails = new Map();
const MAX_FAILED_ATTEMPTS = 6;
const ERROR_SHOWN_MS = 6000;
const DEFAULT_CINE_FPS = 15;
const DEFAULT_TIME_FPS = 2;
const OPEN_WAIT_MS = 15000;
const ASKED_SHOWN_MS = 1500;
const REVERSE_WHEEL_KEY = "fusion-gateway.reverse-wheel";

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message));
  }
}

// --- vocabulary: the settings, choices and inputs the server announces --------

// What servers accepted before `ready` announced it; used only when `ready` has none.
const FALLBACK_VOCABULARY = {
  settings: {
    kind: { choices: ["native", "axial", "coronal", "sagittal", "oblique", "3d"] },
    slab_mode: { choices: ["none", "mip", "minip", "average"] },
    slab_thickness: { min: 0, max: 500 },
    window_preset: { choices: ["abdomen", "lung", "bone", "brain", "suv_0_5", "suv_0_10"] },
    volume_preset: { choices: ["ct_bone", "ct_soft_tissue", "ct_lung", "pet_mip"] },
    palette: { choices: ["grey", "hot_iron", "rainbow", "inverted"] },
    opacity: { min: 0, max: 1 },
    series: { identifier: true },
  },
  inputs: {
    scroll: { delta: { min: -2000, max: 2000, integer: true } },
    window: { dc: { min: -10000, max: 10000 }, dw: { min: -10000, max: 10000 } },
    zoom: { factor: { min: 0.05, max: 20 } },
    pan: { dx: { min: -4, max: 4 }, dy: { min: -4, max: 4 } },
    rotate: { dazimuth: { min: -360, max: 360 }, delevation: { min: -360, max: 360 } },
    tilt: { dtilt: { min: -180, max: 180 }, dspin: { min: -180, max: 180 } },
    focus: { x: { min: 0, max: 4096, integer: true }, y: { min: 0, max: 4096, integer: true } },
    frame: { index: { min: 0, max: 100000, integer: true } },
    reset: {},
  },
  layouts: ["1x1", "1x2", "1x3", "2x2", "petct"],
  palettes: { grey: ["#000000", "#ffffff"] },
  toolbox: { modes: [], quick: [] },
};
let vocabulary = FALLBACK_VOCABULARY;
let vocabularyAnnounced = false;

// An announced vocabulary is the whole truth: what it leaves out is not offered.
function receiveVocabulary(announced) {
  vocabularyAnnounced = Boolean(announced && typeof announced === "object");
  vocabulary = !vocabularyAnnounced ? FALLBACK_VOCABULARY : {
    settings: announced.settings || {}, inputs: announced.inputs || {},
    layouts: announced.layouts || [], palettes: announced.palettes || {},
    measure_tools: Array.isArray(announced.measure_tools) ? announced.measure_tools : [],
    charts: announced.charts && typeof announced.charts === "object" ? announced.charts : {},
    segment_tools: isRecord(announced.segment_tools) ? announced.segment_tools : {},
    toolbox: toolboxOf(announced.toolbox),
  };
}

function choicesOf(name) {
  const rule = vocabulary.settings[name];
  return rule && Array.isArray(rule.choices) ? rule.choices : [];
}

function accepts(name, value) {
  const rule = vocabulary.settings[name];
  if (!rule) return false;
  if (Array.isArray(rule.choices)) return rule.choices.includes(value);
  if (rule.flag) return typeof value === "boolean";
  if (typeof rule.min === "number") return Number.isFinite(value) && value >= rule.min && value <= rule.max;
  return typeof value === "string";
}

function inputAnnounced(op) {
  return Object.hasOwn(vocabulary.inputs, op);
}

function clampToRule(value, rule) {
  if (!rule || typeof value !== "number" || typeof rule.min !== "number") return value;
  const clamped = Math.max(rule.min, Math.min(rule.max, value));
  return rule.integer ? Math.round(clamped) : clamped;
}

// Input is coalesced: deltas that arrive within one animation frame (a 144 Hz
// wheel, a fast drag) go out as one message per view and operation, and are
// held while the server has said it is rate limiting (docs/protocol.md).
const pendingInput = new Map();
let flushScheduled = false;

function queueInput(view, op, deltas) {
  if (!inputAnnounced(op)) return;
  const key = `${view}:${op}`;
  const pending = pendingInput.get(key) || { type: "input", view, op };
  for (const [name, value] of Object.entries(deltas)) {
    pending[name] = op === "zoom" ? (pending[name] || 1) * value : (pending[name] || 0) + value;
  }
  pendingInput.set(key, pending);
  scheduleFlush();
}

// A setting dragged through many values (a slider) goes out once per frame, the latest value.
function queueSetting(message) {
  pendingInput.set(`${message.view}:set:${message.name}:${message.layer}`, message);
  scheduleFlush();
}

// An absolute input (a time point) goes out once per frame, the latest one.
function queueLatestInput(view, op, args) {
  if (!inputAnnounced(op)) return;
  pendingInput.set(`${view}:${op}`, { type: "input", view, op, ...args });
  scheduleFlush();
}

function sendInput(view, op, args) {
  if (inputAnnounced(op)) send({ type: "input", view, op, ...args });
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
    if (message.type === "input") clampInput(message);
    if (message.op !== "scroll" || message.delta !== 0) send(message);
  }
  pendingInput.clear();
}

function clampInput(message) {
  for (const [name, rule] of Object.entries(vocabulary.inputs[message.op] || {})) {
    message[name] = clampToRule(message[name], rule);
  }
}

// --- status line: the study label and errors never share an element --------

let errorTimer = null;
let errorClearedByFrame = true;
// A frame that arrives says rendering (or input) works again; a refusal of what the reader
// asked for stays its while, whatever frames arrive meanwhile.
const ERRORS_A_FRAME_ENDS = new Set(["render_failed", "frame_of_reference", "rate_limited"]);

function showError(text, { sticky = false, keep = false } = {}) {
  clearTimeout(errorTimer);
  errorLine.replaceChildren(document.createTextNode(text));
  errorClearedByFrame = !keep;
  errorTimer = sticky ? null : setTimeout(clearError, ERROR_SHOWN_MS);
}

function clearError() {
  clearTimeout(errorTimer);
  errorTimer = null;
  errorLine.replaceChildren();
}

function describeStudy(studyInfo, seriesCount, others) {
  const description = (studyInfo && studyInfo.description) || gettext("study");
  const text = interpolate(ngettext("%(study)s · %(count)s series", "%(study)s · %(count)s series", seriesCount),
                           { study: description, count: seriesCount }, true);
  return others.length
    ? interpolate(gettext("%(study)s · beside %(others)s"), { study: text, others: others.join(", ") }, true) : text;
}

// --- series --------------------------------------------------------------

function seriesOfView(view) {
  return view && seriesByUid.get((view.layers || [])[0]);
}

function canReformat(view) {
  const series = seriesOfView(view);
  return !series || series.mpr !== false;
}

function timePoints(series) {
  const count = series && series.time_points;
  return Number.isInteger(count) && count > 1 ? count : 1;
}

// A dynamic series steps through its time points, where the server takes the `time` input.
function isDynamic(view) {
  return timePoints(seriesOfView(view)) > 1 && inputAnnounced("time");
}

function defaultFps(series) {
  if (timePoints(series) > 1 && inputAnnounced("time")) return DEFAULT_TIME_FPS;
  const frameTime = series && series.frame_time_ms;
  if (!frameTime || frameTime <= 0) return DEFAULT_CINE_FPS;
  return Math.max(1, Math.min(60, Math.round(1000 / frameTime)));
}

function countLabel(series) {
  const count = series.images;
  const text = series.kind === "cine" ? ngettext("%(count)s frame", "%(count)s frames", count)
    : ngettext("%(count)s image", "%(count)s images", count);
  return interpolate(text, { count }, true);
}

const SERIES_DRAG_TYPE = "application/x-fusion-series";

// A segmentation (`kind` "label") is listed like any series, with its segments in the colours
// the server draws them in and, where the server takes `set overlay`, an Overlay toggle that
// lays it over the active view or takes it off.
function seriesEntry(series) {
  const item = seriesItem(series);
  if (!isLabelSeries(series) || !series.available) return item;
  const entry = element("div", "series-entry label-series");
  entry.dataset.series = series.uid;
  entry.append(item);
  if (accepts("overlay", series.uid)) {
    const toggle = element("button", "overlay-toggle", gettext("Overlay"));
    toggle.type = "button";
    toggle.dataset.series = series.uid;
    toggle.setAttribute("aria-pressed", "false");
    toggle.setAttribute("aria-label", interpolate(gettext("overlay %(series)s on the active view"),
                                                  { series: series.description || gettext("segmentation") }, true));
    toggle.addEventListener("click", () => toggleOverlay(activeView, series.uid));
    entry.append(toggle);
  }
  const segments = segmentsOf(series);
  if (segments.length) {
    const list = element("ul", "segments");
    list.setAttribute("aria-label", gettext("segments"));
    list.append(...segments.map(segmentItem));
    entry.append(list);
  }
  return entry;
}

function isLabelSeries(series) {
  return Boolean(series) && series.kind === "label";
}

function segmentsOf(series) {
  const segments = Array.isArray(series.segments) ? series.segments : [];
  return segments.filter((segment) => segment && Number.isInteger(segment.number)
    && segment.number >= 1 && segment.number <= 255);
}

function segmentItem(segment) {
  const item = element("li", "segment");
  item.dataset.segment = String(segment.number);
  const swatch = element("span", "segment-swatch");
  swatch.style.backgroundColor = labelColour(segment.number);
  const name = typeof segment.label === "string" && segment.label ? segment.label
    : interpolate(gettext("segment %(number)s"), { number: segment.number }, true);
  item.append(swatch, element("span", "segment-label", name));
  return item;
}

// The colour the server draws segment n in (rendering/engine/palettes.py): hue n × 0.618… mod 1,
// saturation 0.85, value 1, as colorsys.hsv_to_rgb gives it, each channel rounded to 0–255.
const GOLDEN_RATIO_HUE = 0.6180339887;

function labelColour(number) {
  const hue = (number * GOLDEN_RATIO_HUE) % 1;
  const [saturation, value] = [0.85, 1];
  const sector = Math.floor(hue * 6);
  const f = hue * 6 - sector;
  const p = value * (1 - saturation);
  const q = value * (1 - saturation * f);
  const t = value * (1 - saturation * (1 - f));
  const rgb = [[value, t, p], [q, value, p], [p, value, t], [p, q, value], [t, p, value], [value, p, q]][sector % 6];
  return `rgb(${rgb.map((channel) => Math.round(channel * 255)).join(", ")})`;
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
    item.draggable = true;
    item.addEventListener("dragstart", (event) => {
      event.dataTransfer.setData(SERIES_DRAG_TYPE, series.uid);
      event.dataTransfer.effectAllowed = "copy";
    });
  } else {
    item.classList.add("unavailable");
    item.setAttribute("aria-disabled", "true");
    item.append(element("span", "series-reason", series.reason || gettext("cannot be shown")));
  }
  return item;
}

// The study a series belongs to; a server that names none has one study.
function studyOf(series) {
  return series.study || studyUids[0];
}

function relatedStudy(uid) {
  return relatedStudies.find((other) => other.uid === uid);
}

function studyDate(uid) {
  const other = relatedStudy(uid);
  return (other && other.date) || gettext("another study");
}

function studyHeading(uid, first) {
  const heading = element("div", "study-heading");
  const other = first ? null : relatedStudy(uid);
  heading.append(element("span", "study-when", first ? gettext("This study") : studyDate(uid)));
  if (other && other.description) heading.append(element("span", "study-what", other.description));
  return heading;
}

// With a prior open, the strip is grouped by study: this study first, the others by date.
function seriesGroups() {
  if (studyUids.length < 2) return seriesOrder.map(seriesEntry);
  const groups = studyUids.map((uid, at) => {
    const group = element("section", "study-group");
    group.dataset.study = uid;
    group.append(studyHeading(uid, at === 0),
                 ...seriesOrder.filter((series) => studyOf(series) === uid).map(seriesEntry));
    return group;
  });
  const stray = seriesOrder.filter((series) => !studyUids.includes(studyOf(series)));
  return [...groups, ...stray.map(seriesEntry)];
}

function relatedItem(other) {
  const item = element("li", "related-item");
  item.dataset.study = other.uid;
  const modalities = Array.isArray(other.modalities) ? other.modalities.join(", ") : "";
  const button = element("button", "related-open", gettext("Open beside"));
  button.type = "button";
  button.addEventListener("click", () => openStudy(other.uid));
  item.append(element("span", "related-date", other.date || gettext("(no date)")),
              element("span", "related-description", other.description || gettext("(no description)")),
              element("span", "related-modalities", modalities), button);
  return item;
}

function relatedList() {
  if (!relatedStudies.length) return [];
  const section = element("section", "related");
  section.setAttribute("aria-labelledby", "related-title");
  const title = element("h2", "related-title", gettext("Other studies of this patient"));
  title.id = "related-title";
  const list = element("ul", "related-list");
  list.append(...relatedStudies.map(relatedItem));
  section.append(title, list);
  return [section];
}

// A study already open cannot be opened again; one open is asked at a time.
function markRelated() {
  for (const item of seriesStrip.querySelectorAll(".related-item")) {
    const uid = item.dataset.study;
    const open = studyUids.includes(uid);
    const button = item.querySelector(".related-open");
    item.classList.toggle("open", open);
    button.disabled = open || openAsked !== null;
    button.textContent = open ? gettext("Opened") : openAsked === uid ? gettext("Opening…") : gettext("Open beside");
  }
}

function openStudy(uid) {
  if (studyUids.includes(uid) || openAsked !== null) return;
  openAsked = uid;
  send({ type: "open", study: uid });
  clearTimeout(openTimer);
  openTimer = setTimeout(openSettled, OPEN_WAIT_MS);  // never left waiting for an answer lost
  markRelated();
}

function openSettled() {
  clearTimeout(openTimer);
  openAsked = null;
  markRelated();
}

function buildSeriesStrip() {
  seriesStrip.replaceChildren(...seriesGroups(), ...relatedList());
  for (const [uid, bitmap] of thumbnails) drawThumbnail(uid, bitmap);
  markRelated();
  markSelectedSeries();
}

function markSelectedSeries() {
  const view = views[activeView];
  const shown = (view && view.layers[0]) || null;
  for (const item of seriesStrip.querySelectorAll(".series-item")) {
    const selected = item.dataset.series === shown;
    item.classList.toggle("selected", selected);
    item.setAttribute("aria-pressed", String(selected));
  }
  for (const toggle of seriesStrip.querySelectorAll(".overlay-toggle")) {
    const uid = toggle.dataset.series;
    const over = Boolean(view) && view.overlays.includes(uid);
    toggle.setAttribute("aria-pressed", String(over));
    toggle.classList.toggle("on", over);
    toggle.disabled = !view || view.layers[0] === uid;  // shown alone there: nothing to lay it over
  }
}

// --- segmentations laid over a view ----------------------------------------------

// The server answers `set overlay` with frames only: the toggle shows what was asked at once,
// goes back if the server refuses it, and `ready` (views[].layers) says what is true.
const OVERLAY_ANSWER_MS = 10000;
let overlayAsked = null;

// A view's layers as `ready` names them: the pictures (the first, and any fused over it) and
// the segmentations laid over them, which never count as a fused layer.
function splitLayers(layers) {
  const [first, ...rest] = Array.isArray(layers) ? layers : [];
  const over = rest.filter((uid) => isLabelSeries(seriesByUid.get(uid)));
  return { layers: [first, ...rest.filter((uid) => !over.includes(uid))].filter(Boolean), overlays: over };
}

function toggleOverlay(index, uid) {
  const view = views[index];
  if (!view || !accepts("overlay", uid) || view.layers[0] === uid) return;
  const on = !view.overlays.includes(uid);
  view.overlays = on ? [...view.overlays, uid] : view.overlays.filter((other) => other !== uid);
  overlayAsked = { view: index, uid, on, until: performance.now() + OVERLAY_ANSWER_MS };
  send({ type: "set", view: index, name: "overlay", value: uid });
  markSelectedSeries();
}

function overlayPending() {
  return overlayAsked !== null && performance.now() < overlayAsked.until;
}

// A refusal (another frame of reference, no room for a layer) undoes what the toggle showed.
function overlayRefused() {
  const { view: index, uid, on } = overlayAsked;
  overlayAsked = null;
  const view = views[index];
  if (!view) return;
  view.overlays = on ? view.overlays.filter((other) => other !== uid) : [...view.overlays, uid];
  markSelectedSeries();
}

// A frame with as many layers as were asked for says the server took the toggle.
function overlaySettled(view, overlay) {
  if (!overlayAsked || overlayAsked.view !== view.index || !Array.isArray(overlay.windows)) return;
  if (overlay.windows.length === view.layers.length + view.overlays.length) overlayAsked = null;
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
  view.overlays = [];  // the server shows the series alone
  if (overlayAsked && overlayAsked.view === index) overlayAsked = null;
  view.kind = "native";
  view.settings = { slab_mode: "none" };
  view.asked = {};
  view.slice = null;
  view.timeCount = null;
  view.fps = defaultFps(series);
  view.cineRange = [null, null];
  layersGone(index);
  send({ type: "set", view: index, name: "series", value: uid });
  refreshControls();
}

// --- views ---------------------------------------------------------------

function buildViews(viewSpecs) {
  for (const view of views) stopCine(view);
  dropShape();  // what was drawn belonged to the views that go
  clearLandmarks();
  grid.replaceChildren();
  grid.dataset.layout = layout;
  views.length = 0;
  for (const [index, spec] of viewSpecs.entries()) {
    const cell = document.createElement("div");
    cell.className = "view";
    const canvas = document.createElement("canvas");
    canvas.tabIndex = 0;
    canvas.dataset.view = String(index);
    canvas.setAttribute("aria-label", interpolate(gettext("view %(number)s"), { number: index + 1 }, true));
    const overlay = document.createElement("div");
    overlay.className = "overlay";
    const shapes = svgNode("svg", { class: "shapes", preserveAspectRatio: "none", "aria-hidden": "true" });
    cell.append(canvas, shapes, overlay, viewHandle(index));
    cell.addEventListener("dragover", (event) => { if (draggedView !== null) event.preventDefault(); });
    cell.addEventListener("drop", (event) => { event.preventDefault(); swapViews(draggedView, index); });
    grid.append(cell);
    const state = { index, canvas, overlay, shapes, picture: null, lastSequence: 0, shownRank: -1, frames: 0,
                    since: performance.now(), showCrosshair: true,
                    kind: spec.kind, ...splitLayers(spec.layers), slice: null,
                    settings: { slab_mode: "none" }, asked: {},
                    cine: null, cineIndex: null, fps: DEFAULT_CINE_FPS, timeCount: null,
                    cineRepeat: "loop", cineRange: [null, null], cineStep: 1, cineTurn: 0 };
    state.fps = defaultFps(seriesOfView(state));
    views.push(state);
    attachInput(state);
  }
  activeView = Math.min(activeView, Math.max(0, views.length - 1));
  refreshControls();
  requestAnimationFrame(sendSizes);
}

// A view's handle: drag it onto another view, or press it and then the other view's handle, and the
// two views exchange their cells.
let draggedView = null;
let pickedView = null;

function viewHandle(index) {
  const handle = element("button", "view-handle", "⇄");
  handle.type = "button";
  handle.draggable = true;
  handle.dataset.view = String(index);
  handle.setAttribute("aria-pressed", "false");
  handle.setAttribute("aria-label", interpolate(gettext("move view %(number)s: drag it onto another view, or press it and then another view's handle"), { number: index + 1 }, true));
  handle.addEventListener("dragstart", (event) => {
    draggedView = index;
    event.dataTransfer.setData("text/plain", String(index));
    event.dataTransfer.effectAllowed = "move";
  });
  handle.addEventListener("dragend", () => { draggedView = null; });
  handle.addEventListener("click", () => {
    if (pickedView === null || pickedView === index) {
      pickedView = pickedView === index ? null : index;
      handle.setAttribute("aria-pressed", String(pickedView === index));
      return;
    }
    swapViews(pickedView, index);
  });
  return handle;
}

function swapViews(from, to) {
  draggedView = null;
  pickedView = null;
  if (from === null || from === to || !views[from] || !views[to]) return;
  send({ type: "swap", view: from, other: to });
}

function sendSizes() {
  for (const view of views) {
    const box = view.canvas.parentElement.getBoundingClientRect();
    const width = Math.max(64, Math.min(2048, Math.round(box.width)));
    const height = Math.max(64, Math.min(2048, Math.round(box.height)));
    view.canvas.width = width;
    view.canvas.height = height;
    send({ type: "resize", view: view.index, width, height });
    drawShapes(view);
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
    showCineSettings(view);
    showSettings(view);
  }
  fillWindowPresets(view);
  showCineState(view);
  showTimeControl(view);
  showMeasureControls();
  showSegmentTool();
  showFuse();
  showLayers();
  showDerive();
  markSelectedSeries();
}

// Layer 1 of a fused view is the one shown in colour over layer 0.
function colouredLayerOf(count) {
  return count > 1 ? 1 : 0;
}

function colouredLayer(view) {
  return colouredLayerOf(view.layers.length);
}

function showSettings(view) {
  const fused = view.layers.length > 1;
  const coloured = seriesByUid.get(view.layers[colouredLayer(view)]);
  paletteLayer.textContent = fused && coloured ? coloured.modality : "";
  showChoice(paletteSelect, view.settings.palette);
  opacityInput.closest("label").hidden = !fused || !vocabulary.settings.opacity;
  opacityInput.disabled = !fused;
  if (view.settings.opacity !== undefined) opacityInput.value = String(view.settings.opacity);
  opacityShown.textContent = view.settings.opacity === undefined ? ""
    : `${Math.round(view.settings.opacity * 100)}%`;
  showChoice(slabModeSelect, view.settings.slab_mode);
  if (document.activeElement !== slabThicknessInput) {
    slabThicknessInput.value = view.settings.slab_thickness ?? "";
  }
}

function showChoice(select, value) {
  select.value = value ?? "";
  if (select.value !== value) select.selectedIndex = -1;
}

// A setting the reader just changed shows as asked until a frame reports it (or a
// moment passes): frames already in flight still carry the old value.
function ask(view, name, value) {
  view.asked[name] = { value, until: performance.now() + ASKED_SHOWN_MS };
  view.settings[name] = value;
}

function report(view, name, value) {
  const asked = view.asked[name];
  if (asked && asked.value !== value && performance.now() < asked.until) return;
  delete view.asked[name];
  view.settings[name] = value;
}

// The windows of the pictures of a view; the segmentations laid over them come after.
function pictureWindows(view, overlay) {
  const windows = Array.isArray(overlay.windows) ? overlay.windows : [];
  return view.overlays.length ? windows.slice(0, Math.max(1, view.layers.length)) : windows;
}

function readSettings(view, overlay) {
  if (!vocabularyAnnounced) return;
  const windows = pictureWindows(view, overlay);
  const coloured = windows[colouredLayer(view)];
  report(view, "slab_mode", overlay.slab ? overlay.slab.mode : "none");
  if (overlay.slab) report(view, "slab_thickness", overlay.slab.thickness_mm);
  if (coloured && coloured.palette) report(view, "palette", coloured.palette);
  if (windows.length > 1 && typeof windows[1].opacity === "number") {
    report(view, "opacity", windows[1].opacity);
  }
}

function applySetting(index, name, value, layer) {
  const view = views[index];
  if (!view || !accepts(name, value)) return;
  if (name === "kind") { setKind(view, value); return; }
  ask(view, name, value);
  send({ type: "set", view: index, name, value, ...(layer === undefined ? {} : { layer }) });
  if (index === activeView) refreshControls();
}

function nextChoice(view, name) {
  const choices = choicesOf(name);
  return choices[(choices.indexOf(view.settings[name]) + 1) % choices.length];
}

function setKind(view, kind) {
  if (kind !== "native" && !canReformat(view)) {
    showError(gettext("this series cannot be reformatted"), { keep: true });
    refreshControls();
    return;
  }
  if (kind !== view.kind) stopCine(view);
  view.kind = kind;
  view.slice = null;
  send({ type: "set", view: view.index, name: "kind", value: kind });
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
  return cineNext(view, shown, frameCount(view));
}

// The frames a movie plays (0-based, inclusive): the reader's range, within the series.
function cineBounds(view, count) {
  const [first, last] = view.cineRange;
  const low = Math.max(1, Math.min(count, first || 1));
  const high = Math.max(low, Math.min(count, last || count));
  return [low - 1, high - 1];
}

// The frame after `shown` (0-based) of `count`: on through the range, then from its start again
// (loop) or back the other way (bounce); from outside the range, its first frame.
function cineNext(view, shown, count) {
  const [first, last] = cineBounds(view, count);
  if (shown < first || shown > last) { view.cineStep = 1; return first; }
  if (first === last) return first;
  let step = view.cineStep || 1;
  let next = shown + step;
  if (next < first || next > last) {
    if (view.cineRepeat === "bounce") { step = -step; next = shown + step; } else next = step > 0 ? first : last;
  }
  view.cineStep = step;
  return next;
}

// A reformat plays its slices along the view's normal (the `frame` input); a 3-D view turns
// 5° a frame (a turntable; bounce: back and forth over half a turn); an oblique view scrolls.
const TURNTABLE_BOUNCE_STEPS = 36;

function cineScroll(view) {
  if (view.kind !== "3d" || view.cineRepeat !== "bounce") return 1;
  view.cineTurn += view.cineStep || 1;
  if (Math.abs(view.cineTurn) >= TURNTABLE_BOUNCE_STEPS / 2) view.cineStep = -(view.cineStep || 1);
  return view.cineStep || 1;
}

function cineFpsMax() {
  const playing = views.filter((each) => each && each.cine).length;
  return Math.max(1, Math.min(60, Math.floor(inputRate / Math.max(1, playing))));
}

function showCineSettings(view) {
  fpsInput.max = String(cineFpsMax());
  cineRepeatSelect.value = view.cineRepeat;
  const count = isDynamic(view) ? timeCount(view) : frameCount(view);
  for (const input of [cineFirstInput, cineLastInput]) input.max = String(count);
  cineFirstInput.value = view.cineRange[0] ? String(view.cineRange[0]) : "";
  cineLastInput.value = view.cineRange[1] ? String(view.cineRange[1]) : "";
  cineLastInput.placeholder = String(count);
}

function changeCineSettings() {
  const view = views[activeView];
  if (!view) return;
  view.cineRepeat = cineRepeatSelect.value === "bounce" ? "bounce" : "loop";
  const read = (input) => {
    const value = Math.round(Number(input.value));
    return input.value !== "" && Number.isFinite(value) && value >= 1 ? value : null;
  };
  let [first, last] = [read(cineFirstInput), read(cineLastInput)];
  if (first && last && first > last) [first, last] = [last, first];
  view.cineRange = [first, last];
  showCineSettings(view);
}

// --- time points of a dynamic series (1-based on screen, 0-based on the wire) -------------

function timeCount(view) {
  return view.timeCount || timePoints(seriesOfView(view));
}

function timePointShown(view) {
  return view.settings.time ?? 1;
}

function showTimePoint(view, point) {
  if (!isDynamic(view)) return;
  const shown = Math.max(1, Math.min(timeCount(view), Math.round(point)));
  ask(view, "time", shown);
  queueLatestInput(view.index, "time", { index: shown - 1 });
  if (view.index === activeView) showTimeControl(view);
}

function stepTime(view, delta) {
  if (!isDynamic(view)) return;
  stopCine(view);
  showTimePoint(view, timePointShown(view) + delta);
}

function showTimeControl(view) {
  const dynamic = Boolean(view) && isDynamic(view);
  timeControl.hidden = !dynamic;
  if (!dynamic) return;
  const count = timeCount(view);
  const shown = timePointShown(view);
  timeSlider.max = String(count);
  timeSlider.value = String(shown);
  timeShown.textContent = `${shown} / ${count}`;
}

function readTime(view, overlay) {
  const time = overlay.time;
  if (!Array.isArray(time) || time.length !== 2 || !time.every(Number.isInteger)) return;
  view.timeCount = time[1];
  report(view, "time", time[0]);
}

function cineTick(view) {
  if (isDynamic(view)) {
    if (inputHeld()) return;
    const shown = view.cineIndex ?? timePointShown(view) - 1;
    view.cineIndex = cineNext(view, shown, timeCount(view));
    showTimePoint(view, view.cineIndex + 1);
  } else if (cineByFrame(view) || (view.kind !== "3d" && view.kind !== "oblique" && view.slice)) {
    if (inputHeld()) return;
    view.cineIndex = nextFrameIndex(view);
    sendInput(view.index, "frame", { index: view.cineIndex });
  } else {
    queueInput(view.index, "scroll", { delta: cineScroll(view) });
  }
}

function startCine(view) {
  stopCine(view);
  view.cineIndex = null;
  view.cineStep = 1;
  view.cineTurn = 0;
  view.cine = true;  // counted by cineFpsMax while the rate is set
  view.fps = Math.min(view.fps, cineFpsMax());
  view.cine = setInterval(() => cineTick(view), 1000 / view.fps);
  if (view.index === activeView) fpsInput.value = String(view.fps);
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
  playButton.textContent = playing ? gettext("Pause") : gettext("Play");
  playButton.setAttribute("aria-pressed", String(playing));
}

function changeFps() {
  const view = views[activeView];
  const fps = Math.round(Number(fpsInput.value));
  if (!view || !Number.isFinite(fps)) return;
  view.fps = Math.max(1, Math.min(cineFpsMax(), fps));
  fpsInput.value = String(view.fps);
  if (view.cine) startCine(view);
}

// --- frames and overlay ------------------------------------------------------

function describeOverlay(view, overlay) {
  const lines = [];
  const series = seriesOfView(view);
  if (series) lines.push([series.modality, series.description].filter(Boolean).join(" · "));
  if (overlay.kind) lines.push(overlay.kind === "3d" ? overlay.kind : label(overlay.kind));
  if (Array.isArray(overlay.slice)) lines.push(`${overlay.slice[0]} / ${overlay.slice[1]}`);
  if (Array.isArray(overlay.time) && overlay.time.length === 2) {
    lines.push(interpolate(gettext("time %(point)s / %(count)s"), { point: overlay.time[0], count: overlay.time[1] }, true));
  }
  if (overlay.position !== undefined) {
    lines.push(interpolate(gettext("pos %(position)s mm"), { position: Number(overlay.position).toFixed(1) }, true));
  }
  if (typeof overlay.zoom === "number") {
    lines.push(interpolate(gettext("zoom %(factor)s×"), { factor: shortNumber(overlay.zoom) }, true));
  }
  for (const [index, layer] of pictureWindows(view, overlay).entries()) {
    const unit = layer.unit ? ` ${layer.unit}` : "";
    // Translators: a layer's number, its window width (W) and centre (C), on the view.
    lines.push(interpolate(gettext("L%(layer)s W %(width)s C %(center)s"), { layer: index + 1,
      width: Math.round(layer.width * 10) / 10, center: Math.round(layer.center * 10) / 10 }, true) + unit);
  }
  for (const uid of view.overlays) {
    const over = seriesByUid.get(uid);
    lines.push(interpolate(gettext("overlay %(series)s"),
                           { series: (over && over.description) || gettext("segmentation") }, true));
  }
  if (overlay.slab && overlay.slab.mode) {
    lines.push(`${label(overlay.slab.mode)} ${shortNumber(overlay.slab.thickness_mm)} mm`);
  }
  return lines;
}

// Two decimals at most, no trailing zeros: 1.5, 10, 2.25.
function shortNumber(value) {
  return String(Number(Number(value).toFixed(2)));
}

// A value as a reader says it: -160 HU, 2.5 SUV, 0.12 SUV.
function readerNumber(value) {
  const size = Math.abs(value);
  return String(Number(value.toFixed(size >= 100 ? 0 : size >= 10 ? 1 : 2)));
}

const HEX_COLOUR = /^#[0-9a-f]{6}$/i;

function paletteStops(name) {
  const stops = vocabulary.palettes[name];
  const usable = Array.isArray(stops) && stops.length >= 2 && stops.every((stop) => HEX_COLOUR.test(stop));
  return usable ? stops : null;
}

// A coloured layer (or any PET/NM) gets a bar of its palette from the window's low to high.
function colourBar(view, overlay) {
  const windows = pictureWindows(view, overlay);
  const layer = windows[colouredLayerOf(windows.length)];
  if (!layer || !Number.isFinite(layer.center) || !Number.isFinite(layer.width)) return null;
  const stops = paletteStops(layer.palette || "grey");
  const coloured = (layer.palette && layer.palette !== "grey") || ["PT", "NM"].includes(layer.modality);
  if (!coloured || !stops) return null;
  const ramp = element("div", "colour-ramp");
  ramp.style.backgroundImage = `linear-gradient(to top, ${stops.join(", ")})`;
  const labels = element("div", "colour-labels");
  labels.append(element("span", "colour-high", readerNumber(layer.center + layer.width / 2)),
                element("span", "colour-unit", layer.unit || ""),
                element("span", "colour-low", readerNumber(layer.center - layer.width / 2)));
  const bar = element("div", "colour-bar");
  bar.dataset.palette = layer.palette || "grey";
  bar.append(labels, ramp);
  return bar;
}

// A picture of several views side by side (an NM whole-body scan's anterior and posterior)
// names each over its part; the picture is centred, so two names meet at the centre.
function panelLabels(view) {
  const series = seriesOfView(view);
  const panels = series && Array.isArray(series.panels)
    ? series.panels.filter((name) => typeof name === "string" && name) : [];
  if (panels.length < 2 || view.kind !== "native") return null;
  const row = element("div", `panel-labels panels-${panels.length}`);
  for (const name of panels) row.append(element("span", "panel-label", name));
  return row;
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
  const quality = frame.quality === "still" ? gettext("still") : gettext("interactive");
  facts.append(element("div", "", interpolate(gettext("%(fps)s fps · %(quality)s"),
                                              { fps: fps.toFixed(0), quality }, true)));
  nodes.push(facts);
  const bar = colourBar(view, overlay);
  if (bar) nodes.push(bar);
  const panels = panelLabels(view);
  if (panels) nodes.push(panels);
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
    showError(interpolate(gettext("bad frame: %(reason)s"), { reason: error.message }, true));
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
  previewEnded(view);
  view.shownRank = frameRank(frame);
  view.lastSequence = frame.sequence;
  const overlay = frame.overlay || {};
  if (Array.isArray(overlay.slice) && overlay.slice.length === 2) view.slice = overlay.slice;
  readSettings(view, overlay);
  readTime(view, overlay);
  overlaySettled(view, overlay);
  fuseSettled(view, overlay);
  readLayers(view, overlay);
  if (view.index === activeView) { showSettings(view); showTimeControl(view); showLayers(); }
  const context = view.canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, view.canvas.width, view.canvas.height);
  bitmap.close();
  drawCrosshair(context, view, overlay);
  view.picture = pictureOf(view, frame, overlay);
  drawShapes(view);
  view.frames += 1;
  const now = performance.now();
  const fps = (view.frames * 1000) / Math.max(1, now - view.since);
  if (now - view.since > 2000) { view.frames = 0; view.since = now; }
  drawOverlay(view, frame, fps);
  probeAgainAfterMove(view, overlay);
  view.canvas.dataset.sequence = String(frame.sequence);
  view.canvas.dataset.quality = frame.quality;
  if (errorClearedByFrame) clearError();
}

// The value under a still cursor follows the picture: after a scroll, a time step
// or a series switch the hovered view asks again where the pointer rests.
function probeAgainAfterMove(view, overlay) {
  const shown = JSON.stringify([overlay.position, overlay.slice, overlay.time, view.layers, view.overlays]);
  if (shown === view.probedPicture) return;
  view.probedPicture = shown;
  if (view.pointer && view.kind !== "3d") send({ type: "probe", view: view.index, ...view.pointer });
}

// --- messages ----------------------------------------------------------------

function receiveReady(message) {
  receiveVocabulary(message.vocabulary);
  const rate = message.limits && Number(message.limits.messages_per_second);
  if (Number.isFinite(rate) && rate > 0) inputRate = rate;
  linkedAll = message.linked === true;  // "link all" is the session's: a new socket starts unlinked
  mayStoreFindings = message.findings_store === true;
  showReport(message.report);
  buildMenus();
  buildKeyMap();
  layout = message.layout;
  const known = seriesByUid;
  seriesOrder = message.series || [];
  seriesByUid = new Map(seriesOrder.map((series) => [series.uid, series]));
  showSuv(message.suv);
  const firstStudy = (message.study && message.study.uid) || study;
  studyUids = Array.isArray(message.studies) && message.studies.length ? message.studies : [firstStudy];
  relatedStudies = Array.isArray(message.related) ? message.related.filter((other) => other && other.uid) : [];
  clearTimeout(openTimer);
  openAsked = null;
  overlayAsked = null;  // the views' layers are the server's now
  fuseAsked = null;
  buildViews(message.views || []);
  receiveWorkspace(message);
  layersReady();
  fillRegistrationSeries();
  showRegistration();
  receiveDeriveOffer(message.derive);
  showHanging(message.vocabulary && message.vocabulary.hanging_rules);
  buildSeriesStrip();
  const own = seriesOrder.filter((series) => studyOf(series) === studyUids[0]).length;
  studyLabel.textContent = describeStudy(message.study, own, studyUids.slice(1).map(studyDate));
  layoutSelect.value = layout;
  // An opened study brings series of its own: their thumbnails are asked for too.
  const added = seriesOrder.some((series) => series.available && !known.has(series.uid));
  if (!thumbnailsAsked || added) { thumbnailsAsked = true; send({ type: "thumbnails" }); }
}

function probePoint(point) {
  const usable = Array.isArray(point) && point.length === 3 && point.every(Number.isFinite);
  return usable ? point.map((v) => v.toFixed(1)).join(", ") : "";
}

// The value with the unit the server names (HU, SUV, BQML, CNTS, raw…); a colour picture
// has no single value to read.
function receiveProbe(message) {
  const unit = typeof message.unit === "string" ? message.unit : "";
  const series = seriesOfView(views[message.view]);
  const point = probePoint(message.point);
  if (unit === "RGB" || (series && series.colour)) {
    probeLine.textContent = point
      ? interpolate(gettext("colour picture (RGB): no value at (%(point)s) mm"), { point }, true)
      : gettext("colour picture (RGB): no value");
  } else if (typeof message.value !== "number" || !Number.isFinite(message.value)) {
    probeLine.textContent = gettext("outside the volume");
  } else {
    const value = `${readerNumber(message.value)}${unit ? ` ${unit}` : ""}`;
    probeLine.textContent = point ? interpolate(gettext("%(value)s at (%(point)s) mm"), { value, point }, true) : value;
  }
}

function receiveError(message) {
  // The cursor left the readable volume (a 3-D view, a gap): nothing to report.
  if (message.code === "probe_failed") return;
  if (message.of === "findings_store") {
    findingsStoreSettled(interpolate(gettext("not stored: %(reason)s"), { reason: message.message }, true));
  }
  if (message.of === "report_capture") {
    reportStatus.textContent = interpolate(gettext("not kept: %(reason)s"), { reason: message.message }, true);
  }
  if (message.of === "chart") chartFailed(message);
  if (message.of === "suv" && suvState) suvMethod.value = suvState.method;
  if (message.code === "rate_limited") {
    holdInputUntil = performance.now() + (message.retry_after_ms || 0) + 50;
  }
  layersRefused(message);
  if (segmentationFailed(message)) return;
  if (registrationFailed(message)) return;
  if (deriveFailed(message)) return;
  // A refusal of a `set` just after an overlay toggle answers it.
  const answersOverlay = message.code === "refused" && (message.of === "set" || !message.of) && overlayPending();
  const answersMeasuring = message.of ? ["measure", "keep"].includes(message.of) : measuringAsked();
  if (answersOverlay) overlayRefused();
  else if (message.code === "refused" && answersMeasuring) refuseMeasuring();
  else if (message.code === "refused" && forgetAsked) { forgetAsked = false; showFindings(); }
  if (message.code === "measure_failed") measureFailed(message);
  if (message.code === "refused" || message.code === "rate_limited") {
    // What was asked did not happen: the layout menu shows the layout on screen again,
    // and another study may be opened.
    layoutSelect.value = layout;
    if (openAsked !== null) openSettled();
  }
  showError(`${message.code}: ${message.message}`, { keep: !ERRORS_A_FRAME_ENDS.has(message.code) });
}

function handleText(message) {
  if (message.type === "ready") receiveReady(message);
  else if (message.type === "thumbnail") receiveThumbnail(message);
  else if (message.type === "probe") receiveProbe(message);
  else if (message.type === "measurement") receiveMeasurement(message);
  else if (message.type === "chart") receiveChart(message);
  else if (message.type === "findings") receiveFindings(message);
  else if (message.type === "documents") receiveDocuments(message);
  else if (message.type === "findings_stored") receiveFindingsStored(message);
  else if (message.type === "report_captured") receiveReportCaptured(message);
  else if (message.type === "segmentations") receiveSegmentations(message);
  else if (message.type === "segmentation") receiveSegmentation(message);
  else if (message.type === "segmentation_stored") receiveSegmentationStored(message);
  else if (message.type === "segmentation_job") receiveSegmentationJob(message);
  else if (message.type === "registration") receiveRegistration(message);
  else if (message.type === "registrations") receiveRegistrations(message);
  else if (message.type === "derived") receiveDerived(message);
  else if (message.type === "filter_preview") receiveFilterPreview(message);
  else if (message.type === "suv") showSuv(message);
  else if (message.type === "hanging_rules") showHanging(message.rules);
  else if (message.type === "tabs") receiveTabs(message);
  else if (message.type === "bookmarks") receiveBookmarks(message);
  else if (message.type === "grids") receiveGrids(message);
  else if (message.type === "error") receiveError(message);
  else if (message.type === "closing") {
    end(interpolate(gettext("access ended: %(reason)s"), { reason: message.reason }, true));
  }
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
  clearMeasurements();
  clearSegmentations();
  clearRegistrations();
  clearDerive();
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
  4401: () => end(gettext("session ended"), { text: gettext("sign in again"),
    href: `/accounts/login/?next=${encodeURIComponent(location.pathname)}` }),
  4403: () => end(gettext("access ended: the share expired or was revoked")),
  4404: () => end(gettext("this study is not available to you")),
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/viewer/${encodeURIComponent(study)}/`);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => {
    reconnectDelay = 500; failedAttempts = 0; thumbnailsAsked = false;
    if (openAsked !== null) openSettled();
    if (segmentation) receiveSegmentation({ segmentation: null });  // a new connection has none open
    registrationReset();
    deriveReset();
    if (!seriesOrder.length) studyLabel.textContent = gettext("connected");
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
      showError(gettext("cannot reach the gateway — reload the page to try again"), { sticky: true });
      return;
    }
    showError(gettext("connection lost — reconnecting…"), { sticky: true });
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

// Listed in the on-screen help; attachInput below is what does them.
const MOUSE_GESTURES = [
  { shown: gettext("wheel"), input: "scroll",
    text: gettext("scroll (wheel down: towards the feet; “reverse wheel” flips it)") },
  { shown: gettext("drag"), input: "window",
    text: gettext("what the mouse mode chosen does (window / level unless another is chosen)") },
  { shown: gettext("shift- or middle-drag"), input: "pan", text: gettext("pan") },
  { shown: gettext("ctrl-wheel"), input: "zoom", text: gettext("zoom") },
  { shown: gettext("right-drag"), input: "rotate", text: gettext("rotate (3-D) / tilt (oblique)") },
  { shown: gettext("click"), input: "focus", text: gettext("move the crosshair there") },
  { shown: gettext("drag (a measuring tool)"), measure: true,
    text: gettext("draw it: line, ellipse, rectangle from press to release; sphere: press at the centre; "
      + "grow: click the seed") },
  { shown: gettext("click (polygon)"), measure: true,
    text: gettext("add a corner; double-click, Enter or a click on the first corner closes it") },
  { shown: gettext("drag a handle"), measure: true, text: gettext("move that point; the numbers follow") },
  { shown: gettext("drag (brush, erase)"), segment: true,
    text: gettext("paint or erase the active segment along the stroke") },
  { shown: gettext("click (a segmentation tool)"), segment: true,
    text: gettext("threshold, Otsu or SUV fraction around the point; grow, confidence: a seed") },
  { shown: gettext("click (Landmarks on)"), registration: true,
    text: gettext("a landmark on the view of the fixed or the moving series, numbered: pair them 1–1, 2–2…") },
];

function gestureAnnounced(gesture) {
  if (gesture.registration) return registrationOffered();
  if (gesture.segment) return segmentationEditable() && segmentToolNames().length > 0;
  return gesture.measure ? measuringOffered() : inputAnnounced(gesture.input);
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
    if (event.button === 0 && !event.shiftKey && landmarkingOn(view)) {
      landmarkPress(view, canvasPoint(view, event));
      drag = { landmark: true };
      return;
    }
    if (event.button === 0 && !event.shiftKey && segmentingOn(view)) {
      drag = { segmenting: true, stroke: segmentPress(view, canvasPoint(view, event)) };
      return;
    }
    if (event.button === 0 && !event.shiftKey && measuringOn(view)) {
      drag = { measuring: true, grip: measurePress(view, canvasPoint(view, event)) };
      return;
    }
    drag = { x: event.clientX, y: event.clientY, button: event.button, shift: event.shiftKey,
             moved: false };
  });
  canvas.addEventListener("dragover", (event) => {
    if (event.dataTransfer.types.includes(SERIES_DRAG_TYPE)) event.preventDefault();
  });
  canvas.addEventListener("drop", (event) => {
    const uid = event.dataTransfer.getData(SERIES_DRAG_TYPE);
    if (!uid) return;
    event.preventDefault();
    activate(index);
    showSeries(index, uid);
  });
  canvas.addEventListener("pointerleave", () => { view.pointer = null; brushHover(view, null); });
  canvas.addEventListener("pointermove", (event) => {
    const now = performance.now();
    view.pointer = { x: Math.round(event.offsetX), y: Math.round(event.offsetY) };
    if (!drag && view.kind !== "3d" && now - lastProbe > 100) {
      lastProbe = now;
      send({ type: "probe", view: index, ...view.pointer });
    }
    brushHover(view, canvasPoint(view, event));
    if (drag && drag.segmenting) { strokeMove(view, drag.stroke, canvasPoint(view, event)); return; }
    if (drag && drag.measuring) { measureDrag(view, drag.grip, canvasPoint(view, event), false); return; }
    if (drag && drag.landmark) return;
    if (!drag) { polygonHover(view, canvasPoint(view, event)); return; }
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
      leftDrag(view, drag, dx, dy, event);
    }
  });
  canvas.addEventListener("pointerup", (event) => {
    if (drag && drag.landmark) { drag = null; return; }
    if (drag && drag.segmenting) {
      strokeEnd(drag.stroke, canvasPoint(view, event));
      drag = null;
      return;
    }
    if (drag && drag.measuring) {
      measureDrag(view, drag.grip, canvasPoint(view, event), true);
      drag = null;
      return;
    }
    if (drag && !drag.moved && drag.button === 0) {
      sendInput(index, "focus", { x: Math.round(event.offsetX), y: Math.round(event.offsetY) });
    }
    drag = null;
  });
  canvas.addEventListener("dblclick", () => { if (polygonOpenOn(view)) closePolygon(); });
  canvas.addEventListener("keydown", (event) => keyboard(event, index));
}

// --- measurements: the reader draws the shape, the server computes every number ------------

// The tools this client can draw, each with its key; `ready.vocabulary.measure_tools` says
// which of them the server takes (none announced: no tool is offered).
const MEASURE_KEYS = { line: "l", ellipse: "e", rectangle: "q", polygon: "g", sphere: "b", grow: "u" };
// Placed by one press: a sphere at its centre, a grown VOI at its seed (the server grows it).
const ONE_POINT_TOOLS = new Set(["sphere", "grow"]);
const SPHERE_RADIUS_MM = { min: 0.5, max: 150, initial: 10 };
// A grown VOI's box (half its side, `radius_mm`) and each mode's `value`, as the protocol bounds
// them (rendering/protocol.py GROW_BOX_MM, GROW_MODES); the range is shown in per cent.
const GROW_BOX_MM = { min: 1, max: 150, initial: 30 };
const GROW_MODES = {
  // xgettext:no-javascript-format
  range: { min: 0.01, max: 0.99, initial: 0.5, shown: 100, step: 1, unit: gettext("% of the seed's value") },
  confidence: { min: 0.5, max: 5, initial: 2.5, shown: 1, step: 0.1, unit: gettext("× SD") },
};
const MAX_POLYGON_POINTS = 256;
const HANDLE_REACH_PX = 7;
const PLANE_TOLERANCE_MM = 0.5;
// A `refused` this soon after a measure or keep answers it: measuring is not ours here.
const MEASURE_ANSWER_MS = 10000;
const SVG_NS = "http://www.w3.org/2000/svg";

let measureTool = "none";
let measuringRefused = false;
let shape = null;          // the shape drawn last (or being drawn): see newShape
let measurement = null;    // the latest `measurement` answer
let findings = [];
let documents = [];        // structured reports other systems stored in the study: see structuredDocument
const keptShapes = new Map();  // finding id -> the shape kept under it (this page's own keeps)
let keepAsked = null;
let measureAskedAt = -Infinity;
let keepAskedAt = -Infinity;
let forgetAsked = false;
let profileValuesOpen = false;

function measureTools() {
  const announced = Array.isArray(vocabulary.measure_tools) ? vocabulary.measure_tools : [];
  return announced.filter((tool) => Object.hasOwn(MEASURE_KEYS, tool));
}

function measuringOffered() {
  return !measuringRefused && measureTools().length > 0;
}

function offeredTools() {
  return measuringOffered() ? measureTools() : [];
}

// A 3-D view has no single plane to draw on: there the mouse navigates as ever.
function measuringOn(view) {
  return measureTool !== "none" && measuringOffered() && Boolean(view) && view.kind !== "3d";
}

function measuringAsked() {
  return performance.now() - Math.max(measureAskedAt, keepAskedAt) < MEASURE_ANSWER_MS;
}

// --- geometry: canvas pixels <-> patient mm through the plane a frame names ---

function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

function isVector(value) {
  return Array.isArray(value) && value.length === 3 && value.every(Number.isFinite);
}

// What a painted frame shows: its plane (where the server names one) and a key that changes
// whenever the picture moves, for frames that name no plane.
function pictureOf(view, frame, overlay) {
  const { width, height } = view.canvas;
  const plane = overlay.plane;
  let mmPerPixel = Number(overlay.mm_per_pixel);
  if (!(mmPerPixel > 0) && plane && plane.mm_per_pixel > 0 && frame.width > 0) {
    mmPerPixel = (plane.mm_per_pixel * frame.width) / width;
  }
  const usable = Boolean(plane) && ["center_mm", "right", "down", "normal"].every((name) => isVector(plane[name]))
    && mmPerPixel > 0;
  return {
    key: JSON.stringify([overlay.kind, overlay.slice, overlay.position, overlay.zoom, view.layers, width, height]),
    plane: usable ? plane : null, mmPerPixel: mmPerPixel > 0 ? mmPerPixel : null, width, height,
  };
}

function toPatient(picture, [x, y]) {
  const { center_mm: centre, right, down } = picture.plane;
  const along = (x - picture.width / 2) * picture.mmPerPixel;
  const across = (y - picture.height / 2) * picture.mmPerPixel;
  return [0, 1, 2].map((axis) => centre[axis] + along * right[axis] + across * down[axis]);
}

function toScreen(picture, point) {
  const { center_mm: centre, right, down, normal } = picture.plane;
  const offset = point.map((value, axis) => value - centre[axis]);
  return { x: dot(offset, right) / picture.mmPerPixel + picture.width / 2,
           y: dot(offset, down) / picture.mmPerPixel + picture.height / 2, depth: dot(offset, normal) };
}

function tenth(value) {
  return Math.round(value * 10) / 10;
}

// Pointer position in the canvas's own pixels (the CSS box may be scaled from them).
function canvasPoint(view, event) {
  const { canvas } = view;
  const scaleX = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1;
  const scaleY = canvas.clientHeight ? canvas.height / canvas.clientHeight : 1;
  return [tenth(Math.max(0, Math.min(canvas.width, event.offsetX * scaleX))),
          tenth(Math.max(0, Math.min(canvas.height, event.offsetY * scaleY)))];
}

// --- shapes ---

// A shape keeps its points in patient mm where the frame names its plane, so it stays on
// the anatomy through pan and zoom and shows on every view of that series and plane;
// otherwise in the pixels of the picture it was drawn on, shown while that picture is.
function newShape(view, tool, points) {
  const made = { view: view.index, tool, series: view.layers[0], closed: false, hover: null, sent: null,
                 radius_mm: tool === "sphere" ? sphereRadius() : undefined,
                 grow: tool === "grow" ? growSettings() : undefined };
  placeShape(made, view, points);
  return made;
}

function placeShape(target, view, points) {
  target.px = points.map(([x, y]) => [x, y]);
  target.picture = view.picture;
  target.mm = view.picture && view.picture.plane ? target.px.map((point) => toPatient(view.picture, point)) : null;
}

// Where a shape lies on a view, in canvas pixels; null where the view does not show it.
function shapeOn(target, view) {
  const picture = view.picture;
  if (!picture || view.kind === "3d" || !view.layers.includes(target.series)) return null;
  if (target.mm && picture.plane) {
    const projected = target.mm.map((point) => toScreen(picture, point));
    const points = projected.map(({ x, y }) => [x, y]);
    if (target.tool === "sphere") {
      const depth = Math.abs(projected[0].depth);
      if (depth >= target.radius_mm) return null;
      return { points, radius: Math.sqrt(target.radius_mm ** 2 - depth ** 2) / picture.mmPerPixel };
    }
    return projected.every(({ depth }) => Math.abs(depth) <= PLANE_TOLERANCE_MM) ? { points } : null;
  }
  if (target.mm || view.index !== target.view || !target.picture || picture.key !== target.picture.key) return null;
  const radius = target.tool === "sphere" && picture.mmPerPixel ? target.radius_mm / picture.mmPerPixel : null;
  return { points: target.px, radius };
}

function measurable(target, points) {
  if (ONE_POINT_TOOLS.has(target.tool)) return points.length === 1;
  if (target.tool === "polygon") return target.closed && points.length >= 3;
  const [[x0, y0], [x1, y1]] = points;
  if (target.tool === "line") return Math.hypot(x1 - x0, y1 - y0) >= 1;
  return Math.abs(x1 - x0) >= 1 && Math.abs(y1 - y0) >= 1;
}

function sphereRadius() {
  const value = Number(radiusInput.value);
  if (radiusInput.value === "" || !Number.isFinite(value)) return SPHERE_RADIUS_MM.initial;
  return Math.max(SPHERE_RADIUS_MM.min, Math.min(SPHERE_RADIUS_MM.max, value));
}

function bounded(input, rule, scale = 1) {
  const value = Number(input.value) / scale;
  if (input.value === "" || !Number.isFinite(value)) return rule.initial;
  return Math.max(rule.min, Math.min(rule.max, value));
}

// What a grow seed is sent with: the box, the mode and its value, as the controls show them.
function growSettings() {
  const mode = Object.hasOwn(GROW_MODES, growModeSelect.value) ? growModeSelect.value : "range";
  const rule = GROW_MODES[mode];
  return { radius_mm: bounded(growBoxInput, GROW_BOX_MM), mode,
           value: Number(bounded(growValueInput, rule, rule.shown).toFixed(4)) };
}

function sameGrow(a, b) {
  return Boolean(a) && Boolean(b) && a.radius_mm === b.radius_mm && a.mode === b.mode && a.value === b.value;
}

// The value field in the unit of its mode: a fraction shown in per cent, a multiplier as it is.
function showGrowValue(mode, value) {
  const rule = GROW_MODES[mode];
  growValueInput.min = String(rule.min * rule.shown);
  growValueInput.max = String(rule.max * rule.shown);
  growValueInput.step = String(rule.step);
  growValueInput.value = String(Number((value * rule.shown).toFixed(2)));
  growValueUnit.textContent = rule.unit;
}

// One measure per animation frame, the latest shape: the server answers latest-wins too.
function queueMeasure() {
  const view = shape && views[shape.view];
  const placed = view && shapeOn(shape, view);
  if (!placed || !measurable(shape, placed.points)) return;
  const points = placed.points.map((point) => point.map((value) => tenth(Math.max(-4096, Math.min(8192, value)))));
  if (samePoints(points, shape.sent) && shape.sentRadius === shape.radius_mm
    && (shape.tool !== "grow" || sameGrow(shape.grow, shape.sentGrow))) return;  // asked already
  const message = { type: "measure", view: shape.view, tool: shape.tool, points };
  if (shape.tool === "sphere") message.radius_mm = shape.radius_mm;
  if (shape.tool === "grow") Object.assign(message, shape.grow);
  shape.sent = points;
  shape.sentRadius = shape.radius_mm;
  shape.sentGrow = shape.grow && { ...shape.grow };
  measureAskedAt = performance.now();
  pendingInput.set("measure", message);
  scheduleFlush();
}

function nearest(points, [x, y], reach) {
  let best = -1;
  let bestDistance = reach;
  points.forEach(([px, py], at) => {
    const distance = Math.hypot(px - x, py - y);
    if (distance <= bestDistance) { best = at; bestDistance = distance; }
  });
  return best;
}

function handleReach(view) {
  const { canvas } = view;
  return HANDLE_REACH_PX * (canvas.clientWidth ? canvas.width / canvas.clientWidth : 1);
}

function polygonOpenOn(view) {
  return Boolean(shape) && shape.tool === "polygon" && !shape.closed && shape.view === view.index;
}

// A press with a tool: a corner of the polygon being drawn, a handle of the shape on this
// view, or the start of a new shape. Answers what the drag that follows moves.
function measurePress(view, point) {
  if (shape && !shape.closed && shape.tool === "polygon") {
    if (shape.view === view.index) { addCorner(view, point); return null; }
    cancelShape();
  }
  const placed = shape && shape.closed && shape.view === view.index ? shapeOn(shape, view) : null;
  if (placed) {
    const handle = nearest(placed.points, point, handleReach(view));
    if (handle >= 0) return { shape, handle, points: placed.points.map(([x, y]) => [x, y]) };
  }
  if (shape && !shape.closed) cancelShape();
  const tool = measureTool;
  if (tool === "polygon") {
    shape = newShape(view, tool, [point]);
    forgetAnswer();
    drawAllShapes();
    return null;
  }
  const onePoint = ONE_POINT_TOOLS.has(tool);
  const points = onePoint ? [point] : [point, [...point]];
  shape = newShape(view, tool, points);
  shape.closed = onePoint;
  forgetAnswer();
  queueMeasure();
  drawAllShapes();
  return { shape, handle: points.length - 1, points, drawing: !onePoint };
}

function measureDrag(view, grip, point, released) {
  if (!grip || grip.shape !== shape) return;
  grip.points[grip.handle] = point;
  placeShape(shape, view, grip.points);
  if (released && grip.drawing) {
    if (!measurable(shape, grip.points)) { cancelShape(); return; }
    shape.closed = true;
  }
  queueMeasure();
  drawAllShapes();
}

function addCorner(view, point) {
  const placed = shapeOn(shape, view);
  if (!placed) { cancelShape(); return; }
  const points = placed.points;
  const reach = handleReach(view);
  if (points.length >= 3 && nearest([points[0]], point, reach) === 0) { closePolygon(); return; }
  const last = points[points.length - 1];
  if (Math.hypot(last[0] - point[0], last[1] - point[1]) < 3) return;  // a double-click's second press
  placeShape(shape, view, [...points, point]);
  if (points.length + 1 >= MAX_POLYGON_POINTS) closePolygon();
  else drawAllShapes();
}

function closePolygon() {
  if (!shape || shape.tool !== "polygon" || shape.closed || shape.px.length < 3) return;
  shape.closed = true;
  shape.hover = null;
  queueMeasure();
  drawAllShapes();
}

function polygonHover(view, point) {
  if (!polygonOpenOn(view)) return;
  shape.hover = point;
  drawShapes(view);
}

// A shape given up before it was finished sends nothing more; its numbers go too.
function cancelShape() {
  shape = null;
  pendingInput.delete("measure");
  forgetAnswer();
  drawAllShapes();
}

function dropShape() {
  shape = null;
  pendingInput.delete("measure");
  forgetAnswer();
}

function forgetAnswer() {
  measurement = null;
  showMeasurement();
}

function escapeMeasuring() {
  if (shape && !shape.closed) cancelShape();
  else chooseTool("none");
}

function chooseTool(name) {
  const tool = offeredTools().includes(name) ? name : "none";
  if (shape && !shape.closed && tool !== measureTool) cancelShape();
  measureTool = tool;
  if (tool !== "none") { chooseSegmentTool("none"); setLandmarking(false); }  // one click, one tool
  showMeasureControls();
  showModeBar();
}

// A control changed while a grown VOI is on screen: that seed is grown again with it.
function changeGrow() {
  const settings = growSettings();
  growBoxInput.value = String(settings.radius_mm);
  showGrowValue(settings.mode, settings.value);
  if (!shape || shape.tool !== "grow" || sameGrow(shape.grow, settings)) return;
  shape.grow = settings;
  forgetAnswer();
  queueMeasure();
}

// Each mode keeps its own value: switching back finds the one last used.
const growValues = Object.fromEntries(Object.entries(GROW_MODES).map(([mode, rule]) => [mode, rule.initial]));
let growMode = "range";

function changeGrowMode() {
  const mode = Object.hasOwn(GROW_MODES, growModeSelect.value) ? growModeSelect.value : "range";
  growValues[growMode] = bounded(growValueInput, GROW_MODES[growMode], GROW_MODES[growMode].shown);
  growMode = mode;
  showGrowValue(mode, growValues[mode]);
  changeGrow();
}

function changeRadius() {
  const radius = sphereRadius();
  radiusInput.value = String(radius);
  if (!shape || shape.tool !== "sphere" || shape.radius_mm === radius) return;
  shape.radius_mm = radius;
  forgetAnswer();
  queueMeasure();
  drawAllShapes();
}

// --- drawing: vectors over the frame (the reader's own geometry, never pixel data) ---

function svgNode(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function pointList(points) {
  return points.map(([x, y]) => `${tenth(x)},${tenth(y)}`).join(" ");
}

function outline(tool, placed, { closed = true, hover = null } = {}) {
  const points = placed.points;
  if (tool === "sphere") {
    const [x, y] = points[0];
    const nodes = [svgNode("line", { class: "centre", x1: x - 4, y1: y, x2: x + 4, y2: y }),
                   svgNode("line", { class: "centre", x1: x, y1: y - 4, x2: x, y2: y + 4 })];
    if (placed.radius) nodes.unshift(svgNode("circle", { class: "outline", cx: x, cy: y, r: tenth(placed.radius) }));
    return nodes;
  }
  if (tool === "grow") {
    const [x, y] = points[0];
    return [svgNode("circle", { class: "outline seed", cx: x, cy: y, r: 5 }),
            svgNode("line", { class: "centre", x1: x - 8, y1: y, x2: x + 8, y2: y }),
            svgNode("line", { class: "centre", x1: x, y1: y - 8, x2: x, y2: y + 8 })];
  }
  if (tool === "polygon") {
    if (closed) return [svgNode("polygon", { class: "outline", points: pointList(points) })];
    return [svgNode("polyline", { class: "outline", points: pointList(hover ? [...points, hover] : points) })];
  }
  const [[x0, y0], [x1, y1]] = points;
  if (tool === "line") return [svgNode("line", { class: "outline", x1: x0, y1: y0, x2: x1, y2: y1 })];
  const box = { x: Math.min(x0, x1), y: Math.min(y0, y1), width: Math.abs(x1 - x0), height: Math.abs(y1 - y0) };
  if (tool === "rectangle") return [svgNode("rect", { class: "outline", ...box })];
  return [svgNode("rect", { class: "frame", ...box }),
          svgNode("ellipse", { class: "outline", cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, rx: box.width / 2,
                               ry: box.height / 2 })];
}

function handles(points) {
  return points.map(([x, y], at) => {
    const node = svgNode("rect", { class: "handle", x: x - 3, y: y - 3, width: 6, height: 6 });
    node.dataset.handle = String(at);
    return node;
  });
}

// --- findings kept in earlier sessions (or by others): placed again from their own plane ---

// The points each tool a finding may carry takes; a finding that does not fit is listed only.
const FINDING_POINTS = { line: [2, 2], ellipse: [2, 2], rectangle: [2, 2], polygon: [3, 256],
                         sphere: [1, 1], threshold: [1, 1], grow: [1, 1] };
const SAME_NORMAL = 0.999;
const findingPlaces = new WeakMap();  // finding -> its points in patient mm and its plane's normal, or null

function unitVector(vector) {
  const length = Math.hypot(...vector);
  return length > 0 ? vector.map((value) => value / length) : null;
}

function cross(a, b) {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

// The plane a finding was drawn on, as `findings` gives it (with the viewport's width and
// height), read like a painted frame's picture so toPatient maps its points.
function storedPicture(plane) {
  if (!plane || typeof plane !== "object") return null;
  const mmPerPixel = Number(plane.mm_per_pixel);
  const width = Number(plane.width);
  const height = Number(plane.height);
  if (!["center_mm", "right", "down"].every((name) => isVector(plane[name]))
    || !(mmPerPixel > 0) || !(width > 0) || !(height > 0)) return null;
  const normal = unitVector(isVector(plane.normal) ? plane.normal : cross(plane.right, plane.down));
  return normal && { plane: { ...plane, normal }, mmPerPixel, width, height };
}

function findingPlace(finding) {
  if (findingPlaces.has(finding)) return findingPlaces.get(finding);
  const [low, high] = FINDING_POINTS[finding.tool] || [1, 0];
  const points = Array.isArray(finding.points) ? finding.points : [];
  const drawn = storedPicture(finding.plane);
  const usable = drawn && points.length >= low && points.length <= high
    && points.every((point) => Array.isArray(point) && point.length === 2 && point.every(Number.isFinite));
  const place = usable ? { mm: points.map((point) => toPatient(drawn, point)), normal: drawn.plane.normal } : null;
  findingPlaces.set(finding, place);
  return place;
}

// Where a finding lies on a view that shows its series in the plane it was drawn on (the same
// normal, every point within half a millimetre of the plane), in canvas pixels; else null.
function findingOn(finding, view) {
  const picture = view.picture;
  if (!picture || !picture.plane || view.kind === "3d" || !view.layers.includes(finding.series)) return null;
  const radius = finding.tool === "sphere" && finding.arguments ? Number(finding.arguments.radius_mm) : NaN;
  if (radius > 0) return sphereOn(findingPlace(finding), radius, picture);
  const place = findingPlace(finding);
  const normal = place && unitVector(picture.plane.normal);
  if (!normal || Math.abs(dot(place.normal, normal)) <= SAME_NORMAL) return null;
  const projected = place.mm.map((point) => toScreen(picture, point));
  if (!projected.every(({ depth }) => Math.abs(depth) <= PLANE_TOLERANCE_MM)) return null;
  return { points: projected.map(({ x, y }) => [x, y]) };
}

// A sphere is cut by any plane within its radius of the centre: a circle, whatever the plane's normal.
function sphereOn(place, radius, picture) {
  if (!place || !(picture.mmPerPixel > 0)) return null;
  const { x, y, depth } = toScreen(picture, place.mm[0]);
  if (Math.abs(depth) >= radius) return null;
  return { points: [[x, y]], radius: Math.sqrt(radius ** 2 - depth ** 2) / picture.mmPerPixel };
}

// A VOI kept without its size on the wire is drawn as its centre or seed.
function findingTool(tool) {
  return tool === "threshold" ? "grow" : tool;
}

function shapeLabel(placed, text) {
  const [x, y] = placed.points[0];
  const name = svgNode("text", { class: "shape-label", x: x + 6, y: y - 6 });
  name.textContent = text;
  return name;
}

function drawShapes(view) {
  const layer = view.shapes;
  if (!layer) return;
  layer.setAttribute("viewBox", `0 0 ${view.canvas.width} ${view.canvas.height}`);
  const nodes = documentShapes(view);
  for (const finding of findings) {
    const kept = keptShapes.get(finding.id);
    const placed = kept ? shapeOn(kept, view) : findingOn(finding, view);
    if (!placed) continue;
    const tool = kept ? kept.tool : findingTool(finding.tool);
    const group = svgNode("g", { class: `shape kept ${tool}` });
    group.dataset.finding = String(finding.id);
    group.dataset.tool = String(finding.tool);
    group.append(...outline(tool, placed), shapeLabel(placed, finding.label));
    nodes.push(group);
  }
  const placed = shape && shapeOn(shape, view);
  if (placed) {
    const group = svgNode("g", { class: `shape current ${shape.tool}` });
    group.dataset.tool = shape.tool;
    group.append(...outline(shape.tool, placed, { closed: shape.closed, hover: shape.hover }));
    if (shape.view === view.index) group.append(...handles(placed.points));
    nodes.push(group);
  }
  nodes.push(...landmarkShapes(view));
  const brush = brushPreview(view);
  if (brush) nodes.push(brush);
  layer.replaceChildren(...nodes);
}

function drawAllShapes() {
  for (const view of views) drawShapes(view);
  showCharts();  // a shape closed or moved: its chart buttons follow
}

// --- the answer: a table of every layer's numbers, or a line's length and profiles ---

function shown(value, suffix = "") {
  return Number.isFinite(value) ? `${readerNumber(value)}${suffix}` : "–";
}

function modalityOf(seriesId) {
  const series = seriesByUid.get(seriesId);
  return (series && series.modality) || gettext("layer");
}

function layerTitle(seriesId, unit) {
  return unit ? `${modalityOf(seriesId)} (${unit})` : modalityOf(seriesId);
}

function isLineResult(result) {
  return Boolean(result) && !Array.isArray(result) && typeof result === "object" && Number.isFinite(result.length_mm);
}

// A layer's numbers in the order a reader reads them: a PET in SUV leads with SUVmax and
// SUVpeak and ends with TLG.
function layerNumbers(layer) {
  const suv = layer.unit === "SUV";
  const numbers = [];
  const add = (key, name, value, suffix = "") => {
    if (Number.isFinite(value)) numbers.push({ key, name, text: shown(value, suffix) });
  };
  if (suv) { add("maximum", "SUVmax", layer.maximum); add("peak", "SUVpeak", layer.peak); }
  add("mean", gettext("mean"), layer.mean);
  add("sd", gettext("SD"), layer.sd);
  add("minimum", gettext("min"), layer.minimum);
  if (!suv) add("maximum", gettext("max"), layer.maximum);
  add("median", gettext("median"), layer.median);
  add("volume_ml", gettext("volume"), layer.volume_ml, " ml");
  add("area_mm2", gettext("area"), layer.area_mm2, " mm²");
  if (suv) add("total", "TLG", layer.total);
  return numbers;
}

function statisticsTable(layers) {
  const table = element("table", "measure-table");
  const body = element("tbody");
  for (const layer of layers) {
    if (!layer || typeof layer !== "object") continue;
    const row = element("tr", "measure-layer");
    row.dataset.series = String(layer.series_id || "");
    row.dataset.unit = String(layer.unit || "");
    const title = element("th", "", layerTitle(layer.series_id, layer.unit));
    title.scope = "row";
    row.append(title);
    for (const number of layerNumbers(layer)) {
      const cell = element("td", "stat");
      cell.dataset.stat = number.key;
      cell.append(element("span", "stat-name", number.name), " ", element("span", "stat-value", number.text));
      row.append(cell);
    }
    body.append(row);
  }
  table.append(body);
  return table;
}

const PROFILE_SIZE = { width: 240, height: 72, margin: 4 };

function profileChart(values, length) {
  const { width, height, margin } = PROFILE_SIZE;
  const known = values.filter(Number.isFinite);
  const low = Math.min(...known);
  const high = Math.max(...known);
  const span = high - low || 1;
  const x = (at) => margin + ((width - 2 * margin) * at) / Math.max(1, values.length - 1);
  const y = (value) => margin + (height - 2 * margin) * (1 - (value - low) / span);
  const chart = svgNode("svg", { class: "profile-chart", viewBox: `0 0 ${width} ${height}`,
                                 preserveAspectRatio: "none", role: "img" });
  let run = [];
  const runs = [];
  values.forEach((value, at) => {
    if (Number.isFinite(value)) run.push([x(at), y(value)]);
    else if (run.length) { runs.push(run); run = []; }
  });
  if (run.length) runs.push(run);
  for (const points of runs) {
    chart.append(points.length > 1 ? svgNode("polyline", { class: "profile-line", points: pointList(points) })
      : svgNode("circle", { class: "profile-dot", cx: tenth(points[0][0]), cy: tenth(points[0][1]), r: 1.5 }));
  }
  const cursor = svgNode("line", { class: "profile-cursor", x1: 0, y1: 0, x2: 0, y2: height });
  cursor.setAttribute("visibility", "hidden");
  chart.append(cursor);
  chart.dataset.low = String(low);
  chart.dataset.high = String(high);
  chart.dataset.length = String(length);
  return { chart, cursor, x };
}

function distanceAt(at, count, length) {
  return count > 1 ? (length * at) / (count - 1) : 0;
}

function profileTable(values, length, unit) {
  const table = element("table", "profile-values");
  const head = element("tr");
  head.append(element("th", "", "mm"), element("th", "", unit || gettext("value")));
  const body = element("tbody");
  values.forEach((value, at) => {
    const row = element("tr");
    row.append(element("td", "", shown(distanceAt(at, values.length, length))),
               element("td", "", Number.isFinite(value) ? shown(value) : gettext("outside")));
    body.append(row);
  });
  const thead = element("thead");
  thead.append(head);
  table.append(thead, body);
  return table;
}

// One small chart per layer (each in its own unit), the value under the mouse, and every
// value in a table on demand.
function profileFigure(profile, length) {
  const [seriesId, unit, raw] = profile;
  const values = (Array.isArray(raw) ? raw : []).map((value) => (Number.isFinite(value) ? value : null));
  const figure = element("figure", "profile");
  figure.dataset.series = String(seriesId);
  figure.dataset.unit = String(unit || "");
  const known = values.filter(Number.isFinite);
  const layer = layerTitle(seriesId, unit);
  if (!known.length) {
    figure.append(element("figcaption", "",
      interpolate(gettext("%(layer)s along the line: outside the series"), { layer }, true)));
    return figure;
  }
  const caption = element("figcaption", "", interpolate(gettext("%(layer)s along the line"), { layer }, true));
  caption.append(element("span", "profile-range", ` · ${interpolate(gettext("min %(min)s · max %(max)s"),
    { min: shown(Math.min(...known)), max: shown(Math.max(...known)) }, true)}`));
  const { chart, cursor, x } = profileChart(values, length);
  chart.setAttribute("aria-label", interpolate(gettext("%(layer)s profile"), { layer }, true));
  const readout = element("output", "profile-readout");
  chart.addEventListener("pointermove", (event) => {
    const box = chart.getBoundingClientRect();
    const fraction = box.width ? (event.clientX - box.left) / box.width : 0;
    const at = Math.max(0, Math.min(values.length - 1, Math.round(fraction * (values.length - 1))));
    const value = values[at];
    cursor.setAttribute("x1", String(tenth(x(at))));
    cursor.setAttribute("x2", String(tenth(x(at))));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `${shown(distanceAt(at, values.length, length))} mm: `
      + (Number.isFinite(value) ? `${shown(value)}${unit ? ` ${unit}` : ""}` : gettext("outside the series"));
  });
  chart.addEventListener("pointerleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "";
  });
  const details = element("details", "profile-table");
  details.append(element("summary", "", gettext("values")));
  details.open = profileValuesOpen;
  const fill = () => {
    if (details.open && !details.querySelector("table")) details.append(profileTable(values, length, unit));
  };
  details.addEventListener("toggle", () => { profileValuesOpen = details.open; fill(); });
  fill();
  figure.append(caption, chart, readout, details);
  return figure;
}

function lineResult(result) {
  const nodes = [];
  const length = element("p", "line-length");
  length.dataset.stat = "length_mm";
  length.append(element("span", "stat-name", gettext("length")), " ",
                element("span", "stat-value", shown(result.length_mm, " mm")));
  nodes.push(length);
  for (const profile of Array.isArray(result.profiles) ? result.profiles : []) {
    if (Array.isArray(profile) && profile.length === 3) nodes.push(profileFigure(profile, result.length_mm));
  }
  return nodes;
}

// A VOI contoured on one layer (threshold, grown from a seed): one object, with how it was drawn.
function isRegionResult(result) {
  return Boolean(result) && !Array.isArray(result) && typeof result === "object" && Number.isFinite(result.volume_ml);
}

function regionResult(result) {
  const how = element("p", "measure-how", typeof result.how === "string" ? result.how : "");
  return [statisticsTable([result]), how];
}

function samePoints(a, b) {
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length
    && a.every((point, at) => Array.isArray(point) && Math.abs(point[0] - b[at][0]) < 0.05
      && Math.abs(point[1] - b[at][1]) < 0.05);
}

// Keep keeps the server's last measurement: offered only when that is the shape on screen.
function keepable() {
  return measuringOffered() && Boolean(measurement) && Boolean(shape) && shape.closed && keepAsked === null
    && measurement.view === shape.view && measurement.tool === shape.tool && samePoints(measurement.points, shape.sent);
}

function showKeep() {
  keepButton.disabled = !keepable() || cleanLabel(keepLabel.value) === "";
}

function showMeasurement() {
  if (!measurement) {
    measurementShown.replaceChildren(element("p", "hint", measuringOffered()
      ? gettext("Choose a tool (Measure) and draw on a 2-D view.") : ""));
    delete measurementShown.dataset.tool;
  } else {
    const caption = element("p", "measure-caption", interpolate(gettext("%(tool)s · view %(view)s"),
                                                                { tool: label(measurement.tool), view: measurement.view + 1 }, true));
    const result = measurement.result;
    measurementShown.replaceChildren(caption, ...(isLineResult(result) ? lineResult(result)
      : isRegionResult(result) ? regionResult(result)
      : [statisticsTable(Array.isArray(result) ? result : [])]));
    measurementShown.dataset.tool = measurement.tool;
  }
  measurementShown.classList.toggle("pending", Boolean(measurement) && !keepable());
  showKeep();
  showCharts();
}

function receiveMeasurement(message) {
  measureAskedAt = -Infinity;
  // An answer to a shape given up (cancelled, replaced by a layout) is not shown.
  if (!measuringOffered() || !shape || message.view !== shape.view || message.tool !== shape.tool) return;
  measurement = message;
  showMeasurement();
}

function measureFailed() {
  measureAskedAt = -Infinity;
  if (measurement && shape && !samePoints(measurement.points, shape.sent)) forgetAnswer();
}

// Not permitted (a nurse, a view-only share): no tool for the rest of this page's life.
function refuseMeasuring() {
  measuringRefused = true;
  measureAskedAt = keepAskedAt = -Infinity;
  keepAsked = null;
  measureTool = "none";
  dropShape();
  buildMeasureControls();
  buildKeyMap();
  showFindings();
  drawAllShapes();
}

// --- keep, forget and the findings list ---

// What the server takes as a label: 1–64 printable characters.
function cleanLabel(text) {
  return Array.from(String(text).replace(/\s/gu, " ").replace(/\p{C}/gu, "").trim()).slice(0, 64).join("").trim();
}

function keep(event) {
  event.preventDefault();
  const text = cleanLabel(keepLabel.value);
  if (!text || !keepable()) return;
  keepAsked = { shape: { ...shape, closed: true, hover: null }, known: new Set(findings.map((f) => f.id)) };
  keepAskedAt = performance.now();
  send({ type: "keep", label: text });
  showMeasurement();
}

function forget(id, button) {
  button.disabled = true;
  button.textContent = gettext("Deleting…");
  forgetAsked = true;
  send({ type: "forget", finding: id });
}

function findingNumbers(finding) {
  const result = finding.result;
  if (isLineResult(result)) {
    return interpolate(gettext("length %(value)s"), { value: shown(result.length_mm, " mm") }, true);
  }
  if (result && typeof result === "object" && !Array.isArray(result)) {
    // One region of one layer (a threshold VOI kept by another client): its headline numbers.
    return [[gettext("volume %(value)s"), result.volume_ml, " ml"], [gettext("max %(value)s"), result.maximum],
            [gettext("peak %(value)s"), result.peak], [gettext("mean %(value)s"), result.mean],
            ["TLG %(value)s", result.total]]
      .filter(([, value]) => Number.isFinite(value))
      .map(([text, value, suffix]) => interpolate(text, { value: shown(value, suffix) }, true))
      .join(" · ");
  }
  if (!Array.isArray(result)) return "";
  const parts = [];
  const first = result[0] || {};
  if (Number.isFinite(first.volume_ml)) {
    parts.push(interpolate(gettext("volume %(value)s"), { value: shown(first.volume_ml, " ml") }, true));
  } else if (Number.isFinite(first.area_mm2)) {
    parts.push(interpolate(gettext("area %(value)s"), { value: shown(first.area_mm2, " mm²") }, true));
  }
  for (const layer of result) {
    if (!layer || typeof layer !== "object") continue;
    const name = modalityOf(layer.series_id);
    if (layer.unit === "SUV") {
      const values = { layer: name, max: shown(layer.maximum), peak: shown(layer.peak), mean: shown(layer.mean) };
      parts.push(interpolate(Number.isFinite(layer.peak)
        ? gettext("%(layer)s: SUVmax %(max)s, SUVpeak %(peak)s, mean %(mean)s")
        : gettext("%(layer)s: SUVmax %(max)s, mean %(mean)s"), values, true));
    } else {
      parts.push(interpolate(gettext("%(layer)s: mean %(mean)s"),
                             { layer: name, mean: `${shown(layer.mean)}${layer.unit ? ` ${layer.unit}` : ""}` }, true));
    }
  }
  return parts.join(" · ");
}

function findingItem(finding) {
  const item = element("li", "finding");
  item.dataset.finding = String(finding.id);
  const head = element("div", "finding-head");
  head.append(element("span", "finding-label", String(finding.label)),
              element("span", "finding-tool", label(String(finding.tool))));
  const by = interpolate(finding.consultant ? gettext("by %(reader)s (consultant)") : gettext("by %(reader)s"),
                         { reader: finding.by || "?" }, true);
  const at = typeof finding.at === "string" ? ` · ${finding.at.replace("T", " ").slice(0, 16)}` : "";
  item.append(head, element("div", "finding-numbers", findingNumbers(finding)),
              element("div", "finding-by", `${by}${at}`));
  if (measuringOffered()) {
    const rename = element("button", "finding-rename", gettext("Rename"));
    rename.type = "button";
    rename.setAttribute("aria-label", interpolate(gettext("rename finding %(label)s"), { label: finding.label }, true));
    rename.addEventListener("click", () => renameStart(item, finding));
    const button = element("button", "finding-delete", gettext("Delete"));
    button.type = "button";
    button.setAttribute("aria-label", interpolate(gettext("delete finding %(label)s"), { label: finding.label }, true));
    button.addEventListener("click", () => forget(finding.id, button));
    item.append(rename, button);
  }
  return item;
}

// The label becomes a field in place; Enter sends it (the server answers with the list), Esc keeps it.
function renameStart(item, finding) {
  const field = element("input", "finding-label-field");
  field.type = "text";
  field.maxLength = 64;
  field.value = String(finding.label).replace(/^'/, "");
  field.setAttribute("aria-label", interpolate(gettext("new label of finding %(label)s"), { label: finding.label }, true));
  field.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Escape") showFindings();
    if (event.key !== "Enter") return;
    const text = cleanLabel(field.value);
    if (text) send({ type: "relabel", finding: finding.id, label: text });
    else showFindings();
  });
  item.querySelector(".finding-label").replaceWith(field);
  field.focus();
}

function showFindings() {
  findingsList.replaceChildren(...(findings.length ? findings.map(findingItem)
    : [element("li", "hint", gettext("No finding kept yet."))]));
  showFindingsStore();
  showMeasurePanel();
}

// --- the findings into the study as DICOM (SR + SEG), for a reader who may report ---

let mayStoreFindings = false;
let findingsStoring = false;

function showFindingsStore() {
  findingsStoreButton.hidden = !mayStoreFindings;
  findingsStoreButton.disabled = findingsStoring || findings.length === 0;
  findingsStoreButton.textContent = findingsStoring ? gettext("Storing…") : gettext("Store in study (DICOM SR + SEG)");
}

function storeFindings() {
  if (findingsStoring || !mayStoreFindings || findings.length === 0) return;
  findingsStoring = true;
  findingsStoreStatus.textContent = "";
  send({ type: "findings_store" });
  showFindingsStore();
}

function findingsStoreSettled(text) {
  findingsStoring = false;
  findingsStoreStatus.textContent = text;
  showFindingsStore();
}

function receiveFindingsStored(message) {
  const segs = Number.isInteger(message.segmentations) ? message.segmentations : 0;
  const count = Number.isInteger(message.findings) ? message.findings : 0;
  findingsStoreSettled(segs
    ? interpolate(ngettext("stored in the study: an SR of %(count)s finding and %(segs)s SEG",
                           "stored in the study: an SR of %(count)s findings and %(segs)s SEG", count),
                  { count, segs }, true)
    : interpolate(ngettext("stored in the study: an SR of %(count)s finding",
                           "stored in the study: an SR of %(count)s findings", count), { count }, true));
}

findingsStoreButton.addEventListener("click", storeFindings);

// The study's report: its status for everyone but a consultant, the Key image button for writers.
function showReport(report) {
  reportSection.hidden = !report;
  if (!report) return;
  reportCaptureButton.hidden = !mayStoreFindings;
  reportLink.textContent = interpolate(gettext("Report: %(status)s"), { status: report.label }, true);
}

// A key image is the selected view's state, kept on the server in the reader's draft report.
function captureKeyImage() {
  reportStatus.textContent = gettext("Keeping…");
  send({ type: "report_capture", view: activeView });
}

function receiveReportCaptured(message) {
  const count = Number.isInteger(message.key_images) ? message.key_images : 0;
  reportStatus.textContent = interpolate(ngettext("kept: report v%(version)s holds %(count)s key image",
                                                   "kept: report v%(version)s holds %(count)s key images", count),
                                         { version: message.version, count }, true);
  reportLink.textContent = interpolate(gettext("Report: draft (v%(version)s)"), { version: message.version }, true);
}

reportCaptureButton.addEventListener("click", captureKeyImage);

// The finding this page kept is the new one with the points it measured: it is drawn from the
// shape on screen (a sphere with its radius); every other finding from the plane it names.
function receiveFindings(message) {
  forgetAsked = false;
  findings = (Array.isArray(message.findings) ? message.findings : [])
    .filter((finding) => finding && Number.isInteger(finding.id));
  if (keepAsked) {
    const fresh = findings.filter((finding) => !keepAsked.known.has(finding.id)
      && finding.tool === keepAsked.shape.tool && samePoints(finding.points, keepAsked.shape.sent));
    if (fresh.length) {
      const id = Math.max(...fresh.map((finding) => finding.id));
      keptShapes.set(id, keepAsked.shape);
      if (shape && shape.sent === keepAsked.shape.sent) shape = null;  // it is a finding now
      keepLabel.value = "";
    }
    keepAsked = null;
    keepAskedAt = -Infinity;
  }
  const present = new Set(findings.map((finding) => finding.id));
  for (const id of keptShapes.keys()) if (!present.has(id)) keptShapes.delete(id);
  showFindings();
  showMeasurement();
  drawAllShapes();
}

function clearMeasurements() {
  dropShape();
  findings = [];
  documents = [];
  keptShapes.clear();
  keepAsked = null;
  showDocuments();
  showFindings();
}

// --- measurements from structured reports (DICOM SR) other systems stored: read, never edited ---

// Each shape's number of points; a graphic that does not fit is not drawn, its group still listed.
const DOCUMENT_SHAPES = { point: [1, 1], line: [2, 2], polyline: [2, Infinity], polygon: [3, Infinity] };
const DOCUMENT_OUTLINES = { point: ["grow", {}], line: ["line", {}], polyline: ["polygon", { closed: false }],
                            polygon: ["polygon", {}] };

function isRecord(value) {
  return Boolean(value) && typeof value === "object" && !Array.isArray(value);
}

function textOf(value) {
  return typeof value === "string" ? value : "";
}

function documentMeasurement(sent) {
  if (!isRecord(sent)) return null;
  const value = sent.value ?? null;
  if (value !== null && !Number.isFinite(value)) return null;
  return { name: textOf(sent.name), value, unit: textOf(sent.unit), qualifier: textOf(sent.qualifier) };
}

function documentGraphic(sent) {
  if (!isRecord(sent) || !Object.hasOwn(DOCUMENT_SHAPES, sent.shape)) return null;
  const [low, high] = DOCUMENT_SHAPES[sent.shape];
  const points = Array.isArray(sent.points_mm) ? sent.points_mm : [];
  const series = Array.isArray(sent.series) ? sent.series.filter((uid) => typeof uid === "string" && uid) : [];
  if (points.length < low || points.length > high || !points.every(isVector) || !series.length) return null;
  return { shape: sent.shape, points: points.map((point) => [...point]), series };
}

function documentGroup(sent) {
  if (!isRecord(sent)) return null;
  const measurements = Array.isArray(sent.measurements) ? sent.measurements.map(documentMeasurement) : [];
  return { label: textOf(sent.label), finding: textOf(sent.finding), site: textOf(sent.site),
           measurements: measurements.filter(Boolean), graphic: documentGraphic(sent.graphic) };
}

// The strings come from other systems: they are kept as text and only ever shown as text.
function structuredDocument(sent, at) {
  if (!isRecord(sent) || !Array.isArray(sent.groups)) return null;
  const groups = sent.groups.map(documentGroup).filter(Boolean)
    .map((group, index) => ({ ...group, id: `${at}.${index}` }));
  return groups.length ? { series: textOf(sent.series), title: textOf(sent.title), date: textOf(sent.date),
                           kind: textOf(sent.class), groups } : null;
}

function receiveDocuments(message) {
  const sent = Array.isArray(message.documents) ? message.documents : [];
  documents = sent.map(structuredDocument).filter(Boolean);
  showDocuments();
  showMeasurePanel();
  drawAllShapes();
}

function groupName(group) {
  return group.label || group.finding || gettext("unnamed");
}

function documentMeasurementText({ name, value, unit, qualifier }) {
  const said = value === null ? qualifier || "–" : `${readerNumber(value)}${unit ? ` ${unit}` : ""}`;
  return name ? `${name} ${said}` : said;
}

function documentGroupItem(group) {
  const item = element("li", "document-group");
  item.dataset.documentGroup = group.id;
  item.append(element("div", "document-group-label", groupName(group)));
  const what = [group.finding, group.site].filter(Boolean).join(" · ");
  if (what) item.append(element("div", "document-group-what", what));
  const measurements = element("ul", "document-measurements");
  measurements.append(...group.measurements.map((measurement) =>
    element("li", "document-measurement", documentMeasurementText(measurement))));
  if (group.measurements.length) item.append(measurements);
  return item;
}

function documentItem(report) {
  const item = element("li", "document");
  item.dataset.series = report.series;
  const heading = element("h3", "document-title",
                          [report.title || gettext("Structured report"), report.date].filter(Boolean).join(" · "));
  if (report.kind) heading.title = report.kind;
  const groups = element("ul", "document-groups");
  groups.append(...report.groups.map(documentGroupItem));
  item.append(heading, groups);
  return item;
}

function showDocuments() {
  documentsSection.hidden = documents.length === 0;
  documentsList.replaceChildren(...documents.map(documentItem));
}

// Where a report's graphic lies on a view that shows one of its series with every point on the
// picture's plane, in canvas pixels; else null (a 3-D view, another slice or orientation).
function documentOn(graphic, view) {
  const picture = view.picture;
  if (!graphic || !picture || !picture.plane || view.kind === "3d"
    || !graphic.series.some((uid) => view.layers.includes(uid))) return null;
  const projected = graphic.points.map((point) => toScreen(picture, point));
  if (!projected.every(({ depth }) => Math.abs(depth) <= PLANE_TOLERANCE_MM)) return null;
  return { points: projected.map(({ x, y }) => [x, y]) };
}

function documentShapes(view) {
  const nodes = [];
  for (const group of documents.flatMap((report) => report.groups)) {
    const placed = documentOn(group.graphic, view);
    if (!placed) continue;
    const [tool, how] = DOCUMENT_OUTLINES[group.graphic.shape];
    const node = svgNode("g", { class: `shape document ${group.graphic.shape}` });
    node.dataset.documentGroup = group.id;
    node.append(...outline(tool, placed, how), shapeLabel(placed, groupName(group)));
    nodes.push(node);
  }
  return nodes;
}

// --- the toolbar's tool menu and the panel ---

function buildMeasureControls() {
  const tools = measureTools();
  measureControls.hidden = tools.length === 0;
  measureSelect.replaceChildren(option("none", gettext("none (navigate)")),
    ...tools.map((tool) => option(tool, `${label(tool)} (${MEASURE_KEYS[tool]})`)));
  if (!offeredTools().includes(measureTool)) measureTool = "none";
  radiusControl.hidden = !tools.includes("sphere");
  showMeasureControls();
  showMeasurePanel();
  showMeasurement();
}

function showMeasureControls() {
  measureSelect.value = measureTool;
  measureSelect.disabled = !measuringOffered();
  radiusInput.disabled = !measuringOffered();
  // Their room is kept while another tool is on, so choosing grow never wraps the toolbar
  // and moves the views under the pointer.
  growControls.hidden = !measureTools().includes("grow") || !measuringOffered();
  growControls.classList.toggle("idle", measureTool !== "grow");
  const view = views[activeView];
  measureSelect.title = measuringRefused ? gettext("measuring is not permitted here")
    : view && view.kind === "3d" ? gettext("the measuring tools draw on 2-D views") : "";
  root.dataset.measureTool = measuringOn(view) ? measureTool : "none";
}

function showMeasurePanel() {
  const wasHidden = measurePanel.hidden;
  // Reports stored in the study are for reading: shown even to whoever may not measure.
  measurePanel.hidden = measureTools().length === 0 && findings.length === 0 && documents.length === 0
    && segmentationSection.hidden && registrationSection.hidden && layersSection.hidden && deriveSection.hidden;
  measureSection.hidden = !measuringOffered();
  measureRefusedNote.hidden = !measuringRefused;
  // The views get the room the panel leaves: their canvases follow.
  if (wasHidden !== measurePanel.hidden && views.length) requestAnimationFrame(sendSizes);
}

// --- menus and the key map, built from the announced vocabulary ------------------

// The protocol's names as menus and texts show them; a name not listed reads as itself, its
// underscores as spaces (a filter or parameter the server adds).
const LABELS = {
  kind: gettext("view"), volume_preset: gettext("3-D preset"), "3d": gettext("3-D"), mip: "MIP", minip: "MinIP",
  petct: "PET/CT", suv_0_5: "SUV 0–5", suv_0_10: "SUV 0–10", ct_bone: gettext("CT bone"),
  ct_soft_tissue: gettext("CT soft tissue"), ct_lung: gettext("CT lung"), pet_mip: "PET MIP",
  compare: gettext("Compare with prior"), suv: "SUV", suv_fraction: gettext("SUV fraction"), otsu: "Otsu",
  window_preset: gettext("window preset"), slab_mode: gettext("slab mode"), slab_thickness: gettext("slab thickness"),
  native: gettext("native"), axial: gettext("axial"), coronal: gettext("coronal"), sagittal: gettext("sagittal"),
  oblique: gettext("oblique"), none: gettext("none"), average: gettext("average"),
  abdomen: gettext("abdomen"), lung: gettext("lung"), bone: gettext("bone"), brain: gettext("brain"),
  grey: gettext("grey"), hot_iron: gettext("hot iron"), rainbow: gettext("rainbow"), inverted: gettext("inverted"),
  line: gettext("line"), ellipse: gettext("ellipse"), rectangle: gettext("rectangle"), polygon: gettext("polygon"),
  sphere: gettext("sphere"), grow: gettext("grow"), threshold: gettext("threshold"),
  range: gettext("range"), confidence: gettext("confidence"),
  brush: gettext("brush"), erase: gettext("erase"), fill_holes: gettext("fill holes"), islands: gettext("islands"),
  largest: gettext("largest"), clear: gettext("clear"), interpolate: gettext("interpolate"), labels: gettext("labels"),
  low: gettext("low"), high: gettext("high"), unit: gettext("unit"), iterations: gettext("iterations"),
  rigid: gettext("rigid"), affine: gettext("affine"), landmarks: gettext("landmarks"), manual: gettext("manual"),
  difference: gettext("difference"), ratio: gettext("ratio"), weighted_sum: gettext("weighted sum"),
};

function label(name) {
  return LABELS[name] || String(name).replaceAll("_", " ").replace(/^(\d)x(\d)$/, "$1×$2");
}

function option(value, text) {
  const node = element("option", "", text);
  node.value = value;
  return node;
}

function fillSelect(select, choices, placeholder) {
  const options = choices.map((choice) => option(choice, label(choice)));
  if (placeholder) options.unshift(option("", placeholder));
  select.replaceChildren(...options);
  select.closest("label").hidden = choices.length === 0;
}

function fillRange(input, rule) {
  const known = Boolean(rule) && typeof rule.min === "number";
  input.closest("label").hidden = !known;
  if (known) { input.min = String(rule.min); input.max = String(rule.max); }
}

// The window-preset menu: the server's named presets, then the active series' own
// (`ready.series[].windows`: its windows and VOI LUTs, sent as the `voi` setting).
function fillWindowPresets(view) {
  fillSelect(windowPresetSelect, choicesOf("window_preset"), gettext("preset…"));
  const series = seriesOfView(view);
  const own = vocabulary.settings.voi && series && Array.isArray(series.windows) ? series.windows : [];
  own.forEach((preset, index) => windowPresetSelect.append(
    option(`voi:${index}`, interpolate(gettext("file: %(name)s"), { name: preset.name }, true))));
  if (own.length) windowPresetSelect.closest("label").hidden = false;
}

function buildMenus() {
  fillSelect(layoutSelect, vocabulary.layouts);
  fillSelect(kindSelect, choicesOf("kind"));
  fillWindowPresets(views[activeView]);
  fillSelect(paletteSelect, choicesOf("palette"));
  fillSelect(slabModeSelect, choicesOf("slab_mode"));
  fillRange(slabThicknessInput, vocabulary.settings.slab_thickness);
  fillSelect(volumePresetSelect, choicesOf("volume_preset"), gettext("3-D preset…"));
  fillRange(opacityInput, vocabulary.settings.opacity);
  buildMeasureControls();
  buildSegmentTools();
}

// The key map is the client's: keys name a setting and a choice (or cycle through the
// announced choices); a key whose setting or choice is not announced is left out.
const SCROLL_KEYS = [["ArrowUp", "↑", 1], ["ArrowDown", "↓", -1],
                     ["PageUp", "PgUp", 10], ["PageDown", "PgDn", -10]];
const KIND_LETTERS = { native: "i", axial: "a", coronal: "c", sagittal: "s", oblique: "o", "3d": "v" };
const SLAB_KEYS = [["[", 10], ["]", 40]];
let keyMap = new Map();

function keyEntries() {
  return [
    ...SCROLL_KEYS.map(([key, shown, delta]) => ({ key, shown, input: "scroll", args: { delta },
      text: interpolate(ngettext("scroll %(delta)s slice", "scroll %(delta)s slices", Math.abs(delta)),
                        { delta: `${delta > 0 ? "+" : ""}${delta}` }, true) })),
    ...choicesOf("window_preset").slice(0, 9)
      .map((value, at) => ({ key: String(at + 1), setting: "window_preset", value })),
    ...choicesOf("kind").filter((kind) => KIND_LETTERS[kind])
      .map((value) => ({ key: KIND_LETTERS[value], setting: "kind", value })),
    { key: "m", setting: "slab_mode", cycle: true },
    { key: "n", setting: "slab_mode", value: "none" },
    ...SLAB_KEYS.map(([key, value]) => ({ key, setting: "slab_thickness", value, unit: " mm" })),
    { key: "p", setting: "volume_preset", cycle: true },
    { key: "r", input: "reset", args: {}, text: gettext("reset window, zoom, pan, plane and crosshair") },
    { key: ",", requires: "time", act: (view) => stepTime(view, -1),
      text: gettext("previous time point (a dynamic series)") },
    { key: ".", requires: "time", act: (view) => stepTime(view, 1),
      text: gettext("next time point (a dynamic series)") },
    { key: "x", act: toggleCrosshair, text: gettext("reference lines on/off") },
    { key: " ", shown: pgettext("keyboard key", "space"), act: toggleCine,
      text: gettext("cine play/pause (a dynamic series: its time points)") },
    ...offeredTools().map((tool) => ({ key: MEASURE_KEYS[tool], act: () => chooseTool(tool),
      text: interpolate(gettext("measure: %(tool)s"), { tool: label(tool) }, true) })),
    ...(offeredTools().includes("polygon")
      ? [{ key: "Enter", act: closePolygon, text: gettext("close the polygon being drawn") }] : []),
    ...(measuringOffered()
      ? [{ key: "Escape", shown: "Esc", act: escapeMeasuring,
           text: gettext("cancel the shape being drawn; again: stop measuring (normal navigation)") }] : []),
    ...(segmentationEditable()
      ? [{ key: "Ctrl+Z", chord: true, sends: { type: "seg_undo" }, text: gettext("segmentation: undo the last edit") },
         { key: "Ctrl+Y", shown: "Ctrl+Y / Ctrl+Shift+Z", chord: true, sends: { type: "seg_redo" },
           text: gettext("segmentation: redo the edit undone") }] : []),
    { key: "?", act: toggleHelp, text: gettext("show or hide this key map") },
  ].filter(keyAnnounced);
}

// The server's toolbox (mouse modes and quick functions) first; a key of the client's own table
// that the toolbox takes is the toolbox's.
function allKeyEntries() {
  const toolbox = toolboxKeyEntries();
  const taken = new Set(toolbox.map((entry) => entry.key));
  return [...toolbox, ...keyEntries().filter((entry) => !taken.has(entry.key))];
}

function keyAnnounced(entry) {
  if (entry.requires && !inputAnnounced(entry.requires)) return false;
  if (entry.input) return inputAnnounced(entry.input);
  if (entry.cycle) return choicesOf(entry.setting).length > 0;
  return !entry.setting || accepts(entry.setting, entry.value);
}

function keyText(entry) {
  if (entry.text) return entry.text;
  if (entry.cycle) {
    return interpolate(gettext("%(setting)s: next of %(choices)s"),
                       { setting: label(entry.setting), choices: choicesOf(entry.setting).map(label).join(" → ") }, true);
  }
  return `${label(entry.setting)}: ${label(entry.value)}${entry.unit || ""}`;
}

// What the key sends, in protocol words, so the map can be checked against the handler.
function keySends(entry) {
  if (entry.sends) return entry.sends;
  if (entry.input) return { type: "input", op: entry.input, ...entry.args };
  if (!entry.setting) return null;
  return entry.cycle ? { type: "set", name: entry.setting, next_of: choicesOf(entry.setting) }
    : { type: "set", name: entry.setting, value: entry.value };
}

function helpRow(shown, text) {
  const row = element("div", "help-row");
  const term = element("dt");
  term.append(element("kbd", "", shown));
  row.append(term, element("dd", "", text));
  return row;
}

function buildKeyMap() {
  const entries = allKeyEntries();
  // A chord (Ctrl+Z) is handled by segmentationKey: the map holds keys pressed alone.
  keyMap = new Map(entries.filter((entry) => !entry.chord).map((entry) => [entry.key, entry]));
  keyMapList.replaceChildren(...entries.map((entry) => {
    const row = helpRow(entry.shown || entry.key, keyText(entry));
    row.dataset.key = entry.key;
    if (entry.toolbox) row.dataset.toolbox = entry.toolbox;
    const sends = keySends(entry);
    if (sends) row.dataset.sends = JSON.stringify(sends);
    return row;
  }));
  mouseMapList.replaceChildren(...MOUSE_GESTURES.filter(gestureAnnounced)
    .map((gesture) => helpRow(gesture.shown, gesture.text)));
  buildToolbox();
}

function runKey(entry, view) {
  if (entry.act) entry.act(view);
  else if (entry.input) queueInput(view.index, entry.input, entry.args);
  else applySetting(view.index, entry.setting, entry.cycle ? nextChoice(view, entry.setting) : entry.value);
}

function keyboard(event, index) {
  const entry = keyMap.get(event.key);
  if (!entry || !views[index] || event.ctrlKey || event.metaKey || event.altKey) return;
  runKey(entry, views[index]);
  event.preventDefault();
}

function toggleCrosshair(view) {
  view.showCrosshair = !view.showCrosshair;
}

function toggleHelp() {
  help.open = !help.open;
}

// --- mouse modes and quick functions: `ready.vocabulary.toolbox` (rendering/toolbox.py) -------
// One table: the mode bar, the quick-function buttons, their keys and their rows in the key map
// are all made from it. A mode binds the left button (the others keep theirs); a quick
// function sends its input operation to the active view.

const ZOOM_PER_PIXEL = 0.01;
const PIXELS_PER_SLICE = 4;

function toolboxOf(announced) {
  const listed = (items) => (Array.isArray(items) ? items : [])
    .filter((item) => isRecord(item) && typeof item.name === "string" && typeof item.key === "string");
  return isRecord(announced) ? { modes: listed(announced.modes), quick: listed(announced.quick) }
    : { modes: [], quick: [] };
}

function toolboxModes() {
  return vocabulary.toolbox.modes.filter((mode) => (mode.name === "measure" ? measuringOffered()
    : !mode.input || inputAnnounced(mode.input)));
}

function toolboxQuick() {
  return vocabulary.toolbox.quick.filter((quick) => inputAnnounced(quick.name));
}

function keyShown(key) {
  return /^[A-Z]$/.test(key) ? interpolate(pgettext("keyboard key", "Shift+%(key)s"), { key }, true) : key;
}

function toolboxKeyEntries() {
  return [
    ...toolboxModes().map((mode) => ({
      key: mode.key, shown: keyShown(mode.key), toolbox: mode.name, act: () => chooseMode(mode.name),
      text: interpolate(gettext("left button: %(mode)s"), { mode: String(mode.label || mode.name) }, true) })),
    ...toolboxQuick().map((quick) => ({
      key: quick.key, shown: keyShown(quick.key), toolbox: quick.name, quick: true,
      act: (view) => runQuick(view, quick.name), sends: { type: "input", op: quick.name },
      text: String(quick.label || quick.name) })),
  ];
}

function currentMode() {
  if (measureTool !== "none") return "measure";
  const modes = toolboxModes();
  return modes.some((mode) => mode.name === mouseMode) ? mouseMode : (modes[0] ? modes[0].name : "window");
}

function chooseMode(name) {
  if (name === "measure") {
    if (measureTool === "none") chooseTool(offeredTools()[0] || "none");
  } else {
    mouseMode = name;
    if (measureTool !== "none") chooseTool("none");
  }
  showModeBar();
}

function runQuick(view, name) {
  if (!view || !inputAnnounced(name)) return;
  if (name === "link_all") linkedAll = !linkedAll;
  sendInput(view.index, name, {});
  showModeBar();
}

function toolboxButton(item, pressed) {
  const button = element("button", "", String(item.label || item.name));
  button.type = "button";
  button.dataset.toolbox = item.name;
  button.title = interpolate(gettext("%(function)s (key %(key)s)"),
                             { function: String(item.label || item.name), key: keyShown(item.key) }, true);
  if (pressed !== undefined) button.setAttribute("aria-pressed", String(pressed));
  return button;
}

function buildToolbox() {
  const modes = toolboxModes();
  modeBar.replaceChildren(...modes.map((mode) => {
    const button = toolboxButton(mode, false);
    button.addEventListener("click", () => chooseMode(mode.name));
    return button;
  }));
  modeBar.hidden = modes.length === 0;
  const quick = toolboxQuick();
  quickBar.replaceChildren(...quick.map((item) => {
    const button = toolboxButton(item, item.name === "link_all" ? linkedAll : undefined);
    button.addEventListener("click", () => runQuick(views[activeView], item.name));
    return button;
  }));
  quickBar.hidden = quick.length === 0;
  showModeBar();
}

function showModeBar() {
  const mode = currentMode();
  modeBar.querySelectorAll("button").forEach((button) => {
    button.setAttribute("aria-pressed", String(button.dataset.toolbox === mode));
  });
  const link = quickBar.querySelector('button[data-toolbox="link_all"]');
  if (link) link.setAttribute("aria-pressed", String(linkedAll));
}

// A left-button drag in the chosen mode (measuring draws from the press: see pointerdown).
function leftDrag(view, drag, dx, dy, event) {
  const { index, canvas } = view;
  const mode = currentMode();
  if (mode === "zoom") {
    queueInput(index, "zoom", { factor: Math.exp(-dy * ZOOM_PER_PIXEL) });
  } else if (mode === "pan") {
    queueInput(index, "pan", { dx: dx / canvas.width, dy: dy / canvas.height });
  } else if (mode === "scroll") {
    drag.rest = (drag.rest || 0) + dy / PIXELS_PER_SLICE;
    const whole = Math.trunc(drag.rest);
    drag.rest -= whole;
    if (whole) queueInput(index, "scroll", { delta: whole });
  } else if (mode === "rotate") {
    queueInput(index, "rotate", { dazimuth: dx * 0.5, delevation: dy * 0.5 });
  } else if (mode === "crosshair") {
    queueLatestInput(index, "focus", { x: Math.round(event.offsetX), y: Math.round(event.offsetY) });
  } else {
    queueInput(index, "window", { dc: dy * 2, dw: dx * 4 });
  }
}

// --- SUV of this reading: the method, and a weight or dose the header lacks ---------------

const suvBox = document.getElementById("suv");
const suvSummary = document.getElementById("suv-summary");
const suvMethod = document.getElementById("suv-method");
const suvSeries = document.getElementById("suv-series");
const suvInputs = document.getElementById("suv-inputs");
const suvWeight = document.getElementById("suv-weight");
const suvDose = document.getElementById("suv-dose");
let suvState = null;

function showSuv(state) {
  if (!state || !Array.isArray(state.methods)) return;
  suvState = state;
  const entries = Object.entries(state.series || {});
  suvBox.hidden = entries.length === 0;
  suvSummary.textContent = state.label || "SUV";
  suvMethod.replaceChildren(...state.methods.map((m) => option(String(m.name), String(m.label))));
  suvMethod.value = state.method;
  suvSeries.replaceChildren(...entries.map(([uid, facts]) => {
    const series = seriesByUid.get(uid);
    const name = series ? `${series.modality} ${series.description || ""}`.trim() : uid;
    const text = Number.isFinite(facts.factor)
      ? interpolate(gettext("%(series)s: %(suv)s factor %(factor)s"),
                    { series: name, suv: state.label, factor: facts.factor.toPrecision(4) }, true)
      : interpolate(gettext("%(series)s: no %(suv)s (%(missing)s)"),
                    { series: name, suv: state.label, missing: (facts.missing || []).join("; ") }, true);
    const item = element("li", Number.isFinite(facts.factor) ? "" : "suv-missing", text);
    const used = Array.isArray(facts.used) ? facts.used.map(String) : [];
    if (used.length) {
      item.append(element("div", "suv-used", interpolate(gettext("from: %(sources)s"), { sources: used.join(" · ") }, true)));
    }
    return item;
  }));
  const lacking = entries.find(([, facts]) => !Number.isFinite(facts.factor));
  suvInputs.hidden = !lacking || !measuringOffered();
  suvInputs.dataset.series = lacking ? lacking[0] : "";
}

suvMethod.addEventListener("change", () => {
  if (suvState && suvMethod.value !== suvState.method) send({ type: "suv", method: suvMethod.value });
});

suvInputs.addEventListener("submit", (event) => {
  event.preventDefault();
  const message = { type: "suv_inputs", series: suvInputs.dataset.series };
  const weight = parseFloat(suvWeight.value);
  const dose = parseFloat(suvDose.value);
  if (Number.isFinite(weight)) message.weight_kg = weight;
  if (Number.isFinite(dose)) message.dose_mbq = dose;
  if (message.series && (message.weight_kg !== undefined || message.dose_mbq !== undefined)) send(message);
});

// --- charts of a measurement: a histogram or time-activity curve the server makes -----------
// The picture is the server's (a PNG, sent as text like a thumbnail); the numbers come as a
// table of text beside it, never read off pixels. `ready.vocabulary.charts` says which
// chart is made of which tools (none announced: no button).

const chartControls = document.getElementById("chart-controls");
const chartHistogramButton = document.getElementById("chart-histogram");
const chartTacButton = document.getElementById("chart-tac");
const chartShown = document.getElementById("chart");
const CHART_TITLES = { histogram: gettext("Histogram"), tac: gettext("Time-activity curve") };
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
let chartAsked = null;  // the chart asked for ({ kind, view, tool, points }), until answered
let chart = null;       // the `chart` answer shown: it belongs to the measurement on screen
let chartValuesOpen = true;

function chartTools(kind) {
  const announced = vocabulary.charts && typeof vocabulary.charts === "object" ? vocabulary.charts[kind] : null;
  return Array.isArray(announced) ? announced : [];
}

// The region of the measurement on screen, as it was measured (a sphere with its radius).
function chartRegion() {
  if (!measuringOffered() || !measurement || !shape || !shape.closed) return null;
  if (measurement.view !== shape.view || measurement.tool !== shape.tool
    || !samePoints(measurement.points, shape.sent)) return null;
  const region = { view: measurement.view, tool: measurement.tool, points: measurement.points };
  if (shape.tool === "sphere") region.radius_mm = shape.sentRadius;
  if (shape.tool === "grow" && shape.sentGrow) Object.assign(region, shape.sentGrow);
  return region;
}

// A time-activity curve needs a dynamic series (several time points) among the view's layers.
function chartOffered(kind, region) {
  if (!region || !chartTools(kind).includes(region.tool)) return false;
  if (kind !== "tac") return true;
  const view = views[region.view];
  return Boolean(view) && view.layers.some((uid) => (seriesByUid.get(uid) || {}).time_points > 1);
}

function sameRegion(a, b) {
  return Boolean(a) && Boolean(b) && a.view === b.view && a.tool === b.tool && samePoints(a.points, b.points);
}

function showCharts() {
  const region = chartRegion();
  if (chart && !sameRegion(chart, region)) clearChart();  // another measurement: not its chart
  for (const [button, kind] of [[chartHistogramButton, "histogram"], [chartTacButton, "tac"]]) {
    button.hidden = !chartOffered(kind, region);
    button.disabled = Boolean(chartAsked) && chartAsked.kind === kind && sameRegion(chartAsked, region);
    button.setAttribute("aria-pressed", String(Boolean(chart) && chart.kind === kind));
  }
  chartControls.hidden = chartHistogramButton.hidden && chartTacButton.hidden;
}

function clearChart() {
  chart = null;
  chartShown.replaceChildren();
  delete chartShown.dataset.kind;
}

function askChart(kind) {
  const region = chartRegion();
  if (!chartOffered(kind, region)) return;
  chartAsked = { kind, ...region };
  send({ type: "chart", kind, ...region });
  chart = null;
  delete chartShown.dataset.kind;
  chartShown.replaceChildren(element("p", "hint", interpolate(gettext("%(chart)s: asked of the server…"),
                                                                { chart: CHART_TITLES[kind] }, true)));
  showCharts();
}

// Bin edges and curve values to five significant digits (a bin edge of 150.5 HU stays 150.5).
function chartNumber(value) {
  return Number.isFinite(value) ? String(Number(value.toPrecision(5))) : "–";
}

function chartTable(kind, item) {
  const numbers = item.table && typeof item.table === "object" ? item.table : {};
  const list = (name) => (Array.isArray(numbers[name]) ? numbers[name] : []);
  const unit = item.unit ? ` (${item.unit})` : "";
  let head;
  let rows;
  if (kind === "histogram") {
    const edges = list("edges");
    head = [`${pgettext("histogram bin", "from")}${unit}`, `${pgettext("histogram bin", "to")}${unit}`,
            pgettext("histogram bin", "count")];
    rows = list("counts").map((count, at) => [chartNumber(edges[at]), chartNumber(edges[at + 1]),
      Number.isInteger(count) ? String(count) : "–"]);
  } else {
    const means = list("mean");
    const maxima = list("max");
    head = [String(numbers.time_unit || gettext("time")), `${gettext("mean")}${unit}`, `${gettext("max")}${unit}`];
    rows = list("time").map((time, at) => [chartNumber(time), chartNumber(means[at]), chartNumber(maxima[at])]);
  }
  const table = element("table", "chart-values");
  const thead = element("thead");
  const headRow = element("tr");
  for (const name of head) {
    const cell = element("th", "", name);
    cell.scope = "col";
    headRow.append(cell);
  }
  thead.append(headRow);
  const body = element("tbody");
  for (const cells of rows) {
    const row = element("tr");
    row.append(...cells.map((text) => element("td", "", text)));
    body.append(row);
  }
  table.append(thead, body);
  return table;
}

function chartFigure(kind, item) {
  const figure = element("figure", "chart-figure");
  figure.dataset.series = String(item.series_id || "");
  figure.dataset.unit = String(item.unit || "");
  const voxels = Number.isInteger(item.voxels)
    ? ` · ${interpolate(ngettext("%(count)s voxel", "%(count)s voxels", item.voxels), { count: item.voxels }, true)}` : "";
  figure.append(element("figcaption", "", `${layerTitle(item.series_id, item.unit)}${voxels}`));
  if (typeof item.image === "string" && BASE64.test(item.image)) {
    const picture = element("img", "chart-picture");
    picture.alt = interpolate(gettext("%(chart)s of %(layer)s, drawn by the server"),
                              { chart: CHART_TITLES[kind], layer: layerTitle(item.series_id, item.unit) }, true);
    if (Number.isInteger(item.width) && Number.isInteger(item.height)) {
      picture.width = item.width;
      picture.height = item.height;
    }
    picture.src = `data:image/${item.encoding === "jpeg" ? "jpeg" : "png"};base64,${item.image}`;
    figure.append(picture);
  }
  const details = element("details", "chart-table");
  details.append(element("summary", "", gettext("values")), chartTable(kind, item));
  details.open = chartValuesOpen;
  details.addEventListener("toggle", () => { chartValuesOpen = details.open; });
  figure.append(details);
  return figure;
}

function receiveChart(message) {
  if (!chartAsked || message.kind !== chartAsked.kind || !sameRegion(message, chartAsked)) return;
  chartAsked = null;
  if (!sameRegion(message, chartRegion()) || !Array.isArray(message.charts)) {
    clearChart();
    showCharts();
    return;
  }
  chart = message;
  chartShown.dataset.kind = message.kind;
  chartShown.replaceChildren(element("p", "measure-caption", CHART_TITLES[message.kind] || gettext("Chart")),
    ...message.charts.filter((item) => item && typeof item === "object").map((item) => chartFigure(message.kind, item)));
  showCharts();
}

function chartFailed(message) {
  if (!chartAsked) return;
  const kind = chartAsked.kind;
  chartAsked = null;
  clearChart();
  if (message.code === "refused") refuseMeasuring();
  else chartShown.replaceChildren(element("p", "chart-failed", `${CHART_TITLES[kind]}: ${message.message}`));
  showCharts();
}

chartHistogramButton.addEventListener("click", () => askChart("histogram"));
chartTacButton.addEventListener("click", () => askChart("tac"));

// --- hanging: the built-in layouts and the reader's own rules -----------------------------
// The rules come from `ready.vocabulary.hanging_rules` and each `hanging_rules` message; a
// session that keeps none (a consultant's share) announces null and is offered layouts only.

const hangingMenu = document.getElementById("hanging");
const hangingLayouts = document.getElementById("hanging-layouts");
const hangingOwn = document.getElementById("hanging-own");
const hangingRules = document.getElementById("hanging-rules");
const hangingNone = document.getElementById("hanging-none");
const hangingSaveStart = document.getElementById("hanging-save-start");
const hangingSaveForm = document.getElementById("hanging-save");
const hangingName = document.getElementById("hanging-name");
const HANGING_NAME_LENGTH = 64;

function hangingRulesOf(announced) {
  if (!Array.isArray(announced)) return null;
  return announced.filter((rule) => rule && Number.isInteger(rule.id) && typeof rule.name === "string");
}

function hangingButton(className, text, onClick) {
  const button = element("button", className, text);
  button.type = "button";
  button.addEventListener("click", onClick);
  return button;
}

function hangingItem(...children) {
  const item = element("li", "hanging-item");
  item.append(...children);
  return item;
}

// Only a rule that fits this study can be chosen; any rule of the reader's can be deleted.
function showHanging(announced) {
  hangingLayouts.replaceChildren(...vocabulary.layouts.map((name) => {
    const button = hangingButton("hanging-layout", label(name), () => chooseHanging({ type: "layout", layout: name }));
    button.dataset.layout = name;
    button.setAttribute("aria-pressed", String(name === layout));
    return hangingItem(button);
  }));
  const rules = hangingRulesOf(announced);
  hangingOwn.hidden = rules === null;
  if (rules === null) { closeHangingSave(); return; }
  hangingRules.replaceChildren(...rules.map((rule) => {
    const apply = hangingButton("hanging-rule", rule.name, () => chooseHanging({ type: "hang", rule: rule.id }));
    apply.dataset.rule = String(rule.id);
    apply.disabled = rule.applies !== true;
    if (apply.disabled) apply.title = gettext("does not fit this study");
    if (rule.hospital === true) {
      apply.textContent = interpolate(gettext("%(name)s (hospital)"), { name: rule.name }, true);
      return hangingItem(apply);
    }
    const remove = hangingButton("hanging-delete", "×", () => send({ type: "hang_delete", rule: rule.id }));
    remove.dataset.rule = String(rule.id);
    remove.setAttribute("aria-label", interpolate(gettext("delete the rule %(name)s"), { name: rule.name }, true));
    return hangingItem(apply, remove);
  }));
  hangingNone.hidden = rules.length > 0;
}

function chooseHanging(message) {
  send(message);
  hangingMenu.open = false;
}

function openHangingSave() {
  hangingSaveForm.hidden = false;
  hangingSaveStart.hidden = true;
  hangingName.value = "";
  hangingName.focus();
}

function closeHangingSave() {
  hangingSaveForm.hidden = true;
  hangingSaveStart.hidden = false;
}

// The server takes the views as they are now; the reader names them.
function saveHanging(event) {
  event.preventDefault();
  const name = hangingName.value.trim().slice(0, HANGING_NAME_LENGTH);
  if (!name) { hangingName.focus(); return; }
  send({ type: "hang_save", name });
  closeHangingSave();
}

hangingSaveStart.addEventListener("click", openHangingSave);
hangingSaveForm.addEventListener("submit", saveHanging);
hangingName.addEventListener("keydown", (event) => { if (event.key === "Escape") closeHangingSave(); });
showHanging(null);

// --- segmentation: a label map the server keeps, edits and draws into the frames ------------
// The reader's clicks and strokes go out as `seg_edit` in canvas pixels with the tool's settings;
// the overlay arrives drawn into the frames and the numbers as `statistics`: none is made here.
// `ready.vocabulary.segment_tools` says which tools there are, their points and settings.

const MAX_SEGMENTS = 32;
// A stroke goes out as it is drawn, in pieces the server takes (at most 64 points an edit).
const STROKE_SEND_MS = 60;
const STROKE_SEND_POINTS = 16;
const STROKE_MAX_POINTS = 64;
const STROKE_TOOLS = new Set(["brush", "erase"]);
const SEGMENT_DEFAULTS = { radius_mm: "5", planar: true, box_mm: "20", fraction: "0.41", min_ml: "0.1",
                           multiplier: "2.5", iterations: "2" };
const SEGMENT_SETTING_NAMES = { box_mm: gettext("box ± mm"), radius_mm: gettext("radius mm"),
                                planar: gettext("on this plane only"), fraction: gettext("fraction of the max"),
                                min_ml: gettext("islands under ml"), multiplier: gettext("× SD") };
const TYPED_FIELDS = new Set(["text", "number", "search", "email", "url", "tel", "password"]);

let segmentations = [];       // the `segmentations` list: what this reading may open
let segmentationMayEdit = false;
let segmentation = null;      // the open one, as the last `segmentation` message gave it
let segmentTool = "none";
let activeSegment = 1;
let segmentAdded = null;      // the number asked for by Add segment, until it is listed
let segmentationCreated = false;
let segmentationChosen = "";  // chosen in the list by the reader, until another is opened
let segmentationStoring = false;
// The settings as typed, by name: a tool switched to finds the values shared with another (low, high).
const segmentValues = { ...SEGMENT_DEFAULTS };

function segmentToolRule(tool) {
  const rule = isRecord(vocabulary.segment_tools) ? vocabulary.segment_tools[tool] : null;
  const usable = isRecord(rule) && Array.isArray(rule.points) && rule.points.length === 2;
  return usable ? rule : null;
}

function segmentToolNames() {
  return Object.keys(isRecord(vocabulary.segment_tools) ? vocabulary.segment_tools : {}).filter(segmentToolRule);
}

function takesPoints(tool) {
  const rule = segmentToolRule(tool);
  return Boolean(rule) && rule.points[1] > 0;
}

function segmentationEditable() {
  return Boolean(segmentation) && segmentation.editable === true;
}

// As with measuring, a 3-D view has no plane to click on: there the mouse navigates.
function segmentingOn(view) {
  return segmentationEditable() && takesPoints(segmentTool) && Boolean(view) && view.kind !== "3d";
}

function segmentsOfOpen() {
  const segments = segmentation && Array.isArray(segmentation.segments) ? segmentation.segments : [];
  return segments.filter((segment) => isRecord(segment) && Number.isInteger(segment.number)
    && segment.number >= 1 && segment.number <= MAX_SEGMENTS);
}

function nextSegmentNumber() {
  const taken = new Set(segmentsOfOpen().map((segment) => segment.number));
  for (let number = 1; number <= MAX_SEGMENTS; number += 1) if (!taken.has(number)) return number;
  return null;
}

// --- what the server says ---

// The models IT registered, offered to whoever may edit: a run takes a while (a job in a worker).
let segmentationModels = [];
let modelRunning = null;

function receiveSegmentationJob(message) {
  if (message.state !== "running") return;  // the result (or the error) follows
  const model = segmentationModels.find((each) => each.id === message.model);
  modelRunning = model ? model.name : gettext("model");
  const tiles = Number.isInteger(message.total) && message.total > 0 && Number.isInteger(message.done);
  showSegmentationStatus(tiles
    ? interpolate(gettext("%(model)s: running… %(done)s/%(total)s tiles (its labels arrive as new segments)"),
                  { model: modelRunning, done: message.done, total: message.total }, true)
    : interpolate(gettext("%(model)s: running… (its labels arrive as new segments)"), { model: modelRunning }, true));
  showSegmentation();
}

function runModel() {
  const id = Number(segModelSelect.value);
  if (!Number.isInteger(id) || modelRunning !== null) return;
  segmentationSend({ type: "seg_model", model: id });
}

function receiveSegmentations(message) {
  segmentationModels = (Array.isArray(message.models) ? message.models : [])
    .filter((model) => isRecord(model) && Number.isInteger(model.id))
    .map((model) => ({ id: model.id, name: `${textOf(model.name)} ${textOf(model.version)}`.trim() }));
  segModelSelect.replaceChildren(...segmentationModels.map((model) => option(String(model.id), model.name)));
  segmentationMayEdit = message.may_edit === true;
  segmentations = (Array.isArray(message.segmentations) ? message.segmentations : [])
    .filter((listed) => isRecord(listed) && Number.isInteger(listed.id));
  showSegmentationList();
  showSegmentation();
}

function receiveSegmentation(message) {
  const sent = isRecord(message.segmentation) && Number.isInteger(message.segmentation.id)
    ? message.segmentation : null;
  const other = !sent || !segmentation || sent.id !== segmentation.id;
  segmentation = sent;
  if (other) segmentationChosen = "";
  if (sent && segmentationCreated) { segNewLabel.value = ""; segmentationCreated = false; }
  if (modelRunning !== null) {
    showSegmentationStatus(interpolate(gettext("%(model)s: done"), { model: modelRunning }, true));
    modelRunning = null;
  }
  const numbers = segmentsOfOpen().map((segment) => segment.number);
  if (segmentAdded !== null && numbers.includes(segmentAdded)) activeSegment = segmentAdded;
  segmentAdded = null;
  if (other || !numbers.includes(activeSegment)) activeSegment = numbers[0] ?? 1;
  if (!sent) segmentationStoring = false;
  if (!segmentationEditable()) chooseSegmentTool("none");
  showSegmentationList();
  showSegmentation();
  buildKeyMap();
}

function receiveSegmentationStored(message) {
  segmentationStoring = false;
  const count = (value) => (Number.isInteger(value) ? value : 0);
  const segments = count(message.segments);
  const frames = count(message.frames);
  const counts = {
    segments: interpolate(ngettext("%(count)s segment", "%(count)s segments", segments), { count: segments }, true),
    frames: interpolate(ngettext("%(count)s frame", "%(count)s frames", frames), { count: frames }, true),
  };
  showSegmentationStatus(interpolate(message.fractional === true
    ? gettext("stored in the study as DICOM SEG (fractional): %(segments)s, %(frames)s")
    : gettext("stored in the study as DICOM SEG: %(segments)s, %(frames)s"), counts, true));
  showSegmentation();
}

// An error answering a seg_ message is the segmentation's: it shows in its own status line,
// and measuring stays as it was.
function segmentationFailed(message) {
  if (typeof message.of !== "string" || !message.of.startsWith("seg_")) return false;
  if (message.of === "seg_store") segmentationStoring = false;
  if (message.of === "seg_model") modelRunning = null;
  if (message.of === "seg_new") segmentationCreated = false;
  if (message.of === "seg_segment") segmentAdded = null;
  showSegmentationStatus(`${message.code}: ${message.message}`, true);
  showSegmentation();
  return !segmentationSection.hidden;
}

function clearSegmentations() {
  segmentations = [];
  segmentationModels = [];
  modelRunning = null;
  segmentationMayEdit = false;
  receiveSegmentation({ segmentation: null });
}

function showSegmentationStatus(text, failed = false) {
  segStatus.textContent = text;
  segStatus.classList.toggle("failed", failed);
}

function segmentationSend(message) {
  showSegmentationStatus("");
  send(message);
}

// --- the panel ---

function segmentationName(listed) {
  const name = String(listed.label || gettext("unnamed"));
  if (!listed.by) return name;
  const by = listed.consultant ? interpolate(gettext("%(reader)s (consultant)"), { reader: listed.by }, true) : listed.by;
  return `${name} · ${by}`;
}

// The list shows what the reader chose in it, else the one open, else the first.
function showSegmentationList() {
  segList.replaceChildren(...segmentations.map((listed) => option(String(listed.id), segmentationName(listed))));
  const listed = segmentations.map((each) => String(each.id));
  const open = segmentation ? String(segmentation.id) : "";
  segList.value = [segmentationChosen, open].find((id) => listed.includes(id)) ?? listed[0] ?? "";
}

function showSegmentation() {
  const open = Boolean(segmentation);
  const editable = segmentationEditable();
  segmentationSection.hidden = segmentations.length === 0 && !segmentationMayEdit && !open;
  segChoose.hidden = segmentations.length === 0 && !open;
  segList.hidden = segmentations.length === 0;
  segOpenButton.hidden = segmentations.length === 0;
  segOpenButton.disabled = !segList.value || (open && segList.value === String(segmentation.id));
  segCloseButton.hidden = !open;
  segDeleteButton.hidden = !open || !editable;
  if (!open || segDeleteButton.dataset.armed !== String(segmentation.id)) {
    delete segDeleteButton.dataset.armed;
    segDeleteButton.textContent = gettext("Delete");
  }
  segNewForm.hidden = !segmentationMayEdit;
  segOpenPanel.hidden = !open;
  if (open) {
    segLabel.textContent = segmentationName(segmentation);
    segHistory.hidden = !editable;
    segUndoButton.disabled = segmentation.can_undo !== true;
    segRedoButton.disabled = segmentation.can_redo !== true;
    segSegmentsList.replaceChildren(...segmentsOfOpen().map(segmentRow));
    segEdit.hidden = !editable;
    segAddButton.disabled = nextSegmentNumber() === null;
    segStoreButton.disabled = segmentationStoring;
    showFractionalChoice();
    segModels.hidden = segmentationModels.length === 0;
    segModelRun.disabled = modelRunning !== null;
    segModelRun.textContent = modelRunning !== null ? gettext("Running…") : gettext("Run model");
    segStoreButton.textContent = segmentationStoring ? gettext("Storing…") : gettext("Store as DICOM SEG");
  } else {
    segSegmentsList.replaceChildren();
  }
  showSegmentTool();
  showMeasurePanel();
}

function segmentStatistics(number) {
  const statistics = isRecord(segmentation.statistics) ? segmentation.statistics : {};
  const measured = isRecord(statistics.segments) ? statistics.segments[String(number)] : null;
  if (!isRecord(measured) || !Number.isFinite(measured.volume_ml)) return gettext("empty");
  const unit = typeof statistics.unit === "string" && statistics.unit ? ` ${statistics.unit}` : "";
  return interpolate(gettext("%(volume)s · mean %(mean)s · max %(max)s"), { volume: shown(measured.volume_ml, " ml"),
    mean: shown(measured.mean), max: `${shown(measured.max)}${unit}` }, true);
}

function segmentInput(type, className, text) {
  const input = element("input", className);
  input.type = type;
  input.setAttribute("aria-label", text);
  return input;
}

// A reader who may edit gets the segment's controls; anyone else its colour and numbers.
function segmentRow(segment) {
  const { number } = segment;
  const name = typeof segment.name === "string" && segment.name ? segment.name
    : interpolate(gettext("Segment %(number)s"), { number }, true);
  const colour = typeof segment.colour === "string" && HEX_COLOUR.test(segment.colour)
    ? segment.colour.toLowerCase() : "#ff0000";
  const row = element("li", "seg-segment");
  row.dataset.segment = String(number);
  const head = element("div", "seg-segment-head");
  if (segmentationEditable()) {
    const chooser = element("label", "seg-active");
    const radio = segmentInput("radio", "seg-active-choice", interpolate(gettext("edit %(name)s"), { name }, true));
    radio.name = "seg-active";
    radio.value = String(number);
    radio.checked = number === activeSegment;
    radio.addEventListener("change", () => { if (radio.checked) activeSegment = number; });
    chooser.append(radio, element("span", "seg-segment-name", name));
    const swatch = segmentInput("color", "seg-colour", interpolate(gettext("colour of %(name)s"), { name }, true));
    swatch.value = colour;
    swatch.addEventListener("change", () => changeSegment(number, { colour: swatch.value.toLowerCase() }));
    const visible = segmentInput("checkbox", "seg-visible", interpolate(gettext("show %(name)s"), { name }, true));
    visible.checked = segment.visible !== false;
    visible.addEventListener("change", () => changeSegment(number, { visible: visible.checked }));
    const shownLabel = element("label", "seg-shown");
    shownLabel.append(visible, gettext("shown"));
    const opacity = segmentInput("range", "seg-opacity", interpolate(gettext("opacity of %(name)s"), { name }, true));
    Object.assign(opacity, { min: "0", max: "1", step: "0.05" });
    opacity.value = String(Number.isFinite(segment.opacity) ? segment.opacity : 0.5);
    opacity.addEventListener("change", () => changeSegment(number, { opacity: Number(opacity.value) }));
    head.append(swatch, chooser, shownLabel, opacity);
  } else {
    const swatch = element("span", "segment-swatch");
    swatch.style.backgroundColor = colour;
    head.append(swatch, element("span", "seg-segment-name", name));
  }
  row.append(head, element("div", "seg-statistics", segmentStatistics(number)));
  return row;
}

function changeSegment(number, change) {
  if (segmentationEditable()) segmentationSend({ type: "seg_segment", segment: number, ...change });
}

function addSegment() {
  const number = nextSegmentNumber();
  if (!segmentationEditable() || number === null) return;
  segmentAdded = number;
  segmentationSend({ type: "seg_segment", segment: number });
}

function openSegmentation() {
  const id = Number(segList.value);
  if (Number.isInteger(id) && segList.value !== "") segmentationSend({ type: "seg_open", segmentation: id });
}

function newSegmentation(event) {
  event.preventDefault();
  const text = cleanLabel(segNewLabel.value);
  if (!segmentationMayEdit || !views[activeView]) return;
  if (!text) { segNewLabel.focus(); return; }
  segmentationCreated = true;
  segmentationSend({ type: "seg_new", view: activeView, label: text });
}

function stepSegmentation(back) {
  if (!segmentationEditable() || segmentation[back ? "can_undo" : "can_redo"] !== true) return;
  segmentationSend({ type: back ? "seg_undo" : "seg_redo" });
}

// A fractional SEG holds a model's probabilities: offered only where a segment came from a model.
function showFractionalChoice() {
  const scored = segmentsOfOpen().some((segment) => segment.fractional === true);
  segFractionalChoice.hidden = !scored;
  if (!scored) segFractional.checked = false;
  segFractional.disabled = segmentationStoring;
}

function storeSegmentation() {
  if (!segmentationEditable() || segmentationStoring) return;
  segmentationStoring = true;
  const fractional = !segFractionalChoice.hidden && segFractional.checked;
  segmentationSend(fractional ? { type: "seg_store", fractional: true } : { type: "seg_store" });
  showSegmentation();
}

// --- the tool and its settings ---

function buildSegmentTools() {
  const tools = segmentToolNames();
  segToolSelect.replaceChildren(option("none", gettext("none (navigate)")),
                                ...tools.map((tool) => option(tool, label(tool))));
  if (!tools.includes(segmentTool)) segmentTool = "none";
  buildSegmentSettings();
  showSegmentTool();
}

function chooseSegmentTool(name) {
  const tool = segmentationEditable() && segmentToolNames().includes(name) ? name : "none";
  const changed = tool !== segmentTool;
  segmentTool = tool;
  if (tool !== "none") { chooseTool("none"); setLandmarking(false); }
  if (changed) { buildSegmentSettings(); drawAllShapes(); }
  showSegmentTool();
}

function showSegmentTool() {
  segToolSelect.value = segmentTool;
  const rule = segmentToolRule(segmentTool);
  segApplyButton.hidden = !rule || rule.points[0] !== 0;
  root.dataset.segmentTool = segmentingOn(views[activeView]) ? segmentTool : "none";
}

// Built when the tool changes, never on an answer: a field being typed in keeps its focus.
function buildSegmentSettings() {
  const rule = segmentToolRule(segmentTool);
  const required = new Set(rule && Array.isArray(rule.required) ? rule.required : []);
  const settings = rule && isRecord(rule.settings) ? Object.entries(rule.settings) : [];
  segSettings.replaceChildren(...settings.filter(([, setting]) => isRecord(setting))
    .map(([name, setting]) => segmentSettingField(name, setting, required.has(name))));
  segSettings.dataset.tool = segmentTool;
}

function segmentSettingField(name, rule, required) {
  const field = element("label", "seg-setting");
  field.dataset.setting = name;
  let input;
  if (Array.isArray(rule.choices)) {
    input = element("select");
    input.append(...rule.choices.map((choice) => option(String(choice), label(String(choice)))));
    if (!rule.choices.includes(segmentValues[name])) segmentValues[name] = rule.choices[0];
    input.value = segmentValues[name];
    input.addEventListener("change", () => { segmentValues[name] = input.value; });
  } else if (rule.flag) {
    input = element("input");
    input.type = "checkbox";
    input.checked = segmentValues[name] === true;
    input.addEventListener("change", () => { segmentValues[name] = input.checked; });
  } else {
    input = element("input");
    input.type = "number";
    if (typeof rule.min === "number") { input.min = String(rule.min); input.max = String(rule.max); }
    input.step = rule.integer ? "1" : "any";
    input.required = required;
    if (required) input.placeholder = gettext("required");
    input.value = segmentValues[name] ?? "";
    input.addEventListener("input", () => {
      segmentValues[name] = input.value;
      input.removeAttribute("aria-invalid");
      if (name === "radius_mm") drawAllShapes();  // the brush preview's size
    });
  }
  input.name = name;
  field.append(element("span", "seg-setting-name", SEGMENT_SETTING_NAMES[name] || label(name)), input);
  return field;
}

// The tool's settings as the fields give them, each held to its rule; null, with the fields
// that lack a value marked, where a required one is empty.
function segmentEditSettings(tool, pointCount) {
  const rule = segmentToolRule(tool);
  const required = new Set(Array.isArray(rule.required) ? rule.required : []);
  // A threshold at a point covers a box around it; without one, the whole series.
  if (tool === "threshold" && pointCount > 0) required.add("box_mm");
  const settings = {};
  const missing = [];
  for (const [name, setting] of Object.entries(isRecord(rule.settings) ? rule.settings : {})) {
    const value = segmentValues[name];
    if (!isRecord(setting) || (tool === "threshold" && name === "box_mm" && pointCount === 0)) continue;
    if (setting.flag) settings[name] = value === true;
    else if (Array.isArray(setting.choices)) { if (setting.choices.includes(value)) settings[name] = value; }
    else if (value === undefined || String(value).trim() === "" || !Number.isFinite(Number(value))) {
      if (required.has(name)) missing.push(name);
    } else settings[name] = clampToRule(Number(value), setting);
  }
  for (const input of segSettings.querySelectorAll("input[type='number']")) {
    if (missing.includes(input.name)) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  if (!missing.length) return settings;
  const names = missing.map((name) => SEGMENT_SETTING_NAMES[name] || label(name));
  const listed = names.reduce((first, second) => interpolate(gettext("%(first)s and %(second)s"), { first, second }, true));
  showSegmentationStatus(interpolate(gettext("%(tool)s needs %(settings)s"), { tool: label(tool), settings: listed }, true),
                         true);
  return null;
}

// One edit of the active segment; false where the settings are not complete (nothing is sent).
function segmentEdit(viewIndex, tool, points, { first = true } = {}) {
  if (!segmentationEditable() || !segmentToolRule(tool)) return false;
  const settings = segmentEditSettings(tool, points.length);
  if (!settings) return false;
  const message = { type: "seg_edit", view: viewIndex, tool, segment: activeSegment };
  if (points.length) {
    message.points = points.map((point) => point.map((value) => tenth(Math.max(-4096, Math.min(8192, value)))));
  }
  Object.assign(message, settings);
  // A stroke's later pieces keep what the first one's answer said.
  if (first) segmentationSend(message); else send(message);
  return true;
}

function applySegmentTool() {
  const rule = segmentToolRule(segmentTool);
  if (rule && rule.points[0] === 0) segmentEdit(activeView, segmentTool, []);
}

// --- on the canvas: a click, or a brush stroke ---

// A click edits at once (a grow or confidence seed is an edit of its own); a brush or erase press
// starts a stroke, answered by what the drag that follows adds to it.
function segmentPress(view, point) {
  if (!STROKE_TOOLS.has(segmentTool)) {
    segmentEdit(view.index, segmentTool, [point]);
    return null;
  }
  const stroke = { view: view.index, tool: segmentTool, points: [point], last: point, timer: null,
                   sent: 0, failed: false };
  strokeSchedule(stroke);
  return stroke;
}

function brushRadiusMm() {
  const rule = segmentToolRule(segmentTool);
  const value = Number(segmentValues.radius_mm);
  if (!rule || !isRecord(rule.settings) || String(segmentValues.radius_mm ?? "").trim() === ""
    || !Number.isFinite(value)) return null;
  return clampToRule(value, rule.settings.radius_mm);
}

// Points no further apart than half the brush: the server paints at each point, not between them.
function strokeStep(view) {
  const radius = brushRadiusMm();
  const mmPerPixel = view.picture && view.picture.mmPerPixel;
  return radius && mmPerPixel ? Math.max(1, radius / mmPerPixel / 2) : 4;
}

function strokeMove(view, stroke, point) {
  if (!stroke || stroke.failed) return;
  const [x0, y0] = stroke.last;
  const distance = Math.hypot(point[0] - x0, point[1] - y0);
  if (distance < 1) return;
  const steps = Math.ceil(distance / strokeStep(view));
  for (let at = 1; at <= steps; at += 1) {
    stroke.points.push([tenth(x0 + ((point[0] - x0) * at) / steps), tenth(y0 + ((point[1] - y0) * at) / steps)]);
  }
  stroke.last = point;
  if (stroke.points.length >= STROKE_SEND_POINTS) strokeSend(stroke);
  else strokeSchedule(stroke);
}

function strokeSchedule(stroke) {
  if (!stroke.timer) stroke.timer = setTimeout(() => strokeSend(stroke), STROKE_SEND_MS);
}

function strokeSend(stroke) {
  clearTimeout(stroke.timer);
  stroke.timer = null;
  while (stroke.points.length && !stroke.failed) {
    const piece = stroke.points.splice(0, STROKE_MAX_POINTS);
    stroke.failed = !segmentEdit(stroke.view, stroke.tool, piece, { first: stroke.sent === 0 });
    stroke.sent += 1;
  }
  stroke.points.length = 0;
}

function strokeEnd(stroke, point) {
  if (!stroke) return;
  const view = views[stroke.view];
  if (view) strokeMove(view, stroke, point);
  strokeSend(stroke);
}

function brushHover(view, point) {
  const at = point && STROKE_TOOLS.has(segmentTool) && segmentingOn(view) ? point : null;
  if (!at && !view.brushAt) return;
  view.brushAt = at;
  drawShapes(view);
}

// The brush's reach under the pointer: a disc of its radius on this view's picture.
function brushPreview(view) {
  const radius = brushRadiusMm();
  const mmPerPixel = view.picture && view.picture.mmPerPixel;
  if (!view.brushAt || !STROKE_TOOLS.has(segmentTool) || !segmentingOn(view) || !radius || !mmPerPixel) return null;
  const [x, y] = view.brushAt;
  return svgNode("circle", { class: `brush-preview ${segmentTool}`, cx: x, cy: y, r: tenth(radius / mmPerPixel) });
}

// --- keys: Ctrl+Z undoes, Ctrl+Y or Ctrl+Shift+Z redoes; a field being typed in keeps its own ---

function typing(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA") return true;
  return target.tagName === "INPUT" && TYPED_FIELDS.has(target.type);
}

function segmentationKey(event) {
  if (!(event.ctrlKey || event.metaKey) || event.altKey || typing(event.target) || !segmentationEditable()) return;
  const key = event.key.toLowerCase();
  const back = key === "z" && !event.shiftKey;
  const forward = (key === "z" && event.shiftKey) || (key === "y" && !event.shiftKey);
  if (!back && !forward) return;
  event.preventDefault();
  stepSegmentation(back);
}

segList.addEventListener("change", () => { segmentationChosen = segList.value; showSegmentation(); });
segOpenButton.addEventListener("click", openSegmentation);
segCloseButton.addEventListener("click", () => segmentationSend({ type: "seg_close" }));
// Deleting needs a second click: the label map and its edits go with it (undo cannot bring them back).
segDeleteButton.addEventListener("click", () => {
  if (!segmentation) return;
  if (segDeleteButton.dataset.armed !== String(segmentation.id)) {
    segDeleteButton.dataset.armed = String(segmentation.id);
    segDeleteButton.textContent = gettext("Delete? click again");
    return;
  }
  delete segDeleteButton.dataset.armed;
  segDeleteButton.textContent = gettext("Delete");
  segmentationSend({ type: "seg_delete", segmentation: segmentation.id });
});
segNewForm.addEventListener("submit", newSegmentation);
segUndoButton.addEventListener("click", () => stepSegmentation(true));
segRedoButton.addEventListener("click", () => stepSegmentation(false));
segAddButton.addEventListener("click", addSegment);
segToolSelect.addEventListener("change", () => chooseSegmentTool(segToolSelect.value));
segApplyButton.addEventListener("click", applySegmentTool);
segStoreButton.addEventListener("click", storeSegmentation);
segModelRun.addEventListener("click", runModel);
document.addEventListener("keydown", segmentationKey);

// --- registration: one series moved onto another's frame of reference ------------------------
// The server registers (automatically in a render worker, or from landmarks the reader clicks),
// shows each proposal at once in the views that fuse the two frames, and keeps it once accepted
// (a DICOM Spatial Registration in the fixed series' study). The panel sends what the reader asks
// and decides, and shows what the server says; no transform is computed here.

const registrationSection = document.getElementById("registration-section");
const regFixedSelect = document.getElementById("reg-fixed");
const regMovingSelect = document.getElementById("reg-moving");
const regKindSelect = document.getElementById("reg-kind");
const regRunButton = document.getElementById("reg-run");
const regRunning = document.getElementById("reg-running");
const regProgress = document.getElementById("reg-progress");
const regProgressText = document.getElementById("reg-progress-text");
const regCancelButton = document.getElementById("reg-cancel");
const regProposal = document.getElementById("reg-proposal");
const regProposalText = document.getElementById("reg-proposal-text");
const regNudges = document.getElementById("reg-nudges");
const regAcceptButton = document.getElementById("reg-accept");
const regRejectButton = document.getElementById("reg-reject");
const regFuseButton = document.getElementById("reg-fuse");
const regLandmarksButton = document.getElementById("reg-landmarks");
const regLandmarkCounts = document.getElementById("reg-landmark-counts");
const regRefine = document.getElementById("reg-refine");
const regLandmarksRunButton = document.getElementById("reg-landmarks-run");
const regLandmarksClearButton = document.getElementById("reg-landmarks-clear");
const regStatus = document.getElementById("reg-status");
const regList = document.getElementById("reg-list");

// As the protocol bounds them (rendering/protocol.py REGISTRATION_KINDS, LANDMARKS_MAX).
const REGISTRATION_KINDS = ["rigid", "affine"];
const REGISTRATION_MESSAGES = new Set(["reg_run", "reg_landmarks", "reg_nudge", "reg_decide"]);
const LANDMARKS = { min: 3, max: 32 };
const LANDMARK_ROLES = ["fixed", "moving"];
// One press of a nudge button: so far along, or about, one patient axis.
const NUDGES = [{ field: "translate_mm", step: 2, title: gettext("Move %(step)s mm") },
                { field: "rotate_deg", step: 1, title: gettext("Rotate %(step)s°") }];
// DICOM patient axes (LPS): where each one's + and − point, for the buttons' names.
const PATIENT_AXES = [{ name: "x", minus: gettext("the patient's right"), plus: gettext("the patient's left") },
                      { name: "y", minus: gettext("anterior"), plus: gettext("posterior") },
                      { name: "z", minus: gettext("the feet"), plus: gettext("the head") }];
const REGISTRATION_METHODS = { rigid: gettext("rigid (mutual information)"), affine: gettext("affine (mutual information)"),
                               landmarks: gettext("landmarks"), manual: gettext("adjusted by hand") };
const REGISTRATION_STATES = { running: gettext("running"), proposed: gettext("proposed"), accepted: gettext("accepted"),
                              rejected: gettext("rejected"), failed: gettext("failed"), cancelled: gettext("cancelled") };
const REGISTRATION_ENDS = {
  proposed: () => gettext("proposed: shown in the views that fuse the two series; accept, adjust or reject it"),
  accepted: () => gettext("accepted: added to the fixed series' study as a spatial registration"),
  rejected: () => gettext("rejected"),
  failed: (reason) => interpolate(gettext("failed: %(reason)s"), { reason: reason || gettext("no reason given") }, true),
  cancelled: (reason) => (reason ? interpolate(gettext("cancelled: %(reason)s"), { reason }, true) : gettext("cancelled")),
};
// Each sentence about one role's landmarks, whole for each role.
const LANDMARK_TEXTS = {
  fixed: {
    restarted: gettext("fixed landmarks begun again on view %(view)s: all of them come from one view"),
    most: ngettext("at most %(count)s fixed landmark", "at most %(count)s fixed landmarks", LANDMARKS.max),
    gone: gettext("view %(view)s no longer shows the fixed series: clear the landmarks and click them again"),
    moved: gettext("the fixed landmarks are not all on the picture view %(view)s shows now: "
      + "go back to where they were clicked, or clear them"),
  },
  moving: {
    restarted: gettext("moving landmarks begun again on view %(view)s: all of them come from one view"),
    most: ngettext("at most %(count)s moving landmark", "at most %(count)s moving landmarks", LANDMARKS.max),
    gone: gettext("view %(view)s no longer shows the moving series: clear the landmarks and click them again"),
    moved: gettext("the moving landmarks are not all on the picture view %(view)s shows now: "
      + "go back to where they were clicked, or clear them"),
  },
};
const SCINTIGRAPHY = new Set(["PT", "NM"]);
const FUSE_ANSWER_MS = 10000;

let registrationsKnown = new Map();  // id -> the registration as the server last described it
let registrationAsked = null;   // a reg_run / reg_landmarks not yet answered: { fixed, moving, known }
let registrationShown = null;   // the id of the reader's latest registration, shown in the panel
let registrationDeciding = false;
let registrationPair = { fixed: "", moving: "" };  // what the two selects show
let registrationChosen = false;  // the reader chose the pair: later `ready`s keep it
let fuseAsked = null;
let landmarking = false;
const landmarks = { fixed: noLandmarks(), moving: noLandmarks() };

// Landmarks of one role: all clicked on one view, whose base series it was then.
function noLandmarks() {
  return { view: null, series: "", points: [] };
}

// Registering is a reporting act: offered to whoever may store findings (`study.report`).
function registrationOffered() {
  return mayStoreFindings;
}

// The server registers volume series that reformat (a stack of slices placed in patient space).
function registrable(series) {
  return Boolean(series) && series.available !== false && series.kind === "volume" && series.mpr === true;
}

function seriesName(uid) {
  const series = seriesByUid.get(uid);
  if (!series) return gettext("another series");
  const name = [series.modality, series.description].filter(Boolean).join(" · ") || gettext("series");
  return studyOf(series) === studyUids[0] ? name : `${name} (${studyDate(studyOf(series))})`;
}

function shownRegistration() {
  return registrationShown === null ? null : registrationsKnown.get(registrationShown) || null;
}

function registrationOf(sent) {
  return isRecord(sent) && Number.isInteger(sent.id) ? sent : null;
}

// Fixed: the reader's choice, else the active view's series; moving: the reader's choice, else
// another series, a PET or NM one where there is one.
function fillRegistrationSeries() {
  const uids = seriesOrder.filter(registrable).map((series) => series.uid);
  const base = views[activeView] ? views[activeView].layers[0] : "";
  const wanted = registrationChosen ? registrationPair : { fixed: "", moving: "" };
  const fixed = [wanted.fixed, base, uids[0]].find((uid) => uid && uids.includes(uid)) || "";
  const others = uids.filter((uid) => uid !== fixed);
  const scintigraphy = others.find((uid) => SCINTIGRAPHY.has(seriesByUid.get(uid).modality));
  const moving = [wanted.moving, scintigraphy, others[0]].find((uid) => uid && others.includes(uid)) || "";
  for (const select of [regFixedSelect, regMovingSelect]) {
    select.replaceChildren(...uids.map((uid) => option(uid, seriesName(uid))));
  }
  showChoice(regFixedSelect, fixed);
  showChoice(regMovingSelect, moving);
  registrationPair = { fixed, moving };
  dropStaleLandmarks();
}

// Choosing the other select's series swaps the two.
function chooseRegistrationSeries(changed) {
  if (regFixedSelect.value === regMovingSelect.value) {
    if (changed === regFixedSelect) regMovingSelect.value = registrationPair.fixed;
    else regFixedSelect.value = registrationPair.moving;
  }
  registrationPair = { fixed: regFixedSelect.value, moving: regMovingSelect.value };
  registrationChosen = true;
  if (dropStaleLandmarks()) drawAllShapes();
  showRegistration();
}

function showRegistrationStatus(text, failed = false) {
  regStatus.textContent = text;
  regStatus.classList.toggle("failed", failed);
}

function showRegistration() {
  const offered = registrationOffered();
  registrationSection.hidden = !offered;
  if (!offered && landmarking) setLandmarking(false);
  const current = shownRegistration();
  const state = current ? current.state : null;
  const pair = Boolean(registrationPair.fixed && registrationPair.moving)
    && registrationPair.fixed !== registrationPair.moving;
  regRunButton.disabled = !pair || registrationAsked !== null || state === "running";
  regRunButton.textContent = registrationAsked !== null ? gettext("Registering…") : gettext("Register");
  regRunning.hidden = state !== "running";
  if (state === "running") showProgress(current);
  regCancelButton.disabled = registrationDeciding;
  regProposal.hidden = state !== "proposed";
  if (state === "proposed") regProposalText.textContent = describeProposal(current);
  for (const button of [regAcceptButton, regRejectButton, ...regNudges.querySelectorAll("button")]) {
    button.disabled = registrationDeciding;
  }
  showFuse();
  showLandmarks();
  showRegistrationList();
  showMeasurePanel();
}

// Iterations done of the total the server names; none named yet: an indeterminate bar.
function showProgress(current) {
  const total = Number.isInteger(current.total) && current.total > 0 ? current.total : null;
  const done = total && Number.isInteger(current.done) ? Math.max(0, Math.min(total, current.done)) : null;
  if (total) {
    regProgress.max = total;
    regProgress.value = done ?? 0;
  } else {
    regProgress.removeAttribute("value");
  }
  const how = registrationMethod(current.method);
  regProgressText.textContent = total ? `${how}: ${done ?? 0} / ${total}`
    : interpolate(gettext("%(method)s: starting…"), { method: how }, true);
}

function registrationMethod(method) {
  const named = textOf(method);
  return REGISTRATION_METHODS[named] || (named ? label(named) : gettext("registration"));
}

function describeProposal(current) {
  const pair = interpolate(gettext("%(method)s: %(moving)s onto %(fixed)s"), { method: registrationMethod(current.method),
    moving: seriesName(current.moving), fixed: seriesName(current.fixed) }, true);
  const quality = Number.isFinite(current.error_mm)
    ? interpolate(gettext("landmark error %(error)s mm (RMS)"), { error: readerNumber(current.error_mm) }, true)
    : Number.isFinite(current.metric)
      ? interpolate(gettext("metric %(metric)s"), { metric: readerNumber(current.metric) }, true) : "";
  if (!quality) return pair;
  return `${pair} · ${current.method === "manual"
    ? interpolate(gettext("%(quality)s before the adjustment"), { quality }, true) : quality}`;
}

function registrationItem(listed) {
  const item = element("li", "reg-item");
  item.dataset.registration = String(listed.id);
  item.dataset.state = textOf(listed.state);
  const method = textOf(listed.method);
  const state = textOf(listed.state);
  item.append(element("span", "reg-item-method", method ? label(method) : gettext("registration")), " ",
              element("span", "reg-item-pair", `${seriesName(listed.moving)} → ${seriesName(listed.fixed)}`), " ",
              element("span", "reg-item-state", REGISTRATION_STATES[state] || state));
  return item;
}

function showRegistrationList() {
  const listed = [...registrationsKnown.values()].sort((a, b) => a.id - b.id);
  regList.replaceChildren(...listed.map(registrationItem));
  regList.hidden = listed.length === 0;
}

// --- what the reader asks ---

function registrationAsk(fixed, moving) {
  registrationAsked = { fixed, moving, known: new Set(registrationsKnown.keys()) };
  registrationShown = null;
  registrationDeciding = false;
  showRegistrationStatus(gettext("asked…"));
  showRegistration();
}

function runRegistration() {
  const { fixed, moving } = registrationPair;
  if (regRunButton.disabled || !fixed || !moving || fixed === moving) return;
  const kind = REGISTRATION_KINDS.includes(regKindSelect.value) ? regKindSelect.value : REGISTRATION_KINDS[0];
  registrationAsk(fixed, moving);
  send({ type: "reg_run", fixed, moving, kind });
}

function decideRegistration(decision) {
  const current = shownRegistration();
  const when = decision === "cancel" ? "running" : "proposed";
  if (!current || current.state !== when || registrationDeciding) return;
  registrationDeciding = true;
  showRegistration();
  send({ type: "reg_decide", registration: current.id, decision });
}

function nudgeRegistration(field, axis, amount) {
  const current = shownRegistration();
  if (!current || current.state !== "proposed" || registrationDeciding) return;
  const change = { translate_mm: [0, 0, 0], rotate_deg: [0, 0, 0] };
  change[field][axis] = amount;
  send({ type: "reg_nudge", registration: current.id, ...change });
}

function buildNudges() {
  regNudges.replaceChildren(...NUDGES.map(({ field, step, title }) => {
    const row = element("div", "reg-nudge-row");
    row.append(element("span", "reg-nudge-name", interpolate(title, { step }, true)));
    PATIENT_AXES.forEach((axis, at) => {
      for (const sign of [-1, 1]) {
        const signed = `${sign < 0 ? "−" : "+"}${axis.name}`;
        const button = element("button", "reg-nudge", signed);
        button.type = "button";
        Object.assign(button.dataset, { field, axis: axis.name, sign: String(sign) });
        const text = field === "translate_mm"
          ? interpolate(gettext("move %(step)s mm towards %(direction)s (%(signed)s)"),
                        { step, direction: sign < 0 ? axis.minus : axis.plus, signed }, true)
          : interpolate(gettext("rotate %(angle)s° about the %(axis)s axis"),
                        { angle: `${sign < 0 ? "−" : "+"}${step}`, axis: axis.name }, true);
        button.title = text;
        button.setAttribute("aria-label", text);
        button.addEventListener("click", () => nudgeRegistration(field, at, sign * step));
        row.append(button);
      }
    });
    return row;
  }));
}

// --- fusing the moving series over the active view: a toggle, as the server takes `set fuse` ---

function showFuse() {
  const view = views[activeView];
  const moving = registrationPair.moving;
  const fused = Boolean(view && moving) && view.layers.slice(1).includes(moving);
  regFuseButton.hidden = !vocabulary.settings.fuse;
  regFuseButton.disabled = !view || !moving || view.layers[0] === moving;
  regFuseButton.setAttribute("aria-pressed", String(fused));
  regFuseButton.textContent = fused ? gettext("Take moving off active view") : gettext("Fuse moving over active view");
}

// The view's layers change as soon as it is pressed (the server answers with frames only); a
// refusal (another frame of reference not yet registered, no room for a layer) undoes it.
function fuseMoving() {
  const view = views[activeView];
  const uid = registrationPair.moving;
  if (!view || !uid || view.layers[0] === uid || !accepts("fuse", uid)) return;
  const on = !view.layers.includes(uid);
  view.layers = on ? [...view.layers, uid] : view.layers.filter((other, at) => at === 0 || other !== uid);
  fuseAsked = { view: view.index, uid, on, until: performance.now() + FUSE_ANSWER_MS };
  send({ type: "set", view: view.index, name: "fuse", value: uid });
  refreshControls();
}

function fuseRefused() {
  const { view: index, uid, on } = fuseAsked;
  fuseAsked = null;
  const view = views[index];
  if (!view) return;
  view.layers = on ? view.layers.filter((other, at) => at === 0 || other !== uid) : [...view.layers, uid];
  refreshControls();
}

// A frame with as many layers as were asked for says the server took it.
function fuseSettled(view, overlay) {
  if (!fuseAsked || fuseAsked.view !== view.index || !Array.isArray(overlay.windows)) return;
  if (overlay.windows.length === view.layers.length + view.overlays.length) fuseAsked = null;
}

// --- landmarks: pairs of points on the same structures, clicked on a view of each series ---

function landmarkingOn(view) {
  return landmarking && registrationOffered() && Boolean(view) && view.kind !== "3d";
}

// One click, one tool: landmarks switch the measuring and segmentation tools off, and back.
function setLandmarking(on) {
  landmarking = on && registrationOffered();
  if (landmarking) { chooseTool("none"); chooseSegmentTool("none"); }
  regLandmarksButton.setAttribute("aria-pressed", String(landmarking));
  root.dataset.landmarks = landmarking ? "on" : "off";
}

function landmarkRole(uid) {
  if (uid && uid === registrationPair.fixed) return "fixed";
  if (uid && uid === registrationPair.moving) return "moving";
  return null;
}

// A landmark keeps its place in patient mm where the frame names its plane (it stays on the
// anatomy through pan and zoom), else in the pixels of the picture it was clicked on.
function landmarkPress(view, point) {
  const role = landmarkRole(view.layers[0]);
  if (!role) {
    showRegistrationStatus(interpolate(gettext("view %(view)s shows neither the fixed nor the moving series: "
      + "no landmark there"), { view: view.index + 1 }, true), true);
    return;
  }
  if (!view.picture) return;
  let list = landmarks[role];
  if (list.view !== null && list.view !== view.index) {
    list = noLandmarks();
    landmarks[role] = list;
    showRegistrationStatus(interpolate(LANDMARK_TEXTS[role].restarted, { view: view.index + 1 }, true));
  } else {
    showRegistrationStatus("");
  }
  if (list.points.length >= LANDMARKS.max) {
    showRegistrationStatus(interpolate(LANDMARK_TEXTS[role].most, { count: LANDMARKS.max }, true), true);
    return;
  }
  list.view = view.index;
  list.series = view.layers[0];
  const picture = view.picture;
  list.points.push({ px: [...point], key: picture.key, mm: picture.plane ? toPatient(picture, point) : null });
  showLandmarks();
  drawAllShapes();
}

// Where a landmark lies on the picture its view shows now, in canvas pixels; null where that
// picture moved off it (another slice, or, without a plane, any move).
function landmarkOn(mark, view) {
  const picture = view.picture;
  if (!picture) return null;
  if (mark.mm) {
    if (!picture.plane) return null;
    const { x, y, depth } = toScreen(picture, mark.mm);
    return Math.abs(depth) <= PLANE_TOLERANCE_MM ? [x, y] : null;
  }
  return picture.key === mark.key ? mark.px : null;
}

function landmarksOf(role) {
  const list = landmarks[role];
  const view = list.view === null ? null : views[list.view];
  return view && view.layers[0] === list.series ? { list, view } : null;
}

function landmarkShapes(view) {
  const nodes = [];
  for (const role of LANDMARK_ROLES) {
    const placed = landmarksOf(role);
    if (!placed || placed.view !== view) continue;
    placed.list.points.forEach((mark, at) => {
      const point = landmarkOn(mark, view);
      if (!point) return;
      const [x, y] = point.map(tenth);
      const group = svgNode("g", { class: `landmark ${role}` });
      group.dataset.landmark = String(at + 1);
      const number = svgNode("text", { class: "landmark-number", x: x + 6, y: y - 6 });
      number.textContent = String(at + 1);
      group.append(svgNode("circle", { class: "landmark-mark", cx: x, cy: y, r: 4 }), number);
      nodes.push(group);
    });
  }
  return nodes;
}

function landmarksReady() {
  const [fixed, moving] = LANDMARK_ROLES.map((role) => landmarks[role].points.length);
  return fixed === moving && fixed >= LANDMARKS.min && fixed <= LANDMARKS.max;
}

function showLandmarks() {
  regLandmarksButton.setAttribute("aria-pressed", String(landmarking));
  regLandmarkCounts.textContent = interpolate(gettext("fixed %(fixed)s / moving %(moving)s"),
    { fixed: landmarks.fixed.points.length, moving: landmarks.moving.points.length }, true);
  regLandmarksRunButton.disabled = !landmarksReady() || registrationAsked !== null;
  regLandmarksClearButton.disabled = !landmarks.fixed.points.length && !landmarks.moving.points.length;
}

// Landmarks of a series that is no longer the fixed or the moving one go; true where some went.
function dropStaleLandmarks() {
  let dropped = false;
  for (const role of LANDMARK_ROLES) {
    if (landmarks[role].series && landmarks[role].series !== registrationPair[role]) {
      landmarks[role] = noLandmarks();
      dropped = true;
    }
  }
  return dropped;
}

function clearLandmarks() {
  for (const role of LANDMARK_ROLES) landmarks[role] = noLandmarks();
}

// The points as the views show them now: the server places them on the planes on screen.
function registerFromLandmarks() {
  if (!landmarksReady() || registrationAsked !== null) return;
  const sent = {};
  for (const role of LANDMARK_ROLES) {
    const placed = landmarksOf(role);
    if (!placed) {
      showRegistrationStatus(interpolate(LANDMARK_TEXTS[role].gone, { view: landmarks[role].view + 1 }, true), true);
      return;
    }
    const points = placed.list.points.map((mark) => landmarkOn(mark, placed.view));
    if (points.some((point) => !point)) {
      showRegistrationStatus(interpolate(LANDMARK_TEXTS[role].moved, { view: placed.view.index + 1 }, true), true);
      return;
    }
    sent[role] = { view: placed.view.index, series: placed.list.series,
                   points: points.map((point) => point.map((value) => tenth(Math.max(-4096, Math.min(8192, value))))) };
  }
  registrationAsk(sent.fixed.series, sent.moving.series);
  send({ type: "reg_landmarks", fixed_view: sent.fixed.view, moving_view: sent.moving.view,
         fixed_points: sent.fixed.points, moving_points: sent.moving.points, refine: regRefine.checked });
}

// --- what the server says ---

// The reader's latest ask is answered by the first registration of that pair the page has not
// seen before; from then on the panel follows that one.
function receiveRegistration(message) {
  const sent = registrationOf(message);
  if (!sent) return;
  const before = registrationsKnown.get(sent.id);
  registrationsKnown.set(sent.id, sent);
  const asked = registrationAsked;
  if (asked && !asked.known.has(sent.id) && sent.fixed === asked.fixed && sent.moving === asked.moving) {
    registrationAsked = null;
    registrationShown = sent.id;
  }
  if (sent.id === registrationShown) {
    if (!before || before.state !== sent.state) registrationDeciding = false;
    const end = REGISTRATION_ENDS[sent.state];
    showRegistrationStatus(end ? end(textOf(sent.reason)) : "", sent.state === "failed");
  }
  showRegistration();
}

function receiveRegistrations(message) {
  const listed = (Array.isArray(message.registrations) ? message.registrations : []).map(registrationOf)
    .filter(Boolean);
  const current = shownRegistration();
  registrationsKnown = new Map(listed.map((listedOne) => [listedOne.id, listedOne]));
  if (current && !registrationsKnown.has(current.id)) registrationsKnown.set(current.id, current);
  showRegistration();
}

// An error answering a reg_ message shows in the panel's own status line; a refused `set fuse`
// undoes the toggle and shows there too (the status line beside the study says it as well).
function registrationFailed(message) {
  if (fuseAsked && message.code === "refused" && message.of === "set" && message.view === fuseAsked.view
    && performance.now() < fuseAsked.until) {
    fuseRefused();
    showRegistrationStatus(interpolate(gettext("not fused: %(reason)s"), { reason: textOf(message.message) }, true), true);
    return false;
  }
  if (!REGISTRATION_MESSAGES.has(message.of)) return false;
  if (message.of === "reg_run" || message.of === "reg_landmarks") registrationAsked = null;
  if (message.of === "reg_decide") registrationDeciding = false;
  showRegistrationStatus(`${message.code}: ${textOf(message.message)}`, true);
  showRegistration();
  return !registrationSection.hidden;
}

// A new connection has no job or proposal of the old one.
function registrationReset() {
  registrationAsked = null;
  registrationShown = null;
  registrationDeciding = false;
  fuseAsked = null;
}

function clearRegistrations() {
  registrationReset();
  registrationsKnown = new Map();
  clearLandmarks();
  showRegistrationStatus("");
  showRegistration();
}

regKindSelect.replaceChildren(...REGISTRATION_KINDS.map((kind) => option(kind, label(kind))));
buildNudges();
regFixedSelect.addEventListener("change", () => chooseRegistrationSeries(regFixedSelect));
regMovingSelect.addEventListener("change", () => chooseRegistrationSeries(regMovingSelect));
regRunButton.addEventListener("click", runRegistration);
regCancelButton.addEventListener("click", () => decideRegistration("cancel"));
regAcceptButton.addEventListener("click", () => decideRegistration("accept"));
regRejectButton.addEventListener("click", () => decideRegistration("reject"));
regFuseButton.addEventListener("click", fuseMoving);
regLandmarksButton.addEventListener("click", () => { setLandmarking(!landmarking); showLandmarks(); });
regLandmarksRunButton.addEventListener("click", registerFromLandmarks);
regLandmarksClearButton.addEventListener("click", () => {
  clearLandmarks();
  showRegistrationStatus("");
  showLandmarks();
  drawAllShapes();
});

// --- the layers of the active view: the base, then each fused layer, in the order they are drawn ---
//
// Frames give each layer's window, palette and opacity in draw order, never its series: a row's
// series is the view's layer at that place, as `ready` and the reader's own changes name them. A
// hidden layer comes back with opacity 0 (the server keeps its opacity), so the page keeps what the
// reader hid, per view and series, and a frame that shows the layer again says it is shown.

const layersSection = document.getElementById("layers-section");
const layersList = document.getElementById("layers-list");
const LAYER_ANSWER_MS = 3000;
const layersHidden = new Map();  // `${view}|${layer key}` -> { opacity kept, until: while the hide is asked }
let layerAsks = [];  // the reader's changes not yet taken: { state (the view), at, undo, expect }
let layersShape = "";

function layerId(index, key) {
  return `${index}|${key}`;
}

function modalitiesOf(uids) {
  return JSON.stringify(uids.map((uid) => (seriesByUid.get(uid) || {}).modality || null));
}

function askedLayers(view) {
  const now = performance.now();
  layerAsks = layerAsks.filter((ask) => now < ask.at + LAYER_ANSWER_MS && views[ask.state.index] === ask.state);
  return layerAsks.filter((ask) => ask.state === view);
}

// A change of the layers themselves (order, a layer taken off, a fuse) shown ahead of the frames.
function layersMoving(view) {
  return askedLayers(view).some((ask) => ask.expect)
    || (fuseAsked !== null && fuseAsked.view === view.index && performance.now() < fuseAsked.until);
}

// By the latest frame's windows, each named by the view's layer at its place where the two agree;
// while a change of the layers is on its way, by the layers asked for.
function layerRows(view) {
  const windows = Array.isArray(view.layerWindows) ? view.layerWindows : [];
  const fromFrame = windows.length > 0 && !layersMoving(view);
  const count = fromFrame ? windows.length : view.layers.length;
  const aligned = count === view.layers.length;
  return Array.from({ length: count }, (_, index) => {
    const uid = aligned ? view.layers[index] : "";
    return { index, uid, key: uid || `#${index}`, window: fromFrame && isRecord(windows[index]) ? windows[index] : null };
  });
}

function layerName(row) {
  const series = seriesByUid.get(row.uid);
  return (series && (textOf(series.description) || textOf(series.modality)))
    || (row.window && textOf(row.window.modality)) || interpolate(gettext("layer %(number)s"), { number: row.index }, true);
}

function layerHidden(view, key) {
  return layersHidden.get(layerId(view.index, key)) || null;
}

// The opacity a fused layer has, shown or hidden (a hidden one keeps it on the server).
function layerOpacity(view, row) {
  const hidden = layerHidden(view, row.key);
  if (hidden && hidden.opacity !== undefined) return hidden.opacity;
  const asked = view.settings[`opacity:${row.key}`];
  if (asked !== undefined) return asked;
  return row.window && typeof row.window.opacity === "number" ? row.window.opacity : undefined;
}

function readLayers(view, overlay) {
  view.layerWindows = pictureWindows(view, overlay);
  const shown = JSON.stringify(view.layerWindows.map((window) => (isRecord(window) && window.modality) || null));
  // A frame that draws the layers asked for says the server took the change.
  layerAsks = layerAsks.filter((ask) => !(ask.state === view && ask.expect === shown));
  if (!layersMoving(view)) syncLayers(view);
}

function syncLayers(view) {
  for (const row of layerRows(view)) {
    if (row.index === 0 || !row.window) continue;
    const id = layerId(view.index, row.key);
    const hidden = layersHidden.get(id);
    const opacity = row.window.opacity;
    if (typeof opacity === "number") {
      if (opacity > 0 && hidden && performance.now() >= hidden.until) layersHidden.delete(id);
      if (!layersHidden.has(id)) report(view, `opacity:${row.key}`, opacity);
    }
    if (typeof row.window.palette === "string") report(view, `palette:${row.key}`, row.window.palette);
  }
}

function layerAsk(view, change) {
  askedLayers(view);
  layerAsks.push({ state: view, at: performance.now(), undo: () => {}, ...change });
}

function layerControls() {
  const settings = vocabulary.settings;
  return { visible: Boolean(settings.visible), opacity: Boolean(settings.opacity),
           palette: choicesOf("palette").length > 0, order: Boolean(settings.order), fuse: Boolean(settings.fuse) };
}

function layerButton(text, role, name, handler) {
  const button = element("button", `layer-${role}`, text);
  button.type = "button";
  button.dataset.role = role;
  button.title = name;
  button.setAttribute("aria-label", name);
  button.addEventListener("click", handler);
  return button;
}

function layerItem(view, row, name, count) {
  const item = element("li", row.index === 0 ? "layer-item layer-base" : "layer-item");
  item.dataset.layer = String(row.index);
  item.dataset.key = row.key;
  if (row.uid) item.dataset.series = row.uid;
  const title = element("span", "layer-name", name);
  if (row.index === 0) {
    item.append(title, " ", element("span", "layer-role", gettext("base")));
    return item;
  }
  const controls = layerControls();
  const index = view.index;
  if (controls.visible) {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.dataset.role = "visible";
    box.setAttribute("aria-label", interpolate(gettext("show %(name)s"), { name }, true));
    box.addEventListener("change", () => setLayerShown(index, row, box.checked));
    const shown = element("label", "layer-visible");
    shown.append(box, title);
    item.append(shown);
  } else {
    item.append(title);
  }
  if (controls.opacity) {
    const rule = vocabulary.settings.opacity;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.step = "0.05";
    slider.min = String(rule.min ?? 0);
    slider.max = String(rule.max ?? 1);
    slider.dataset.role = "opacity";
    slider.setAttribute("aria-label", interpolate(gettext("opacity of %(name)s"), { name }, true));
    slider.addEventListener("input", () => changeLayerOpacity(index, row, Number(slider.value)));
    const shown = element("output", "layer-opacity-value");
    const blend = element("label", "layer-opacity", gettext("Opacity"));
    blend.append(slider, shown);
    item.append(blend);
  }
  if (controls.palette) {
    const select = element("select", "layer-palette");
    select.dataset.role = "palette";
    select.setAttribute("aria-label", interpolate(gettext("palette of %(name)s"), { name }, true));
    select.replaceChildren(...choicesOf("palette").map((choice) => option(choice, label(choice))));
    select.addEventListener("change", () => setLayerPalette(index, row, select.value));
    const palette = element("label", "layer-palette-choice", gettext("Palette"));
    palette.append(select);
    item.append(palette);
  }
  if (controls.order && count > 2) {
    const moves = element("span", "layer-moves");
    moves.setAttribute("role", "group");
    moves.setAttribute("aria-label", interpolate(gettext("drawing order of %(name)s"), { name }, true));
    moves.append(layerButton("↑", "up", interpolate(gettext("move %(name)s up (drawn earlier)"), { name }, true),
                             () => moveLayer(index, row, row.index - 1)),
                 layerButton("↓", "down", interpolate(gettext("move %(name)s down (drawn later)"), { name }, true),
                             () => moveLayer(index, row, row.index + 1)));
    item.append(moves);
  }
  if (controls.fuse) {
    item.append(layerButton(gettext("Remove"), "remove", interpolate(gettext("remove %(name)s from the view"), { name }, true),
                            () => removeLayer(index, row)));
  }
  return item;
}

function fillLayerItem(view, row, item, count) {
  if (row.index === 0) return;
  const hidden = layerHidden(view, row.key) !== null;
  item.dataset.shown = String(!hidden);
  const box = item.querySelector("[data-role='visible']");
  if (box) box.checked = !hidden;
  const slider = item.querySelector("[data-role='opacity']");
  if (slider) {
    const opacity = layerOpacity(view, row);
    if (opacity !== undefined) slider.value = String(opacity);
    slider.nextElementSibling.textContent = opacity === undefined ? "" : `${Math.round(opacity * 100)}%`;
  }
  const select = item.querySelector("[data-role='palette']");
  if (select) {
    showChoice(select, view.settings[`palette:${row.key}`] ?? (row.window ? row.window.palette : undefined));
  }
  const up = item.querySelector("[data-role='up']");
  if (up) up.disabled = row.index <= 1 || !accepts("order", row.index - 1);
  const down = item.querySelector("[data-role='down']");
  if (down) down.disabled = row.index >= count - 1 || !accepts("order", row.index + 1);
  const remove = item.querySelector("[data-role='remove']");
  if (remove) remove.disabled = !row.uid || !accepts("fuse", row.uid);
}

// Shown when the active view has more than one layer; rows are made again only when the layers
// change (a slider being dragged stays the one in the hand), and focus stays on the same control.
function showLayers() {
  const view = views[activeView];
  const rows = view ? layerRows(view) : [];
  const wasHidden = layersSection.hidden;
  layersSection.hidden = rows.length < 2;
  if (wasHidden !== layersSection.hidden) showMeasurePanel();
  if (layersSection.hidden) {
    layersList.replaceChildren();
    layersShape = "";
    return;
  }
  const names = rows.map(layerName);
  const shape = JSON.stringify([view.index, rows.map((row) => row.key), names, choicesOf("palette"), layerControls()]);
  let focused = null;
  if (shape !== layersShape) {
    const inList = layersList.contains(document.activeElement) ? document.activeElement : null;
    if (inList) focused = { key: inList.closest(".layer-item").dataset.key, role: inList.dataset.role };
    layersShape = shape;
    layersList.replaceChildren(...rows.map((row, at) => layerItem(view, row, names[at], rows.length)));
  }
  rows.forEach((row, at) => fillLayerItem(view, row, layersList.children[at], rows.length));
  if (focused) refocusLayer(focused);
}

function refocusLayer({ key, role }) {
  const item = [...layersList.children].find((row) => row.dataset.key === key);
  const usable = (node) => node && !node.disabled;
  const pairs = { up: "down", down: "up" };
  const wanted = item && [item.querySelector(`[data-role='${role}']`), item.querySelector(`[data-role='${pairs[role]}']`)]
    .find(usable);
  const fallback = [...layersList.querySelectorAll("input, select, button")].find(usable);
  (wanted || fallback || layersList.closest("section")).focus?.();
}

// Shown or hidden at once; the frames (opacity 0 while hidden) never say it was hidden.
function setLayerShown(index, row, shown) {
  const view = views[index];
  if (!view || !accepts("visible", shown)) { showLayers(); return; }
  const id = layerId(index, row.key);
  const before = layersHidden.get(id);
  const kept = layerOpacity(view, { ...row, window: (view.layerWindows || [])[row.index] || null });
  if (shown) {
    layersHidden.delete(id);
    if (before && before.opacity !== undefined) ask(view, `opacity:${row.key}`, before.opacity);
  } else {
    layersHidden.set(id, { opacity: kept, until: performance.now() + ASKED_SHOWN_MS });
  }
  layerAsk(view, { undo: () => (before ? layersHidden.set(id, { ...before, until: 0 }) : layersHidden.delete(id)) });
  send({ type: "set", view: index, name: "visible", value: shown, layer: row.index });
  showLayers();
}

function changeLayerOpacity(index, row, value) {
  const view = views[index];
  if (!view || !accepts("opacity", value)) return;
  ask(view, `opacity:${row.key}`, value);
  const hidden = layersHidden.get(layerId(index, row.key));
  if (hidden) hidden.opacity = value;  // a hidden layer keeps it for when it is shown again
  layerAsk(view, {});
  queueSetting({ type: "set", view: index, name: "opacity", value, layer: row.index });
  showLayers();
}

function setLayerPalette(index, row, value) {
  const view = views[index];
  if (!view || !accepts("palette", value)) { showLayers(); return; }
  ask(view, `palette:${row.key}`, value);
  layerAsk(view, {});
  send({ type: "set", view: index, name: "palette", value, layer: row.index });
  showLayers();
}

function moveLayer(index, row, to) {
  const view = views[index];
  if (!view || to < 1 || !accepts("order", to)) return;
  if (row.uid && to < view.layers.length) {
    const before = [...view.layers];
    const layers = [...before];
    layers.splice(to, 0, ...layers.splice(row.index, 1));
    view.layers = layers;
    layerAsk(view, { expect: modalitiesOf(layers), undo: () => { view.layers = before; } });
  } else {
    layerAsk(view, {});
  }
  send({ type: "set", view: index, name: "order", value: to, layer: row.index });
  refreshControls();
}

// `set fuse` with a fused layer's series takes it off.
function removeLayer(index, row) {
  const view = views[index];
  if (!view || !row.uid || view.layers[0] === row.uid || !accepts("fuse", row.uid)) return;
  const before = [...view.layers];
  const id = layerId(index, row.uid);
  const hidden = layersHidden.get(id);
  view.layers = view.layers.filter((uid, at) => at === 0 || uid !== row.uid);
  layersHidden.delete(id);
  layerAsk(view, { expect: modalitiesOf(view.layers), undo: () => {
    view.layers = before;
    if (hidden) layersHidden.set(id, hidden);
  } });
  send({ type: "set", view: index, name: "fuse", value: row.uid });
  refreshControls();
}

// An error answering one of these `set`s (the status line shows it) undoes the latest change the
// page showed ahead of the server, and the latest frame, then the next, say the rest.
const NOT_AN_ANSWER = new Set(["render_failed", "frame_of_reference", "probe_failed", "chart_failed"]);

function layersRefused(message) {
  if ((message.of !== undefined && message.of !== "set") || NOT_AN_ANSWER.has(message.code)) return;
  const asked = views.flatMap((view) => askedLayers(view))
    .filter((ask) => message.view === undefined || ask.state.index === message.view)
    .sort((a, b) => a.at - b.at);
  if (!asked.length) return;
  const view = asked[asked.length - 1].state;
  asked[asked.length - 1].undo();
  layerAsks = layerAsks.filter((ask) => ask.state !== view);
  for (const name of Object.keys(view.asked)) {
    if (/^(opacity|palette):/.test(name)) delete view.asked[name];
  }
  for (const [id, hidden] of layersHidden) if (id.startsWith(`${view.index}|`)) hidden.until = 0;
  syncLayers(view);
  refreshControls();
}

// A new `ready`: the views are the server's; what the reader hid stays hidden where it still is.
function layersReady() {
  layerAsks = [];
  for (const id of [...layersHidden.keys()]) {
    const [index, key] = [Number(id.slice(0, id.indexOf("|"))), id.slice(id.indexOf("|") + 1)];
    if (!views[index] || !views[index].layers.slice(1).includes(key)) layersHidden.delete(id);
  }
  showLayers();
}

// A view that shows one series alone has no fused layer left.
function layersGone(index) {
  for (const id of [...layersHidden.keys()]) if (id.startsWith(`${index}|`)) layersHidden.delete(id);
  const view = views[index];
  if (view) {
    view.layerWindows = null;
    layerAsk(view, { expect: modalitiesOf(view.layers) });
  }
}

// --- filters and image arithmetic: derived series the server makes ---------------------------
// `ready.derive` (null for a reader who may not report) announces the filters, each with its
// parameters' ranges, and the arithmetic operations; the menus are built from it alone. The
// server validates and computes everything; the panel sends what the reader chose, shows the
// `derived` answers and lays a `filter_preview` picture over its view until that view's next frame.

const deriveSection = document.getElementById("derive-section");
const deriveFilterSelect = document.getElementById("derive-filter");
const deriveFilterAbout = document.getElementById("derive-filter-about");
const deriveParams = document.getElementById("derive-params");
const deriveDimsSelect = document.getElementById("derive-dims");
const deriveBase = document.getElementById("derive-base");
const derivePreviewButton = document.getElementById("derive-preview");
const deriveLive = document.getElementById("derive-live");
const deriveHideButton = document.getElementById("derive-hide");
const deriveFilterMake = document.getElementById("derive-filter-make");
const deriveOperationSelect = document.getElementById("derive-operation");
const deriveFormula = document.getElementById("derive-formula");
const deriveTerms = document.getElementById("derive-terms");
const deriveArithmeticMake = document.getElementById("derive-arithmetic-make");
const deriveSpaceSelect = document.getElementById("derive-space");
const deriveStatus = document.getElementById("derive-status");
const deriveResults = document.getElementById("derive-results");
const deriveReorientPart = document.getElementById("derive-reorient-part");
const deriveReorientSelect = document.getElementById("derive-reorient");
const deriveReorientAbout = document.getElementById("derive-reorient-about");
const deriveTurnsField = document.getElementById("derive-turns-field");
const deriveTurnsSelect = document.getElementById("derive-turns");
const deriveDegreesField = document.getElementById("derive-degrees-field");
const deriveDegreesInput = document.getElementById("derive-degrees");
const deriveCropInputs = [...document.querySelectorAll("#derive-crop-box input[data-edge]")];
const deriveCropView = document.getElementById("derive-crop-view");
const deriveUncrop = document.getElementById("derive-uncrop");
const deriveCropMake = document.getElementById("derive-crop-make");
const deriveReorientMake = document.getElementById("derive-reorient-make");

// As the protocol bounds them (rendering/protocol.py _parse_derive): up to four series, weights ±1e6.
const TERM_NAMES = ["A", "B", "C", "D"];
const WEIGHT_RANGE = { min: -1e6, max: 1e6 };
const ARITHMETIC_TERMS = { difference: 2, ratio: 2, weighted_sum: 4 };
const ARITHMETIC_FORMULAS = { difference: "w₁·A − w₂·B", ratio: "(w₁·A) / (w₂·B)",
                              weighted_sum: "w₁·A + w₂·B (+ w₃·C + w₄·D)" };
const DIMS_NAMES = { 2: gettext("2-D: each slice alone"), 3: gettext("3-D: the volume") };
const PREVIEW_ENCODINGS = new Set(["jpeg", "png"]);
const LIVE_PREVIEW_MS = 250;
const DERIVE_ANSWER_MS = 10000;

let deriveOffer = null;         // ready.derive, or null
let deriveOfferShown = "";      // the offer the menus were built from (JSON): rebuilt only when it changes
let deriveFilterName = "";      // the reader's filter
const deriveTyped = new Map();  // filter -> { parameter: the text in its box }, kept across filters and `ready`s
let deriveDims = 3;
let arithmeticOperation = "";
let arithmeticChosen = null;    // the series of each term the reader chose ("" none), or null: defaults
const arithmeticWeights = TERM_NAMES.map(() => "1");
let previewAsked = null;        // the filter_preview in flight: { until }
let previewAgain = false;       // a live change came while one was in flight
let liveTimer = null;
let deriveAsked = null;         // a `derive` not yet answered: a timer
const deriveJobs = new Map();   // id -> the latest `derived` message of that job

function filterSpecs() {
  const filters = deriveOffer && Array.isArray(deriveOffer.filters) ? deriveOffer.filters : [];
  return filters.filter((spec) => isRecord(spec) && textOf(spec.name) && Array.isArray(spec.params));
}

function filterSpec() {
  return filterSpecs().find((spec) => spec.name === deriveFilterName) || null;
}

function arithmeticOperations() {
  const listed = deriveOffer && Array.isArray(deriveOffer.arithmetic) ? deriveOffer.arithmetic : [];
  return listed.filter((name) => textOf(name));
}

function termCount() {
  return ARITHMETIC_TERMS[arithmeticOperation] || TERM_NAMES.length;
}

function baseOfActiveView() {
  const view = views[activeView];
  return view ? view.layers[0] || "" : "";
}

function showDeriveStatus(text, failed = false) {
  deriveStatus.textContent = text;
  deriveStatus.classList.toggle("failed", failed);
  delete deriveStatus.dataset.problem;
  delete deriveStatus.dataset.preview;
}

// What is wrong with what the reader typed shows while it is wrong, and goes once it is not.
function showInputProblem(problem) {
  if (problem) {
    showDeriveStatus(problem, true);
    deriveStatus.dataset.problem = "true";
  } else if (deriveStatus.dataset.problem) {
    showDeriveStatus("");
  }
}

function rangeText(rule) {
  const low = Number.isFinite(rule.minimum) ? rule.minimum : null;
  const high = Number.isFinite(rule.maximum) ? rule.maximum : null;
  const whole = Boolean(rule.integer);
  if (low !== null && high !== null) {
    return interpolate(whole ? gettext("a whole number from %(low)s to %(high)s")
      : gettext("a number from %(low)s to %(high)s"), { low, high }, true);
  }
  if (low !== null) {
    return interpolate(whole ? gettext("a whole number from %(low)s") : gettext("a number from %(low)s"), { low }, true);
  }
  if (high !== null) {
    return interpolate(whole ? gettext("a whole number up to %(high)s") : gettext("a number up to %(high)s"), { high }, true);
  }
  return whole ? gettext("a whole number") : gettext("a number");
}

// "sigma_mm" in mm reads "sigma (mm)".
function parameterName(rule) {
  const unit = textOf(rule.unit);
  const bare = unit && rule.name.endsWith(`_${unit}`) ? rule.name.slice(0, -unit.length - 1) : rule.name;
  return `${bare.replaceAll("_", " ")}${unit ? ` (${unit})` : ""}`;
}

function parameterField(spec, rule, typed) {
  const input = document.createElement("input");
  input.type = "number";
  input.dataset.param = rule.name;
  if (Number.isFinite(rule.minimum)) input.min = String(rule.minimum);
  if (Number.isFinite(rule.maximum)) input.max = String(rule.maximum);
  input.step = rule.integer ? "1" : "any";
  input.value = typed[rule.name] ?? String(rule.default ?? "");
  input.title = textOf(rule.description);
  input.setAttribute("aria-label", interpolate(gettext("%(parameter)s of the %(filter)s filter"),
                                              { parameter: parameterName(rule), filter: label(spec.name) }, true));
  input.addEventListener("input", () => {
    typed[rule.name] = input.value;
    showDerive();
    showInputProblem(filterParameters().problem);
    if (deriveLive.checked) scheduleLivePreview();
  });
  const field = element("label", "derive-param", parameterName(rule));
  field.dataset.param = rule.name;
  field.append(" ", input);
  return field;
}

function buildFilterFields() {
  const spec = filterSpec();
  deriveFilterAbout.textContent = spec ? textOf(spec.description) : "";
  if (!spec) { deriveParams.replaceChildren(); deriveDimsSelect.replaceChildren(); return; }
  if (!deriveTyped.has(spec.name)) deriveTyped.set(spec.name, {});
  const typed = deriveTyped.get(spec.name);
  deriveParams.replaceChildren(...spec.params.filter((rule) => isRecord(rule) && textOf(rule.name))
    .map((rule) => parameterField(spec, rule, typed)));
  const dims = (Array.isArray(spec.dims) ? spec.dims : [2, 3]).filter((d) => d === 2 || d === 3);
  deriveDimsSelect.replaceChildren(...dims.map((d) => option(String(d), DIMS_NAMES[d])));
  if (!dims.includes(deriveDims)) deriveDims = dims.includes(3) ? 3 : dims[0] || 3;
  deriveDimsSelect.value = String(deriveDims);
}

// Every parameter as a number within its announced range, or the first that is not (and why).
function filterParameters() {
  const spec = filterSpec();
  if (!spec) return { problem: gettext("no filter chosen") };
  const parameters = {};
  let problem = "";
  for (const field of deriveParams.querySelectorAll("input[data-param]")) {
    const rule = spec.params.find((each) => each.name === field.dataset.param);
    const value = field.value.trim() === "" ? NaN : Number(field.value);
    const ok = Number.isFinite(value) && !(Number.isFinite(rule.minimum) && value < rule.minimum)
      && !(Number.isFinite(rule.maximum) && value > rule.maximum) && !(rule.integer && !Number.isInteger(value));
    field.setAttribute("aria-invalid", String(!ok));
    if (!ok && !problem) problem = `${parameterName(rule)}: ${rangeText(rule)}`;
    parameters[rule.name] = value;
  }
  return problem ? { problem } : { parameters };
}

function buildTerms() {
  deriveTerms.replaceChildren(...TERM_NAMES.map((name, index) => {
    const select = element("select", "derive-term-series");
    select.setAttribute("aria-label", interpolate(gettext("series %(name)s"), { name }, true));
    select.addEventListener("change", chooseArithmeticSeries);
    const weight = document.createElement("input");
    weight.type = "number";
    weight.className = "derive-term-weight";
    weight.step = "any";
    weight.min = String(WEIGHT_RANGE.min);
    weight.max = String(WEIGHT_RANGE.max);
    weight.value = arithmeticWeights[index];
    weight.setAttribute("aria-label", interpolate(gettext("weight of series %(name)s"), { name }, true));
    weight.addEventListener("input", () => {
      arithmeticWeights[index] = weight.value;
      showDerive();
      showInputProblem(arithmeticMessage().problem);
    });
    const term = element("li", "derive-term");
    term.dataset.term = String(index);
    const seriesField = element("label", "", name);
    seriesField.append(" ", select);
    const weightField = element("label", "", `w${index + 1}`);
    weightField.append(" ", weight);
    term.append(seriesField, weightField);
    return term;
  }));
}

function termSelects() {
  return [...deriveTerms.querySelectorAll("select.derive-term-series")];
}

function termWeights() {
  return [...deriveTerms.querySelectorAll("input.derive-term-weight")];
}

// A: the reader's choice, else the active view's series; B: the reader's, else another. C and D
// (a weighted sum) are optional.
function fillArithmeticSeries() {
  const uids = seriesOrder.filter(registrable).map((series) => series.uid);
  const chosen = arithmeticChosen || [];
  const base = baseOfActiveView();
  const first = [chosen[0], base, uids[0]].find((uid) => uid && uids.includes(uid)) || "";
  const second = [chosen[1], uids.find((uid) => uid !== first)].find((uid) => uid && uids.includes(uid)) || "";
  const wanted = [first, second, ...[2, 3].map((at) => (uids.includes(chosen[at]) ? chosen[at] : ""))];
  termSelects().forEach((select, index) => {
    const options = uids.map((uid) => option(uid, seriesName(uid)));
    if (index >= 2) options.unshift(option("", gettext("— none —")));
    select.replaceChildren(...options);
    showChoice(select, wanted[index]);
  });
}

function chooseArithmeticSeries() {
  arithmeticChosen = termSelects().map((select) => select.value);
  showDerive();
  showInputProblem(arithmeticMessage().problem);
}

function chosenTerms() {
  const weights = termWeights();
  return termSelects().slice(0, termCount()).map((select, index) => ({
    uid: select.value, text: weights[index].value, input: weights[index], required: index < 2,
  }));
}

// The arithmetic message, or the first reason there is none.
function arithmeticMessage() {
  if (!arithmeticOperation) return { problem: gettext("no operation chosen") };
  const terms = chosenTerms();
  let problem = "";
  for (const term of terms) {
    const weight = term.text.trim() === "" ? NaN : Number(term.text);
    const ok = Number.isFinite(weight) && weight >= WEIGHT_RANGE.min && weight <= WEIGHT_RANGE.max;
    term.input.setAttribute("aria-invalid", String(Boolean(term.uid) && !ok));
    term.weight = weight;
    if (term.uid && !ok && !problem) {
      problem = interpolate(gettext("a weight is a number from %(low)s to %(high)s"),
                            { low: WEIGHT_RANGE.min, high: WEIGHT_RANGE.max }, true);
    }
  }
  const used = terms.filter((term) => term.uid);
  if (terms.some((term) => term.required && !term.uid)) problem = gettext("choose series A and B");
  else if (new Set(used.map((term) => term.uid)).size !== used.length) problem = gettext("choose different series");
  if (problem) return { problem };
  return { message: { type: "derive", operation: arithmeticOperation, series: used.map((term) => term.uid),
                      weights: used.map((term) => term.weight), space: deriveSpaceSelect.value } };
}

// --- the panel ---

// Built again only when the offer changes: a `ready` after a series is made keeps what the reader
// typed, chose and is typing.
function receiveDeriveOffer(offer) {
  deriveOffer = isRecord(offer) ? offer : null;
  const shown = JSON.stringify(deriveOffer);
  if (shown !== deriveOfferShown) {
    deriveOfferShown = shown;
    const filters = filterSpecs();
    deriveFilterSelect.replaceChildren(...filters.map((spec) => {
      const item = option(spec.name, label(spec.name));
      item.title = textOf(spec.description);
      return item;
    }));
    if (!filters.some((spec) => spec.name === deriveFilterName)) deriveFilterName = filters[0] ? filters[0].name : "";
    deriveFilterSelect.value = deriveFilterName;
    buildFilterFields();
    const operations = arithmeticOperations();
    deriveOperationSelect.replaceChildren(...operations.map((name) => option(name, label(name))));
    if (!operations.includes(arithmeticOperation)) arithmeticOperation = operations[0] || "";
    deriveOperationSelect.value = arithmeticOperation;
    buildReorientMenu();
  }
  if (!deriveOffer) { hidePreviews(); deriveLive.checked = false; }
  fillArithmeticSeries();
  showDeriveResults();
  showDerive();
}

function showDerive() {
  const offered = Boolean(deriveOffer);
  deriveSection.hidden = !offered;
  const base = baseOfActiveView();
  deriveBase.textContent = base ? seriesName(base) : gettext("no view");
  const filter = filterParameters();
  const asking = deriveAsked !== null;
  derivePreviewButton.disabled = !base || Boolean(filter.problem);
  deriveFilterMake.disabled = asking || Boolean(filter.problem) || !registrable(seriesByUid.get(base));
  deriveFilterMake.title = base && !registrable(seriesByUid.get(base))
    ? gettext("the active view's series is not a volume: only volume series are filtered into new series")
    : gettext("Make a new series: the active view's series filtered");
  const count = termCount();
  deriveTerms.querySelectorAll(".derive-term").forEach((term, index) => { term.hidden = index >= count; });
  deriveFormula.textContent = ARITHMETIC_FORMULAS[arithmeticOperation] || "";
  const arithmetic = arithmeticMessage();
  deriveArithmeticMake.disabled = asking || Boolean(arithmetic.problem);
  deriveArithmeticMake.title = arithmetic.problem
    || gettext("Make a new series of these series, each resampled onto the first");
  deriveHideButton.disabled = !views.some((view) => view.preview);
  showReorient(base, asking);
  showCrop(base, asking);
  showMeasurePanel();
}

// Each job's item is built again only when its state changes, so a focused button stays.
function fillDeriveResult(item, job) {
  item.dataset.state = textOf(job.state);
  const operation = textOf(job.operation);
  const what = textOf(job.description) || (operation ? label(operation) : gettext("series"));
  if (job.state === "running") {
    const bar = element("progress");
    bar.setAttribute("aria-label", interpolate(gettext("making %(what)s"), { what }, true));
    item.replaceChildren(element("span", "derive-result-text", interpolate(gettext("making %(what)s…"), { what }, true)),
                         bar);
  } else if (job.state === "done") {
    const show = element("button", "derive-show", gettext("Show in active view"));
    show.type = "button";
    show.dataset.series = textOf(job.series);
    show.addEventListener("click", () => showSeries(activeView, job.series));
    item.replaceChildren(element("span", "derive-result-text", interpolate(gettext("made: %(what)s"), { what }, true)),
                         show);
  } else {
    item.replaceChildren(element("span", "derive-result-text", interpolate(gettext("failed: %(reason)s"),
      { reason: textOf(job.reason) || gettext("no reason given") }, true)));
  }
}

function showDeriveResults() {
  const shown = new Map([...deriveResults.children].map((item) => [item.dataset.derived, item]));
  for (const job of [...deriveJobs.values()].sort((a, b) => a.id - b.id)) {
    let item = shown.get(String(job.id));
    if (!item) {
      item = element("li", "derive-result");
      item.dataset.derived = String(job.id);
      deriveResults.append(item);
    }
    if (item.dataset.state !== job.state) fillDeriveResult(item, job);
    const show = item.querySelector("button.derive-show");
    if (show) {
      const listed = seriesByUid.get(job.series);
      show.disabled = !listed || !listed.available;
      show.title = show.disabled ? gettext("waiting for the series list") : "";
    }
    shown.delete(String(job.id));
  }
  for (const item of shown.values()) item.remove();
  deriveResults.hidden = deriveJobs.size === 0;
}

// --- what the reader asks ---

function askDerive(message) {
  clearTimeout(deriveAsked);
  deriveAsked = setTimeout(() => { deriveAsked = null; showDerive(); }, DERIVE_ANSWER_MS);
  showDeriveStatus(gettext("asked…"));
  send(message);
  showDerive();
}

function makeFilterSeries() {
  const base = baseOfActiveView();
  const { parameters, problem } = filterParameters();
  if (deriveFilterMake.disabled || problem || !registrable(seriesByUid.get(base))) return;
  askDerive({ type: "derive", operation: deriveFilterName, series: [base], parameters, dims: deriveDims });
}

function makeArithmeticSeries() {
  const { message, problem } = arithmeticMessage();
  if (deriveArithmeticMake.disabled || problem) return;
  askDerive(message);
}

// One preview in flight at a time: a change meanwhile is sent once the answer (or error) is in.
function askPreview() {
  clearTimeout(liveTimer);
  liveTimer = null;
  const { parameters, problem } = filterParameters();
  if (problem) { showDeriveStatus(problem, true); return; }
  if (!views[activeView] || !deriveOffer) return;
  if (previewAsked && performance.now() < previewAsked.until) { previewAgain = true; return; }
  previewAgain = false;
  previewAsked = { until: performance.now() + DERIVE_ANSWER_MS };
  send({ type: "filter_preview", view: activeView, filter: deriveFilterName, parameters });
}

function scheduleLivePreview() {
  clearTimeout(liveTimer);
  liveTimer = setTimeout(askPreview, LIVE_PREVIEW_MS);
}

function previewSettled() {
  previewAsked = null;
  if (previewAgain) askPreview();
}

// --- the preview over a view ---

// `reduced` (the answer's in-plane factor, absent at full resolution) is said in the caption.
function showPreview(view, source, filter, reduced) {
  hidePreview(view);
  const layer = element("div", "filter-preview");
  layer.dataset.filter = filter;
  const picture = element("img");
  const name = label(filter);
  picture.alt = interpolate(gettext("the view with its slice filtered (%(filter)s): a preview"), { filter: name }, true);
  picture.addEventListener("error", () => {
    if (view.preview !== layer) return;
    hidePreview(view);
    showDeriveStatus(gettext("the preview could not be shown"), true);
    showDerive();
  });
  picture.src = source;
  const caption = reduced === 2
    ? interpolate(gettext("preview: %(filter)s (at half resolution)"), { filter: name }, true)
    : Number.isInteger(reduced) && reduced > 2
      ? interpolate(gettext("preview: %(filter)s (at 1/%(factor)s resolution)"), { filter: name, factor: reduced }, true)
      : interpolate(gettext("preview: %(filter)s"), { filter: name }, true);
  layer.append(picture, element("span", "filter-preview-caption", caption));
  view.canvas.after(layer);
  view.preview = layer;
}

function hidePreview(view) {
  if (!view.preview) return;
  view.preview.remove();
  view.preview = null;
}

function hidePreviews() {
  views.forEach(hidePreview);
}

// --- what the server says ---

function receiveFilterPreview(message) {
  previewSettled();
  const view = views[message.view];
  const encoding = textOf(message.encoding);
  if (!view || !PREVIEW_ENCODINGS.has(encoding) || typeof message.image !== "string" || !BASE64.test(message.image)) {
    showDeriveStatus(gettext("the preview could not be shown"), true);
    return;
  }
  if (deriveStatus.dataset.preview) showDeriveStatus("");
  showPreview(view, `data:image/${encoding};base64,${message.image}`, textOf(message.filter), message.reduced);
  showDerive();
}

// The frame painted after a preview is the view as it is now: the preview goes.
function previewEnded(view) {
  if (!view.preview) return;
  hidePreview(view);
  deriveHideButton.disabled = !views.some((each) => each.preview);
}

function receiveDerived(message) {
  if (!Number.isInteger(message.id) || !["running", "done", "failed"].includes(message.state)) return;
  clearTimeout(deriveAsked);
  deriveAsked = null;
  if (deriveStatus.textContent === gettext("asked…")) showDeriveStatus("");
  deriveJobs.set(message.id, message);
  showDeriveResults();
  showDerive();
}

// An error answering `derive` or `filter_preview` shows in the panel's status line.
function deriveFailed(message) {
  if (message.of !== "derive" && message.of !== "filter_preview") return false;
  const text = `${textOf(message.code)}: ${textOf(message.message)}`;
  if (message.of === "derive") {
    clearTimeout(deriveAsked);
    deriveAsked = null;
    showDeriveStatus(text, true);
  } else {
    previewSettled();  // the next change goes; the refusal stays on screen until a preview is shown
    showDeriveStatus(interpolate(gettext("preview: %(error)s"), { error: text }, true), true);
    deriveStatus.dataset.preview = "true";
  }
  showDerive();
  return !deriveSection.hidden;
}

// A new connection has nothing in flight: the server stops a job being made when its socket closes
// (a series made is listed by the next `ready`).
function deriveReset() {
  clearTimeout(deriveAsked);
  deriveAsked = null;
  clearTimeout(liveTimer);
  liveTimer = null;
  previewAsked = null;
  previewAgain = false;
  for (const job of deriveJobs.values()) {
    if (job.state === "running") {
      deriveJobs.set(job.id, { ...job, state: "failed",
                               reason: gettext("the connection was lost while it was being made") });
    }
  }
  showDeriveResults();
}

function clearDerive() {
  deriveReset();
  hidePreviews();
  deriveJobs.clear();
  showDeriveResults();
  deriveOffer = null;
  showDeriveStatus("");
  showDerive();
}

buildTerms();
deriveFilterSelect.addEventListener("change", () => {
  deriveFilterName = deriveFilterSelect.value;
  buildFilterFields();
  showDerive();
  showInputProblem(filterParameters().problem);
  if (deriveLive.checked) scheduleLivePreview();
});
deriveDimsSelect.addEventListener("change", () => { deriveDims = Number(deriveDimsSelect.value); });
derivePreviewButton.addEventListener("click", askPreview);
deriveLive.addEventListener("change", () => { if (deriveLive.checked) scheduleLivePreview(); });
deriveHideButton.addEventListener("click", () => { hidePreviews(); showDerive(); });
deriveFilterMake.addEventListener("click", makeFilterSeries);
deriveOperationSelect.addEventListener("change", () => {
  arithmeticOperation = deriveOperationSelect.value;
  showDerive();
});
deriveArithmeticMake.addEventListener("click", makeArithmeticSeries);

// --- reorientation: a derived series on a turned, swapped or flipped grid ---------------------
// `ready.derive.reorient` lists the operations ({name, description, params}); a rotation's one
// parameter, `turns`, is offered as the quarter turns its announced range allows.

function reorientSpecs() {
  const listed = deriveOffer && Array.isArray(deriveOffer.reorient) ? deriveOffer.reorient : [];
  return listed.filter((spec) => isRecord(spec) && textOf(spec.name));
}

function reorientSpec() {
  return reorientSpecs().find((spec) => spec.name === deriveReorientSelect.value) || null;
}

function turnsRule(spec) {
  const params = spec && Array.isArray(spec.params) ? spec.params : [];
  return params.find((rule) => isRecord(rule) && rule.name === "turns") || null;
}

// A tilt's angle (`degrees`, any angle within its announced range but 0), or null when none is valid.
function degreesRule(spec) {
  const params = spec && Array.isArray(spec.params) ? spec.params : [];
  return params.find((rule) => isRecord(rule) && rule.name === "degrees") || null;
}

function degreesChosen(rule) {
  const degrees = deriveDegreesInput.value.trim() === "" ? NaN : Number(deriveDegreesInput.value);
  const ok = Number.isFinite(degrees) && degrees !== 0 && degrees >= Number(rule.minimum)
    && degrees <= Number(rule.maximum);
  deriveDegreesInput.setAttribute("aria-invalid", String(!ok));
  return ok ? degrees : null;
}

function buildReorientMenu() {
  const chosen = deriveReorientSelect.value;
  const specs = reorientSpecs();
  deriveReorientSelect.replaceChildren(...specs.map((spec) => {
    const item = option(spec.name, textOf(spec.description) || label(spec.name));
    item.title = textOf(spec.description);
    return item;
  }));
  if (specs.some((spec) => spec.name === chosen)) deriveReorientSelect.value = chosen;
  buildTurns();
}

function buildTurns() {
  const spec = reorientSpec();
  const rule = turnsRule(spec);
  deriveTurnsField.hidden = !rule;
  const angle = degreesRule(spec);
  deriveDegreesField.hidden = !angle;
  if (angle) {
    deriveDegreesInput.min = String(angle.minimum);
    deriveDegreesInput.max = String(angle.maximum);
    if (deriveDegreesInput.value === "") deriveDegreesInput.value = String(angle.default);
  }
  deriveReorientAbout.textContent = spec ? textOf(spec.description) : "";
  if (!rule) { deriveTurnsSelect.replaceChildren(); return; }
  const chosen = deriveTurnsSelect.value || String(rule.default);
  const low = Math.max(1, Math.ceil(Number(rule.minimum) || 1));
  const high = Math.min(3, Math.floor(Number(rule.maximum) || 3));
  const turns = [];
  for (let count = low; count <= high; count += 1) {
    turns.push(option(String(count), interpolate(gettext("%(degrees)s°"), { degrees: count * 90 }, true)));
  }
  deriveTurnsSelect.replaceChildren(...turns);
  if (turns.some((item) => item.value === chosen)) deriveTurnsSelect.value = chosen;
}

function showReorient(base, asking) {
  deriveReorientPart.hidden = reorientSpecs().length === 0;
  const volume = registrable(seriesByUid.get(base));
  const angle = degreesRule(reorientSpec());
  deriveReorientMake.disabled = asking || !volume || !reorientSpec() || (angle !== null && degreesChosen(angle) === null);
  deriveReorientMake.title = base && !volume
    ? gettext("the active view's series is not a volume: only volume series are reoriented")
    : gettext("Make a new series: the active view's series on a new grid orientation, every voxel kept where it is in the patient");
}

function makeReorientedSeries() {
  const base = baseOfActiveView();
  const spec = reorientSpec();
  if (deriveReorientMake.disabled || !spec || !registrable(seriesByUid.get(base))) return;
  const angle = degreesRule(spec);
  if (angle && degreesChosen(angle) === null) return;
  const parameters = turnsRule(spec) ? { turns: Number(deriveTurnsSelect.value) }
    : angle ? { degrees: degreesChosen(angle) } : {};
  askDerive({ type: "derive", operation: spec.name, series: [base], parameters });
}

// Align to a drawn line: the turn about the measured view's normal that lays the grid axis of
// that plane nearest the line along it (a sagittal view turns j, anterior-posterior, onto the line;
// a coronal or axial view turns i). The line's two directions give the same plane: the one whose
// first component is positive is taken, so the angle lies within ±90°.
const TILT_OF_KIND = { sagittal: ["tilt_x", 1, 2], coronal: ["tilt_y", 0, 2], axial: ["tilt_z", 0, 1] };

function lineTilt() {
  const result = measurement && isRecord(measurement.result) ? measurement.result : null;
  const view = measurement ? views[measurement.view] : null;
  const axes = view ? TILT_OF_KIND[view.kind] : null;
  if (!result || !axes || measurement.tool !== "line") return null;
  const [start, end] = [result.start_mm, result.end_mm];
  if (!Array.isArray(start) || !Array.isArray(end)) return null;
  let along = Number(end[axes[1]]) - Number(start[axes[1]]);
  let across = Number(end[axes[2]]) - Number(start[axes[2]]);
  if (along < 0 || (along === 0 && across < 0)) { along = -along; across = -across; }
  if (!(Math.hypot(along, across) > 1e-6)) return null;
  return { operation: axes[0], degrees: Math.round(Math.atan2(across, along) * 1800 / Math.PI) / 10 };
}

function alignToLine() {
  const tilt = lineTilt();
  if (!tilt || tilt.degrees === 0) {
    showDeriveStatus(tilt ? gettext("the line already lies along the grid: nothing to turn")
      : gettext("measure a line in an axial, coronal or sagittal view first"), true);
    return;
  }
  deriveReorientSelect.value = tilt.operation;
  buildTurns();
  deriveDegreesInput.value = String(tilt.degrees);
  showDeriveStatus("");
  showDerive();
}

deriveReorientSelect.addEventListener("change", () => { buildTurns(); showDerive(); });
document.getElementById("derive-reorient-line").addEventListener("click", alignToLine);
deriveReorientMake.addEventListener("click", makeReorientedSeries);
deriveDegreesInput.addEventListener("input", () => showDerive());

// --- crop box: the active view cropped (a `crop` message), or a new series of the box (`derive`) ---
// Six mm along the base series' own axes from its first voxel, as the protocol takes them.
const CROP_EDGE_MM = 4000;

function cropBox() {
  const values = deriveCropInputs.map((input) => (input.value.trim() === "" ? NaN : Number(input.value)));
  let problem = "";
  if (values.some((v) => !Number.isFinite(v) || Math.abs(v) > CROP_EDGE_MM)) {
    problem = interpolate(gettext("each edge of the box is a number of mm within ±%(most)s"), { most: CROP_EDGE_MM }, true);
  } else if ([0, 2, 4].some((at) => !(values[at] < values[at + 1]))) {
    problem = gettext("each min of the box must be below its max");
  }
  deriveCropInputs.forEach((input, at) => {
    input.setAttribute("aria-invalid", String(!Number.isFinite(values[at])));
  });
  return problem ? { problem } : { box: values };
}

function showCrop(base, asking) {
  const volume = registrable(seriesByUid.get(base));
  const { problem } = cropBox();
  deriveCropView.disabled = !volume || Boolean(problem);
  deriveCropView.title = problem || gettext("Show only what lies in the box, in this view (2-D and 3-D)");
  deriveUncrop.disabled = !views[activeView];
  const offered = deriveOffer && isRecord(deriveOffer.crop) ? deriveOffer.crop : null;
  deriveCropMake.hidden = !offered;
  deriveCropMake.disabled = asking || !volume || Boolean(problem);
}

function cropView() {
  const { box } = cropBox();
  if (deriveCropView.disabled || !box) return;
  send({ type: "crop", view: activeView, box });
}

function makeCropSeries() {
  const base = baseOfActiveView();
  const { box } = cropBox();
  const offered = deriveOffer && isRecord(deriveOffer.crop) ? deriveOffer.crop : null;
  if (deriveCropMake.disabled || !box || !offered) return;
  askDerive({ type: "derive", operation: textOf(offered.operation), series: [base], space: textOf(offered.space), box });
}

deriveCropInputs.forEach((input) => input.addEventListener("input", () => showDerive()));
deriveCropView.addEventListener("click", cropView);
deriveUncrop.addEventListener("click", () => { if (views[activeView]) send({ type: "crop", view: activeView, box: null }); });
deriveCropMake.addEventListener("click", makeCropSeries);

// --- toolbar -----------------------------------------------------------------

// A preset is applied once; the menu returns to its prompt because the window moves on.
function applyPreset(select, name) {
  if (select.value) applySetting(activeView, name, select.value);
  select.selectedIndex = 0;
}

function changeSlabThickness() {
  const value = clampToRule(Number(slabThicknessInput.value), vocabulary.settings.slab_thickness);
  if (slabThicknessInput.value === "" || !Number.isFinite(value)) return;
  slabThicknessInput.value = String(value);
  applySetting(activeView, "slab_thickness", value);
}

function changeOpacity() {
  const view = views[activeView];
  const value = Number(opacityInput.value);
  if (!view || view.layers.length < 2 || !accepts("opacity", value)) return;
  ask(view, "opacity", value);
  opacityShown.textContent = `${Math.round(value * 100)}%`;
  queueSetting({ type: "set", view: view.index, name: "opacity", value, layer: 1 });
}

// --- workspaces: tabs, grids and bookmarks (rendering/workspaces.py) -------------------------
// The server keeps every tab; only the tab on screen has views here. `ready` names the tabs,
// the one shown and its grid; a `tabs` message changes the tab bar alone.

const tabList = document.getElementById("tabs");
const tabAddButton = document.getElementById("tab-add");
const tabNameInput = document.getElementById("tab-name");
const tabLinkedBox = document.getElementById("tab-linked");
const tabCloseButton = document.getElementById("tab-close");
const viewDuplicateButton = document.getElementById("view-duplicate");
const viewCount = document.getElementById("view-count");
const gridRowsInput = document.getElementById("grid-rows");
const gridColumnsInput = document.getElementById("grid-columns");
const gridCellsBox = document.getElementById("grid-cells");
const gridMergeButton = document.getElementById("grid-merge");
const gridSplitButton = document.getElementById("grid-split");
const gridApplyButton = document.getElementById("grid-apply");
const gridEditor = document.getElementById("grid-editor");
const bookmarkList = document.getElementById("bookmark-list");
const bookmarkNone = document.getElementById("bookmark-none");
const bookmarkForm = document.getElementById("bookmark-save");
const bookmarkName = document.getElementById("bookmark-name");
const GRID_SIDE = 4;
let tabs = [];
let shownTab = 0;
let maxViews = 16;
let shownGrid = { rows: 1, columns: 1, cells: [[0, 0, 1, 1]] };
let draftCells = [];
let draftPicked = [];

function tabTitle(tab, number) {
  return tab.name || interpolate(gettext("Tab %(number)s"), { number: number + 1 }, true);
}

function receiveTabs(message) {
  tabs = Array.isArray(message.tabs) ? message.tabs : [];
  shownTab = Number.isInteger(message.tab) ? message.tab : 0;
  if (Number.isInteger(message.max_views)) maxViews = message.max_views;
  tabList.replaceChildren(...tabs.map((tab, number) => {
    const button = element("button", tab.linked ? "linked" : "", tabTitle(tab, number));
    button.type = "button";
    button.setAttribute("role", "tab");
    button.setAttribute("aria-selected", String(number === shownTab));
    button.dataset.tab = String(number);
    if (tab.linked) button.title = gettext("linked");
    button.addEventListener("click", () => { if (number !== shownTab) send({ type: "tab", action: "select", tab: number }); });
    return button;
  }));
  const tab = tabs[shownTab];
  if (tab && document.activeElement !== tabNameInput) tabNameInput.value = tab.name;
  tabLinkedBox.checked = Boolean(tab && tab.linked);
  tabCloseButton.disabled = tabs.length < 2;
  const open = tabs.reduce((sum, each) => sum + (Number(each.views) || 0), 0);
  viewCount.textContent = interpolate(gettext("%(open)s of %(most)s views open"), { open, most: maxViews }, true);
}

// A server that names no grid: the layout's own (rendering/grids.py NAMED_GRIDS), else one row.
const NAMED_GRIDS = { "1x1": [1, 1], "1x2": [1, 2], "1x3": [1, 3], "2x2": [2, 2], petct: [2, 2], compare: [1, 2] };

function gridOf(announced) {
  const usable = announced && Number.isInteger(announced.rows) && Number.isInteger(announced.columns)
    && Array.isArray(announced.cells);
  if (usable) return announced;
  const [rows, columns] = NAMED_GRIDS[layout] || [1, Math.max(1, views.length)];
  const cells = views.map((view, index) => [Math.floor(index / columns), index % columns, 1, 1]);
  return { rows, columns, cells };
}

// Each view takes its cell of the tab's grid, in order.
function placeViews() {
  grid.style.gridTemplateRows = `repeat(${shownGrid.rows}, minmax(0, 1fr))`;
  grid.style.gridTemplateColumns = `repeat(${shownGrid.columns}, minmax(0, 1fr))`;
  views.forEach((view, index) => {
    const cell = shownGrid.cells[index];
    view.canvas.parentElement.style.gridArea = cell
      ? `${cell[0] + 1} / ${cell[1] + 1} / span ${cell[2]} / span ${cell[3]}` : "";
  });
}

function receiveWorkspace(message) {
  shownGrid = gridOf(message.grid);
  receiveTabs(message);
  placeViews();
}

// --- the grid editor: the reader picks two cells and merges the rectangle between them ---

function draftEven(rows, columns) {
  draftCells = [];
  for (let row = 0; row < rows; row += 1) {
    for (let column = 0; column < columns; column += 1) draftCells.push([row, column, 1, 1]);
  }
  draftPicked = [];
}

function gridSide(input) {
  const value = Math.round(Number(input.value));
  return Math.min(GRID_SIDE, Math.max(1, Number.isFinite(value) ? value : 1));
}

function drawDraft() {
  const rows = gridSide(gridRowsInput);
  const columns = gridSide(gridColumnsInput);
  gridCellsBox.style.gridTemplateRows = `repeat(${rows}, 1fr)`;
  gridCellsBox.style.gridTemplateColumns = `repeat(${columns}, 1fr)`;
  gridCellsBox.replaceChildren(...draftCells.map((cell, index) => {
    const button = element("button", "", String(index + 1));
    button.type = "button";
    button.style.gridArea = `${cell[0] + 1} / ${cell[1] + 1} / span ${cell[2]} / span ${cell[3]}`;
    button.setAttribute("aria-pressed", String(draftPicked.includes(index)));
    button.setAttribute("aria-label", interpolate(gettext("cell %(number)s"), { number: index + 1 }, true));
    button.addEventListener("click", () => pickDraftCell(index));
    return button;
  }));
  gridMergeButton.disabled = draftPicked.length !== 2;
}

function pickDraftCell(index) {
  draftPicked = draftPicked.includes(index) ? draftPicked.filter((each) => each !== index)
    : [...draftPicked, index].slice(-2);
  drawDraft();
}

// The rectangle spanning both picked cells becomes one cell, if no other cell sticks out of it.
function mergeDraft() {
  const [a, b] = draftPicked.map((index) => draftCells[index]);
  const top = Math.min(a[0], b[0]);
  const left = Math.min(a[1], b[1]);
  const bottom = Math.max(a[0] + a[2], b[0] + b[2]);
  const right = Math.max(a[1] + a[3], b[1] + b[3]);
  const inside = (cell) => cell[0] >= top && cell[1] >= left && cell[0] + cell[2] <= bottom && cell[1] + cell[3] <= right;
  const apart = (cell) => cell[0] >= bottom || cell[1] >= right || cell[0] + cell[2] <= top || cell[1] + cell[3] <= left;
  if (!draftCells.every((cell) => inside(cell) || apart(cell))) {
    showError(gettext("those cells cannot merge: another merged cell sticks out of the rectangle"));
    return;
  }
  draftCells = [...draftCells.filter(apart), [top, left, bottom - top, right - left]]
    .sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  draftPicked = [];
  drawDraft();
}

function resetDraft() {
  draftEven(gridSide(gridRowsInput), gridSide(gridColumnsInput));
  drawDraft();
}

function openGridEditor() {
  if (!gridEditor.open) return;
  gridRowsInput.value = String(shownGrid.rows);
  gridColumnsInput.value = String(shownGrid.columns);
  draftCells = shownGrid.cells.map((cell) => [...cell]);
  if (!draftCells.length) draftEven(shownGrid.rows, shownGrid.columns);
  draftPicked = [];
  drawDraft();
}

function applyDraft() {
  send({ type: "grid", rows: gridSide(gridRowsInput), columns: gridSide(gridColumnsInput), cells: draftCells });
  gridEditor.open = false;
}

// Kept grids (`grids`): the reader's own, then the hospital's; a click draws the tab in one.
const gridSavedList = document.getElementById("grid-saved");
const gridSaveForm = document.getElementById("grid-save");
const gridNameInput = document.getElementById("grid-name");

function receiveGrids(message) {
  const grids = Array.isArray(message.grids) ? message.grids : null;
  gridSaveForm.hidden = grids === null;
  gridSavedList.replaceChildren(...(grids || []).filter((kept) => isRecord(kept) && isRecord(kept.grid)).map((kept) => {
    const name = kept.hospital ? interpolate(gettext("%(name)s (hospital)"), { name: kept.name }, true) : kept.name;
    const apply = hangingButton("grid-kept", name, () => {
      send({ type: "grid", rows: kept.grid.rows, columns: kept.grid.columns, cells: kept.grid.cells });
      gridEditor.open = false;
    });
    apply.dataset.grid = String(kept.id);
    const item = element("li", "bookmark-item");
    item.append(apply);
    return item;
  }));
}

function saveGrid(event) {
  event.preventDefault();
  const name = gridNameInput.value.trim().slice(0, 64);
  if (!name) { gridNameInput.focus(); return; }
  send({ type: "grid_save", name, rows: gridSide(gridRowsInput), columns: gridSide(gridColumnsInput), cells: draftCells });
  gridNameInput.value = "";
}

// --- bookmarks: the whole reading state, kept by the server under a name ---

function bookmarkShareControl(bookmark, shares) {
  const select = element("select", "bookmark-share");
  select.setAttribute("aria-label", interpolate(gettext("show %(name)s to a consultant's share"), { name: bookmark.name }, true));
  select.append(option("", gettext("show to…")));
  for (const share of shares) {
    const shown = (bookmark.shared_with || []).includes(share.id);
    const text = shown ? interpolate(gettext("✓ %(recipient)s (take back)"), { recipient: share.recipient }, true)
      : share.recipient;
    select.append(option(share.id, text));
  }
  select.addEventListener("change", () => {
    const share = select.value;
    if (!share) return;
    const shared = !(bookmark.shared_with || []).includes(share);
    send({ type: "bookmark", action: "share", bookmark: bookmark.id, share, shared });
  });
  return select;
}

function receiveBookmarks(message) {
  const bookmarks = Array.isArray(message.bookmarks) ? message.bookmarks : [];
  const shares = Array.isArray(message.shares) ? message.shares : [];
  bookmarkForm.hidden = message.keeps !== true;
  bookmarkList.replaceChildren(...bookmarks.map((bookmark) => {
    const item = element("li", "bookmark-item");
    const open = hangingButton("bookmark-open", bookmark.name, () => send({ type: "bookmark", action: "open", bookmark: bookmark.id }));
    open.dataset.bookmark = String(bookmark.id);
    item.append(open);
    if (message.keeps === true) {
      if (shares.length) item.append(bookmarkShareControl(bookmark, shares));
      const remove = hangingButton("bookmark-delete", "×", () => send({ type: "bookmark", action: "delete", bookmark: bookmark.id }));
      remove.setAttribute("aria-label", interpolate(gettext("delete the bookmark %(name)s"), { name: bookmark.name }, true));
      item.append(remove);
    }
    return item;
  }));
  bookmarkNone.hidden = bookmarks.length > 0;
}

function saveBookmark(event) {
  event.preventDefault();
  const name = bookmarkName.value.trim().slice(0, 64);
  if (!name) { bookmarkName.focus(); return; }
  send({ type: "bookmark", action: "save", name });
  bookmarkName.value = "";
}

tabAddButton.addEventListener("click", () => {
  send({ type: "tab", action: "add", layout: vocabulary.layouts.includes(layout) ? layout : "1x1" });
});
tabNameInput.addEventListener("change", () => {
  const name = tabNameInput.value.trim().slice(0, 40);
  if (name) send({ type: "tab", action: "rename", tab: shownTab, name });
});
tabLinkedBox.addEventListener("change", () => send({ type: "tab", action: "link", tab: shownTab, linked: tabLinkedBox.checked }));
const tabMenu = document.getElementById("tab-menu");
tabCloseButton.addEventListener("click", () => {
  if (tabs.length > 1) send({ type: "tab", action: "close", tab: shownTab });
  tabMenu.open = false;
});
viewDuplicateButton.addEventListener("click", () => {
  if (views[activeView]) send({ type: "tab", action: "duplicate", view: activeView });
  tabMenu.open = false;
});
gridEditor.addEventListener("toggle", openGridEditor);
gridRowsInput.addEventListener("change", resetDraft);
gridColumnsInput.addEventListener("change", resetDraft);
gridMergeButton.addEventListener("click", mergeDraft);
gridSplitButton.addEventListener("click", resetDraft);
gridApplyButton.addEventListener("click", applyDraft);
bookmarkForm.addEventListener("submit", saveBookmark);
gridSaveForm.addEventListener("submit", saveGrid);

layoutSelect.addEventListener("change", () => {
  if (vocabulary.layouts.includes(layoutSelect.value)) send({ type: "layout", layout: layoutSelect.value });
});
kindSelect.addEventListener("change", () => applySetting(activeView, "kind", kindSelect.value));
windowPresetSelect.addEventListener("change", () => {
  const own = /^voi:(\d+)$/.exec(windowPresetSelect.value);
  if (!own) { applyPreset(windowPresetSelect, "window_preset"); return; }
  applySetting(activeView, "voi", Number(own[1]));
  windowPresetSelect.selectedIndex = 0;
});
volumePresetSelect.addEventListener("change", () => applyPreset(volumePresetSelect, "volume_preset"));
paletteSelect.addEventListener("change", () => {
  const view = views[activeView];
  if (view) applySetting(activeView, "palette", paletteSelect.value, colouredLayer(view));
});
slabModeSelect.addEventListener("change", () => applySetting(activeView, "slab_mode", slabModeSelect.value));
slabThicknessInput.addEventListener("change", changeSlabThickness);
opacityInput.addEventListener("input", changeOpacity);
playButton.addEventListener("click", () => toggleCine(views[activeView]));
timeSlider.addEventListener("input", () => {
  const view = views[activeView];
  if (!view) return;
  stopCine(view);  // the reader took the time point in hand
  showTimePoint(view, Number(timeSlider.value));
});
fpsInput.addEventListener("change", changeFps);
cineRepeatSelect.addEventListener("change", changeCineSettings);
cineFirstInput.addEventListener("change", changeCineSettings);
cineLastInput.addEventListener("change", changeCineSettings);
measureSelect.addEventListener("change", () => chooseTool(measureSelect.value));
radiusInput.value = String(SPHERE_RADIUS_MM.initial);
radiusInput.addEventListener("change", changeRadius);
growBoxInput.value = String(GROW_BOX_MM.initial);
growBoxInput.min = String(GROW_BOX_MM.min);
growBoxInput.max = String(GROW_BOX_MM.max);
growModeSelect.replaceChildren(...Object.keys(GROW_MODES).map((mode) => option(mode, label(mode))));
growModeSelect.value = growMode;
showGrowValue(growMode, GROW_MODES[growMode].initial);
growBoxInput.addEventListener("change", changeGrow);
growValueInput.addEventListener("change", changeGrow);
growModeSelect.addEventListener("change", changeGrowMode);
keepForm.addEventListener("submit", keep);
keepLabel.addEventListener("input", showKeep);
reverseWheelBox.checked = readPreference(REVERSE_WHEEL_KEY) === "true";
reverseWheelBox.addEventListener("change", () => {
  writePreference(REVERSE_WHEEL_KEY, String(reverseWheelBox.checked));
});
window.addEventListener("resize", () => requestAnimationFrame(sendSizes));
// Whatever moves the views' box (a toolbar that wraps, a panel that opens) resizes the frames:
// a bitmap drawn into a box of another shape would be squashed, and points would land off.
let sizedBox = "";
new ResizeObserver(() => {
  const box = grid.getBoundingClientRect();
  const size = `${Math.round(box.width)}x${Math.round(box.height)}`;
  if (size !== sizedBox && views.length) {
    sizedBox = size;
    requestAnimationFrame(sendSizes);
  }
}).observe(grid);
buildMenus();
buildKeyMap();
connect();
