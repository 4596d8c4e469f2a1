// Follows a PACS retrieval: polls its progress once a second until it has ended.
"use strict";
(function () {
  const root = document.getElementById("retrieval");
  if (!root) return;
  const ended = new Set(["done", "failed", "cancelled"]);

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
    document.getElementById("state").textContent = wire.state;
    document.getElementById("count").textContent = `${wire.received} of ${wire.expected || "?"}`;
    const total = document.getElementById("total");
    total.max = Math.max(wire.expected, 1);
    total.value = wire.received;
    const rows = wire.series.map((entry) => {
      const tr = document.createElement("tr");
      tr.append(cell(`${entry.modality} ${entry.description}`), bar(entry.received, entry.expected),
                cell(entry.complete ? "complete" : "arriving"));
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
