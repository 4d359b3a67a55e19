// The imageserve playground: lists /v1/models, calls /v1/images/generations or /v1/images/edits (an uploaded
// image and a mask painted over it; streamed for local models) and shows each image with its seed and perf
// block. No dependencies; talks to this server only.
"use strict";

(() => {
  const KEY_STORAGE = "imageserve.apiKey"; // sessionStorage only: gone when the tab closes
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"), key: $("api-key"), model: $("model"), modelStatus: $("model-status"), prompt: $("prompt"),
    negativeField: $("negative-field"), negative: $("negative-prompt"), size: $("size"),
    customField: $("custom-size-field"), custom: $("custom-size"), n: $("n"), format: $("output-format"),
    seedField: $("seed-field"), seed: $("seed"), stepsField: $("steps-field"), steps: $("steps"),
    guidanceField: $("guidance-field"), guidance: $("guidance"), generate: $("generate"), busy: $("busy"),
    error: $("error"), current: $("current"), history: $("history-list"),
    modeGenerate: $("mode-generate"), modeEdit: $("mode-edit"), editFields: $("edit-fields"),
    image: $("edit-image"), stage: $("edit-stage"), picture: $("edit-canvas"), paint: $("mask-canvas"),
    maskStatus: $("mask-status"), brush: $("brush-size"), brushValue: $("brush-size-value"),
    strength: $("strength"), strengthValue: $("strength-value"), clearMask: $("clear-mask"),
  };
  let models = new Map();
  let cards = []; // every model the server lists, in its order
  let mode = "generate";
  // The image being edited: the file as chosen, whether any paint is on the mask, the stroke being drawn.
  const editor = { file: null, painted: false, stroke: null };

  // Hosted models this server forwards edits to (docs/api.md, "Edits and variations"); every local model edits.
  const HOSTED_EDITS = new Set(["dall-e-2", "flux-pro", "ideogram-2"]);
  const EDIT_NEEDS_MASK = new Set(["ideogram-2"]);
  const UPLOAD_TYPES = new Set(["image/png", "image/jpeg", "image/webp"]);

  const MEDIA = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };

  function make(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function headers(json = true) {
    const result = json ? { "Content-Type": "application/json" } : {};
    const key = el.key.value.trim();
    if (key) result.Authorization = `Bearer ${key}`;
    return result;
  }

  function showError(message) { el.error.textContent = message || ""; }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON */ }
    return `The server answered ${response.status} ${response.statusText}`.trim();
  }

  // --- models -----------------------------------------------------------------------------------------------

  async function loadModels() {
    let response;
    try {
      response = await fetch("/v1/models", { headers: headers() });
    } catch (exc) {
      showError(`Cannot reach the server: ${exc.message}`);
      return;
    }
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    showError("");
    const body = await response.json();
    cards = body.data;
    showModels();
  }

  function canEdit(card) { return card.local || HOSTED_EDITS.has(card.id); }

  // The model list for the mode: in edit mode only the models that can edit (hosted ones disabled, with their
  // reason, until their key is configured).
  function showModels() {
    const previous = el.model.value;
    const offered = mode === "edit" ? cards.filter(canEdit) : cards;
    models = new Map(offered.map((card) => [card.id, card]));
    el.model.replaceChildren();
    for (const card of offered) {
      const label = card.ready ? `${card.id} (${card.provider})` : `${card.id}: unavailable, ${card.status}`;
      el.model.append(make("option", { value: card.id, text: label, disabled: !card.ready, title: card.status }));
    }
    const ready = offered.filter((card) => card.ready).map((card) => card.id);
    el.model.value = ready.includes(previous) ? previous : (ready[0] || "");
    applyModel();
  }

  function applyModel() {
    const card = models.get(el.model.value);
    el.generate.disabled = !card;
    el.generate.textContent = mode === "edit" ? "Edit image" : "Generate";
    if (!card) {
      el.modelStatus.textContent = "No model is ready.";
      return;
    }
    const price = card.price_usd_per_image ? `$${card.price_usd_per_image} per image` : "free";
    el.modelStatus.textContent = `${card.local ? "local" : "hosted"}, ${price}. ${card.status || ""}`.trim();
    const previousSize = el.size.value;
    el.size.replaceChildren();
    if (mode === "edit") el.size.append(make("option", { value: "", text: "Same as the image" }));
    for (const size of card.sizes) {
      if (size === "custom") el.size.append(make("option", { value: "custom", text: "Custom…" }));
      else el.size.append(make("option", { value: size, text: size }));
    }
    if (card.sizes.includes(previousSize) || (mode === "edit" && previousSize === "")) el.size.value = previousSize;
    el.customField.hidden = el.size.value !== "custom";
    el.n.max = String(card.max_images || 1);
    if (Number(el.n.value) > card.max_images) el.n.value = String(card.max_images);
    const extra = new Set(card.extra_params || []);
    el.negativeField.hidden = !extra.has("negative_prompt");
    el.seedField.hidden = !extra.has("seed");
    el.stepsField.hidden = !extra.has("num_inference_steps");
    el.guidanceField.hidden = !extra.has("guidance_scale");
    if (mode === "edit" && EDIT_NEEDS_MASK.has(card.id)) {
      el.modelStatus.textContent += ` Its edits need a mask: paint where to edit.`;
    }
  }

  function setMode() {
    mode = el.modeEdit.checked ? "edit" : "generate";
    el.editFields.hidden = mode !== "edit";
    if (mode === "edit") el.size.value = ""; // an edit keeps the input's size unless a size is chosen for it
    showError("");
    showModels();
  }

  // --- the image to edit and its mask -----------------------------------------------------------------------

  function showMaskStatus() {
    if (!editor.file) el.maskStatus.textContent = "Choose a PNG, JPEG or WebP image to edit.";
    else if (editor.painted) el.maskStatus.textContent = "Mask painted: only the painted part is edited.";
    else el.maskStatus.textContent = "No mask: the whole image is edited. Paint over it to edit only a part.";
  }

  async function chooseImage() {
    const file = el.image.files && el.image.files[0];
    editor.file = null;
    editor.painted = false;
    el.stage.hidden = true;
    showError("");
    if (file && !UPLOAD_TYPES.has(file.type)) {
      showError("Choose a PNG, JPEG or WebP image.");
      el.image.value = "";
    } else if (file) {
      const url = URL.createObjectURL(file);
      try {
        const picture = new Image();
        picture.src = url;
        await picture.decode();
        // Both canvases at the image's natural size: strokes are drawn in its pixels, whatever its displayed size.
        for (const canvas of [el.picture, el.paint]) {
          canvas.width = picture.naturalWidth;
          canvas.height = picture.naturalHeight;
        }
        el.picture.getContext("2d").drawImage(picture, 0, 0);
        el.paint.getContext("2d").clearRect(0, 0, el.paint.width, el.paint.height);
        editor.file = file;
        el.stage.hidden = false;
      } catch (_) {
        showError("This file does not decode as an image.");
        el.image.value = "";
      } finally {
        URL.revokeObjectURL(url);
      }
    }
    showMaskStatus();
  }

  // A pointer position in the image's pixels, and the brush's width there (the brush size is in screen pixels).
  function imagePoint(event) {
    const box = el.paint.getBoundingClientRect();
    const scale = el.paint.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * (el.paint.height / box.height),
             width: Number(el.brush.value) * scale };
  }

  function paintStart(event) {
    if (!editor.file || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    el.paint.setPointerCapture(event.pointerId);
    const point = imagePoint(event);
    const context = el.paint.getContext("2d");
    context.fillStyle = context.strokeStyle = "#ff2d55";
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.arc(point.x, point.y, point.width / 2, 0, 2 * Math.PI);
    context.fill();
    editor.stroke = { id: event.pointerId, last: point };
    if (!editor.painted) {
      editor.painted = true;
      showMaskStatus();
    }
  }

  function paintMove(event) {
    const stroke = editor.stroke;
    if (!stroke || stroke.id !== event.pointerId) return;
    event.preventDefault();
    const context = el.paint.getContext("2d");
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      const point = imagePoint(each);
      context.lineWidth = point.width;
      context.beginPath();
      context.moveTo(stroke.last.x, stroke.last.y);
      context.lineTo(point.x, point.y);
      context.stroke();
      stroke.last = point;
    }
  }

  function paintEnd(event) {
    if (editor.stroke && editor.stroke.id === event.pointerId) editor.stroke = null;
  }

  function clearMask() {
    el.paint.getContext("2d").clearRect(0, 0, el.paint.width, el.paint.height);
    editor.painted = false;
    showMaskStatus();
  }

  // The mask as OpenAI wants it: a PNG of the image's size, fully transparent where painted, opaque elsewhere
  // (the brush's soft edges rounded to one or the other).
  function maskBlob() {
    const { width, height } = el.paint;
    const mask = document.createElement("canvas");
    mask.width = width;
    mask.height = height;
    const context = mask.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
    context.globalCompositeOperation = "destination-out";
    context.drawImage(el.paint, 0, 0);
    const pixels = context.getImageData(0, 0, width, height);
    for (let i = 3; i < pixels.data.length; i += 4) {
      const opaque = pixels.data[i] >= 128;
      pixels.data[i] = opaque ? 255 : 0;
      pixels.data[i - 1] = pixels.data[i - 2] = pixels.data[i - 3] = 0;
    }
    context.putImageData(pixels, 0, 0);
    return new Promise((resolve, reject) => {
      mask.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the mask could not be encoded"))), "image/png");
    });
  }

  // --- the request ------------------------------------------------------------------------------------------

  function requestBody(card) {
    const body = {
      model: card.id,
      prompt: el.prompt.value,
      n: Number(el.n.value) || 1,
      size: el.size.value === "custom" ? el.custom.value.trim() : el.size.value,
      output_format: el.format.value,
      response_format: "b64_json",
    };
    if (!body.size) delete body.size; // edits: the input's size unless one was chosen
    const extra = new Set(card.extra_params || []);
    if (extra.has("negative_prompt") && el.negative.value.trim()) body.negative_prompt = el.negative.value;
    if (extra.has("seed") && el.seed.value !== "") body.seed = Number(el.seed.value);
    if (extra.has("num_inference_steps") && el.steps.value !== "") body.num_inference_steps = Number(el.steps.value);
    if (extra.has("guidance_scale") && el.guidance.value !== "") body.guidance_scale = Number(el.guidance.value);
    if (card.local) {
      body.stream = true;
      body.partial_images = 2;
    }
    return body;
  }

  // The edit as multipart form data (OpenAI's fields, numbers as text), with the same fields as `body`.
  async function editForm(card, body) {
    const form = new FormData();
    form.append("image", editor.file, editor.file.name || "image");
    if (editor.painted) form.append("mask", await maskBlob(), "mask.png");
    body.strength = Number(el.strength.value);
    for (const [name, value] of Object.entries(body)) form.append(name, String(value));
    return form;
  }

  async function submit(event) {
    event.preventDefault();
    const card = models.get(el.model.value);
    if (!card) return;
    showError("");
    const editing = mode === "edit";
    if (editing && !editor.file) {
      showError("Choose an image to edit.");
      return;
    }
    if (editing && EDIT_NEEDS_MASK.has(card.id) && !editor.painted) {
      showError(`${card.id} edits need a mask: paint over the image where it should change.`);
      return;
    }
    el.generate.disabled = true;
    el.busy.textContent = editing ? "Editing…" : "Generating…";
    el.current.replaceChildren();
    const body = requestBody(card);
    try {
      const response = editing
        ? await fetch("/v1/images/edits", { method: "POST", headers: headers(false), body: await editForm(card, body) })
        : await fetch("/v1/images/generations", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!response.ok) {
        showError(await errorMessage(response));
        return;
      }
      const type = response.headers.get("Content-Type") || "";
      if (type.startsWith("text/event-stream")) await readStream(response, body);
      else await readPlain(response, body);
    } catch (exc) {
      showError(`The request failed: ${exc.message}`);
    } finally {
      el.generate.disabled = false;
      el.busy.textContent = "";
    }
  }

  async function readPlain(response, body) {
    const answer = await response.json();
    answer.data.forEach((entry, index) => showFinal(index, entry, answer.perf, body));
  }

  // Server-sent events over fetch: blocks separated by a blank line, `event:` and `data:` lines in each.
  async function readStream(response, body) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut), body);
        buffer = buffer.slice(cut + 2);
      }
      if (done) break;
    }
    if (buffer.trim()) handleEvent(buffer, body);
  }

  function handleEvent(block, body) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    const payload = JSON.parse(data.join("\n"));
    const kind = payload.type || name;
    if (kind === "error") showError((payload.error && payload.error.message) || "The generation failed.");
    else if (kind.endsWith(".partial_image")) showPreview(payload.image_index || 0, payload, body);
    else if (kind.endsWith(".completed")) showFinal(payload.image_index || 0, payload, payload.perf, body);
  }

  // --- results ----------------------------------------------------------------------------------------------

  function slot(index) {
    let card = el.current.querySelector(`[data-index="${index}"]`);
    if (!card) {
      card = make("figure", { class: "card", "data-index": String(index) }, [
        make("img", { alt: `Image ${index + 1}` }), make("figcaption"),
      ]);
      const later = [...el.current.children].find((other) => Number(other.dataset.index) > index);
      el.current.insertBefore(card, later || null);
    }
    return card;
  }

  function dataUrl(entry, body) {
    const format = entry.output_format || body.output_format || "png";
    return { url: `data:${MEDIA[format] || "image/png"};base64,${entry.b64_json}`, format };
  }

  function showPreview(index, entry, body) {
    const card = slot(index);
    if (card.dataset.final) return;
    card.classList.add("preview");
    card.dataset.previews = String(Number(card.dataset.previews || 0) + 1);
    card.querySelector("img").src = dataUrl(entry, body).url;
    card.querySelector("figcaption").textContent = `Preview ${(entry.partial_image_index || 0) + 1}…`;
  }

  function showFinal(index, entry, perf, body) {
    const card = slot(index);
    const { url, format } = dataUrl(entry, body);
    card.classList.remove("preview");
    card.dataset.final = "1";
    const image = card.querySelector("img");
    image.src = url;
    image.alt = `Image ${index + 1}: ${body.prompt}`;
    image.classList.add("final");
    const p = perf || {};
    const rows = [
      ["Seed", entry.seed ?? "n/a"],
      ["Latency", p.latency_ms !== undefined ? `${Math.round(p.latency_ms)} ms` : "n/a"],
      ["Cost", p.cost_usd !== undefined ? `$${Number(p.cost_usd).toFixed(4)}` : "n/a"],
      ["Batch", p.batch_size ?? "n/a"],
      ["Device", p.device ?? "n/a"],
    ];
    const list = make("dl");
    for (const [name, value] of rows) {
      list.append(make("dt", { text: name }), make("dd", { text: String(value), "data-field": name.toLowerCase() }));
    }
    const name = `imageserve-${body.model}-${entry.seed ?? Date.now()}.${format === "jpeg" ? "jpg" : format}`;
    const link = make("a", { href: url, download: name, text: "Download" });
    card.querySelector("figcaption").replaceChildren(list, link);
    addHistory(url, name, body, entry);
  }

  function addHistory(url, name, body, entry) {
    const item = make("li", {}, [
      make("a", { href: url, download: name, title: `${body.model}, seed ${entry.seed ?? "n/a"}: ${body.prompt}` }, [
        make("img", { src: url, alt: `${body.model}, seed ${entry.seed ?? "n/a"}: ${body.prompt}` }),
      ]),
    ]);
    el.history.prepend(item);
  }

  // --- wiring -----------------------------------------------------------------------------------------------

  el.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  el.key.addEventListener("input", () => {
    const key = el.key.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  el.key.addEventListener("change", loadModels);
  el.model.addEventListener("change", applyModel);
  el.size.addEventListener("change", () => { el.customField.hidden = el.size.value !== "custom"; });
  el.form.addEventListener("submit", submit);
  el.modeGenerate.addEventListener("change", setMode);
  el.modeEdit.addEventListener("change", setMode);
  el.image.addEventListener("change", chooseImage);
  el.paint.addEventListener("pointerdown", paintStart);
  el.paint.addEventListener("pointermove", paintMove);
  el.paint.addEventListener("pointerup", paintEnd);
  el.paint.addEventListener("pointercancel", paintEnd);
  el.clearMask.addEventListener("click", clearMask);
  el.brush.addEventListener("input", () => { el.brushValue.textContent = `${el.brush.value} px`; });
  el.strength.addEventListener("input", () => { el.strengthValue.textContent = el.strength.value; });
  setMode();
  showMaskStatus();
  loadModels();
})();
