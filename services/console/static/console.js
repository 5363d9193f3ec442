// The console's behaviour that htmx does not cover: charts (uPlot, from JSON in the page),
// selects that submit their form, and the playground's two streamed completions.
"use strict";

const COLORS = ["#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#4c6085", "#c2185b"];

function drawChart(el) {
  const data = document.getElementById(el.dataset.chart);
  if (!data || typeof uPlot === "undefined") return;
  const spec = JSON.parse(data.textContent);
  const series = [{ label: spec.x_label }];
  spec.series.forEach((s, i) => {
    series.push({
      label: s.label,
      stroke: COLORS[i % COLORS.length],
      width: 2,
      spanGaps: s.points_only,
      points: { show: true, size: s.points_only ? 9 : 5, fill: COLORS[i % COLORS.length] },
      paths: s.points_only ? () => null : undefined,
    });
  });
  const width = Math.max(320, el.clientWidth || 600);
  const xAxis = { label: spec.x_label };
  if (spec.time) {
    // Days in UTC, as control counts them: one tick per day or wider, no hours.
    xAxis.incrs = [86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400];
    xAxis.values = (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(0, 10));
    xAxis.space = 90;
  }
  const yAxis = {
    label: el.dataset.yLabel || "", size: 60,
    values: (u, ticks) => ticks.map((v) => String(Number(v.toPrecision(3)))),
  };
  const opts = {
    width: width, height: 300,
    padding: [12, 36, 12, 12],   // room for the last x label
    scales: { x: { time: spec.time } },
    axes: [xAxis, yAxis],
    series: series,
    legend: { live: false },
  };
  if (spec.time) opts.tzDate = (t) => uPlot.tzDate(new Date(t * 1000), "Etc/UTC");
  el.innerHTML = "";
  new uPlot(opts, [spec.x].concat(spec.series.map((s) => s.values)), el);
  // What was drawn, for people and for the browser tests: the points and the series.
  el.dataset.points = String(spec.series.reduce(
    (n, s) => n + s.values.filter((v) => v !== null).length, 0));
  el.dataset.series = String(spec.series.length);
}

function drawCharts(root) {
  root.querySelectorAll("[data-chart]").forEach(drawChart);
}

function autosubmit(root) {
  root.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });
}

// -- playground ------------------------------------------------------------------------------

function paneOf(name) {
  const el = document.getElementById("pane-" + name);
  return {
    el: el,
    model: el.querySelector(".pane-model"),
    output: el.querySelector(".output"),
    usage: el.querySelector(".usage"),
  };
}

function showUsage(pane, event, started, firstAt) {
  const u = event.usage || {};
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const first = firstAt ? ((firstAt - started) / 1000).toFixed(2) + " s to the first token, " : "";
  pane.usage.textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ` +
    `${u.total_tokens} tokens · finish: ${event.finish_reason} · ${first}${seconds} s in all`;
  pane.el.dataset.totalTokens = String(u.total_tokens);
  pane.el.dataset.done = "true";
}

function showError(pane, message) {
  pane.usage.textContent = "";
  const p = document.createElement("p");
  p.className = "error";
  p.setAttribute("role", "alert");
  p.textContent = message;
  pane.output.after(p);
  pane.el.dataset.done = "error";
}

async function streamInto(url, pane, body) {
  pane.el.dataset.done = "";
  pane.output.textContent = "";
  pane.el.querySelectorAll(".error").forEach((e) => e.remove());
  pane.usage.textContent = "waiting for the first token…";
  const started = performance.now();
  let firstAt = null;
  let response;
  try {
    response = await fetch(url, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "content-type": "application/json", "accept": "text/event-stream" },
    });
  } catch (err) {
    showError(pane, "the console could not be reached: " + err);
    return;
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (err) { /* not JSON */ }
    showError(pane, message);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        if (event.delta) {
          if (firstAt === null) firstAt = performance.now();
          pane.output.textContent += event.delta;
        }
        if (event.error) showError(pane, event.error);
        if (event.finish_reason) showUsage(pane, event, started, firstAt);
      }
    }
  }
  if (!pane.el.dataset.done) showError(pane, "the stream ended without a result");
}

function playground(form) {
  const select = form.querySelector("#pg-model");
  const tuned = paneOf("tuned");
  const base = paneOf("base");
  const label = () => {
    const option = select.selectedOptions[0];
    const baseModel = option ? option.dataset.base : "";
    tuned.model.textContent = select.value;
    base.model.textContent = baseModel || "";
    base.el.classList.toggle("hidden", !baseModel);
    return baseModel;
  };
  label();
  select.addEventListener("change", label);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const baseModel = label();
    const number = (name) => {
      const text = form.elements[name].value.trim();
      return text === "" ? null : Number(text);
    };
    const body = {
      prompt: form.elements.prompt.value,
      max_tokens: number("max_tokens"),
      temperature: number("temperature"),
    };
    const url = form.dataset.stream;
    const runs = [streamInto(url, tuned, { ...body, model: select.value })];
    if (baseModel) runs.push(streamInto(url, base, { ...body, model: baseModel }));
    Promise.all(runs);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  autosubmit(document);
  const form = document.getElementById("playground");
  if (form) playground(form);
});
