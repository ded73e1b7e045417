// World-model player page: plain JS, talks to mbrl/player/server.py.
"use strict";

const $ = (id) => document.getElementById(id);
const ENV_SOURCE = "__env__";
const DIGITS = 2;

const state = {
  info: null,      // GET /api/info
  sid: null,       // this page's session id
  revision: -1,    // the session's revision the page shows
  nSteps: 0,
  action: [],      // the action the sliders show (and Enter sends)
  demoAction: null,
  busy: false,
};

// ----- server calls -----
async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
  if (!res.ok) throw new Error(data && data.error ? data.error : `HTTP ${res.status}`);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// Run one server action at a time; key presses while busy are dropped, not queued.
async function run(task) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.state = "busy";
  try {
    await task();
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
    document.body.dataset.state = "ready";
  }
}

// ----- rendering -----
const fmt = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(DIGITS));

function renderCurrent(step) {
  const last = step || null;
  const ctx = state.view ? state.view.context : [];
  $("imagined").src = last ? last.frame : (ctx.length ? ctx[ctx.length - 1] : "");
  $("imaginedCaption").textContent = last
    ? `imagined · step ${last.index} · reward ${fmt(last.reward)}${last.anchored ? " · re-anchored" : ""}`
    : "imagined · start context";
  const hasReal = last ? last.real !== null : false;
  $("realFigure").hidden = !(hasReal || (state.view && state.view.start && state.view.start.kind === "env"));
  if (hasReal) {
    $("real").src = last.real;
    $("realCaption").textContent =
      `real · reward ${fmt(last.real_reward)}${last.real_success ? " · success" : ""} · PSNR ${fmt(last.psnr)} dB`;
  } else if (!last && ctx.length) {
    $("real").src = ctx[ctx.length - 1];
    $("realCaption").textContent = "real · start context";
  } else {
    $("realCaption").textContent = "real · unknown (env episode over, or off the recorded actions)";
  }
}

function stripCell(step) {
  const cell = document.createElement("div");
  cell.className = "cell step" + (step.anchored ? " anchored" : "");
  const img = document.createElement("img");
  img.className = "imagined";
  img.src = step.frame;
  img.title = `action ${step.action.map((a) => a.toFixed(DIGITS)).join(", ")}`;
  cell.appendChild(img);
  if (step.real) {
    const real = document.createElement("img");
    real.className = "real";
    real.src = step.real;
    cell.appendChild(real);
  }
  for (const text of [`${step.index} · r ${fmt(step.reward)}`, step.psnr !== null ? `${fmt(step.psnr)} dB` : ""]) {
    const label = document.createElement("div");
    label.textContent = text;
    cell.appendChild(label);
  }
  return cell;
}

function contextCell(src, i) {
  const cell = document.createElement("div");
  cell.className = "cell context";
  const img = document.createElement("img");
  img.src = src;
  cell.appendChild(img);
  const label = document.createElement("div");
  label.textContent = `context ${i}`;
  cell.appendChild(label);
  return cell;
}

function renderView(view) {
  state.view = view;
  state.revision = view.revision;
  state.nSteps = view.steps.length;
  state.demoAction = view.demo_action;
  const strip = $("filmstrip");
  strip.replaceChildren(...view.context.map(contextCell), ...view.steps.map(stripCell));
  renderCurrent(view.steps.length ? view.steps[view.steps.length - 1] : null);
  $("startInfo").textContent = view.start ? `playing from ${view.start.describe}` : "";
  renderSampling(view.sampling, view.seed);
  updateStripInfo();
}

function appendStep(res) {
  state.nSteps = res.n_steps;
  state.demoAction = res.demo_action;
  state.view.steps.push(res.step);
  const strip = $("filmstrip");
  strip.appendChild(stripCell(res.step));
  strip.scrollLeft = strip.scrollWidth;
  renderCurrent(res.step);
  updateStripInfo();
}

function updateStripInfo() {
  const w = state.view ? state.view.window : null;
  const every = w ? ` (every ${w} steps)` : "";
  $("stripInfo").textContent = `${state.nSteps} steps · green: real context · dashed: model re-anchored${every}`;
  $("demoBtn").disabled = !state.demoAction;
}

// ----- actions -----
function setAction(action) {
  state.action = action.slice();
  state.info.controls.forEach((dim, i) => {
    $(`dim${i}`).value = action[i];
    $(`dim${i}Out`).textContent = Number(action[i]).toFixed(DIGITS);
  });
}

