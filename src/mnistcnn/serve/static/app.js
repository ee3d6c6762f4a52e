// mnistcnn serve: draw on the canvas (or drop a photo), ask POST /api/predict, show the answer.
"use strict";

// While a stroke goes on, ask at most once per THROTTLE_MS and always once more after it ends;
// only one request is in flight, so a slow CPU is never queued up behind stale drawings.
const THROTTLE_MS = 150;
const INK = "#111";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const drop = document.getElementById("drop");
const pen = document.getElementById("pen");
const penValue = document.getElementById("pen-value");
const fileInput = document.getElementById("file");
const labelEl = document.getElementById("label");
const confidenceEl = document.getElementById("confidence");
const statusEl = document.getElementById("status");
const seen = document.getElementById("seen");
const seenEmpty = document.getElementById("seen-empty");

let drawing = false;
let last = null;
let hasInk = false;
let photo = null; // the uploaded File, sent as it is (not the canvas preview of it)
let timer = null;
let inFlight = false;
let pending = false;
let generation = 0; // bumped by Clear: answers to older requests are dropped

const rows = [];
const bars = document.getElementById("bars");
for (let digit = 0; digit < 10; digit++) {
  const li = document.createElement("li");
  li.dataset.digit = String(digit);
  li.innerHTML = '<span class="digit"></span><span class="track"><span class="fill"></span></span>' +
    '<span class="pct"></span>';
  li.querySelector(".digit").textContent = String(digit);
  bars.appendChild(li);
  rows.push({ li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
}

function setPen() {
  ctx.lineWidth = Number(pen.value);
  penValue.textContent = pen.value;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * canvas.width) / box.width,
    y: ((event.clientY - box.top) * canvas.height) / box.height,
  };
}

function clearCanvas() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  hasInk = false;
  photo = null;
  generation++;
  clearTimeout(timer);
  timer = null;
  pending = false;
  setBusy();
  showEmpty("No digit yet: draw one.");
}

function startStroke(event) {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  if (photo) clearCanvas(); // drawing starts a new picture
  drawing = true;
  canvas.setPointerCapture(event.pointerId);
  last = point(event);
  ctx.beginPath();
  ctx.arc(last.x, last.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fillStyle = INK;
  ctx.fill();
  hasInk = true;
  schedule();
}

function moveStroke(event) {
  if (!drawing) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.strokeStyle = INK;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  for (const e of events.length ? events : [event]) {
    last = point(e);
    ctx.lineTo(last.x, last.y);
  }
  ctx.stroke();
  schedule();
}

function endStroke() {
  if (!drawing) return;
  drawing = false;
  schedule();
}

// data-busy on <body>: "true" while an answer is due (a request waiting or in flight).
function setBusy() {
  document.body.dataset.busy = String(timer !== null || inFlight || pending);
}

function schedule() {
  if (timer === null) timer = setTimeout(run, THROTTLE_MS);
  setBusy();
}

function run() {
  timer = null;
  if (inFlight) {
    pending = true;
  } else if (photo) {
    send(photo, photo.name || "photo", generation);
  } else if (hasInk) {
    const mine = generation;
    inFlight = true; // from now: toBlob is asynchronous too
    canvas.toBlob((blob) => send(blob, "canvas.png", mine), "image/png");
  } else {
    showEmpty("No digit yet: draw one.");
  }
  setBusy();
}

async function send(blob, name, mine) {
  inFlight = true;
  setBusy();
  const form = new FormData();
  form.append("image", blob, name);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = { detail: `${response.status} ${response.statusText}` };
    }
    if (mine !== generation) return;
    if (!response.ok) showError(body.detail || `${response.status} ${response.statusText}`);
    else if (!body.found) showEmpty(body.message || "No digit found.", "none");
    else showPrediction(body);
  } catch (error) {
    if (mine === generation) showError(`the server did not answer (${error.message})`);
  } finally {
    inFlight = false;
    if (pending) {
      pending = false;
      schedule();
    }
    setBusy();
  }
}

function setBars(probabilities) {
  const top = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
  rows.forEach((row, digit) => {
    const p = probabilities ? probabilities[digit] : 0;
    row.fill.style.width = `${(100 * p).toFixed(1)}%`;
    row.pct.textContent = probabilities ? `${(100 * p).toFixed(1)}%` : "";
    row.li.classList.toggle("top", digit === top);
  });
}

function setSeen(base64) {
  seen.hidden = !base64;
  seenEmpty.hidden = Boolean(base64);
  if (base64) seen.src = `data:image/png;base64,${base64}`;
}

function showPrediction(result) {
  labelEl.textContent = String(result.label);
  labelEl.dataset.state = "digit";
  const unsure = result.low_confidence ? " (low confidence)" : "";
  confidenceEl.textContent = `p = ${result.probability.toFixed(3)}${unsure}`;
  statusEl.textContent = photo ? `photo: ${photo.name}` : "Keep drawing, or Clear to start again.";
  statusEl.classList.remove("error");
  setBars(result.probabilities);
  setSeen(result.image);
}

function showEmpty(message, state = "empty") {
  labelEl.textContent = state === "none" ? "?" : "\u2013";
  labelEl.dataset.state = state;
  confidenceEl.textContent = state === "none" ? "no digit" : "";
  statusEl.textContent = message;
  statusEl.classList.remove("error");
  setBars(null);
  setSeen(null);
}

function showError(message) {
  labelEl.textContent = "!";
  labelEl.dataset.state = "error";
  confidenceEl.textContent = "";
  statusEl.textContent = message;
  statusEl.classList.add("error");
  setBars(null);
  setSeen(null);
}

async function showPhoto(file) {
  clearCanvas();
  photo = file;
  statusEl.textContent = `photo: ${file.name}`;
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  } catch (_) {
    // Not displayable here (e.g. TIFF): the server still decides what it is.
  }
  run();
}

canvas.addEventListener("pointerdown", startStroke);
canvas.addEventListener("pointermove", moveStroke);
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
canvas.addEventListener("lostpointercapture", endStroke);
document.getElementById("clear").addEventListener("click", clearCanvas);
pen.addEventListener("input", setPen);
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) showPhoto(fileInput.files[0]);
  fileInput.value = "";
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) showPhoto(event.dataTransfer.files[0]);
});

async function loadModelInfo() {
  const el = document.getElementById("model-info");
  try {
    const response = await fetch("/api/model");
    const info = await response.json();
    const parts = [`${info.file || "model"}: ${info.arch}`,
      `${info.parameters.toLocaleString("en")} parameters`];
    if (typeof info.metrics.test_accuracy === "number") {
      parts.push(`test accuracy ${(100 * info.metrics.test_accuracy).toFixed(2)} %`);
    }
    el.textContent = parts.join(" \u00b7 ");
  } catch (_) {
    el.textContent = "model information unavailable";
  }
}

setPen();
setBusy();
showEmpty("No digit yet: draw one.");
loadModelInfo();
