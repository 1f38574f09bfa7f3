// optlab serve: each page polls the JSON API and redraws what changed; no reload.
"use strict";

const STATES = ["pending", "running", "done", "failed", "diverged", "stopped", "interrupted"];
const main = document.getElementById("main");
const conn = document.getElementById("conn");
const { page, arg } = window.optlab;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return value.toPrecision(4);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function axesText(axes) {
  return Object.entries(axes || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
}

function table(rows, columns) {
  if (!rows.length) return "<p class='muted'>no rows</p>";
  columns = columns || [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const head = columns.map((c) => `<th>${esc(c)}</th>`).join("");
  const body = rows.map((r) => "<tr>" + columns.map((c) => `<td>${esc(fmt(r[c]))}</td>`)
    .join("") + "</tr>").join("");
  return `<table><tr>${head}</tr>${body}</table>`;
}

// Fetch JSON; a lost server is said in the bar, a refused request in the page.
async function getJSON(url) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    conn.textContent = "connection lost: retrying";
    conn.className = "conn lost";
    return null;
  }
  // A server busy past its share of the CPU sends the answers it kept: said, with their age.
  const age = Number(response.headers.get("X-Optlab-Age") || 0);
  conn.textContent = age >= 2 ? `live (as of ${Math.round(age)} s ago)` : "live";
  conn.className = "conn live";
  // A refusal (404: no such study or run; 400: a bad statement) comes back as {failed}.
  const body = await response.json().catch(() => ({ error: `${response.status} from ${url}` }));
  if (!response.ok) return { failed: body.error || `${response.status} from ${url}` };
  return body;
}

let gone = false;  // the study or run is not in the store (any more): the page says so

function poll(url, everyMs, draw) {
  let stopped = false;
  async function once() {
    const body = await getJSON(typeof url === "function" ? url() : url);
    if (body !== null && !gone) {
      try { draw(body); } catch (err) { window.optlabErrors.push(String(err)); throw err; }
    }
    if (!stopped) setTimeout(once, everyMs);
  }
  once();
  return () => { stopped = true; };
}

function section(id, title) {
  let el = document.getElementById(id);
  if (!el) {
    el = document.createElement("section");
    el.id = id;
    el.innerHTML = `<h2>${esc(title)}</h2><div class="body"></div>`;
    main.appendChild(el);
  }
  return el.querySelector(".body");
}

function refused(body) {
  if (body && body.failed) {
    gone = true;
    main.innerHTML = `<p class="error" id="refused">${esc(body.failed)}</p>`;
    return true;
  }
  return false;
}

// ---- charts ------------------------------------------------------------------------------

const drawn = {};
window.optlabViews = {};

async function embed(id, spec, onClick) {
  const text = JSON.stringify(spec);
  const el = document.getElementById(id);
  if (!el || drawn[id] === text) return;
  drawn[id] = text;
  // Each chart's menu saves it as PNG or SVG (no editor: nothing leaves the machine).
  const actions = { export: true, source: false, compiled: false, editor: false };
  const result = await vegaEmbed(el, spec, { renderer: "svg", actions });
  el.dataset.rendered = "yes";
  window.optlabViews[id] = result.view;  // for a test to find where the chart drew what
  if (onClick) result.view.addEventListener("click", (event, item) => onClick(item));
  return result;
}

function showSQL(kind, sql) {
  // The chart's SQL under it, as `optlab plot` writes it beside its image.
  let box = document.getElementById(`${kind}-sql`);
  if (!box) {
    document.getElementById(kind).insertAdjacentHTML("afterend",
      `<details id="${kind}-sql"><summary>SQL</summary><pre></pre></details>`);
    box = document.getElementById(`${kind}-sql`);
  }
  box.querySelector("pre").textContent = sql || "";
}

function lineSpec(rows, x, ys, title) {
  const values = rows.flatMap((r) => ys.filter((y) => r[y] !== null && r[y] !== undefined)
    .map((y) => ({ x: r[x], metric: y, value: r[y] })));
  return {
    data: { values }, title, width: 420, height: 200,
    mark: { type: "line", point: true },
    encoding: {
      x: { field: "x", type: "quantitative", title: x },
      y: { field: "value", type: "quantitative", title: null },
      color: { field: "metric", type: "nominal" },
    },
  };
}

