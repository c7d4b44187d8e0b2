// LifeLM web page: the few things that need a script (upload progress, cost estimate, live job
// progress). Hand-written, no library. Every page works for reading without it.
// Data attributes are read with getAttribute: on a <form>, `form.dataset` is the input named
// "dataset" (named form controls shadow element properties).
"use strict";

function uploadForm(form) {
  const file = form.querySelector("#file");
  const name = form.querySelector("#name");
  const bar = form.querySelector("#progress");
  const status = form.querySelector("#upload-status");
  const error = form.querySelector("#upload-error");
  file.addEventListener("change", () => {
    if (file.files.length && !name.value) name.value = file.files[0].name;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.hidden = true;
    error.textContent = "";
    if (!file.files.length) return;
    const f = file.files[0];
    const params = new URLSearchParams({
      name: name.value || f.name,
      source: form.querySelector("#source").value,
      licence: form.querySelector("#licence").value || "unknown",
    });
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("data-url") + "?" + params.toString());
    xhr.setRequestHeader("X-CSRF-Token", form.getAttribute("data-csrf"));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        status.textContent = "Uploading: " + bar.value + "%";
      }
    });
    xhr.upload.addEventListener("load", () => {
      bar.value = 100;
      status.textContent = "Uploaded; the server is checking the file…";
    });
    xhr.addEventListener("load", () => {
      let answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { message: xhr.responseText }; }
      if (xhr.status === 201) {
        status.textContent = answer.message + ". ";
        const a = document.createElement("a");
        a.href = form.getAttribute("data-dashboard");
        a.textContent = "Back to the project";
        status.appendChild(a);
      } else {
        status.textContent = "Refused (" + xhr.status + ").";
        error.textContent = answer.message || ("HTTP " + xhr.status);
        error.hidden = false;
        bar.value = 0;
      }
    });
    xhr.addEventListener("error", () => {
      error.textContent = "The upload failed: the connection was lost.";
      error.hidden = false;
    });
    status.textContent = "Uploading…";
    xhr.send(f);
  });
}

function costEstimate(form) {
  const cpus = form.querySelector('[name="resources.cpus"]');
  const gpus = form.querySelector('[name="resources.gpus"]');
  const hours = form.querySelector('[name="resources.max_hours"]');
  const cpuLeft = parseFloat(form.getAttribute("data-cpu-left"));
  const gpuLeft = parseFloat(form.getAttribute("data-gpu-left"));
  const update = () => {
    const h = parseFloat(hours.value || "1");
    const c = parseFloat(cpus.value || "1") * h;
    const g = parseFloat(gpus.value || "0") * h;
    document.getElementById("cost-cpu").textContent = isFinite(c) ? String(+c.toFixed(4)) : "?";
    document.getElementById("cost-gpu").textContent = isFinite(g) ? String(+g.toFixed(4)) : "?";
    const verdict = document.getElementById("cost-verdict");
    const fits = isFinite(c) && isFinite(g) && c <= cpuLeft + 1e-9 && g <= gpuLeft + 1e-9;
    verdict.textContent = fits ? "It fits the budget." : "It does not fit the budget: lower cpus or max hours.";
    verdict.className = fits ? "ok" : "error";
  };
  [cpus, gpus, hours].forEach((el) => el && el.addEventListener("input", update));
}

function jobPage(box) {
  if (box.dataset.terminal === "yes" || !window.EventSource) return;
  const log = document.getElementById("job-log");
  const status = document.getElementById("job-status");
  const bar = document.getElementById("job-progress");
  const attempt = document.getElementById("job-attempt");
  const source = new EventSource(box.dataset.events);
  let cleared = false;
  source.addEventListener("log", (e) => {
    if (!cleared) { log.textContent = ""; cleared = true; }  // the stream replays the whole log
    log.textContent += JSON.parse(e.data) + "\n";
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    status.textContent = s.status;
    status.className = "status s-" + s.status;
    attempt.textContent = s.attempt;
    if (s.progress !== null && s.progress !== undefined) bar.value = s.progress;
    if (["succeeded", "failed", "cancelled"].includes(s.status)) {
      source.close();
      if (s.status === "succeeded") bar.value = 1;
      // show the finished job as the server renders it (results link, retry button)
      window.setTimeout(() => window.location.reload(), 300);
    }
  });
  source.addEventListener("error", () => { /* the browser reconnects by itself */ });
}

document.addEventListener("DOMContentLoaded", () => {
  const up = document.getElementById("upload-form");
  if (up) uploadForm(up);
  const launch = document.getElementById("launch-form");
  if (launch) costEstimate(launch);
  const job = document.getElementById("job");
  if (job) jobPage(job);
});
