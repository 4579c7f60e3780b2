// PowerSAM page: detect on an image, filter by confidence, prompt masks interactively, download COCO JSON / PNGs.
// Plain JS, no build step, no network beyond this server. State for tests: window.powersamPage, body[data-state],
// canvas[data-drawn] (instances painted), canvas[data-interactive-pixels] (pixels of the interactive mask).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  const S = window.powersamPage = {
    info: null, file: null, name: "", width: 0, height: 0, base: null, detect: null, instances: [],
    imageId: null, points: [], box: null, proposal: null, target: null, segmentCalls: 0, floor: 0.05,
  };

  // ------------------------------------------------------------------ helpers
  function setState(state, message) {
    document.body.dataset.state = state;
    $("status").textContent = message || "";
  }
  function classColor(label) {  // same as powersam.results.class_color
    const h = (0.1 + label * 0.618033988749895) % 1, s = 0.85, v = 0.95;
    const i = Math.floor(h * 6), f = h * 6 - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
    return [r, g, b].map((c) => Math.floor(c * 255 + 0.5));
  }
  const css = (rgb) => `rgb(${rgb.join(",")})`;
  function headers(extra) {
    const key = $("api-key").value || localStorage.getItem("powersam-key") || "";
    return Object.assign(key ? { "X-API-Key": key } : {}, extra || {});
  }
  async function call(method, url, body, extraHeaders) {
    const response = await fetch(url, { method, body, headers: headers(extraHeaders) });
    const json = await response.json().catch(() => null);
    if (!response.ok) {
      const err = new Error(json && json.error ? json.error.message : `HTTP ${response.status}`);
      err.code = json && json.error ? json.error.code : "http";
      err.status = response.status;
      throw err;
    }
    return json;
  }
  function download(name, blob) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }
  const stem = () => S.name.replace(/\.[^.]*$/, "") || "image";

  // ------------------------------------------------------------------ model info and key
  async function loadInfo() {
    try {
      S.info = await call("GET", "/v1/model");
    } catch (err) {
      if (err.status === 401) {
        $("key-box").hidden = false;
        setState("error", "This server needs an API key: enter it above, then choose an image.");
        return;
      }
      setState("error", err.message);
      return;
    }
    const t = S.info.thresholds;
    $("model-info").textContent = `${S.info.name} · ${S.info.runtime} · ${S.info.input_size}px` +
      (S.info.detect ? ` · ${S.info.classes.length} classes` : " · prompt only");
    if (t) {
      S.floor = Math.min(0.05, t.conf);
      $("conf").min = S.floor;
      $("conf").value = t.conf;
    }
    $("filter").hidden = !S.info.detect;
    $("prompt").hidden = !S.info.segment;
    const names = S.info.classes.length ? S.info.classes : ["object"];
    $("new-class").innerHTML = names.map((n, i) => `<option value="${i}">${n}</option>`).join("");
    updateConf();
  }
  $("api-key").addEventListener("change", () => { localStorage.setItem("powersam-key", $("api-key").value); loadInfo(); });

  // ------------------------------------------------------------------ image
  async function openFile(file) {
    if (!file) return;
    if (!S.info) await loadInfo();
    if (!S.info) return;
    S.file = file; S.name = file.name || "image"; S.detect = null; S.instances = []; S.imageId = null;
    resetPrompt();
    setState("busy", `reading ${S.name}…`);
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (err) {
      setState("error", `${S.name} is not an image the browser can read`);
      return;
    }
    S.width = canvas.width = bitmap.width; S.height = canvas.height = bitmap.height;
    ctx.drawImage(bitmap, 0, 0);
    S.base = ctx.getImageData(0, 0, S.width, S.height);
    canvas.hidden = false;
    $("drop").classList.add("compact");
    fit();
    try {
      if (S.info.detect) {
        setState("busy", "detecting…");
        S.detect = await call("POST", `/v1/detect?conf=${S.floor}`, file, { "Content-Type": "application/octet-stream" });
        S.instances = S.detect.masks.map((rle, i) => ({
          box: S.detect.boxes[i], label: S.detect.labels[i], name: S.detect.names[i], score: S.detect.scores[i],
          rle, mask: RLE.decode(rle), manual: false,
        }));
      }
      if (S.info.segment) await encode();
      setState("ready", S.detect ? `${S.detect.count} detections in ${Object.values(S.detect.speed)
        .reduce((a, b) => a + b, 0).toFixed(0)} ms` : "click on the image to segment");
    } catch (err) {
      setState("error", err.message);
    }
    ["dl-coco", "dl-masks", "dl-overlay"].forEach((id) => { $(id).disabled = false; });
    render();
  }
  async function encode() {  // upload the image once; each later click only runs the decoder
    const form = new FormData();
    form.append("image", S.file, S.name);
    S.imageId = (await call("POST", "/v1/segment", form)).image_id;
  }

  // ------------------------------------------------------------------ drawing
  function fit() {  // show the image as large as the page allows, small images scaled up, aspect kept
    if (!S.width) return;
    const room = canvas.parentElement.clientWidth, tall = window.innerHeight * 0.8;
    const scale = S.scale = Math.min(room / S.width, tall / S.height);
    canvas.style.width = `${Math.floor(S.width * scale)}px`;
    canvas.style.height = `${Math.floor(S.height * scale)}px`;
  }
  window.addEventListener("resize", fit);
  const visible = () => S.instances.filter((inst) => inst.manual || inst.score >= Number($("conf").value));
  function render() {
    if (!S.base) return;
    const out = new ImageData(new Uint8ClampedArray(S.base.data), S.width, S.height), px = out.data;
    const shown = visible();
    const paint = (mask, rgb, alpha) => {
      for (let i = 0; i < mask.length; i++) {
        if (!mask[i]) continue;
        const o = i * 4;
        for (let c = 0; c < 3; c++) px[o + c] = px[o + c] * (1 - alpha) + rgb[c] * alpha;
      }
    };
    shown.forEach((inst) => paint(inst.mask, classColor(inst.label), 0.5));
    let pixels = 0;
    if (S.proposal) {
      S.proposal.mask.forEach((v) => { pixels += v; });
      paint(S.proposal.mask, [0, 229, 255], 0.6);
    }
    ctx.putImageData(out, 0, 0);
    const line = 2 / (S.scale || 1);  // 2 screen pixels, 12 px text, whatever the image's scale on the page
    ctx.lineWidth = line;
    ctx.font = `${Math.max(6, Math.round(12 / (S.scale || 1)))}px sans-serif`;
    shown.forEach((inst) => {
      const [x1, y1, x2, y2] = inst.box, color = css(classColor(inst.label));
      ctx.strokeStyle = color;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${inst.name} ${inst.score.toFixed(2)}`, w = ctx.measureText(text).width + 4;
      const th = parseInt(ctx.font, 10) + 2, ty = y1 - th >= 0 ? y1 - th : y1;
      ctx.fillStyle = color; ctx.fillRect(x1, ty, w, th);
      ctx.fillStyle = "#fff"; ctx.fillText(text, x1 + 2, ty + th - 3);
    });
    if (S.box) {
      const [x1, y1, x2, y2] = S.box;
      ctx.setLineDash([4 * line, 3 * line]); ctx.strokeStyle = "#00e5ff";
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1); ctx.setLineDash([]);
    }
    S.points.forEach(([x, y, label]) => {
      ctx.beginPath(); ctx.arc(x, y, 3 * line + 2, 0, 2 * Math.PI);
      ctx.fillStyle = label ? "#1db954" : "#e53935"; ctx.fill();
      ctx.strokeStyle = "#fff"; ctx.stroke();
    });
    canvas.dataset.drawn = String(shown.length);
    canvas.dataset.interactivePixels = String(pixels);
    renderLists(shown);
  }
  function renderLists(shown) {
    const counts = {};
    shown.forEach((inst) => { counts[inst.label] = (counts[inst.label] || 0) + 1; });
    const names = S.info ? S.info.classes : [];
    $("legend").innerHTML = names.map((n, i) => `<li><span class="swatch" style="background:${css(classColor(i))}">` +
      `</span>${n}: ${counts[i] || 0}</li>`).join("");
    $("instances").tBodies[0].innerHTML = shown.map((inst) => {
      const i = S.instances.indexOf(inst);
      return `<tr class="${S.target === i ? "selected" : ""}"><td><span class="swatch" style="background:` +
        `${css(classColor(inst.label))}"></span>${inst.name}</td><td>${inst.score.toFixed(2)}</td>` +
        `<td><button data-edit="${i}" title="correct this mask">edit</button>` +
        `<button data-del="${i}" title="delete">×</button></td></tr>`;
    }).join("");
  }
  function updateConf() {
    $("conf-value").textContent = Number($("conf").value).toFixed(2);
    render();
  }
  $("conf").addEventListener("input", updateConf);

  // ------------------------------------------------------------------ prompting
  function resetPrompt() {
    S.points = []; S.box = null; S.proposal = null; S.target = null;
    $("apply").disabled = true; $("apply").textContent = "Add";
    $("target").textContent = "New instance.";
  }
  async function segment() {
    const prompts = { image_id: S.imageId };
    if (S.points.length) {
      prompts.points = S.points.map(([x, y]) => [x, y]);
      prompts.labels = S.points.map((p) => p[2]);
    }
    if (S.box) prompts.boxes = [S.box];
    const zoom = $("zoom").checked;  // crops are encoded on the server: not "decoder only" then
    if (zoom) prompts.zoom = 3;
    else if (S.proposal) prompts.mask = "previous";  // zoomed logits cannot be fed back
    setState("busy", "segmenting…");
    try {
      let result;
      try {
        result = await call("POST", "/v1/segment", JSON.stringify(prompts), { "Content-Type": "application/json" });
      } catch (err) {
        if (err.code !== "unknown_image_id") throw err;
        await encode();  // evicted from the server's cache: upload again
        prompts.image_id = S.imageId;
        delete prompts.mask;
        result = await call("POST", "/v1/segment", JSON.stringify(prompts), { "Content-Type": "application/json" });
      }
      S.segmentCalls++;
      S.proposal = { rle: result.masks[0], mask: RLE.decode(result.masks[0]), score: result.scores[0],
                     box: result.boxes[0], speed: result.speed };
      $("apply").disabled = false;
      const ms = Object.values(result.speed).reduce((a, b) => a + b, 0);
      setState("ready", `mask score ${result.scores[0].toFixed(2)} (${ms.toFixed(0)} ms, ${zoom ? "zoomed in" : "decoder only"})`);
    } catch (err) {
      setState("error", err.message);
    }
    render();
  }
  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) * (S.width / rect.width), y = (event.clientY - rect.top) * (S.height / rect.height);
    return [Math.min(Math.max(Math.round(x * 10) / 10, 0), S.width), Math.min(Math.max(Math.round(y * 10) / 10, 0), S.height)];
  }
  let dragStart = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => { if (S.imageId) dragStart = [toImage(e), e.button]; });
  canvas.addEventListener("mouseup", (e) => {
    if (!dragStart) return;
    const [[x0, y0], button] = dragStart, [x1, y1] = toImage(e);
    dragStart = null;
    const tool = document.querySelector("input[name=tool]:checked").value;
    const dragged = Math.hypot(x1 - x0, y1 - y0) * (canvas.getBoundingClientRect().width / S.width) > 5;
    if (dragged) {
      S.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
      S.proposal = null;  // a new box starts a new mask
    } else if (tool === "box") {
      return;
    } else {
      S.points.push([x1, y1, button === 2 || tool === "neg" ? 0 : 1]);
    }
    segment();
  });
  $("clear").addEventListener("click", () => { resetPrompt(); render(); });
  $("apply").addEventListener("click", () => {
    if (!S.proposal) return;
    const p = S.proposal;
    if (S.target !== null) {
      Object.assign(S.instances[S.target], { rle: p.rle, mask: p.mask, box: p.box, manual: true });
    } else {
      const label = Number($("new-class").value), names = S.info.classes.length ? S.info.classes : ["object"];
      S.instances.push({ rle: p.rle, mask: p.mask, box: p.box, score: p.score, label, name: names[label], manual: true });
    }
    resetPrompt(); render();
  });
  $("instances").addEventListener("click", (e) => {
    const edit = e.target.dataset.edit, del = e.target.dataset.del;
    if (del !== undefined) {
      S.instances.splice(Number(del), 1); resetPrompt();
    } else if (edit !== undefined) {
      resetPrompt();
      S.target = Number(edit);
      S.box = S.instances[S.target].box.slice();
      $("apply").textContent = "Replace";
      $("target").textContent = `Correcting ${S.instances[S.target].name} #${S.target + 1}.`;
      segment();
      return;
    }
    render();
  });

  // ------------------------------------------------------------------ downloads
  function coco() {
    const shown = visible(), names = S.info.classes.length ? S.info.classes : ["object"];
    return {
      info: { description: `PowerSAM ${S.info.name} (${S.info.runtime})`, date_created: new Date().toISOString() },
      images: [{ id: 1, file_name: S.name, width: S.width, height: S.height }],
      categories: names.map((name, i) => ({ id: i + 1, name })),
      annotations: shown.map((inst, i) => {
        const [x1, y1, x2, y2] = inst.box;
        return { id: i + 1, image_id: 1, category_id: inst.label + 1, bbox: [x1, y1, x2 - x1, y2 - y1],
                 area: RLE.area(inst.rle), segmentation: inst.rle, score: inst.score, iscrowd: 0 };
      }),
    };
  }
  $("dl-coco").addEventListener("click", () =>
    download(`${stem()}.coco.json`, new Blob([JSON.stringify(coco(), null, 1)], { type: "application/json" })));
  $("dl-masks").addEventListener("click", () => {
    const shown = visible(), map = new ImageData(S.width, S.height), px = map.data;
    for (let i = 3; i < px.length; i += 4) px[i] = 255;
    const order = shown.map((_, i) => i).sort((a, b) => shown[a].score - shown[b].score);  // best painted last
    order.forEach((k) => {
      const mask = shown[k], value = Math.min(k + 1, 255);
      mask.mask.forEach((v, j) => { if (v) { px[j * 4] = px[j * 4 + 1] = px[j * 4 + 2] = value; } });
    });
    const off = document.createElement("canvas");
    off.width = S.width; off.height = S.height;
    off.getContext("2d").putImageData(map, 0, 0);
    off.toBlob((blob) => download(`${stem()}.masks.png`, blob), "image/png");
  });
  $("dl-overlay").addEventListener("click", () => canvas.toBlob((blob) => download(`${stem()}.overlay.png`, blob)));

  // ------------------------------------------------------------------ file input and drop
  $("file").addEventListener("change", (e) => openFile(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => openFile(e.dataTransfer.files[0]));
  loadInfo();
})();
