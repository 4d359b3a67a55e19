// The imageserve playground: lists /v1/models, calls /v1/images/generations (streamed for local models) and
// shows each image with its seed and perf block. No dependencies; talks to this server only.
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
  };
  let models = new Map();

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

  function headers() {
    const result = { "Content-Type": "application/json" };
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
    const previous = el.model.value;
    models = new Map(body.data.map((card) => [card.id, card]));
    el.model.replaceChildren();
    for (const card of body.data) {
      const label = card.ready ? `${card.id} (${card.provider})` : `${card.id}: unavailable, ${card.status}`;
      el.model.append(make("option", { value: card.id, text: label, disabled: !card.ready, title: card.status }));
    }
    const ready = body.data.filter((card) => card.ready).map((card) => card.id);
    el.model.value = ready.includes(previous) ? previous : (ready[0] || "");
    applyModel();
  }

  function applyModel() {
    const card = models.get(el.model.value);
    el.generate.disabled = !card;
    if (!card) {
      el.modelStatus.textContent = "No model is ready.";
      return;
    }
    const price = card.price_usd_per_image ? `$${card.price_usd_per_image} per image` : "free";
    el.modelStatus.textContent = `${card.local ? "local" : "hosted"}, ${price}. ${card.status || ""}`.trim();
    const previousSize = el.size.value;
    el.size.replaceChildren();
    for (const size of card.sizes) {
      if (size === "custom") el.size.append(make("option", { value: "custom", text: "Custom…" }));
      else el.size.append(make("option", { value: size, text: size }));
    }
    if (card.sizes.includes(previousSize)) el.size.value = previousSize;
    el.customField.hidden = el.size.value !== "custom";
    el.n.max = String(card.max_images || 1);
    if (Number(el.n.value) > card.max_images) el.n.value = String(card.max_images);
    const extra = new Set(card.extra_params || []);
    el.negativeField.hidden = !extra.has("negative_prompt");
    el.seedField.hidden = !extra.has("seed");
    el.stepsField.hidden = !extra.has("num_inference_steps");
    el.guidanceField.hidden = !extra.has("guidance_scale");
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

  async function generate(event) {
    event.preventDefault();
    const card = models.get(el.model.value);
    if (!card) return;
    showError("");
    el.generate.disabled = true;
    el.busy.textContent = "Generating…";
    el.current.replaceChildren();
    const body = requestBody(card);
    try {
      const response = await fetch("/v1/images/generations", {
        method: "POST", headers: headers(), body: JSON.stringify(body),
      });
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
  el.form.addEventListener("submit", generate);
  loadModels();
})();
