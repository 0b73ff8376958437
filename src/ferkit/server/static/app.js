/* ferkit web page: talks to the REST API under /api/v1. Plain JavaScript, no dependencies. */
"use strict";

(function () {
  const API = "/api/v1";
  const EMOJI = { angry: "😠", disgust: "🤢", fear: "😨", happy: "😄", sad: "😢", surprise: "😮", neutral: "😐", contempt: "😒" };
  const CAMERA_INTERVAL_MS = 333; // about 3 frames per second
  const CAMERA_MAX_WIDTH = 640;   // frames are scaled down to this width before upload
  const HISTORY_PAGE = 12;

  const $ = (id) => document.getElementById(id);
  const els = {
    health: $("health"), status: $("status"), error: $("error"),
    fileInput: $("file-input"), dropzone: $("dropzone"), uploadLimits: $("upload-limits"),
    urlForm: $("url-form"), urlInput: $("url-input"),
    resultPanel: $("result-panel"), resultEmpty: $("result-empty"), result: $("result"),
    resultName: $("result-name"), resultMeta: $("result-meta"), resultImage: $("result-image"),
    resultExpired: $("result-expired"), resultJson: $("result-json"), resultDelete: $("result-delete"),
    faceCards: $("face-cards"), noFaces: $("no-faces"),
    history: $("history"), historyEmpty: $("history-empty"), historyMore: $("history-more"), historyRefresh: $("history-refresh"),
    cameraStage: $("camera-stage"), video: $("camera-video"), overlay: $("camera-overlay"),
    cameraToggle: $("camera-toggle"), cameraSnapshot: $("camera-snapshot"), cameraMirror: $("camera-mirror"),
    cameraStats: $("camera-stats"), cameraFaces: $("camera-faces"), retentionNote: $("retention-note"),
  };
  let limits = { max_upload_bytes: 20 * 1024 * 1024 };
  let current = null;      // the result shown
  let historyCursor = null;

  // ---------------------------------------------------------------- helpers
  function emotionColor(name) {
    const v = getComputedStyle(document.documentElement).getPropertyValue("--c-" + name).trim();
    return v || getComputedStyle(document.documentElement).getPropertyValue("--c-neutral").trim();
  }
  function pct(p) { return (p * 100).toFixed(p >= 0.995 || p < 0.001 ? 0 : (p < 0.1 ? 1 : 0)) + "%"; }
  function mib(bytes) { return (bytes / 1048576).toFixed(bytes < 10 * 1048576 ? 1 : 0) + " MB"; }
  function timeAgo(iso) {
    const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 45) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(iso).toLocaleDateString();
  }
  function setStatus(text, busy) {
    els.status.textContent = text || "";
    els.status.classList.toggle("busy", !!busy);
    els.resultPanel.setAttribute("aria-busy", busy ? "true" : "false");
  }
  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = !message;
  }
  async function apiError(response) {
    try {
      const body = await response.json();
      if (body && body.message) return body.message;
    } catch (e) { /* not JSON */ }
    return "The server answered " + response.status + " " + response.statusText + ".";
  }
  async function api(path, options) {
    let response;
    try {
      response = await fetch(API + path, options);
    } catch (e) {
      throw new Error("Cannot reach the server. Is `ferkit serve` still running?");
    }
    if (!response.ok) throw new Error(await apiError(response));
    return response.status === 204 ? null : response.json();
  }

  // ---------------------------------------------------------------- health
  function plural(n, unit) { return `${n} ${unit}${n === 1 ? "" : "s"}`; }
  function retentionText(hours) {  // 1.5 -> "1 hour 30 minutes", 0.002 -> "less than a minute"
    const minutes = Math.round(hours * 60);
    if (minutes < 1) return "less than a minute";
    if (minutes < 60) return plural(minutes, "minute");
    if (hours >= 48) return plural(Math.round(hours / 24 * 10) / 10, "day");
    const h = Math.floor(minutes / 60), m = minutes % 60;
    return plural(h, "hour") + (m ? " " + plural(m, "minute") : "");
  }
  async function checkHealth() {
    try {
      const h = await api("/health");
      els.health.classList.add("ok");
      els.health.classList.remove("bad");
      els.health.querySelector(".health-text").textContent = h.model ? "model " + h.model : "ready";
      limits = h.limits || limits;
      els.uploadLimits.textContent = "JPEG, PNG, WebP, BMP, TIFF or GIF · up to " + mib(limits.max_upload_bytes);
      if (limits.retention_hours) {
        const hrs = limits.retention_hours;
        els.retentionNote.textContent = "Stored images are deleted after " + retentionText(hrs) + ".";
      }
    } catch (e) {
      els.health.classList.add("bad");
      els.health.classList.remove("ok");
      els.health.querySelector(".health-text").textContent = "server unreachable";
    }
  }

  // ---------------------------------------------------------------- tabs
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  function selectTab(tab) {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    });
    if (tab.id !== "tab-camera" && (camera.running || camera.starting)) stopCamera();
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (ev) => {
      let j = null;
      if (ev.key === "ArrowRight") j = (i + 1) % tabs.length;
      if (ev.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
      if (ev.key === "Home") j = 0;
      if (ev.key === "End") j = tabs.length - 1;
      if (j !== null) { ev.preventDefault(); tabs[j].focus(); selectTab(tabs[j]); }
    });
  });

  // ---------------------------------------------------------------- analysing
  // Only the answer to the latest request is shown (an earlier, slower one is ignored when it arrives), and
  // the busy state lasts until that latest answer; the URL form sends nothing while its request is out.
  let analysisSeq = 0;
  const urlSubmit = els.urlForm.querySelector('button[type="submit"]');
  async function analyzeFile(file, label) {
    showError("");
    if (!file) return;
    if (limits.max_upload_bytes && file.size > limits.max_upload_bytes) {
      showError(`${file.name || "This file"} is ${mib(file.size)}; the server accepts up to ${mib(limits.max_upload_bytes)}.`);
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name || "image");
    await analyze({ method: "POST", body: form }, "Analysing " + (label || file.name || "the image") + "…");
  }

  async function analyze(request, busyText) {
    const seq = ++analysisSeq;
    setStatus(busyText, true);
    try {
      const result = await api("/analyze", request);
      if (seq !== analysisSeq) { refreshHistory(); return; }  // a newer request is out: its answer is shown
      showResult(result);
      setStatus(summaryLine(result), false);
      refreshHistory();
    } catch (e) {
      if (seq !== analysisSeq) return;
      setStatus("", false);
      showError(e.message);
    }
  }

  async function analyzeUrl(url) {
    showError("");
    urlSubmit.disabled = true;
    try {
      await analyze({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url }) },
        "Fetching and analysing the image…");
    } finally {
      urlSubmit.disabled = false;
    }
  }

  function summaryLine(r) {
    const n = r.faces.length;
    return n === 0 ? "No face found." : `Found ${n} face${n === 1 ? "" : "s"}: ${r.faces.map((f) => f.emotion).join(", ")}.`;
  }

  els.fileInput.addEventListener("change", () => {
    const file = els.fileInput.files && els.fileInput.files[0];
    analyzeFile(file);
    els.fileInput.value = "";
  });
  ["dragenter", "dragover"].forEach((type) => els.dropzone.addEventListener(type, (ev) => {
    ev.preventDefault();
    els.dropzone.classList.add("dragover");
  }));
  ["dragleave", "dragend", "drop"].forEach((type) => els.dropzone.addEventListener(type, () => els.dropzone.classList.remove("dragover")));
  els.dropzone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
    if (file) analyzeFile(file);
  });
  // a drop outside the zone should not navigate away from the page
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
  document.addEventListener("paste", (ev) => {
    if (ev.target && ev.target.tagName === "INPUT") return;
    const items = (ev.clipboardData && ev.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        analyzeFile(item.getAsFile(), "the pasted image");
        return;
      }
    }
    const text = ev.clipboardData && ev.clipboardData.getData("text");
    if (text && /^https?:\/\//i.test(text.trim())) {
      selectTab($("tab-url"));
      els.urlInput.value = text.trim();
      els.urlInput.focus();
    }
  });
  els.urlForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (urlSubmit.disabled) return;  // Enter pressed again while the first request is out
    const url = els.urlInput.value.trim();
    if (!/^https?:\/\/\S+$/i.test(url)) {
      showError("Enter an address that starts with http:// or https://");
      els.urlInput.focus();
      return;
    }
    analyzeUrl(url);
  });

  // ---------------------------------------------------------------- showing a result
  function makeBars(probabilities, top) {
    const list = document.createElement("ul");
    list.className = "bars";
    Object.entries(probabilities).sort((a, b) => b[1] - a[1]).forEach(([label, p]) => {
      const li = document.createElement("li");
      if (label === top) li.classList.add("top");
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = (p * 100).toFixed(1) + "%";
      fill.style.setProperty("--bar", emotionColor(label));
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = pct(p);
      li.append(name, bar, value);
      list.appendChild(li);
    });
    return list;
  }

  function showResult(r) {
    current = r;
    els.resultEmpty.hidden = true;
    els.result.hidden = false;
    els.resultName.textContent = r.source_name ? r.source_name.split("/").pop() || r.source_name : (r.source === "url" ? "Image from URL" : "Uploaded image");
    els.resultName.title = r.source_name || "";
    const when = new Date(r.created_at);
    els.resultMeta.textContent = `${r.width}×${r.height} px · ${r.faces.length} face${r.faces.length === 1 ? "" : "s"} · ${Math.round(r.elapsed_ms)} ms · model ${r.model} · ${when.toLocaleString()}`;
    els.resultJson.href = API + "/results/" + r.id;
    els.resultJson.hidden = !r.stored;
    els.resultDelete.hidden = !r.stored;
    if (r.annotated_url) {
      els.resultImage.hidden = false;
      els.resultImage.src = r.annotated_url;
      els.resultImage.alt = r.faces.length
        ? `The image with ${r.faces.length} face${r.faces.length === 1 ? "" : "s"} marked: ${r.faces.map((f, i) => `face ${i + 1} ${f.emotion}`).join(", ")}`
        : "The analysed image; no face was found";
      els.resultExpired.hidden = true;
    } else {
      els.resultImage.hidden = true;
      els.resultImage.removeAttribute("src");
      els.resultExpired.hidden = false;
    }
    els.noFaces.hidden = r.faces.length > 0;
    els.faceCards.replaceChildren(...r.faces.map(faceCard));
    if (r.stored && location.hash !== "#result=" + r.id) history.replaceState(null, "", "#result=" + r.id);
    markCurrentInHistory();
  }

  function faceCard(face, i) {
    const node = $("face-card-template").content.firstElementChild.cloneNode(true);
    node.style.setProperty("--emo", emotionColor(face.emotion));
    node.dataset.emotion = face.emotion;
    const thumb = node.querySelector(".thumb");
    const wrap = node.querySelector(".thumb-wrap");
    node.querySelector(".thumb-fallback").textContent = EMOJI[face.emotion] || "🙂";
    if (face.thumbnail_url) {
      thumb.src = face.thumbnail_url;
      thumb.alt = `Face ${i + 1}, looks ${face.emotion}`;
      thumb.addEventListener("error", () => wrap.classList.add("no-image"));
    } else {
      wrap.classList.add("no-image");
    }
    node.querySelector(".face-num").textContent = "Face " + (i + 1);
    node.querySelector(".emoji").textContent = EMOJI[face.emotion] || "";
    node.querySelector(".emotion-name").textContent = face.emotion;
    node.querySelector(".face-score").textContent = pct(face.score);
    node.querySelector(".bars").replaceWith(makeBars(face.probabilities, face.emotion));
    const [x, y, w, h] = face.box;
    node.querySelector(".face-box").textContent = `box x ${x}, y ${y}, ${w}×${h} px`;
    node.setAttribute("aria-label", `Face ${i + 1}: ${face.emotion}, ${pct(face.score)}`);
    return node;
  }

  function clearResult() {
    current = null;
    els.result.hidden = true;
    els.resultEmpty.hidden = false;
    els.faceCards.replaceChildren();
    if (location.hash.startsWith("#result=")) history.replaceState(null, "", location.pathname);
  }

  async function openResult(id) {
    showError("");
    try {
      showResult(await api("/results/" + encodeURIComponent(id)));
      setStatus("", false);
    } catch (e) {
      showError(e.message);
    }
  }

  async function deleteResult(id) {
    showError("");
    const items = Array.from(els.history.querySelectorAll(".history-item"));
    const at = items.findIndex((li) => li.dataset.id === id);
    const hadFocus = at >= 0 && items[at].contains(document.activeElement);
    try {
      await api("/results/" + encodeURIComponent(id), { method: "DELETE" });
      if (current && current.id === id) clearResult();
      setStatus("The analysis and its images were deleted.", false);
    } catch (e) {
      showError(e.message);  // e.g. deleted meanwhile elsewhere: the list below is refreshed either way
    }
    await refreshHistory();
    if (hadFocus) {  // keep a keyboard user in the list: the item now at that place, else the list's button
      const next = els.history.querySelectorAll(".history-item .history-delete")[at] ||
        els.history.querySelector(".history-item:last-child .history-delete");
      (next || els.historyRefresh).focus();
    }
  }
  els.resultDelete.addEventListener("click", () => { if (current) deleteResult(current.id); });

  // ---------------------------------------------------------------- history
  function historyItem(item) {
    const node = $("history-item-template").content.firstElementChild.cloneNode(true);
    node.dataset.id = item.id;
    const name = item.source_name ? item.source_name.split("/").pop() || item.source_name : (item.source === "url" ? "Image from URL" : "Uploaded image");
    const img = node.querySelector("img");
    const preview = item.thumbnail_url || item.annotated_url;
    if (preview) img.src = preview; else img.remove();
    node.querySelector(".history-name").textContent = name;
    const faces = item.face_count === 0 ? "no face" : `${item.face_count} face${item.face_count === 1 ? "" : "s"}`;
    const emotions = item.emotions.slice(0, 3).join(", ") + (item.emotions.length > 3 ? "…" : "");
    node.querySelector(".history-meta").textContent = [faces, emotions, timeAgo(item.created_at)].filter(Boolean).join(" · ");
    const open = node.querySelector(".history-open");
    open.setAttribute("aria-label", `Open ${name}, ${faces}${emotions ? " (" + emotions + ")" : ""}, ${timeAgo(item.created_at)}`);
    open.addEventListener("click", () => openResult(item.id));
    const del = node.querySelector(".history-delete");
    del.setAttribute("aria-label", "Delete " + name);
    del.title = "Delete";
    del.addEventListener("click", () => deleteResult(item.id));
    return node;
  }

  function markCurrentInHistory() {
    els.history.querySelectorAll(".history-item").forEach((li) => {
      li.classList.toggle("current", !!current && li.dataset.id === current.id);
    });
  }

  let historyLoading = null;
  async function loadHistory(reset) {
    if (historyLoading) {  // one page request at a time: a double click must not add a page twice
      if (!reset) return historyLoading;
      await historyLoading.catch(() => {});
    }
    historyLoading = loadHistoryPage(reset);
    try { await historyLoading; } finally { historyLoading = null; }
  }
  async function loadHistoryPage(reset) {
    const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
    if (!reset && historyCursor) params.set("cursor", historyCursor);
    try {
      const page = await api("/results?" + params);
      if (reset) els.history.replaceChildren();
      page.items.forEach((item) => els.history.appendChild(historyItem(item)));
      historyCursor = page.next_cursor;
      els.historyMore.hidden = !historyCursor;
      els.historyEmpty.hidden = els.history.children.length > 0;
      markCurrentInHistory();
    } catch (e) {
      showError(e.message);
    }
  }
  function refreshHistory() { historyCursor = null; return loadHistory(true); }
  els.historyMore.addEventListener("click", () => loadHistory(false));
  els.historyRefresh.addEventListener("click", refreshHistory);

  // ---------------------------------------------------------------- camera
  const camera = { running: false, starting: false, wanted: false, stream: null, timer: null, inFlight: false, faces: [], frameW: 0, frameH: 0,
    sent: 0, answered: [], lastLatency: 0, raf: 0 };
  const grab = document.createElement("canvas");

  function cameraTabShown() { return $("tab-camera").getAttribute("aria-selected") === "true"; }

  async function startCamera() {
    showError("");
    if (camera.starting || camera.running) return;  // one stream at a time, whatever the clicks
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser cannot open a camera here (it needs https:// or http://localhost).");
      return;
    }
    camera.starting = true;
    camera.wanted = true;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: false,
      });
    } catch (e) {
      showError(e.name === "NotAllowedError" ? "Camera permission was denied. Allow it in the browser and try again."
        : "The camera could not be opened (" + (e.message || e.name) + ").");
      return;
    } finally {
      camera.starting = false;
    }
    if (!camera.wanted || !cameraTabShown() || document.hidden) {  // stopped, or the tab left, while it opened
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    camera.stream = stream;
    els.video.srcObject = camera.stream;
    try { await els.video.play(); } catch (e) { /* autoplay with muted video is allowed */ }
    camera.running = true;
    camera.faces = [];
    camera.answered = [];
    els.cameraStage.classList.add("live");
    els.cameraToggle.textContent = "Stop camera";
    els.cameraToggle.setAttribute("aria-pressed", "true");
    els.cameraSnapshot.disabled = false;
    cameraLoop();
    camera.raf = requestAnimationFrame(drawOverlay);
  }

  function stopCamera() {
    camera.wanted = false;
    camera.running = false;
    clearTimeout(camera.timer);
    cancelAnimationFrame(camera.raf);
    if (camera.stream) camera.stream.getTracks().forEach((t) => t.stop());
    camera.stream = null;
    els.video.srcObject = null;
    els.cameraStage.classList.remove("live");
    els.cameraToggle.textContent = "Start camera";
    els.cameraToggle.setAttribute("aria-pressed", "false");
    els.cameraSnapshot.disabled = true;
    camera.faces = [];
    els.overlay.dataset.faces = "0";
    els.cameraFaces.replaceChildren();
    const ctx = els.overlay.getContext("2d");
    ctx.clearRect(0, 0, els.overlay.width, els.overlay.height);
    els.cameraStats.textContent = "About 3 frames per second are sent for analysis.";
  }

  function grabFrame() {
    const vw = els.video.videoWidth, vh = els.video.videoHeight;
    if (!vw || !vh) return null;
    const scale = Math.min(1, CAMERA_MAX_WIDTH / vw);
    grab.width = Math.round(vw * scale);
    grab.height = Math.round(vh * scale);
    grab.getContext("2d").drawImage(els.video, 0, 0, grab.width, grab.height);
    return new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.85));
  }

  async function cameraLoop() {
    if (!camera.running) return;
    const started = performance.now();
    if (!camera.inFlight && els.video.readyState >= 2) {
      camera.inFlight = true;
      try {
        const w = els.video.videoWidth, h = els.video.videoHeight;
        const blob = await grabFrame();
        if (blob && camera.running) {
          const t0 = performance.now();
          const r = await api("/analyze?persist=false", { method: "POST", headers: { "Content-Type": "image/jpeg" }, body: blob });
          camera.lastLatency = performance.now() - t0;
          camera.answered.push(performance.now());
          camera.answered = camera.answered.filter((t) => performance.now() - t < 3000);
          if (camera.running) {
            if (camera.failed) { showError(""); camera.failed = false; }  // the server answers again
            camera.faces = r.faces;
            camera.frameW = r.width; camera.frameH = r.height;
            camera.videoW = w; camera.videoH = h;
            updateLiveFaces();
          }
        }
      } catch (e) {
        showError(e.message);
        camera.failed = true;
      } finally {
        camera.inFlight = false;
      }
    }
    const wait = Math.max(0, CAMERA_INTERVAL_MS - (performance.now() - started));
    camera.timer = setTimeout(cameraLoop, wait);
  }

  function updateLiveFaces() {
    const fps = camera.answered.length / 3;
    els.cameraStats.textContent = `${fps.toFixed(1)} analyses/s · ${Math.round(camera.lastLatency)} ms per frame · ${camera.faces.length} face${camera.faces.length === 1 ? "" : "s"}`;
    els.overlay.dataset.faces = String(camera.faces.length);
    els.cameraFaces.replaceChildren(...camera.faces.map((f, i) => {
      const li = document.createElement("li");
      li.style.setProperty("--emo", emotionColor(f.emotion));
      li.textContent = `${EMOJI[f.emotion] || ""} ${i + 1}. ${f.emotion} ${pct(f.score)}`;
      return li;
    }));
  }

  function drawOverlay() {
    if (!camera.running) return;
    const canvas = els.overlay;
    const dpr = window.devicePixelRatio || 1;
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
      canvas.width = Math.round(cw * dpr);
      canvas.height = Math.round(ch * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    if (camera.faces.length && camera.frameW) {
      // the video is letterboxed by object-fit: contain; boxes are in the analysed frame's pixels
      const scale = Math.min(cw / camera.frameW, ch / camera.frameH);
      const ox = (cw - camera.frameW * scale) / 2, oy = (ch - camera.frameH * scale) / 2;
      const mirrored = els.cameraMirror.checked;
      ctx.font = "600 13px system-ui, sans-serif";
      ctx.textBaseline = "top";
      camera.faces.forEach((f, i) => {
        let [x, y, w, h] = f.box;
        if (mirrored) x = camera.frameW - x - w;
        const X = ox + x * scale, Y = oy + y * scale, W = w * scale, H = h * scale;
        const color = emotionColor(f.emotion);
        ctx.lineWidth = 3;
        ctx.strokeStyle = color;
        ctx.strokeRect(X, Y, W, H);
        const label = `${i + 1}. ${f.emotion} ${pct(f.score)}`;
        const tw = ctx.measureText(label).width + 10;
        const ty = Y - 22 >= 0 ? Y - 22 : Y;
        ctx.fillStyle = color;
        ctx.fillRect(X - 1.5, ty, tw, 22);
        ctx.fillStyle = "#fff";
        ctx.fillText(label, X + 4, ty + 4);
      });
    }
    camera.raf = requestAnimationFrame(drawOverlay);
  }

  els.cameraToggle.addEventListener("click", () => (camera.running || camera.starting ? stopCamera() : startCamera()));
  els.cameraMirror.addEventListener("change", () => els.cameraStage.classList.toggle("mirrored", els.cameraMirror.checked));
  els.cameraStage.classList.toggle("mirrored", els.cameraMirror.checked);
  els.cameraSnapshot.addEventListener("click", async () => {
    const blob = await grabFrame();
    if (!blob) return;
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "");
    analyzeFile(new File([blob], `camera-${stamp}.jpg`, { type: "image/jpeg" }), "the snapshot");
  });
  document.addEventListener("visibilitychange", () => { if (document.hidden && (camera.running || camera.starting)) stopCamera(); });

  // ---------------------------------------------------------------- start
  checkHealth();
  setInterval(checkHealth, 30000);
  refreshHistory();
  function openFromHash() {
    const m = location.hash.match(/^#result=([0-9a-f]{32})$/);
    if (m && (!current || current.id !== m[1])) openResult(m[1]);
  }
  window.addEventListener("hashchange", openFromHash);  // a bookmarked address pasted into this tab
  openFromHash();
})();
