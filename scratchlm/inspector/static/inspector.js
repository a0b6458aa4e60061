// scratchlm inspector: draws what the server computed (scratchlm/inspector/analysis.py).
// Every number on the page comes from the JSON of /api/inspect; this file computes nothing
// about the model. Text from the model (tokens) is only ever set as textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const EMBEDDED = document.getElementById("inspector-data");   // an exported, static page
let info = null;        // /api/model
let result = null;      // the last /api/inspect
let selected = { layer: 0, head: 0, rnnLayer: 0 };

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function shown(text) {                    // a token as the page writes it: whitespace visible
  return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7") || "\u2205";
}

function fmt(x, digits) {
  if (!isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return x.toExponential(2);
  return x.toFixed(digits === undefined ? 3 : digits);
}

// colour maps: sequential (0..1: white -> blue) and diverging (-1..1: red - white - blue)
function seq(v) {
  const t = Math.max(0, Math.min(1, v));
  return `rgb(${Math.round(255 - 200 * t)},${Math.round(255 - 160 * t)},${Math.round(255 - 30 * t)})`;
}
function div(v) {
  const t = Math.max(-1, Math.min(1, v));
  if (t >= 0) return `rgb(${Math.round(255 - 190 * t)},${Math.round(255 - 140 * t)},255)`;
  return `rgb(255,${Math.round(255 + 150 * t)},${Math.round(255 + 170 * t)})`;
}
const maxAbs = (a) => a.reduce((m, x) => Math.max(m, Math.abs(x)), 0) || 1;
const maxOf = (a) => a.reduce((m, x) => Math.max(m, x), -Infinity);     // (no spread: any length)
const minOf = (a) => a.reduce((m, x) => Math.min(m, x), Infinity);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let data;
  try { data = await r.json(); } catch (e) { throw new Error(`the server answered ${r.status} without JSON`); }
  if (!r.ok) throw new Error(data.error || `the server answered ${r.status}`);
  return data;
}

// ------------------------------------------------------------------------------------------
async function inspect(target, prompt) {
  if (prompt === undefined) prompt = $("prompt").value;
  else $("prompt").value = prompt;           // a target is chosen for the prompt on show
  $("status").textContent = "computing...";
  try {
    const body = { prompt: prompt };
    if (target !== undefined) body.target = target;
    const r = await api("/api/inspect", body);
    showError("");
    render(r);
  } catch (e) {
    showError(e.message);
  } finally {
    $("status").textContent = "";
  }
}

