// The judging page: grade buttons and keys. Plain JavaScript, no build step; text is set with
// textContent only (never innerHTML), so nothing a document holds can become markup.
"use strict";

function status(message) {
  const el = document.getElementById("status");
  if (el) el.textContent = message;
}

async function send(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
    throw new Error(response.status + " " + message);
  }
  return response.json();
}

function pairOf(grades) {
  const body = { query: grades.dataset.query, doc_id: grades.dataset.docId };
  if (grades.dataset.queryId) body.query_id = grades.dataset.queryId;
  return body;
}

function done(grades) {
  const hit = grades.closest(".hit");
  if (hit && hit.dataset.next === "reload") window.location.reload();
}

async function grade(grades, value) {
  try {
    await send("/judge/grades", Object.assign(pairOf(grades), { grade: value }));
    // the same document in the other column shows the grade too
    for (const other of document.querySelectorAll(".grades")) {
      if (other.dataset.docId !== grades.dataset.docId || other.dataset.queryId !== grades.dataset.queryId) continue;
      for (const b of other.querySelectorAll("button.grade")) {
        b.classList.toggle("chosen", Number(b.dataset.grade) === value);
      }
      other.closest(".hit").classList.add("judged");
    }
    status("graded " + grades.dataset.docId + ": " + value);
    done(grades);
  } catch (err) {
    status("not stored: " + err.message);
  }
}

async function defer(grades, state) {
  try {
    await send("/judge/defer", Object.assign(pairOf(grades), { state: state }));
    status((state === "skip" ? "skipped " : "later: ") + grades.dataset.docId);
    done(grades);
  } catch (err) {
    status("not stored: " + err.message);
  }
}

function current() {
  const active = document.activeElement && document.activeElement.closest(".hit");
  return active || document.querySelector(".hit.single") || null;
}

function move(step) {
  const hits = Array.from(document.querySelectorAll(".hit"));
  if (!hits.length) return;
  const at = hits.indexOf(current());
  const next = hits[Math.min(Math.max(at + step, 0), hits.length - 1)];
  next.focus();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.grade, button.defer");
  if (!button) return;
  const grades = button.closest(".grades");
  if (button.classList.contains("grade")) grade(grades, Number(button.dataset.grade));
  else defer(grades, button.dataset.state);
});

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, select, textarea")) return;
  if (event.key === "j") return move(1);
  if (event.key === "k") return move(-1);
  const hit = current();
  const grades = hit && hit.querySelector(".grades");
  if (!grades) return;
  if ("0123".includes(event.key) && event.key.length === 1) grade(grades, Number(event.key));
  else if (event.key === "s") defer(grades, "skip");
  else if (event.key === "l") defer(grades, "later");
  else return;
  event.preventDefault();
});
