// optlab serve, a study's bench: the runs table (sorted, filtered and paged on the server),
// its filters (by state, block, axis values and metric ranges, and by a brush on the
// parallel coordinates), runs compared side by side, and a profile to a target typed in.
// The address holds the whole view, so a link reopens it. Loaded before app.js.
"use strict";

// The page's own keys in the address; every other key is a filter of the runs table.
const VIEW_KEYS = new Set(["sort", "state", "block", "limit", "offset", "compare", "token",
  "target", "time", "order", "metric"]);
// The runs table's columns: the study's axes (one each, once known) stand where "axes" is.
const COLUMNS = ["run_id", "block", "seed", "axes", "status", "epoch", "epochs", "best_test_acc",
  "final_test_acc", "final_train_loss", "seconds"];
let studyAxes = null;  // the study's axes, from /axes: each its own sortable column

function columns() {
  return studyAxes ? COLUMNS.flatMap((c) => (c === "axes" ? studyAxes : [c])) : COLUMNS;
}

function cellOf(run, c) {
  if (c === "axes") return axesText(run.axes);
  if (c === "seconds") return duration(run.seconds);
  if (studyAxes && studyAxes.includes(c)) return fmt(run.axes[c]);
  return fmt(run[c]);
}
const METRIC_FILTERS = ["best_test_acc", "final_test_acc", "final_train_loss", "epoch",
  "seconds"];
const view = new URLSearchParams(location.search);  // the study page's state
let refreshRuns = () => {};  // set by runsTable: ask the server for the table again

function remember() { history.replaceState(null, "", `?${view}`); }

// The filters in the address: bounds (min_X, max_X) and values a run must have (X=V).
function filtersNow() {
  const bounds = {}, values = {};
  for (const [key, value] of view) {
    const bound = /^(min|max)_(.+)$/.exec(key);
    if (bound) (bounds[bound[2]] = bounds[bound[2]] || {})[bound[1]] = value;
    else if (!VIEW_KEYS.has(key)) (values[key] = values[key] || []).push(value);
  }
  return { bounds, values };
}

function chipsHTML() {
  const { bounds, values } = filtersNow();
  const chips = Object.entries(bounds).map(([col, b]) => {
    const text = b.min !== undefined && b.min === b.max ? `${col} = ${b.min}`
      : [b.min !== undefined ? `${col} ≥ ${b.min}` : "", b.max !== undefined ? `≤ ${b.max}` : ""]
        .filter(Boolean).join(", ");
    return `<span class="chip" data-drop="${esc(col)}" data-kind="bound">${esc(text)} ` +
      `<button class="drop" title="remove">×</button></span>`;
  }).concat(Object.entries(values).map(([col, vs]) =>
    `<span class="chip" data-drop="${esc(col)}" data-kind="value">${esc(col)} = ` +
    `${esc(vs.join(" or "))} <button class="drop" title="remove">×</button></span>`));
  return chips.length ? chips.join(" ") : "<span class='muted'>no filters</span>";
}

function dropFilter(col, kind) {
  if (kind === "bound") { view.delete(`min_${col}`); view.delete(`max_${col}`); }
  else view.delete(col);
}

// Set the filter on one column: a range (numbers), or the values a run may have.
function setFilter(col, { min, max, values }) {
  dropFilter(col, "bound");
  dropFilter(col, "value");
  if (values) for (const v of values) view.append(col, v);
  if (min !== undefined && min !== "") view.set(`min_${col}`, min);
  if (max !== undefined && max !== "") view.set(`max_${col}`, max);
  view.delete("offset");
}

