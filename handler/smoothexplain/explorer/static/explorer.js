"use strict";
// The explorer page. The form is built from the server's description of the chosen model
// (GET /api/models/NAME: the options table joined to the model-config), explanations go
// through the explorer (POST /api/explain; it holds TorchServe's key, the page never does),
// and each answer is drawn here: the map over the photo, the top classes, the facts the
// server reported, downloads and the commands that reproduce it.
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    server: {}, // GET /api/models: models, the REST address and key file for the commands
    description: null,
    image: null, // {sample, file} or {image (base64), file}
    msPerRow: {}, // by model, measured from earlier answers; the progress estimate
    controller: null,
    shown: [], // what each panel shows: {letter, answer, body}
  };
  const FIRST_GUESS_MS_PER_ROW = 25;
  // The ramp of protocol/heatmap.py (positions and RGB stops), so both maps look alike.
  const STOPS = [0.0, 0.35, 0.7, 1.0];
  const COLOURS = [[0, 0, 4], [187, 55, 84], [249, 142, 9], [252, 255, 164]];

  // -- talking to the explorer -------------------------------------------------------------

  async function api(path, options) {
    const reply = await fetch(path, options);
    let body = null;
    try {
      body = await reply.json();
    } catch (_) {
      body = null;
    }
    if (!reply.ok || (body && body.error)) {
      const e = (body && body.error) || { message: `HTTP ${reply.status}` };
      const error = new Error(e.message || `HTTP ${reply.status}`);
      error.field = e.field || "";
      throw error;
    }
    return body;
  }

  // -- the form ----------------------------------------------------------------------------

  function span(option) {
    if (option.low === null && option.high === null) return "";
    const left = option.open_low || option.low === null ? "(" : "[";
    const right = option.open_high || option.high === null ? ")" : "]";
    const low = option.low === null ? "-inf" : option.low;
    const high = option.high === null ? "inf" : option.high >= 2 ** 63 - 1 ? "2^63 - 1" : option.high;
    const limit = option.limit ? ` (server limit ${option.limit})` : "";
    return ` ${left}${low}, ${high}${right}${limit}`;
  }

  function control(option, id) {
    let input;
    if (option.kind === "enum") {
      input = document.createElement("select");
      for (const choice of option.choices) input.add(new Option(choice, choice));
      input.value = option.default;
    } else if (option.kind === "bool") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = Boolean(option.default);
    } else if (option.kind === "str") {
      input = document.createElement("input");
      input.type = "text";
      input.value = option.default === null ? "" : option.default;
      input.placeholder = option.default === null ? "the model's default" : "";
    } else {
      input = document.createElement("input");
      input.type = option.name === "seed" ? "text" : "number";
      if (option.name === "seed") input.inputMode = "numeric";
      else input.step = option.kind === "int" ? "1" : "any";
      if (option.low !== null && option.name !== "seed") input.min = option.low;
      if (option.high !== null && option.name !== "seed") input.max = option.high;
      input.value = option.default === null ? "" : option.default;
      input.placeholder = option.default === null ? "not set" : "";
      if (option.low !== null) input.dataset.low = option.low;
      if (option.high !== null) input.dataset.high = option.high;
    }
    input.id = id;
    input.name = option.name;
    input.dataset.kind = option.kind;
    return input;
  }

  function buildForm(form, letter) {
    form.querySelectorAll(":scope > :not(h3)").forEach((node) => node.remove());
    for (const option of state.description.options) {
      const id = `${letter}-${option.name}`;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = option.name;
      const input = control(option, id);
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.id = `${id}-hint`;
      hint.textContent = option.help + span(option);
      input.setAttribute("aria-describedby", hint.id);
      for (const node of [label, input, hint]) {
        if (option.ig_only) node.classList.add("ig");
        if (option.cam_only) node.classList.add("cam");
        form.append(node);
      }
    }
    form.elements.method.addEventListener("change", () => showMethodOptions(form));
    showMethodOptions(form);
  }

  // The IG options for IG only, the class-activation-map options for CAMs only.
  function showMethodOptions(form) {
    const method = form.elements.method.value;
    const ig = method === "integrated_gradients";
    const cam = optionOf("method").cam_methods.includes(method);
    form.querySelectorAll(".ig").forEach((node) => (node.hidden = !ig));
    form.querySelectorAll(".cam").forEach((node) => (node.hidden = !cam));
  }

  function optionOf(name) {
    return state.description.options.find((o) => o.name === name);
  }

  // The form's values as the options table names them; unset numbers are left out.
  function values(form) {
    const found = {};
    for (const option of state.description.options) {
      const input = form.elements[option.name];
      if ((option.ig_only || option.cam_only) && input.hidden) continue;
      if (option.kind === "enum") found[option.name] = input.value;
      else if (option.kind === "bool") found[option.name] = input.checked;
      else if (option.kind === "str") {
        if (input.value.trim() !== "") found[option.name] = input.value.trim();
      }
      else if (input.value.trim() !== "") found[option.name] = number(option, input.value.trim());
    }
    return found;
  }

  function number(option, text) {
    if (option.name === "seed") return text; // 64 bits: a string, as the proto JSON has it
    const value = Number(text);
    return Number.isFinite(value) ? value : text; // the server names what is wrong
  }

  // The form's own check, from the limits in each input's data (the server checks again).
  function check(form, letter) {
    for (const input of form.querySelectorAll("input[data-kind='int'], input[data-kind='float']")) {
      if (input.hidden || input.value.trim() === "") continue;
      const text = input.value.trim();
      const field = `options.${input.name}`;
      const option = optionOf(input.name);
      const integer = input.dataset.kind === "int";
      if (integer ? !/^\d+$/.test(text) : !Number.isFinite(Number(text))) {
        return { field, letter, message: `${field} must be ${integer ? "an integer" : "a number"}` };
      }
      const value = integer ? BigInt(text) : Number(text);
      const low = input.dataset.low, high = input.dataset.high;
      const bound = (b) => (integer ? BigInt(Math.round(Number(b))) : Number(b));
      const tooLow = low !== undefined && (option.open_low ? value <= bound(low) : value < bound(low));
      const tooHigh = high !== undefined && (option.open_high ? value >= bound(high) : value > bound(high));
      if (input.name === "seed" && high !== undefined && BigInt(text) > 9223372036854775807n) {
        return { field, letter, message: `${field} must be < 2^63` };
      }
      if ((tooLow || tooHigh) && input.name !== "seed") {
        return { field, letter, message: `${field} must be in${span(option)}, got ${text}` };
      }
    }
    return null;
  }

  function rowsOf(options) {
    if (options.nt_type === "none") return 1;
    const samples = Number(options.nt_samples || 1);
    if (options.method !== "integrated_gradients") return samples;
    if (options.ig_sampling === "joint") return ["smoothgrad_sq", "vargrad"].includes(options.nt_type) ? 2 * samples : samples;
    return samples * Number(options.n_steps || 1);
  }

  // -- explaining --------------------------------------------------------------------------

  function forms() {
    const list = [["A", $("form-a")]];
    if ($("compare").checked) list.push(["B", $("form-b")]);
    return list;
  }

  function requestBody(form) {
    const body = { model: $("model").value, options: values(form), seconds: Number($("seconds").value) || 120 };
    if (state.image.sample) body.sample = state.image.sample;
    else body.image = state.image.image;
    if ($("target").value.trim() !== "") body.target = Number($("target").value);
    if ($("top_k").value.trim() !== "") body.top_k = Number($("top_k").value);
    return body;
  }

  async function explain() {
    clearError();
    if (!state.image) return showError({ message: "choose an image first", field: "image" });
    for (const [letter, form] of forms()) {
      const problem = check(form, letter);
      if (problem) return showError(problem);
    }
    const controller = new AbortController();
    state.controller = controller;
    const bodies = forms().map(([letter, form]) => [letter, requestBody(form)]);
    const rows = bodies.reduce((sum, [, body]) => sum + rowsOf(body.options), 0);
    const stopProgress = progress(rows);
    const started = performance.now();
    try {
      const answers = await Promise.all(bodies.map(([letter, body]) => send(letter, body, controller)));
      const seconds = (performance.now() - started) / 1000;
      learnSpeed(answers);
      state.shown = answers.map((answer, i) => ({ letter: bodies[i][0], body: bodies[i][1], answer, seconds }));
      await render();
      status(`done in ${seconds.toFixed(1)} s`);
    } catch (error) {
      if (error.name === "AbortError") {
        status("abandoned: the server stops this work at its next chunk once the time limit (Give up after) has passed");
      } else {
        showError(error);
        status("");
      }
    } finally {
      stopProgress();
      state.controller = null;
    }
  }

  async function send(letter, body, controller) {
    try {
      return await api("/api/explain", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (error) {
      error.letter = letter;
      if (error.name !== "AbortError") controller.abort(); // the other one is not wanted now
      throw error;
    }
  }

  function learnSpeed(answers) {
    const rows = answers.reduce((sum, a) => sum + (a.rows || 0), 0);
    const ms = answers.reduce((sum, a) => sum + ((a.timings && a.timings.explain_ms) || 0), 0);
    if (rows > 0 && ms > 0) state.msPerRow[$("model").value] = ms / rows;
  }

  function progress(rows) {
    const perRow = state.msPerRow[$("model").value] || FIRST_GUESS_MS_PER_ROW;
    const estimate = Math.max(0.5, (rows * perRow) / 1000 + 0.3);
    const bar = $("progress"), begun = performance.now();
    bar.hidden = false;
    bar.value = 0;
    $("explain").disabled = true;
    $("abandon").disabled = false;
    const tick = () => {
      const elapsed = (performance.now() - begun) / 1000;
      bar.value = Math.min(0.95, elapsed / estimate);
      const left = Math.max(0, estimate - elapsed);
      status(`${rows} rows, about ${left.toFixed(0)} s left (estimated at ${perRow.toFixed(1)} ms per row)`);
    };
    tick();
    const timer = setInterval(tick, 250);
    return () => {
      clearInterval(timer);
      bar.hidden = true;
      $("explain").disabled = false;
      $("abandon").disabled = true;
    };
  }

  function status(text) {
    $("status").textContent = text;
  }

  // -- errors ------------------------------------------------------------------------------

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
    document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  }

  function showError(error) {
    const box = $("error");
    const message = document.createElement("p");
    message.className = "message";
    message.textContent = error.message;
    box.replaceChildren(message);
    if (error.field) {
      const field = document.createElement("p");
      field.append("Field: ");
      const code = document.createElement("code");
      code.className = "field";
      code.textContent = error.field;
      field.append(code);
      box.append(field);
    }
    box.hidden = false;
    const input = inputOf(error.field || "", error.letter || "A");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function inputOf(field, letter) {
    if (field.startsWith("options.")) {
      return $(`${letter.toLowerCase()}-${field.slice(8).split(/[ .]/)[0]}`);
    }
    return { target: $("target"), top_k: $("top_k"), seconds: $("seconds"), image: $("file") }[field] || null;
  }

  // -- drawing an answer -------------------------------------------------------------------

  function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function mapOf(answer) {
    const tensor = answer.attribution;
    const bytes = bytesOf(tensor.data);
    const view = new DataView(bytes.buffer);
    const values = new Float32Array(bytes.length / 4);
    for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
    return { shape: tensor.shape, values, bytes };
  }

  // |attribution| summed over channels, scaled so that the top 1% saturate (as heatmap.py).
  function intensity(map) {
    const [channels, height, width] = map.shape;
    const plane = height * width;
    const magnitude = new Float32Array(plane);
    for (let c = 0; c < channels; c++) {
      for (let i = 0; i < plane; i++) magnitude[i] += Math.abs(map.values[c * plane + i]);
    }
    const sorted = Float32Array.from(magnitude).sort();
    let top = sorted[Math.floor(0.99 * (plane - 1))];
    if (!(top > 0)) top = sorted[plane - 1] || 1;
    return magnitude.map((m) => Math.min(1, m / top));
  }

  function colour(t) {
    let k = 0;
    while (k < STOPS.length - 2 && t > STOPS[k + 1]) k++;
    const f = (t - STOPS[k]) / (STOPS[k + 1] - STOPS[k]);
    return COLOURS[k].map((c, j) => Math.round(c + f * (COLOURS[k + 1][j] - c)));
  }

  function drawOverlay(canvas, map) {
    const [, height, width] = map.shape;
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(width, height);
    intensity(map).forEach((t, i) => {
      const [r, g, b] = colour(t);
      pixels.data.set([r, g, b, Math.round(255 * Math.max(t, 0.15))], 4 * i);
    });
    context.putImageData(pixels, 0, 0);
  }

  function drawPhoto(canvas, base64) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = () => {
        canvas.width = image.width;
        canvas.height = image.height;
        canvas.getContext("2d").drawImage(image, 0, 0);
        resolve();
      };
      image.onerror = () => resolve();
      image.src = `data:image/png;base64,${base64}`;
    });
  }

  function npy(map) {
    const shape = `(${map.shape.join(", ")}${map.shape.length === 1 ? "," : ""})`;
    let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`;
    header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
    const head = new Uint8Array(10 + header.length);
    head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length & 255, header.length >> 8]);
    for (let i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
    return new Blob([head, map.bytes], { type: "application/octet-stream" });
  }

  function titleOf(options) {
    const kind = options.noise === "adaptive" ? "AdaptGrad" : options.nt_type === "none" ? "plain" : "SmoothGrad";
    return `${options.method} · ${options.nt_type} · ${options.noise} (${kind})`;
  }

  async function render() {
    const panels = $("panels");
    panels.replaceChildren();
    for (const shown of state.shown) {
      const panel = $("panel").content.firstElementChild.cloneNode(true);
      panels.append(panel);
      const applied = appliedOptions(shown.answer.options || {});
      panel.querySelector(".title").textContent = `${shown.letter}: ${titleOf(applied)}`;
      const map = mapOf(shown.answer);
      await drawPhoto(panel.querySelector(".photo"), shown.answer.view.image_png);
      drawOverlay(panel.querySelector(".overlay"), map);
      topClasses(panel.querySelector(".topk"), shown.answer);
      facts(panel.querySelector(".facts"), shown);
      const npyLink = panel.querySelector(".npy");
      npyLink.href = URL.createObjectURL(npy(map));
      npyLink.download = `attributions-${shown.letter}.npy`;
      reproduce(panel.querySelector(".reproduce"), shown, applied);
    }
    applyOpacity();
  }

  function topClasses(list, answer) {
    list.replaceChildren();
    for (const score of answer.top_k || []) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const name = document.createElement("span");
      name.className = "label";
      name.textContent = score.label || `class ${score.index}`;
      const p = document.createElement("span");
      p.textContent = (score.probability || 0).toFixed(3);
      button.append(name, p);
      button.setAttribute("aria-pressed", String(score.index === answer.target));
      button.title = `explain class ${score.index}`;
      button.addEventListener("click", () => {
        $("target").value = score.index;
        explain();
      });
      item.append(button);
      list.append(item);
    }
  }

  function facts(list, shown) {
    const answer = shown.answer, t = answer.timings || {};
    const label = (answer.top_k || []).find((s) => s.index === answer.target);
    const rows = [
      ["target", `${answer.target}${label ? ` (${label.label})` : ""}`],
      ["rows", answer.rows],
      ["samples used", answer.nt_samples],
      ["relative error", answer.relative_error === undefined ? "—" : answer.relative_error.toPrecision(3)],
      ["convergence delta", answer.convergence_delta === undefined ? "—" : answer.convergence_delta.toPrecision(3)],
      ["seed", answer.seed],
      ["timings (ms)", ["decode", "predict", "explain", "encode"].map((k) => `${k} ${(t[`${k}_ms`] || 0).toFixed(0)}`).join(" · ")],
      ["batch size", t.batch_size || 1],
      ["round trip", `${shown.seconds.toFixed(2)} s`],
    ];
    list.replaceChildren();
    for (const [name, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      dd.dataset.fact = name;
      list.append(dt, dd);
    }
  }

  function applyOpacity() {
    const alpha = Number($("opacity").value) / 100;
    for (const panel of document.querySelectorAll("#panels .panel")) {
      panel.querySelector(".overlay").style.opacity = alpha;
      const photo = panel.querySelector(".photo"), overlay = panel.querySelector(".overlay");
      const sheet = document.createElement("canvas");
      sheet.width = photo.width;
      sheet.height = photo.height;
      const context = sheet.getContext("2d");
      context.drawImage(photo, 0, 0);
      context.globalAlpha = alpha;
      context.drawImage(overlay, 0, 0, photo.width, photo.height);
      const link = panel.querySelector(".png");
      link.href = sheet.toDataURL("image/png");
      link.download = `explanation-${panel.querySelector(".title").textContent[0]}.png`;
    }
  }

  function drawScale() {
    const canvas = $("scale"), context = canvas.getContext("2d");
    for (let x = 0; x < canvas.width; x++) {
      const [r, g, b] = colour(x / (canvas.width - 1));
      context.fillStyle = `rgb(${r}, ${g}, ${b})`;
      context.fillRect(x, 0, 1, canvas.height);
    }
  }

  // -- reproducing an answer ---------------------------------------------------------------

  // The answer's applied options (proto JSON: METHOD_GRADIENT, seed as a string) by the
  // table's names ("gradient"), without the encoding the explorer chose.
  function appliedOptions(options) {
    const found = {};
    for (const option of state.description.options) {
      if (!(option.proto in options)) continue;
      const value = options[option.proto];
      found[option.name] = option.kind === "enum" ? option.choices[option.proto_choices.indexOf(value)] : value;
    }
    return found;
  }

  function imageFile() {
    return state.image.file || "photo.png";
  }

  function shellQuote(text) {
    return /^[\w./=:@%+-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
  }

  // Where the commands find TorchServe: its REST address and key file, as the explorer does.
  function restAddress() {
    const url = new URL(state.server.rest);
    return { host: url.hostname.replace(/^\[|\]$/g, ""), port: url.port, tls: url.protocol === "https:" };
  }

  function cliCommand(shown, applied) {
    const rest = restAddress();
    const words = ["smoothexplain", "explain", imageFile(), "--model", shown.body.model, "--transport", "rest"];
    words.push("--host", rest.host, "--rest-port", rest.port);
    if (rest.tls) words.push("--tls");
    if (state.server.key_file) words.push("--token-file", state.server.key_file);
    words.push("--target", String(shown.answer.target));
    if (shown.body.top_k) words.push("--top-k", String(shown.body.top_k));
    for (const option of state.description.options) {
      const value = applied[option.name];
      if (value === undefined || !option.flag) continue;
      if (option.kind === "bool") {
        if (value) words.push(option.flag);
      } else words.push(option.flag, String(value));
    }
    words.push("--out", "heatmap.png", "--save-attributions", "attributions.npy");
    return words.map(shellQuote).join(" ");
  }

  function curlCommand(shown) {
    const request = { explain: true, target: shown.answer.target, options: shown.answer.options };
    if (shown.body.top_k) request.top_k = shown.body.top_k;
    const rest = JSON.stringify(request).slice(1); // the Request after its input
    const keyFile = state.server.key_file || "key_file.json";
    const token = `TOKEN=$(python3 -c 'import json;print(json.load(open(${JSON.stringify(keyFile)}))["inference"]["key"])')`;
    return [
      token,
      `{ printf '{"input": {"image": "'; base64 -w0 ${shellQuote(imageFile())}; printf '"}, ${rest.replace(/'/g, "'\\''")}'; } |`,
      `  curl -s ${state.server.rest}/explanations/${shown.body.model} -H "Authorization: Bearer $TOKEN" \\`,
      "    -H 'Content-Type: application/json' --data-binary @-",
    ].join("\n");
  }

  function pythonValue(value) {
    if (typeof value === "boolean") return value ? "True" : "False";
    if (typeof value === "number") return String(value);
    if (/^\d+$/.test(value)) return value; // the seed
    return JSON.stringify(value);
  }

  function pythonCall(shown, applied) {
    const keywords = [`target=${shown.answer.target}`];
    if (shown.body.top_k) keywords.push(`top_k=${shown.body.top_k}`);
    for (const [name, value] of Object.entries(applied)) keywords.push(`${name}=${pythonValue(value)}`);
    const rest = restAddress();
    const client = [`transport="rest", host=${JSON.stringify(rest.host)}, rest_port=${rest.port}`];
    if (rest.tls) client.push("tls=True");
    if (state.server.key_file) client.push(`token_file=Path(${JSON.stringify(state.server.key_file)})`);
    return [
      "from pathlib import Path",
      "",
      "from smoothexplain.client import SmoothExplainClient, attribution",
      "",
      `with SmoothExplainClient(${client.join(", ")}) as client:`,
      "    response = client.explain(",
      `        ${JSON.stringify(shown.body.model)},`,
      `        open(${JSON.stringify(imageFile())}, "rb").read(),`,
      ...keywords.map((k) => `        ${k},`),
      "    )",
      "    attr = attribution(response)  # float32 (C, H, W)",
    ].join("\n");
  }

  function reproduce(details, shown, applied) {
    details.querySelectorAll(":scope > :not(summary)").forEach((n) => n.remove());
    const note = document.createElement("p");
    note.append(`The image is ${imageFile()}`);
    if (state.image.sample) {
      const link = document.createElement("a");
      link.href = `/api/samples/${encodeURIComponent(state.image.sample)}`;
      link.download = imageFile();
      link.textContent = "download it";
      note.append(" (", link, ")");
    }
    note.append("; the seed and every default are spelled out.");
    details.append(note);
    for (const [name, text] of [["CLI", cliCommand(shown, applied)], ["curl", curlCommand(shown)], ["Python", pythonCall(shown, applied)]]) {
      const heading = document.createElement("h4");
      heading.textContent = name;
      const pre = document.createElement("pre");
      pre.className = `command-${name.toLowerCase()}`;
      pre.textContent = text;
      const copy = document.createElement("button");
      copy.type = "button";
      copy.textContent = `Copy the ${name} command`;
      copy.addEventListener("click", () => copyText(pre, copy));
      details.append(heading, pre, copy);
    }
  }

  async function copyText(pre, button) {
    try {
      await navigator.clipboard.writeText(pre.textContent);
      button.textContent = "Copied";
    } catch (_) {
      const range = document.createRange(); // no clipboard API (plain HTTP off loopback)
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
  }

  // -- images ------------------------------------------------------------------------------

  function chooseImage(image, text) {
    state.image = image;
    $("chosen").textContent = text;
    document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.sample === image.sample)));
  }

  function readFile(file) {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      const base64 = String(reader.result).split(",", 2)[1] || "";
      chooseImage({ image: base64, file: file.name }, `Chosen: ${file.name} (${(file.size / 1024).toFixed(0)} KiB)`);
    };
    reader.readAsDataURL(file);
  }

  async function loadSamples() {
    const { samples } = await api("/api/samples");
    const box = $("samples");
    for (const sample of samples) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.sample = sample.name;
      button.setAttribute("aria-pressed", "false");
      const image = document.createElement("img");
      image.src = `/api/samples/${encodeURIComponent(sample.name)}`;
      image.alt = "";
      const text = document.createElement("span");
      text.textContent = sample.title;
      button.append(image, text);
      button.title = sample.credit;
      button.addEventListener("click", () => chooseImage({ sample: sample.name, file: sample.file }, `Chosen: ${sample.title} (${sample.credit})`));
      box.append(button);
    }
    if (!samples.length) box.append("(none installed: scikit-image provides them)");
  }

  // -- models ------------------------------------------------------------------------------

  async function chooseModel(name) {
    clearError();
    state.description = await api(`/api/models/${encodeURIComponent(name)}`);
    buildForm($("form-a"), "a");
    buildForm($("form-b"), "b");
    const b = $("form-b").elements;
    if (b.noise) b.noise.value = b.noise.value === "adaptive" ? "gaussian" : "adaptive"; // SmoothGrad vs AdaptGrad
    const topK = state.description.top_k;
    $("top_k").value = topK.default;
    if (topK.high) $("top_k").max = topK.high;
    $("target").value = "";
  }

  async function start() {
    drawScale();
    $("explain").addEventListener("click", explain);
    $("abandon").addEventListener("click", () => state.controller && state.controller.abort());
    $("opacity").addEventListener("input", applyOpacity);
    $("compare").addEventListener("change", () => ($("form-b").hidden = !$("compare").checked));
    $("model").addEventListener("change", () => chooseModel($("model").value).catch(showError));
    $("file").addEventListener("change", () => readFile($("file").files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      readFile(event.dataTransfer.files[0]);
    });
    state.server = await api("/api/models");
    for (const name of state.server.models) $("model").add(new Option(name, name));
    await loadSamples();
    if (state.server.models.length) await chooseModel(state.server.models[0]);
    document.body.dataset.ready = "true"; // for the browser tests
  }

  start().catch(showError);
})();
