// The canvas page: Pointer Events for mouse, touch and pen; strokes go to the server as [[xs], [ys], [ts]].
"use strict";
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const list = document.getElementById("predictions");
const bitmap = document.getElementById("bitmap").getContext("2d");
const message = document.getElementById("message");
const heard = document.getElementById("heard"); // a live region: what a screen reader says of the guesses
const rightButton = document.getElementById("right");
const wrongButton = document.getElementById("wrong");
const wrongLabel = document.getElementById("wrong-label");
const nameIt = document.getElementById("name-it"); // the "none of these" option; option 0 is "choose..."
const newLabel = document.getElementById("new-label");
const modelLine = document.getElementById("model");
const picture = document.getElementById("picture");
const MAX_PICTURE_BYTES = 10 * 1024 * 1024; // the server's limit (doodle_lib/upload.py)
const DEBOUNCE_MS = 120; // ask once the pen pauses this long...
const MAX_WAIT_MS = 300; // ...or this long after the first unanswered change: guesses follow a long stroke too
const RETRY_MS = 3000; // asking again after the server did not answer
let strokes = [];
let current = null;
let pointer = null; // the pointer drawing the current stroke: a second finger meanwhile is ignored
let side = 0; // the canvas's width in CSS px, which the strokes' coordinates are in
let last = null; // the answer about the strokes as they are now, {model_version, predictions}; null until it arrives
let timer = null;
let waitingSince = null; // when the first change not yet asked about was made
let sequence = 0; // counts changes to the strokes
let epoch = 0; // counts changes that take ink away (undo, clear, a save): answers from before one are dropped
let shown = 0; // the change the guesses on the page are about: older answers are dropped
let saving = false;
let modelAsked = 0; // counts the questions to /api/model
let unanswered = null; // {sent, key}: the save whose answer never came; sending the same again reuses its key
const start = performance.now();

function resize() {
  // Draw in device pixels so lines stay sharp. Strokes are in CSS px: scaled with the canvas (a phone turned
  // sideways) they keep their place on it; the server normalises the scale away, so the guesses stand.
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  if (side && width && width !== side) {
    for (const [xs, ys] of strokes) xs.forEach((x, i) => { xs[i] = x * width / side; ys[i] = ys[i] * width / side; });
  }
  side = width || side;
  canvas.width = width * ratio;
  canvas.height = width * ratio;
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

document.getElementById("undo").addEventListener("click", () => { strokes.pop(); changed(true); });
document.getElementById("clear").addEventListener("click", () => { strokes = []; changed(true); });

document.getElementById("picture-button").addEventListener("click", () => picture.click());
picture.addEventListener("change", () => {
  const [file] = picture.files;
  picture.value = ""; // choosing the same file again is a change too
  if (file) predictPicture(file);
});

async function predictPicture(file) {
  // A picture (a doodle on paper, a screenshot) replaces the drawing once its guesses arrive. They show, but Right
  // and Save stay off: feedback is stored as strokes, which a picture does not have.
  const mine = sequence;
  let answer;
  if (file.size > MAX_PICTURE_BYTES) {
    answer = {error: `the picture is too large: ${(file.size / 2 ** 20).toFixed(1)} MB (at most 10 MB)`};
  } else {
    say("asking about the picture…", "");
    try {
      const image = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      });
      const response = await fetch("/api/predict", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({image, k: 3}),
      });
      answer = await response.json().catch(() => ({error: `the server answered ${response.status} ${response.statusText}`}));
      if (!response.ok) answer = {error: answer.error || response.statusText};
    } catch (error) {
      answer = {error: error instanceof TypeError ? "can't reach the server" : `can't read the file (${error})`};
    }
  }
  if (mine !== sequence) { say("the picture's guesses were dropped: the drawing changed meanwhile", ""); return; }
  if (answer.error) { say(`no prediction for the picture: ${answer.error}`, "error"); return; }
  strokes = [];
  changed(true);
  show(answer);
  last = null; // nothing to save: see above
  updateButtons();
  say("The guesses are about the picture. To teach the model, draw it here.", "");
}

function changed(removed = false) {
  // The answer shown is about the drawing as it was: nothing is saved with it, or with one still on its way.
  sequence++;
  if (removed) epoch++;
  last = null;
  updateButtons();
  redraw();
  if (strokes.length) schedule(); else { clearTimeout(timer); waitingSince = null; show(null); }
}