function filterControls(base, box) {
  // What can be filtered: the blocks and each axis's values (or range), asked once.
  getJSON(`${base}/axes`).then((known) => {
    if (!known || known.failed) return;
    const axes = Object.fromEntries(known.axes.map((a) => [a.axis, a]));
    studyAxes = known.axes.map((a) => a.axis);
    refreshRuns();
    const blocks = ["", ...known.blocks].map((b) => `<option value="${esc(b)}"` +
      `${view.get("block") === b ? " selected" : ""}>${b ? esc(b) : "any"}</option>`).join("");
    const columns = [...Object.keys(axes), ...METRIC_FILTERS].map((c) =>
      `<option>${esc(c)}</option>`).join("");
    box.innerHTML = `<label>block <select id="filter-block">${blocks}</select></label> ` +
      `<label>filter <select id="filter-column">${columns}</select></label> ` +
      "<span id='filter-input'></span> <button id='filter-add'>add</button>";
    const input = box.querySelector("#filter-input");
    const choose = () => {
      const axis = axes[box.querySelector("#filter-column").value];
      input.innerHTML = axis && axis.values
        ? "<select id='filter-value'>" +
          axis.values.map((v) => `<option value="${esc(fmtValue(v))}">${esc(fmt(v))}</option>`)
            .join("") + "</select>"
        : `min <input id="filter-min" type="number" step="any" size="8"` +
          ` placeholder="${esc(axis ? fmt(axis.lowest) : "")}"> max <input id="filter-max"` +
          ` type="number" step="any" size="8" placeholder="${esc(axis ? fmt(axis.highest) : "")}">`;
    };
    box.querySelector("#filter-column").addEventListener("change", choose);
    box.querySelector("#filter-block").addEventListener("change", (event) => {
      if (event.target.value) view.set("block", event.target.value); else view.delete("block");
      view.delete("offset");
      remember();
      refreshRuns();
    });
    box.querySelector("#filter-add").addEventListener("click", () => {
      const col = box.querySelector("#filter-column").value;
      const picked = box.querySelector("#filter-value");
      if (picked) {
        const value = picked.value;
        // A number is matched as a range of one value: exact, and answered by the store.
        if (value !== "" && !Number.isNaN(Number(value))) setFilter(col, { min: value, max: value });
        else setFilter(col, { values: [value] });
      } else {
        setFilter(col, { min: box.querySelector("#filter-min").value,
          max: box.querySelector("#filter-max").value });
      }
      remember();
      refreshRuns();
    });
    choose();
  });
}

function fmtValue(v) { return typeof v === "object" ? JSON.stringify(v) : String(v); }

function runsTable(base, el, heading) {
  const picked = () => (view.get("compare") || "").split(",").filter(Boolean);
  const url = () => {
    const asked = new URLSearchParams(view);
    for (const key of ["compare", "target", "time", "order", "metric"]) asked.delete(key);
    return `${base}/runs?${asked}`;
  };
  el.innerHTML = "<div id='runs-filters'></div><div id='runs-more'></div>" +
    "<p id='runs-chips'></p><div id='runs-table'></div><div id='compare'></div>";
  const filters = el.querySelector("#runs-filters");
  const states = (view.get("state") || "").split(",").filter(Boolean);
  filters.innerHTML = "state: " + STATES.map((s) => `<label><input type="checkbox" ` +
    `data-state="${s}"${states.includes(s) ? " checked" : ""}> ${s}</label>`).join(" ") +
    " <button id='compare-runs'>compare the runs ticked</button>";
  filterControls(base, el.querySelector("#runs-more"));
  const draw = (r) => {
    const box = el.querySelector("#runs-table");
    el.querySelector("#runs-chips").innerHTML = chipsHTML();
    const blockBox = el.querySelector("#filter-block");
    if (blockBox) blockBox.value = view.get("block") || "";
    const values = Object.entries(filtersNow().values);
    heading.textContent = values.length ? `Runs where ${values.map(([k, vs]) =>
      `${k}=${vs.join(" or ")}`).join("&")}` : "Runs";
    if (r.failed) { box.innerHTML = `<p class="error">${esc(r.failed)}</p>`; return; }
    const sort = view.get("sort") || "";
    const head = columns().map((c) => {
      const mark = sort === c ? " ▲" : sort === `-${c}` ? " ▼" : "";
      return c === "axes" ? "<th>axes</th>" : `<th data-sort="${esc(c)}">${esc(c)}${mark}</th>`;
    }).join("");
    const body = r.runs.map((x) => `<tr data-run="${esc(x.run_id)}"><td><input ` +
      `type="checkbox" data-pick="${esc(x.run_id)}"${picked().includes(x.run_id) ? " checked" : ""}` +
      `></td>` + columns().map((c) => c === "run_id"
        ? `<td data-col="run_id"><a href="/run/${esc(x.run_id)}">${esc(x.run_id)}</a></td>`
        : `<td data-col="${esc(c)}">${esc(cellOf(x, c))}</td>`).join("") + "</tr>")
      .join("");
    const offset = Number(view.get("offset") || 0);
    const shown = r.runs.length ? `${offset + 1}-${offset + r.runs.length} of ${r.total}` : "none";
    box.innerHTML = `<p class="muted" id="runs-count">${shown} runs ` +
      `<button id="runs-prev"${offset ? "" : " disabled"}>previous</button> ` +
      `<button id="runs-next"${offset + r.runs.length < r.total ? "" : " disabled"}>next` +
      `</button></p><table id="runs-list"><tr><th></th>${head}</tr>${body}</table>`;
  };
  // Only the latest question's answer is drawn: an earlier one (a sort clicked before, the
  // live page's refresh) may come back after it and would show its rows under the new header.
  let asked = 0;
  refreshRuns = async () => {
    const n = ++asked;
    const r = await getJSON(url());
    if (r && n === asked) draw(r);
  };
  el.addEventListener("click", (event) => {
    const t = event.target;
    const chip = t.classList.contains("drop") && t.closest(".chip");
    if (chip) {
      dropFilter(chip.dataset.drop, chip.dataset.kind);
      view.delete("offset");
    } else if (t.dataset.sort) {
      const now = view.get("sort");
      if (now === t.dataset.sort) view.set("sort", `-${t.dataset.sort}`);
      else if (now === `-${t.dataset.sort}`) view.delete("sort");
      else view.set("sort", t.dataset.sort);
      view.delete("offset");
    } else if (t.id === "runs-prev" || t.id === "runs-next") {
      const step = Number(view.get("limit") || 500) * (t.id === "runs-next" ? 1 : -1);
      view.set("offset", Math.max(0, Number(view.get("offset") || 0) + step));
    } else if (t.id === "compare-runs") {
      compareRuns(picked());
      return;
    } else return;
    remember();
    refreshRuns();
  });
  el.addEventListener("change", (event) => {
    const t = event.target;
    if (t.dataset.pick) {
      const now = new Set(picked());
      if (t.checked) now.add(t.dataset.pick); else now.delete(t.dataset.pick);
      if (now.size) view.set("compare", [...now].join(",")); else view.delete("compare");
      remember();
    } else if (t.dataset.state) {
      const chosen = [...filters.querySelectorAll("[data-state]:checked")].map((i) =>
        i.dataset.state);
      if (chosen.length) view.set("state", chosen.join(",")); else view.delete("state");
      view.delete("offset");
      remember();
      refreshRuns();
    }
  });
  poll(url, 2000, draw);
  if (picked().length) compareRuns(picked());
}

