// Follows a PACS retrieval: polls its progress once a second until it has ended.
"use strict";
(function () {
  // Django's JavaScript catalogue (base.html loads it first) translates; without it, the English.
  const gettext = window.gettext || ((text) => text);
  const interpolate = window.interpolate
    || ((format, values) => format.replace(/%\(\s*([^)]+)\s*\)s/g, (match, name) => String(values[name])));
  const root = document.getElementById("retrieval");
  if (!root) return;
  const ended = new Set(["done", "failed", "cancelled"]);
  // The states as the page words them (the wire and the markup's data keep the codes).
  const STATES = {queued: gettext("queued"), running: gettext("running"), done: gettext("done"),
                  failed: gettext("failed"), cancelled: gettext("cancelled")};

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function bar(value, max) {
    const td = document.createElement("td");
    const progress = document.createElement("progress");
    progress.max = Math.max(max, 1);
    progress.value = value;
    td.append(progress, ` ${value} / ${max}`);
    return td;
  }

  function show(wire) {
    document.getElementById("state").textContent = STATES[wire.state] || wire.state;
    document.getElementById("count").textContent = interpolate(gettext("%(received)s of %(expected)s"),
                                                               {received: wire.received, expected: wire.expected || "?"}, true);
    const total = document.getElementById("total");
    total.max = Math.max(wire.expected, 1);
    total.value = wire.received;
    const rows = wire.series.map((entry) => {
      const tr = document.createElement("tr");
      tr.append(cell(`${entry.modality} ${entry.description}`), bar(entry.received, entry.expected),
                cell(entry.complete ? gettext("complete") : gettext("arriving")));
      return tr;
    });
    const table = document.getElementById("series");
    if (table && rows.length) table.replaceChildren(...rows);
    const error = document.getElementById("error");
    error.textContent = wire.error;
    error.hidden = !wire.error;
    const open = document.getElementById("open");
    if (open) open.hidden = !wire.viewable;
    const stop = document.getElementById("stop");
    if (stop && ended.has(wire.state)) stop.closest("form").hidden = true;
    return ended.has(wire.state);
  }

  async function poll() {
    try {
      const answer = await fetch(root.dataset.progress, {credentials: "same-origin"});
      if (answer.ok && show(await answer.json())) return;
    } catch (error) {
      // The next poll tries again: a dropped request is not the end of the retrieval.
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