function schedule() {
  const now = performance.now();
  if (waitingSince === null) waitingSince = now;
  clearTimeout(timer);
  timer = setTimeout(() => { waitingSince = null; predict(); }, Math.min(DEBOUNCE_MS, waitingSince + MAX_WAIT_MS - now));
}

async function predict() {
  if (!strokes.length) return;
  const mine = sequence;
  const mineEpoch = epoch;
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
    if (response) { say(`no prediction: the server answered ${response.status} ${response.statusText}`, "error"); return; }
    say("no prediction: can't reach the server. Your drawing is kept; asking again in a few seconds.", "error");
    setTimeout(() => { if (mine === sequence) predict(); }, RETRY_MS);
    return;
  }
  if (!response.ok) {
    if (mine !== sequence) return;
    say(body.error || response.statusText, "error"); show(null); return;
  }
  // An answer about the strokes before the latest ones were added still shows what the model thinks while the
  // pen moves on; one from before ink was taken away, or older than the guesses shown, is about another drawing.
  if (mineEpoch !== epoch || mine < shown) return;
  say("", ""); // an earlier error, or the thanks for the drawing before, is no longer news
  show(body, mine);
}

function show(answer, about = sequence) {
  shown = about;
  last = answer && about === sequence ? answer : null;
  list.replaceChildren();
  updateButtons();
  if (!answer) { bitmap.clearRect(0, 0, 28, 28); heard.textContent = ""; return; }
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
  if (answer.model_version !== modelLine.dataset.version) refreshModel(); // swapped since the page last asked
  // Spoken once the pen lifts, about the drawing as it is: not every few hundred ms while a stroke goes on.
  const words = answer.predictions.map(({label, probability}) => `${label} ${(probability * 100).toFixed(0)}%`);
  const spoken = `The model thinks: ${words.join(", ")}`;
  if (last && !current && heard.textContent !== spoken) heard.textContent = spoken;
}

function updateButtons() {
  // Right needs the answer about the strokes as they are; Save needs them answered (or refused: a drawing can be
  // labelled without a prediction) and a category chosen. Neither while a save is on its way: one drawing, one save.
  rightButton.disabled = saving || !last;
  wrongButton.disabled = saving || !strokes.length || shown !== sequence || wrongLabel.selectedIndex === 0;
}

