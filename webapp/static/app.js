// The canvas page: Pointer Events for mouse, touch and pen; strokes go to the server as [[xs], [ys], [ts]].
"use strict";
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const list = document.getElementById("predictions");
const bitmap = document.getElementById("bitmap").getContext("2d");
const message = document.getElementById("message");
const rightButton = document.getElementById("right");
const wrongButton = document.getElementById("wrong");
const wrongLabel = document.getElementById("wrong-label");
const newLabel = document.getElementById("new-label");
const DEBOUNCE_MS = 120;
let strokes = [];
let current = null;
let pointer = null; // the pointer drawing the current stroke: a second finger meanwhile is ignored
let last = null; // the answer about the strokes as they are now, {model_version, predictions}; null until it arrives
let timer = null;
let sequence = 0; // counts changes to the strokes: an answer about strokes changed since its request is dropped
const start = performance.now();

function resize() {
  // Draw in device pixels so lines stay sharp; strokes keep CSS pixel coordinates.
  const ratio = window.devicePixelRatio || 1;
  const side = canvas.clientWidth;
  canvas.width = side * ratio;
  canvas.height = side * ratio;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  redraw();
}

function redraw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 4; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#111";
  for (const [xs, ys] of strokes) {
    ctx.beginPath();
    ctx.moveTo(xs[0], ys[0]);
    for (let i = 1; i < xs.length; i++) ctx.lineTo(xs[i], ys[i]);
    if (xs.length === 1) ctx.lineTo(xs[0] + 0.1, ys[0]);
    ctx.stroke();
  }
}

function point(event) {
  // Strokes are in CSS px of the canvas's inside: its border is left out, and any CSS transform's scale undone.
  const box = canvas.getBoundingClientRect();
  const scale = box.width / canvas.offsetWidth || 1;
  const x = (event.clientX - box.left) / scale - canvas.clientLeft;
  const y = (event.clientY - box.top) / scale - canvas.clientTop;
  return [x, y, Math.round(performance.now() - start)];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  if (current && event.pointerId !== pointer) return; // the same pointer again means its end was missed: start anew
  pointer = event.pointerId;
  canvas.setPointerCapture(event.pointerId);
  const [x, y, t] = point(event);
  current = [[x], [y], [t]];
  strokes.push(current);
  changed();
});
canvas.addEventListener("pointermove", (event) => {
  if (!current || event.pointerId !== pointer) return;
  for (const e of event.getCoalescedEvents ? event.getCoalescedEvents() : [event]) {
    const [x, y, t] = point(e.clientX === undefined ? event : e);
    current[0].push(x); current[1].push(y); current[2].push(t);
  }
  changed();
});
for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) {
  canvas.addEventListener(name, (event) => {
    if (current && event.pointerId === pointer) { current = null; schedule(); }
  });
}

document.getElementById("undo").addEventListener("click", () => { strokes.pop(); changed(); });
document.getElementById("clear").addEventListener("click", () => { strokes = []; changed(); });

function changed() {
  // The answer shown is about the drawing as it was: nothing is saved with it, or with one still on its way.
  sequence++;
  last = null;
  rightButton.disabled = wrongButton.disabled = true;
  redraw();
  if (strokes.length) schedule(); else { clearTimeout(timer); show(null); }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(predict, DEBOUNCE_MS);
}

async function predict() {
  if (!strokes.length) return;
  const mine = sequence;
  let response = null;
  let body;
  try {
    response = await fetch("/api/predict", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({strokes, k: 3}),
    });
    body = await response.json();
  } catch (error) {
    if (mine !== sequence) return;
    show(null); // the guesses shown are about other strokes
    // A proxy in front may answer an error with an HTML page: say its status then.
    say(response ? `no prediction: the server answered ${response.status} ${response.statusText}`
      : `no prediction: the server did not answer (${error})`, "error");
    return;
  }
  if (mine !== sequence) return;
  if (!response.ok) { say(body.error || response.statusText, "error"); show(null); return; }
  show(body);
}

function show(answer) {
  last = answer;
  list.replaceChildren();
  rightButton.disabled = !answer;
  wrongButton.disabled = !strokes.length;
  if (!answer) { bitmap.clearRect(0, 0, 28, 28); return; }
  for (const {label, probability} of answer.predictions) {
    const item = document.createElement("li");
    item.className = "guess";
    item.dataset.label = label;
    item.innerHTML = `<span class="label"></span> <span class="prob"></span><div class="bar"><span></span></div>`;
    item.querySelector(".label").textContent = label;
    item.querySelector(".prob").textContent = `${(probability * 100).toFixed(1)}%`;
    item.querySelector(".bar span").style.width = `${probability * 100}%`;
    list.append(item);
  }
  const pixels = Uint8Array.from(atob(answer.bitmap), (c) => c.charCodeAt(0));
  const image = bitmap.createImageData(28, 28);
  pixels.forEach((v, i) => { image.data.set([v, v, v, 255], i * 4); });
  bitmap.putImageData(image, 0, 0);
  const version = document.getElementById("model-version");
  if (version) version.textContent = answer.model_version;
}

async function save(path, body, thanks) {
  if (last) { body.predicted_label = last.predictions[0].label; body.model_version = last.model_version; }
  let response;
  try {
    response = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
  } catch (error) {
    say("not saved: the server did not answer (" + error + ")", "error");
    return;
  }
  // A proxy in front may answer an error with an HTML page: say its status then.
  const answer = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok) { say("not saved: " + (answer.error || response.statusText), "error"); return; }
  say(thanks(answer), "ok");
  message.dataset.id = answer.id;
  strokes = [];
  changed();
}

function send(label) {
  save("/api/feedback", {strokes, label}, (answer) => answer.kind === "confirmed"
    ? `Thanks! Saved as a ${label} (confirmed).` : `Thanks! Saved as a ${label}: the model will learn from it.`);
}

function propose(name) {
  // The server normalises the name and says what is wrong with it; here only an empty box is caught.
  if (!name.trim()) { say("type a name for the new category", "error"); newLabel.focus(); return; }
  save("/api/proposals", {strokes, name}, (answer) => {
    loadProposals();
    if (answer.known) return `"${answer.name}" is a category the model knows: saved as a ${answer.name}.`;
    const drawings = answer.count === 1 ? "1 drawing" : `${answer.count} drawings`;
    return `Thanks! Saved for the proposed category "${answer.name}" (${drawings} so far).`;
  });
}

async function loadProposals() {
  // Names already proposed, as suggestions: the same name gathers its drawings in one place.
  const response = await fetch("/api/proposals");
  if (!response.ok) return;
  const options = (await response.json()).proposals.map(({name}) => new Option(name, name));
  document.getElementById("proposal-names").replaceChildren(...options);
}

function say(text, kind) { message.textContent = text; message.className = kind; }

rightButton.addEventListener("click", () => { if (last) send(last.predictions[0].label); });
wrongButton.addEventListener("click", () => wrongLabel.value ? send(wrongLabel.value) : propose(newLabel.value));
wrongLabel.addEventListener("change", () => {
  newLabel.hidden = wrongLabel.value !== "";  // the empty value is "none of these"
  if (!newLabel.hidden) { newLabel.focus(); loadProposals(); }
});
window.addEventListener("resize", resize);
resize();