// ---- pages -------------------------------------------------------------------------------

function studiesPage() {
  main.innerHTML = "<h1>Studies</h1><div id='studies'></div>";
  poll("/api/studies", 1000, (body) => {
    if (refused(body)) return;
    const head = "<tr><th>study</th>" + STATES.map((s) => `<th>${s}</th>`).join("") +
      "<th>epochs</th><th>ETA</th><th>workers now</th></tr>";
    const rows = body.map((s) => {
      const counts = STATES.map((st) =>
        `<td class="count-${st}">${s.counts[st]}</td>`).join("");
      const workers = s.workers.map((w) => `${esc(w.worker)}: <a href="/run/${esc(w.run_id)}">` +
        `${esc(w.run_id)}</a> epoch ${w.epoch}/${w.epochs}`).join("<br>");
      return `<tr data-study="${esc(s.name)}"><td><a href="/study/${encodeURIComponent(s.name)}">` +
        `${esc(s.name)}</a></td>${counts}<td>${s.epochs_done} / ${s.epochs_total}</td>` +
        `<td>${s.running ? esc(duration(s.eta_seconds)) : ""}</td><td>${workers}</td></tr>`;
    }).join("");
    document.getElementById("studies").innerHTML = body.length
      ? `<table>${head}${rows}</table>` : "<p class='muted'>no studies in this store yet</p>";
  });
}

function gridHTML(study) {
  if (study.summarised) {
    return `<p class="warn" id="summarised">${esc(study.summarised)}</p>` +
      table(study.grid, ["block", "status", "runs"]);
  }
  const blocks = {};
  for (const cell of study.grid) (blocks[cell.block] = blocks[cell.block] || []).push(cell);
  return Object.entries(blocks).map(([block, cells]) => {
    const shown = cells.map((c) => {
      const label = c.status === "running" ? `${c.epoch}/${c.epochs}` : "";
      const title = `${c.run_id} ${axesText(c.axes)} seed=${c.seed}: ${c.status}` +
        (c.status === "running" ? ` (epoch ${c.epoch} of ${c.epochs})` : "");
      return `<a class="cell s-${esc(c.status)}" data-run="${esc(c.run_id)}" ` +
        `data-status="${esc(c.status)}" href="/run/${esc(c.run_id)}" title="${esc(title)}">` +
        `${esc(label)}</a>`;
    }).join("");
    return `<div class="block"><h3>block ${esc(block)}</h3><div class="cells">${shown}</div></div>`;
  }).join("") + "<p class='legend'>" + STATES.map((s) =>
    `<span class="cell s-${s}"></span> ${s}`).join(" ") + "</p>";
}

function statusLine(s) {
  const counts = STATES.filter((st) => s.counts[st]).map((st) =>
    `<span class="n-${st}">${s.counts[st]} ${st}</span>`).join(", ");
  const eta = s.running && s.eta_seconds !== null ? `; ETA ${duration(s.eta_seconds)}` : "";
  const part = s.matrix ? ` (of the study file's ${s.matrix})` : "";
  return `${s.runs} runs${part}: ${counts}; epochs ${s.epochs_done} / ${s.epochs_total}${eta}` +
    (s.running ? " - running" : "");
}

function cellMatch(item, axes) {
  // A heatmap cell: its x and y values and its panel's (block, other axes).
  const d = item && item.datum;
  if (!d || d.x === undefined || d.y === undefined) return null;
  const match = new URLSearchParams();
  match.set(axes.x, d.x);
  match.set(axes.y, d.y);
  for (const part of String(d.panel || "").split(" · ")) {
    if (part.startsWith("block ")) match.set("block", part.slice(6));
    else if (part.includes("=")) match.set(part.slice(0, part.indexOf("=")),
      part.slice(part.indexOf("=") + 1));
  }
  return match;
}