async function sendAction(action) {
  setAction(action);
  const res = await api("POST", `/api/sessions/${state.sid}/step`, { action });
  if (res.revision !== state.revision || res.n_steps !== state.nSteps + 1) {
    renderView(await api("GET", `/api/sessions/${state.sid}`));  // e.g. the model was switched
  } else {
    appendStep(res);
  }
}

function keyAction(dimIndex, sign) {
  const size = Number($("stepSize").value);
  const action = state.info.controls.map((dim, i) => (dim.sticky ? state.action[i] : 0));
  const dim = state.info.controls[dimIndex];
  action[dimIndex] = dim.sticky ? sign : sign * size;
  return action;
}

function keyName(event) {
  return event.key.length === 1 ? event.key.toLowerCase() : event.key;
}

function onKey(event) {
  // Browser and OS shortcuts (Ctrl+R reload, Ctrl+S save, Alt+←, ⌘W ...) are not player keys.
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const tag = event.target.tagName;
  if ((tag === "INPUT" && event.target.type !== "range") || tag === "SELECT" || tag === "TEXTAREA") return;
  if (!state.sid || !state.view || !state.view.start) return;
  const key = keyName(event);
  const commands = { z: undo, r: restart, Enter: () => run(() => sendAction(state.action)), f: followDemo };
  if (commands[key]) {
    event.preventDefault();
    commands[key]();
    return;
  }
  const controls = state.info.controls;
  for (let i = 0; i < controls.length; i++) {
    const sign = key === controls[i].plus_key ? 1 : key === controls[i].minus_key ? -1 : 0;
    if (sign) {
      event.preventDefault();
      run(() => sendAction(keyAction(i, sign)));
      return;
    }
  }
}

const undo = () => run(async () => renderView(await api("POST", `/api/sessions/${state.sid}/undo`)));
const restart = () => run(async () => renderView(await api("POST", `/api/sessions/${state.sid}/restart`)));
const followDemo = () => { if (state.demoAction) run(() => sendAction(state.demoAction)); };

async function start() {
  const source = $("source").value;
  const body = source === ENV_SOURCE
    ? { source: "env", seed: Number($("envSeed").value) }
    : { source: "episode", episode: source, start: Number($("startFrame").value) };
  renderView(await api("POST", `/api/sessions/${state.sid}/start`, body));
}

async function save() {
  const res = await api("POST", `/api/sessions/${state.sid}/save`);
  const box = $("saved");
  box.replaceChildren(document.createTextNode(`saved to ${res.dir}: `));
  for (const [kind, url] of Object.entries(res.files)) {
    const a = document.createElement("a");
    a.href = url;
    a.textContent = kind;
    a.download = "";
    box.append(a, " ");
  }
}

// Only the numeric settings are sent: the model's switches (e.g. compile) are shown, not changed.
// An empty field is sent as null, which the server refuses by name (Number("") would be 0).
async function applySampling() {
  const settings = {};
  for (const key of state.info.model.sampling_editable) {
    const value = $(`sampling_${key}`).value;
    settings[key] = value === "" ? null : Number(value);
  }
  const res = await api("POST", `/api/sessions/${state.sid}/sampling`, { settings, seed: Number($("seed").value) });
  renderSampling(res.sampling, res.seed);
}

// ----- building the page from /api/info -----
function renderSampling(sampling, seed) {
  for (const [key, value] of Object.entries(sampling || {})) {
    const field = $(`sampling_${key}`);
    if (!field) continue;
    if (field.tagName === "INPUT") field.value = value;
    else field.textContent = JSON.stringify(value);
  }
  $("seed").value = seed;
}

function keyLabel(key) {
  const names = { " ": "space", ArrowUp: "↑", ArrowDown: "↓", ArrowLeft: "←", ArrowRight: "→" };
  return key ? names[key] || key : "";
}

function buildControls(info) {
  const box = $("controls");
  const help = $("keyHelp");
  box.replaceChildren();
  help.replaceChildren();
  info.controls.forEach((dim, i) => {
    const row = document.createElement("label");
    row.className = "row";
    row.title = dim.help;
    row.innerHTML = `<span>${dim.name}</span><input id="dim${i}" type="range" min="-1" max="1" step="0.05" value="0">` +
      `<output id="dim${i}Out">0.00</output>`;
    box.appendChild(row);
    $(`dim${i}`).addEventListener("input", (e) => {
      state.action[i] = Number(e.target.value);
      $(`dim${i}Out`).textContent = state.action[i].toFixed(DIGITS);
    });
    if (dim.plus_key || dim.minus_key) {
      const li = document.createElement("li");
      li.innerHTML = `<kbd>${keyLabel(dim.plus_key)}</kbd> / <kbd>${keyLabel(dim.minus_key)}</kbd> ${dim.name}` +
        (dim.sticky ? " (held until changed)" : " ± step size") + (dim.help ? ` — ${dim.help}` : "");
      help.appendChild(li);
    }
  });
  const li = document.createElement("li");
  li.innerHTML = "<kbd>Enter</kbd> step with the sliders · <kbd>f</kbd> follow the demo · <kbd>z</kbd> undo · <kbd>r</kbd> restart";
  help.appendChild(li);
  state.action = info.controls.map(() => 0);
}