async function save(path, body, thanks) {
  if (saving) return;
  const sent = [...body.strokes]; // strokes drawn while the save is on its way stay on the canvas for the next drawing
  if (last) { body.predicted_label = last.predictions[0].label; body.model_version = last.model_version; }
  saving = true;
  updateButtons();
  // The same drawing sent again after an answer was lost (the server may have stored it) carries the same key, so
  // the server stores it once and answers as the first time.
  const text = JSON.stringify(body);
  const key = unanswered && unanswered.sent === path + text ? unanswered.key : newKey();
  let response;
  let answer;
  try {
    response = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json", "Idempotency-Key": key}, body: text,
    });
    // A proxy in front may answer an error with an HTML page: say its status then.
    answer = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`, page: true}));
    // After a 5xx or a proxy's page the drawing may still have been stored: the same save again keeps its key.
    unanswered = response.status >= 500 || answer.page ? {sent: path + text, key} : null;
  } catch (error) {
    unanswered = {sent: path + text, key};
    say("not saved: can't reach the server. Your drawing is kept; try again.", "error");
    return;
  } finally {
    saving = false;
    updateButtons();
  }
  if (!response.ok) { say("not saved: " + (answer.error || response.statusText), "error"); return; }
  say(thanks(answer), "ok");
  message.dataset.id = answer.id;
  wrongLabel.selectedIndex = 0;
  newLabel.hidden = true;
  newLabel.value = "";
  strokes = strokes.filter((stroke) => !sent.includes(stroke));
  changed(true);
}

function newKey() {
  // 128 random bits as hex (crypto.randomUUID needs HTTPS; a phone on the LAN opens the page over plain HTTP).
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function send(label) {
  save("/api/feedback", {strokes, label}, (answer) => answer.kind === "confirmed"
    ? `Thanks! Saved as "${label}" (confirmed).` : `Thanks! Saved as "${label}": the model will learn from it.`);
}

function propose(name) {
  // The server normalises the name and says what is wrong with it; here only an empty box is caught.
  if (!name.trim()) { say("type a name for the new category", "error"); newLabel.focus(); return; }
  save("/api/proposals", {strokes, name}, (answer) => {
    loadProposals();
    if (answer.known) return `"${answer.name}" is a category the model knows: saved as "${answer.name}".`;
    const drawings = answer.count === 1 ? "1 drawing" : `${answer.count} drawings`;
    return `Thanks! Saved for the proposed category "${answer.name}" (${drawings} so far).`;
  });
}

async function loadProposals() {
  // Names already proposed, as suggestions: the same name gathers its drawings in one place. Optional: a server
  // that does not answer leaves the list as it was.
  try {
    const response = await fetch("/api/proposals");
    if (!response.ok) return;
    const options = (await response.json()).proposals.map(({name}) => new Option(name, name));
    document.getElementById("proposal-names").replaceChildren(...options);
  } catch (error) {
    // the suggestions are a convenience; typing a name still works
  }
}

async function refreshModel() {
  // Optional like the suggestions: a server that does not answer leaves the header as it was (predictions say why).
  // Answers can overtake each other: only the newest question's is shown.
  const asked = ++modelAsked;
  try {
    const response = await fetch("/api/model");
    const info = response.ok ? await response.json() : null;
    if (info && asked === modelAsked) showModel(info);
  } catch (error) {
    // the next check asks again
  }
}

function showModel(info) {
  // The header as the server renders it (templates/index.html), and the labels a correction can name: a page left
  // open learns of a swap, a registry outage, the first model and a new category without a reload.
  const strong = (id, text) => Object.assign(document.createElement("strong"), {id, textContent: text});
  // Each worker moves to a new version when its own poll of the registry sees it: for a moment after a swap, answers
  // name the new version and the old one in turn. One about another version (or none) loaded before the model shown
  // comes from a worker that has not moved yet: the header stays. (A rollback is a new load, so it is shown.)
  const since = Date.parse(modelLine.dataset.since);
  if ((info.version || "") !== modelLine.dataset.version && since && !(Date.parse(info.loaded_since) > since)) return;
  const state = `${info.version || ""}|${info.reason || ""}`;
  if (state === modelLine.dataset.state) {
    // unchanged: left alone, so a screen reader does not hear it again (the line is a live region)
  } else if (info.version) {
    modelLine.replaceChildren("Model version ", strong("model-version", info.version), info.reason ? ` (${info.reason})` : "");
  } else {
    const reason = info.reason[0].toUpperCase() + info.reason.slice(1);
    modelLine.replaceChildren(strong("no-model", `${reason}.`), " Predictions are off; you can still label drawings.");
  }
  modelLine.dataset.state = state;
  modelLine.dataset.version = info.version || "";
  modelLine.dataset.since = info.loaded_since || "";
  modelLine.title = info.reason || ""; // in full where a small screen cuts the line short
  const options = [...wrongLabel.options].slice(1, -1); // between "choose..." and "none of these"
  if (options.map((option) => option.value).join("\n") === info.categories.join("\n")) return;
  const naming = wrongLabel.selectedOptions[0] === nameIt;
  const chosen = wrongLabel.value;
  options.forEach((option) => option.remove()); // removing the chosen one selects another: put the choice back
  nameIt.before(...info.categories.map((name) => new Option(name, name)));
  if (naming) nameIt.selected = true;
  else if (info.categories.includes(chosen)) wrongLabel.value = chosen;
  else wrongLabel.selectedIndex = 0; // its category is gone
  newLabel.hidden = wrongLabel.selectedOptions[0] !== nameIt;
  updateButtons();
}

function say(text, kind) { message.textContent = text; message.title = text; message.className = kind; }

function saveChoice() {
  if (wrongButton.disabled) return;
  if (wrongLabel.selectedOptions[0] === nameIt) propose(newLabel.value); else send(wrongLabel.value);
}

rightButton.addEventListener("click", () => { if (last) send(last.predictions[0].label); }); // save() refuses a second
wrongButton.addEventListener("click", saveChoice);
newLabel.addEventListener("keydown", (event) => { if (event.key === "Enter") saveChoice(); });
wrongLabel.addEventListener("change", () => {
  newLabel.hidden = wrongLabel.selectedOptions[0] !== nameIt;
  updateButtons();
  if (!newLabel.hidden) { newLabel.focus(); loadProposals(); }
});
// As often as the server asks the registry (at least a second apart), while the page is in view.
setInterval(() => { if (!document.hidden) refreshModel(); }, Math.max(1, Number(modelLine.dataset.pollSeconds)) * 1000);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshModel(); });
// The canvas changes size with the window, and without it (a scroll bar appearing): watch the canvas itself.
new ResizeObserver(resize).observe(canvas);
window.addEventListener("resize", resize); // a zoom changes the device pixel ratio, not the canvas's CSS size
resize();