function studyPage() {
  const name = arg;
  const base = `/api/studies/${encodeURIComponent(name)}`;
  main.innerHTML = `<h1>${esc(name)}</h1><p class="muted" id="description"></p>` +
    "<p id='status'></p>";
  const grid = section("grid", "Runs");
  const charts = section("charts", "Charts");
  const chartBox = (kind) => {
    // A chart's heading, note and box, made when the API first gives it (a search's
    // scatter and parallel come only for a study that searches).
    if (!document.getElementById(kind)) {
      charts.insertAdjacentHTML("beforeend", `<h3>${kind}</h3><p class='warn' ` +
        `id='${kind}-note'></p><div id='${kind}' class='chart'></div>`);
    }
  };
  const runs = section("runs", "Runs");
  const analyses = section("analyses", "Analyses");
  let axes = [];
  poll(base, 1000, (s) => {
    if (refused(s)) return;
    axes = s.axes;
    document.getElementById("description").textContent = s.description || "";
    document.getElementById("status").innerHTML = statusLine(s);
    grid.innerHTML = gridHTML(s);
  });
  const chartsURL = () => `${base}/charts` + (view.get("metric") ? `?metric=${
    encodeURIComponent(view.get("metric"))}` : "");
  let redraw = () => {};
  const drawCharts = (c) => {
    if (c.failed) {
      charts.querySelector("#charts-error").textContent = c.failed;
      return;
    }
    charts.querySelector("#charts-error").textContent = "";
    for (const kind of Object.keys(c)) {
      chartBox(kind);
      const fig = c[kind] || {};
      const note = document.getElementById(`${kind}-note`);
      note.textContent = fig.note || (fig.pooled && fig.pooled.length
        ? `pooled over ${fig.pooled.join(", ")}` : "");
      const el = document.getElementById(kind);
      if (!fig.spec) continue;
      el.dataset.rows = fig.rows;
      showSQL(kind, fig.sql);
      const click = kind === "heatmap" ? (item) => {
        const match = cellMatch(item, { x: axes[0], y: axes[1] });
        if (match) location.href = `/study/${encodeURIComponent(name)}?${match}`;
      } : kind === "scatter" ? (item) => pickPoint(item, fig.spec) : null;
      const lines = kind === "parallel" ? brushable(fig.spec) : null;
      embed(kind, fig.spec, click).then((result) => {
        if (result && lines) onBrush(result.view, lines);
      }).catch((err) => window.optlabErrors.push(`${kind}: ${err}`));
    }
  };
  charts.insertAdjacentHTML("afterbegin", "<p class='error' id='charts-error'></p>");
  metricChooser(charts, () => redraw());
  redraw = async () => { const c = await getJSON(chartsURL()); if (c) drawCharts(c); };
  poll(chartsURL, 3000, drawCharts);
  runsTable(base, runs, document.querySelector("#runs h2"));
  getJSON(`${base}/facts`).then((facts) => {
    if (facts && facts.profile) {
      const box = section("profile-section", "Profile");
      analyses.parentElement.before(box.parentElement);
      profileSection(base, box);
    }
  });
  poll(`${base}/analyses`, 10000, (list) => {
    if (list.failed) { analyses.innerHTML = `<p class="error">${esc(list.failed)}</p>`; return; }
    analyses.innerHTML = list.length ? list.map(analysisHTML).join("")
      : "<p class='muted'>no analysis fits this study's axes</p>";
  });
}

function analysisHTML(result) {
  if (result.error) return `<h3>${esc(result.analysis)}</h3><p class="muted">${esc(result.error)}</p>`;
  const findings = Object.entries(result.findings || {}).map(([k, v]) =>
    `<p>${esc(k)}: ${esc(fmt(v))}</p>`).join("");
  const tables = Object.entries(result.tables || {}).map(([k, rows]) =>
    `<h4>${esc(k)}</h4>${table(rows)}`).join("");
  const left = (result.left_out || []).map((item) =>
    `<p class="muted">left out: ${item.runs} run(s), ${esc(item.reason)}</p>`).join("");
  return `<h3>${esc(result.analysis)}</h3>${findings}${tables}${left}`;
}