// Numeric settings get number inputs; the model's other settings (booleans, strings) are shown read-only.
function buildSampling(info) {
  const box = $("sampling");
  box.replaceChildren();
  const sampling = info.model.sampling;
  if (!Object.keys(sampling).length) {
    box.innerHTML = `<p class="muted small">The ${info.model.type} model has no sampling settings.</p>`;
  }
  for (const [key, value] of Object.entries(sampling)) {
    const row = document.createElement("label");
    row.className = "row";
    const name = document.createElement("span");
    name.textContent = key;
    row.appendChild(name);
    if (info.model.sampling_editable.includes(key)) {
      const input = document.createElement("input");
      input.type = "number";
      input.min = "0";
      input.step = key === "top_k" ? "1" : "0.05";
      input.value = value;
      input.id = `sampling_${key}`;
      row.appendChild(input);
    } else {
      const fixed = document.createElement("output");
      fixed.id = `sampling_${key}`;
      fixed.textContent = JSON.stringify(value);
      row.title = "a runtime switch of the loaded model, the same for every session (set in the checkpoint's config.json)";
      row.appendChild(fixed);
    }
    box.appendChild(row);
  }
}

function buildSources(info) {
  const select = $("source");
  select.replaceChildren();
  for (const name of info.episodes) select.add(new Option(`episode ${name}`, name));
  if (info.env.available) select.add(new Option("env reset (simulator, with ground truth)", ENV_SOURCE));
  if (!select.options.length) {
    showError(`No start context: no episodes in ${info.episode_root} and no simulator (${info.env.reason}).\n` +
      `Make demos with: ${info.collect_command}`);
  }
  const toggle = () => {
    const env = select.value === ENV_SOURCE;
    $("envSeedLabel").hidden = !env;
    $("startFrameLabel").hidden = env;
  };
  select.addEventListener("change", toggle);
  toggle();
  $("startFrame").min = info.model.context_frames - 1;
  $("startFrame").value = info.model.context_frames - 1;
}

function describeModel(info) {
  const m = info.model;
  $("modelInfo").textContent = `${info.task} · ${m.type} (${(m.parameters / 1e6).toFixed(1)}M) · ${m.checkpoint} · ${m.device}`;
}

async function main() {
  state.info = await api("GET", "/api/info");
  describeModel(state.info);
  buildControls(state.info);
  buildSampling(state.info);
  buildSources(state.info);
  state.sid = (await api("POST", "/api/sessions")).session;
  window.addEventListener("pagehide", () => navigator.sendBeacon(`/api/sessions/${state.sid}/close`));
  document.addEventListener("keydown", onKey);
  $("stepSize").addEventListener("input", (e) => { $("stepSizeOut").textContent = Number(e.target.value).toFixed(DIGITS); });
  $("startBtn").addEventListener("click", () => run(start));
  $("stepBtn").addEventListener("click", () => run(() => sendAction(state.action)));
  $("demoBtn").addEventListener("click", followDemo);
  $("undoBtn").addEventListener("click", undo);
  $("restartBtn").addEventListener("click", restart);
  $("reimagineBtn").addEventListener("click", () => run(async () =>
    renderView(await api("POST", `/api/sessions/${state.sid}/reimagine`))));
  $("saveBtn").addEventListener("click", () => run(save));
  $("samplingBtn").addEventListener("click", () => run(applySampling));
  $("ckptForm").addEventListener("submit", (e) => {
    e.preventDefault();
    run(async () => {
      state.info = await api("POST", "/api/checkpoint", { pretrained: $("ckptInput").value });
      describeModel(state.info);
      buildSampling(state.info);  // another model type has other settings
      if (state.view && state.view.start) renderView(await api("GET", `/api/sessions/${state.sid}`));
    });
  });
  if ($("source").options.length) await run(start);
  document.body.dataset.state = "ready";
}

main().catch((e) => { showError(e.message); document.body.dataset.state = "ready"; });