// ---- brushing the parallel coordinates filters the runs table ----------------------------

function brushable(spec) {
  // The parallel coordinates as `optlab plot parallel` draws them, with a brush (a
  // rectangle dragged over one axis or several) on its lines.
  const lines = (spec.layer || []).find((l) => (l.mark.type || l.mark) === "line");
  if (!lines) return null;
  lines.params = [{ name: "brush", select: { type: "interval", encodings: ["x", "y"] } }];
  // A background to drag on: a brush starts only on the plot's own area.
  spec.config = { ...(spec.config || {}), view: { ...((spec.config || {}).view || {}),
    fill: "white" } };
  const data = lines.data.values || (spec.datasets || {})[lines.data.name] || [];
  return data;
}

function onBrush(view_, lines) {
  // A brush spans axes (x: each at a whole number) and a height (its place on them): each
  // axis it spans keeps the values of the configurations whose lines cross it there.
  let timer = null;
  view_.addSignalListener("brush", (_, span) => {
    clearTimeout(timer);
    if (!span || !span.axis || !span.place) return;
    timer = setTimeout(() => {
      const [x0, x1] = span.axis, [y0, y1] = [Math.min(...span.place), Math.max(...span.place)];
      const byAxis = {};
      for (const line of lines) {
        if (line.axis < Math.min(x0, x1) || line.axis > Math.max(x0, x1)) continue;
        if (line.place < y0 || line.place > y1) continue;
        (byAxis[line.dimension] = byAxis[line.dimension] || []).push(line);
      }
      for (const [dim, crossed] of Object.entries(byAxis)) {
        if (crossed.every((l) => l.number !== null && l.number !== undefined)) {
          const numbers = crossed.map((l) => l.number);
          setFilter(dim, { min: String(Math.min(...numbers)), max: String(Math.max(...numbers)) });
        } else {
          setFilter(dim, { values: [...new Set(crossed.map((l) => l.value))] });
        }
      }
      if (!Object.keys(byAxis).length) return;
      remember();
      refreshRuns();
      document.getElementById("parallel").dataset.brushed = Object.keys(byAxis).join(",");
    }, 250);
  });
}

// A scatter's point (a configuration): the table keeps its block's runs with its values.
function pickPoint(item, spec) {
  const d = item && item.datum;
  const dims = ((spec.usermeta || {}).dimensions) || [];
  if (!d || d.block === undefined || !dims.length) return;
  dims.forEach((dim, i) => {
    const value = d[`d${i}`];
    if (value === null || value === undefined) return;
    if (typeof value === "number") setFilter(dim, { min: String(value), max: String(value) });
    else setFilter(dim, { values: [fmtValue(value)] });
  });
  view.set("block", d.block);
  remember();
  refreshRuns();
  document.getElementById("runs").scrollIntoView();
}