function runPage() {
  const id = arg;
  const base = `/api/runs/${encodeURIComponent(id)}`;
  main.innerHTML = `<h1>run ${esc(id)}</h1><p id="run-status"></p>`;
  const facts = section("facts", "Run");
  const curves = section("epochs", "Epochs");
  curves.innerHTML = "<div id='acc' class='chart'></div><div id='loss' class='chart'></div>" +
    "<div id='epoch-table'></div>";
  const probes = section("probes", "Probes");
  const log = section("log", "Log (its end)");
  const config = section("config", "Config");
  poll(base, 1500, (r) => {
    if (refused(r)) return;
    const studies = r.studies.map((s) => `<a class="study-link" href="/study/` +
      `${encodeURIComponent(s.study)}">${esc(s.study)}</a> (block ${esc(s.block)})`).join(", ");
    document.getElementById("run-status").innerHTML =
      `<span class="badge s-${esc(r.status)}" id="state">${esc(r.status)}</span> in ${studies}`;
    facts.innerHTML = table([{
      seed: r.seed, attempts: r.attempts, started: r.started_at, finished: r.finished_at,
      seconds: r.wall_seconds, device: r.device, worker: r.worker, host: r.hostname,
      "resume point (epoch)": r.checkpoint_epoch, "resumed from": r.resumed_from,
      weights: r.weights_path,
      // a run successive halving stopped says why (its rank at the rung), not an error
      [r.status === "stopped" ? "why stopped" : "error"]: r.error,
    }]);
    config.innerHTML = `<pre>${esc(JSON.stringify(r.config, null, 2))}</pre>`;
    log.innerHTML = `<p class="muted">${esc(r.log_path || "no log")}</p>` +
      `<pre id="log-tail">${esc(r.log_tail.join("\n"))}</pre>`;
  });
  poll(`${base}/epochs`, 1500, (rows) => {
    if (rows.failed) return;
    document.getElementById("epoch-table").innerHTML = table(rows, ["epoch", "train_loss",
      "train_acc", "test_loss", "test_acc", "val_acc", "epoch_lr", "epoch_batch_size",
      "seconds"]);
    document.getElementById("acc").dataset.rows = rows.length;
    embed("acc", lineSpec(rows, "epoch", ["train_acc", "test_acc", "val_acc"], "accuracy"));
    embed("loss", lineSpec(rows, "epoch", ["train_loss", "test_loss", "val_loss"], "loss"));
  });
  poll(`${base}/probes`, 3000, (rows) => {
    if (rows.failed) return;
    const names = [...new Set(rows.map((r) => r.probe))];
    if (!names.length) { probes.innerHTML = "<p class='muted'>no probe values</p>"; return; }
    if (!document.getElementById(`probe-${names[0]}`)) {
      probes.innerHTML = names.map((n) => `<div id="probe-${esc(n)}" class="chart"></div>`)
        .join("");
    }
    for (const n of names) {
      const global = rows.filter((r) => r.probe === n && r.key === "global");
      const shown = global.length ? global : rows.filter((r) => r.probe === n);
      const values = shown.map((r) => ({ epoch: r.epoch, [n]: r.value }));
      embed(`probe-${n}`, lineSpec(values, "epoch", [n], `${n} [${shown[0].key}]`));
    }
  });
}

function sqlPage() {
  const asked = new URLSearchParams(location.search).get("q") || "";
  main.innerHTML = "<h1>SQL</h1><p class='muted'>One statement, read-only, as optlab query " +
    "runs it: the runs, epochs, probes and run_summary views and the store's tables.</p>" +
    `<textarea id="q" rows="6" cols="100">${esc(asked || "select * from run_summary limit 20")}` +
    "</textarea><br><button id='run'>Run</button><div id='result'></div>";
  const box = document.getElementById("q");
  async function go() {
    const q = box.value;
    const query = new URLSearchParams(location.search);
    query.set("q", q);
    history.replaceState(null, "", `/sql?${query}`);
    const out = document.getElementById("result");
    out.innerHTML = "<p class='muted'>running...</p>";
    const body = await getJSON(`/api/sql?q=${encodeURIComponent(q)}`);
    if (body === null) return;
    if (body.failed) {
      out.innerHTML = `<p class="error" id="sql-error">${esc(body.failed)}</p>`;
      return;
    }
    const rows = body.rows.map((r) => Object.fromEntries(body.columns.map((c, i) => [c, r[i]])));
    const more = body.total > body.rows.length
      ? `; the first ${body.rows.length} shown` : "";
    out.innerHTML = `<p class="muted" id="sql-count">${body.total} row(s)${more}</p>` +
      table(rows, body.columns);
  }
  document.getElementById("run").addEventListener("click", go);
  if (asked) go();
}

({ studies: studiesPage, study: studyPage, run: runPage, sql: sqlPage })[page]();