async function sample() {
  $("status").textContent = "sampling...";
  try {
    const t = parseFloat($("temperature").value);
    const r = await api("/api/sample", { prompt: $("prompt").value, temperature: t });
    $("prompt").value = r.prompt;
    await inspect();
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  }
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function describe(m) {
  const parts = [`${m.class}`, `${m.parameters.toLocaleString()} parameters`, m.dtype,
                 `vocabulary ${m.vocab_size}`, `tokenizer ${m.tokenizer}`];
  if (m.kind === "transformer") {
    const same = m.heads.every((h) => h === m.heads[0]);
    parts.splice(1, 0, same ? `${plural(m.layers, "layer")} x ${plural(m.heads[0], "head")}`
                            : `${plural(m.layers, "layer")}, heads ${m.heads.join("/")}`, `context ${m.context}`);
  }
  else parts.splice(1, 0, `${m.cell.toUpperCase()}, ${plural(m.layers, "layer")} x ${plural(m.hidden_size, "unit")}`);
  return parts.join(" \u00b7 ");
}

// ------------------------------------------------------------------------------------------
function render(r) {
  result = r;
  info = info || r.model;
  $("results").hidden = false;
  renderTokens(r);
  renderNext(r);
  const tf = r.model.kind === "transformer";
  $("transformer-views").hidden = !tf;
  $("rnn-views").hidden = tf;
  if (tf) {
    selected.layer = Math.min(selected.layer, r.attention.length - 1);
    selected.head = Math.min(selected.head, r.attention[selected.layer].length - 1);
    renderAttentionControls(r);
    renderAttention();
    renderResidual(r);
    renderContributions(r);
    renderLens(r);
    renderLayerGrads(r);
  } else {
    renderRnn(r);
  }
}

function renderTokens(r) {
  const box = $("tokens");
  box.replaceChildren();
  const g = r.saliency.grad_norm, m = maxAbs(g);
  r.tokens.forEach((t, i) => {
    const s = el("span", { class: "tok", "data-t": i, "data-saliency": g[i],
      title: `t = ${i}, id ${t.id}\n|grad| = ${fmt(g[i])}\ngrad x input = ${fmt(r.saliency.grad_x_input[i])}` },
      shown(t.text));
    s.style.background = seq(g[i] / m);
    box.appendChild(s);
  });
  $("target-text-1").textContent = shown(r.target.text);
}

function renderNext(r) {
  const body = $("next").tBodies[0];
  body.replaceChildren();
  const top = r.next.top[0].prob;
  r.next.top.forEach((t, i) => {
    const tr = el("tr", { "data-id": t.id, "data-prob": t.prob });
    if (i === 0) tr.id = "top1";
    if (t.id === r.target.id) tr.classList.add("target");
    tr.appendChild(el("td", {}, String(i + 1)));
    tr.appendChild(el("td", { class: "mono token" }, shown(t.text)));
    tr.appendChild(el("td", {}, fmt(t.prob, 4)));
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.round(120 * t.prob / top)}px`;
    const td = el("td"); td.appendChild(bar); tr.appendChild(td);
    if (!EMBEDDED) tr.addEventListener("click", () => inspect(t.id, r.prompt));
    body.appendChild(tr);
  });
  $("target-text").textContent = shown(r.target.text);
  $("target-id").textContent = String(r.target.id);
  $("target-logprob").textContent = fmt(r.target.logprob);
  $("entropy").textContent = fmt(r.next.entropy);
}

// ---- attention -------------------------------------------------------------------------
function renderAttentionControls(r) {
  const L = r.attention.length, H = r.attention[selected.layer].length;
  const widest = maxOf(r.attention.map((a) => a.length));        // pruning: heads per layer
  for (const [id, n, key] of [["attn-layer", L, "layer"], ["attn-head", H, "head"]]) {
    const s = $(id);
    if (s.options.length !== n) {
      s.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: i }, String(i))));
    }
    s.value = String(selected[key]);
  }
  const thumbs = $("attn-thumbs");
  thumbs.replaceChildren();
  thumbs.style.gridTemplateColumns = `repeat(${widest}, auto)`;
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < widest; h++) {
      if (h >= r.attention[l].length) { thumbs.appendChild(el("div")); continue; }
      const fig = el("figure", { "data-layer": l, "data-head": h });
      const c = el("canvas");
      drawMatrix(c, r.attention[l][h], (v) => seq(v));
      fig.appendChild(c);
      fig.appendChild(el("figcaption", {}, `L${l} H${h}`));
      fig.addEventListener("click", () => { selected.layer = l; selected.head = h; renderAttentionControls(r); renderAttention(); });
      if (l === selected.layer && h === selected.head) fig.classList.add("selected");
      thumbs.appendChild(fig);
    }
  }
}

function drawMatrix(canvas, rows, colour) {
  const n = rows.length, m = rows[0].length;
  canvas.width = m; canvas.height = n;
  const ctx = canvas.getContext("2d");
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) {
    ctx.fillStyle = colour(rows[i][j]);
    ctx.fillRect(j, i, 1, 1);
  }
}

function renderAttention() {
  const r = result, A = r.attention[selected.layer][selected.head];
  const table = $("attn-map");
  table.replaceChildren();
  const head = el("thead"), hr = el("tr");
  hr.appendChild(el("th", { class: "corner" }, "query \u2193 key \u2192"));
  r.tokens.forEach((t) => hr.appendChild(el("th", {}, shown(t.text))));
  head.appendChild(hr); table.appendChild(head);
  const body = el("tbody");
  A.forEach((row, i) => {
    const tr = el("tr");
    tr.appendChild(el("th", {}, shown(r.tokens[i].text)));
    row.forEach((w, j) => {
      const td = el("td", { "data-q": i, "data-k": j, "data-w": w });
      td.style.background = seq(w);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  table.appendChild(body);
  table.onmouseover = (ev) => {
    const td = ev.target.closest("td");
    if (!td) return;
    const i = +td.dataset.q, j = +td.dataset.k;
    $("attn-readout").textContent = `layer ${selected.layer}, head ${selected.head}: query ` +
      `${JSON.stringify(r.tokens[i].text)} (t=${i}) -> key ${JSON.stringify(r.tokens[j].text)} ` +
      `(t=${j}): weight ${fmt(+td.dataset.w, 4)}`;
  };
}

// ---- residual norms, contributions, logit lens, gradients by layer -------------------------
function layerName(l) { return l === 0 ? "embed" : `block ${l - 1}`; }

function hbars(box, rows, signed) {
  box.replaceChildren();
  const m = maxAbs(rows.map((r) => r[1]));
  for (const [label, v, title] of rows) {
    const line = el("div", { class: "hbar", title: title || "" });
    line.appendChild(el("span", { class: "label" }, label));
    const f = el("div", { class: "fill" });
    f.style.width = `${Math.round(180 * Math.abs(v) / m)}px`;
    if (signed && v < 0) f.style.background = "#d0573a";
    line.appendChild(f);
    line.appendChild(el("span", { class: "value" }, fmt(v)));
    box.appendChild(line);
  }
}

function renderResidual(r) {
  const T = r.tokens.length;
  hbars($("residual"), r.residual_norm.map((row, l) => [layerName(l), row[T - 1],
    `mean over positions ${fmt(row.reduce((a, b) => a + b, 0) / T)}`]));
  const note = el("p", { class: "note" }, "at the last position; hover for the mean over positions");
  $("residual").appendChild(note);
}

function renderContributions(r) {
  const c = r.contributions, box = $("contributions");
  box.replaceChildren();
  const rows = [["embed", c.embedding]];
  c.layers.forEach((l, i) => { rows.push([`attn ${i}`, l.attention]); rows.push([`mlp ${i}`, l.mlp]); });
  if (c.final_bias) rows.push(["ln bias", c.final_bias]);
  const bars = el("div");
  hbars(bars, rows, true);
  box.appendChild(bars);
  const H = maxOf(c.layers.map((l) => l.heads.length));
  const t = el("table", { class: "contrib", id: "head-contrib" });
  const hr = el("tr"); hr.appendChild(el("th", {}, "head \u2192"));
  for (let h = 0; h < H; h++) hr.appendChild(el("th", {}, String(h)));
  const biased = c.layers.some((l) => l.attention_bias !== 0);
  if (biased) hr.appendChild(el("th", { title: "the output projection's bias" }, "bias"));
  t.appendChild(hr);
  const m = maxAbs(c.layers.flatMap((l) => l.heads));
  c.layers.forEach((l, i) => {
    const tr = el("tr"); tr.appendChild(el("th", {}, `layer ${i}`));
    l.heads.forEach((v) => { const td = el("td", {}, fmt(v)); td.style.background = div(v / m); tr.appendChild(td); });
    for (let h = l.heads.length; h < H; h++) tr.appendChild(el("td", {}, "\u2013"));   // pruned
    if (biased) tr.appendChild(el("td", {}, fmt(l.attention_bias)));
    t.appendChild(tr);
  });
  box.appendChild(el("p", { class: "note" },
    `logit of ${JSON.stringify(r.target.text)} = ${fmt(c.logit)}: the parts above sum to it (the final norm's scale held at its value). Each layer's heads${c.layers.some((l) => l.attention_bias !== 0) ? " and bias" : ""} sum to its attn part:`));
  box.appendChild(t);
}

function renderLens(r) {
  const t = $("lens");
  t.replaceChildren();
  const hr = el("tr"); hr.appendChild(el("th", {}, "layer \\ position"));
  r.tokens.forEach((tok) => hr.appendChild(el("th", {}, shown(tok.text))));
  t.appendChild(hr);
  r.logit_lens.forEach((row, l) => {
    const tr = el("tr"); tr.appendChild(el("th", {}, layerName(l)));
    row.forEach((top, i) => {
      const td = el("td", { "data-layer": l, "data-t": i,
        title: top.map((x) => `${JSON.stringify(x.text)} ${fmt(x.prob, 4)}`).join("\n") },
        shown(top[0].text));
      td.style.background = seq(top[0].prob);
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
}

function renderLayerGrads(r) {
  const g = r.layer_grad_norm, m = maxOf(g.flat()) || 1;
  const t = $("layer-grads");
  t.replaceChildren();
  const hr = el("tr"); hr.appendChild(el("th", {}, "layer \\ position"));
  r.tokens.forEach((tok) => hr.appendChild(el("th", {}, shown(tok.text))));
  t.appendChild(hr);
  g.forEach((row, l) => {
    const tr = el("tr"); tr.appendChild(el("th", {}, layerName(l)));
    row.forEach((v, j) => {
      const td = el("td", { "data-layer": l, "data-t": j, title: fmt(v) });
      td.style.background = seq(v / m);
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  t.onmouseover = (ev) => {
    const td = ev.target.closest("td");
    if (td) $("layer-grads-readout").textContent = `${layerName(+td.dataset.layer)}, t=${td.dataset.t} ` +
      `${JSON.stringify(r.tokens[+td.dataset.t].text)}: ${td.title}`;
  };
}

// ---- RNNs ----------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function logChart(box, series, tokens) {     // one line per layer, log10 y axis; hover a dot
  box.replaceChildren();
  const W = 720, H = 200, pad = 44, T = series[0].length;
  const all = series.flat().filter((v) => v > 0);
  if (!all.length) { box.textContent = "every gradient is 0"; return; }
  const lo = Math.floor(Math.log10(minOf(all))), hi = Math.ceil(Math.log10(maxOf(all)));
  const span = Math.max(hi - lo, 1);
  const x = (t) => pad + (T === 1 ? 0 : (t * (W - 2 * pad)) / (T - 1));
  const y = (v) => H - pad / 2 - ((Math.log10(Math.max(v, 10 ** lo)) - lo) * (H - pad)) / span;
  const root = svg("svg", { width: W, height: H, class: "chart" });
  for (let e = lo; e <= hi; e++) {
    root.appendChild(svg("line", { x1: pad, x2: W - pad, y1: y(10 ** e), y2: y(10 ** e), stroke: "#e3e5ea" }));
    const label = svg("text", { x: 4, y: y(10 ** e) + 4, "font-size": 11, fill: "#556" });
    label.textContent = `1e${e}`;
    root.appendChild(label);
  }
  const colours = ["#4a6ee0", "#e0784a", "#3aa76d", "#9b59b6"], names = ["blue", "orange", "green", "purple"];
  series.forEach((norms, l) => {
    const c = colours[l % colours.length];
    root.appendChild(svg("polyline", { fill: "none", stroke: c, "stroke-width": 2,
      points: norms.map((v, t) => `${x(t)},${y(v)}`).join(" ") }));
    norms.forEach((v, t) => {
      const dot = svg("circle", { cx: x(t), cy: y(v), r: 3.5, fill: c });
      const tip = svg("title");
      tip.textContent = `layer ${l}, t=${t} ${JSON.stringify(tokens[t].text)}: ${fmt(v)}`;
      dot.appendChild(tip);
      root.appendChild(dot);
    });
  });
  box.appendChild(root);
  box.appendChild(el("p", { class: "note" }, `time step t = 0 .. ${T - 1} across (the prompt's tokens); ` +
    `one line per layer (${series.map((_, l) => `layer ${l}: ${names[l % names.length]}`).join(", ")}); hover a dot`));
}

function renderRnn(r) {
  const s = $("rnn-layer");
  if (s.options.length !== r.hidden.length)
    s.replaceChildren(...r.hidden.map((_, i) => el("option", { value: i }, String(i))));
  selected.rnnLayer = Math.min(selected.rnnLayer, r.hidden.length - 1);
  s.value = String(selected.rnnLayer);
  logChart($("hgrad"), r.hidden_grad_norm, r.tokens);
  const box = $("rnn-maps");
  box.replaceChildren();
  const l = selected.rnnLayer;
  const maps = [["hidden state h_t", r.hidden[l], true]];
  // sigmoid gates lie in (0, 1); the tanh ones (LSTM's g, GRU's n) in (-1, 1)
  r.model.gates.forEach((g, k) => maps.push([`gate ${g}`, r.gates[l][k], g === "g" || g === "n"]));
  for (const [title, M, signed] of maps) {            // M: (T, H) -> drawn as (H, T)
    const T = M.length, H = M[0].length;
    const cols = Array.from({ length: H }, (_, u) => Array.from({ length: T }, (_, t) => M[t][u]));
    const block = el("div", { class: "mapblock" });
    block.appendChild(el("div", { class: "title" }, title));
    const c = el("canvas", { class: "map" });
    drawMatrix(c, cols, signed ? (v) => div(v) : (v) => seq(v));
    // at most ~560 x 256 pixels a map, whatever T and H: cells stretch or shrink
    const cell = Math.max(4, Math.min(12, Math.floor(560 / T))), unit = Math.min(4, 256 / H);
    c.style.width = `${T * cell}px`; c.style.height = `${H * unit}px`;
    c.onmousemove = (ev) => {
      const t = Math.floor(ev.offsetX / cell), u = Math.floor(ev.offsetY / unit);
      if (t < T && u < H) $("rnn-readout").textContent = `${title}, t=${t} ` +
        `${JSON.stringify(r.tokens[t].text)}, unit ${u}: ${fmt(M[t][u])}`;
    };
    block.appendChild(c);
    box.appendChild(block);
  }
}

// ------------------------------------------------------------------------------------------
function wire() {
  $("inspect-btn").addEventListener("click", () => inspect());
  $("sample-btn").addEventListener("click", () => sample());
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); inspect(); }
  });
  $("attn-layer").addEventListener("change", (ev) => {
    selected.layer = +ev.target.value;
    selected.head = Math.min(selected.head, result.attention[selected.layer].length - 1);
    renderAttentionControls(result); renderAttention();
  });
  $("attn-head").addEventListener("change", (ev) => { selected.head = +ev.target.value; renderAttentionControls(result); renderAttention(); });
  $("rnn-layer").addEventListener("change", (ev) => { selected.rnnLayer = +ev.target.value; renderRnn(result); });
}

async function start() {
  wire();
  if (EMBEDDED) {                       // an exported page: one prompt, no server behind it
    const r = JSON.parse(EMBEDDED.textContent);
    $("prompt").value = r.prompt;
    $("prompt").readOnly = true;
    for (const id of ["inspect-btn", "sample-btn", "temperature"]) $(id).disabled = true;
    $("model-info").textContent = describe(r.model) + " \u00b7 exported page (static)";
    render(r);
    return;
  }
  try {
    info = await api("/api/model");
    $("model-info").textContent = `${info.checkpoint} \u00b7 ${describe(info)}`;
  } catch (e) {
    showError(e.message);
  }
}

start();