// The charts' metric: a select whose choice the charts are drawn for (their --metric).
const CHART_METRICS = ["best_test_acc", "final_test_acc", "best_val_acc", "final_val_acc",
  "min_test_loss", "final_train_loss"];

function metricChooser(box, onChange) {
  const now = view.get("metric") || "best_test_acc";
  box.insertAdjacentHTML("afterbegin", "<p><label>metric the charts draw " +
    "<select id='chart-metric'>" + CHART_METRICS.map((m) =>
      `<option${m === now ? " selected" : ""}>${m}</option>`).join("") + "</select></label></p>");
  box.querySelector("#chart-metric").addEventListener("change", (event) => {
    if (event.target.value === "best_test_acc") view.delete("metric");
    else view.set("metric", event.target.value);
    remember();
    onChange();
  });
}

// ---- runs compared -----------------------------------------------------------------------

// Every epoch metric a run records, in this order: train, validation and test, loss and
// accuracy, the LR and the batch size.
const EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
  "test_acc", "epoch_lr", "epoch_batch_size"];

async function compareRuns(ids) {
  const box = document.getElementById("compare");
  if (ids.length < 1) { box.innerHTML = "<p class='muted'>tick runs to compare</p>"; return; }
  const body = await getJSON(`/api/compare?runs=${ids.join(",")}`);
  if (!body) return;
  if (body.failed) { box.innerHTML = `<p class="error">${esc(body.failed)}</p>`; return; }
  const values = body.runs.flatMap((run) => run.epochs.flatMap((e) =>
    EPOCH_METRICS.filter((m) => e[m] !== null && e[m] !== undefined).map((m) =>
      ({ run: run.run_id, epoch: e.epoch, metric: m, value: e[m] }))));
  const differs = body.runs.map((run) => ({ run_id: run.run_id, ...run.differs }));
  box.innerHTML = `<h3>compared: ${ids.length} runs</h3><div id="compare-curves" ` +
    `class="chart"></div><h4>settings that differ</h4>${table(differs)}`;
  const spec = {
    data: { values }, width: 250, height: 160,
    mark: { type: "line", point: true },
    encoding: {
      x: { field: "epoch", type: "quantitative" },
      y: { field: "value", type: "quantitative", title: null, scale: { zero: false } },
      color: { field: "run", type: "nominal" },
      facet: { field: "metric", type: "nominal", columns: 3, title: null,
        sort: EPOCH_METRICS },
    },
    resolve: { scale: { y: "independent" } },
  };
  delete drawn["compare-curves"];  // a new box: draw it again even for the same runs
  await embed("compare-curves", spec);
  box.dataset.runs = String(ids.length);
}

// ---- a profile to a target the user types in ---------------------------------------------

function profileSection(base, el) {
  // `optlab analyze profile --target` and `optlab plot profile`: shown where the study
  // compares optimizers.
  el.innerHTML = "<p class='muted'>each optimizer's time to a target per workload, and " +
    "the fraction of workloads on which it is within a factor tau of the fastest</p>" +
    `<label>target <input id="profile-target" placeholder="val_acc=0.9" size="14" ` +
    `value="${esc(view.get("target") || "")}"></label> <label>time <select id="profile-time">` +
    ["steps", "sfo", "seconds"].map((t) => `<option${view.get("time") === t ? " selected" : ""}>` +
      `${t}</option>`).join("") + "</select></label> <label>order <select id='profile-order'>" +
    ["median-then-best", "best-then-median"].map((o) =>
      `<option${view.get("order") === o ? " selected" : ""}>${o}</option>`).join("") +
    "</select></label> <button id='profile-go'>draw</button>" +
    "<div id='profile-answer'></div><div id='profile' class='chart'></div>";
  const go = async () => {
    const asked = { target: el.querySelector("#profile-target").value.trim(),
      time: el.querySelector("#profile-time").value,
      order: el.querySelector("#profile-order").value };
    if (!asked.target) return;
    for (const [k, v] of Object.entries(asked)) view.set(k, v);
    remember();
    const body = await getJSON(`${base}/profile?${new URLSearchParams(asked)}`);
    if (!body) return;
    const answer = el.querySelector("#profile-answer");
    if (body.failed) { answer.innerHTML = `<p class="error">${esc(body.failed)}</p>`; return; }
    answer.innerHTML = analysisHTML(body.analysis);
    if (body.chart.spec) {
      showSQL("profile", body.chart.sql);
      await embed("profile", body.chart.spec);
    }
  };
  el.querySelector("#profile-go").addEventListener("click", go);
  if (view.get("target")) go();
}
