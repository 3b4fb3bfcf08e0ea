// Register a version through the REST API: send the file in resumable chunks (hashing it on
// the way), finish the upload with its sha256, then register the version by the upload's id.
// Without JavaScript the form posts to the page itself and the server does the same work in
// one request, just without progress or resuming.
(function () {
  const form = document.getElementById("register-form");
  if (!form || !window.XMLHttpRequest || !window.FormData || !window.fetch || !window.AbortController) return;
  if (!window.Sha256 || !Blob.prototype.arrayBuffer) return;  // the plain form still works
  const errorBox = document.getElementById("register-error");
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const submit = document.getElementById("register-submit");
  const cancel = document.getElementById("upload-cancel");
  const cancelRow = document.getElementById("upload-cancel-row");  // .button's display would override hidden
  const maxBytes = Number(form.dataset.maxBytes);
  const csrfToken = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const MAX_RETRIES = 8;

  // The upload of the file chosen last, kept across submissions: a refused registration
  // (wrong version, bad sample input) keeps its finished upload, so a corrected submission
  // of the same file registers it without sending the bytes again, and an upload that
  // stopped half-way resumes where it stopped. The hash state lives here too: every byte
  // is hashed exactly once, in order, whatever the network does.
  let transfer = null;  // {key, upload, hasher, hashedUpTo}
  let controller = null;  // aborts the current submission's sending (the Cancel button)

  class Stopped extends Error {}  // the person cancelled the upload
  class NetworkError extends Error {}  // no answer at all: worth trying again

  // An answer the portal gave that ends this submission; `body` may hold field errors.
  class Refused extends Error {
    constructor(message, body) {
      super(message);
      this.body = body || {};
    }
  }

  // The upload expired, was swept or was discarded: the next submission starts a new one.
  class Gone extends Refused {}

  function human(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function duration(seconds) {
    seconds = Math.ceil(seconds);
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  function showError(message, items) {
    errorBox.replaceChildren();
    const p = document.createElement("p");
    p.textContent = message;
    errorBox.appendChild(p);
    if (items && items.length) {
      const ul = document.createElement("ul");
      for (const item of items) {
        const li = document.createElement("li");
        li.textContent = item;
        ul.appendChild(li);
      }
      errorBox.appendChild(ul);
    }
    errorBox.hidden = false;
    errorBox.scrollIntoView({ block: "nearest" });
  }

  function refused(answer, what) {
    const message = answer.body.detail || `The portal answered ${answer.status} when asked to ${what}.`;
    return new Refused(message, answer.body);
  }

  function gone(answer) {
    transfer = null;
    return new Gone(`${answer.body.detail || "The upload is gone."} Submit the form again to start over.`);
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (!signal) { setTimeout(resolve, ms); return; }
      if (signal.aborted) { reject(new Stopped()); return; }
      const stop = () => { clearTimeout(timer); reject(new Stopped()); };
      const timer = setTimeout(() => { signal.removeEventListener("abort", stop); resolve(); }, ms);
      signal.addEventListener("abort", stop, { once: true });
    });
  }

  // A JSON request to the API: answers {status, body}; throws NetworkError when nothing came back.
  async function api(method, url, body, signal) {
    const headers = { Accept: "application/json", "X-CSRFToken": csrfToken };
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, { method, headers, body: payload, credentials: "same-origin", signal });
    } catch (error) {
      if (signal && signal.aborted) throw new Stopped();
      throw new NetworkError(error.message);
    }
    let data = {};
    try { data = await response.json(); } catch (_) { /* not JSON (a proxy's error page) */ }
    return { status: response.status, body: data || {} };
  }

  // One chunk, with XMLHttpRequest because fetch() reports no upload progress.
  function put(url, bytes, start, size, onProgress, signal) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      const stop = () => xhr.abort();
      xhr.open("PUT", url);
      xhr.setRequestHeader("X-CSRFToken", csrfToken);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.setRequestHeader("Content-Range", `bytes ${start}-${start + bytes.length - 1}/${size}`);
      xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
      xhr.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText) || {}; } catch (_) { /* not JSON */ }
        resolve({ status: xhr.status, body });
      });
      xhr.addEventListener("error", () => reject(new NetworkError("network error")));
      xhr.addEventListener("timeout", () => reject(new NetworkError("timed out")));
      xhr.addEventListener("abort", () => reject(new Stopped()));
      xhr.addEventListener("loadend", () => signal.removeEventListener("abort", stop));
      signal.addEventListener("abort", stop);
      xhr.send(bytes);
    });
  }

  async function read(file, start, end) {
    try {
      return new Uint8Array(await file.slice(start, end).arrayBuffer());
    } catch (_) {
      transfer = null;  // the bytes sent so far may not be this file's any more
      throw new Refused(`${file.name} could not be read: it was changed, moved or deleted after you chose it. ` +
                        "Choose the file again and submit.");
    }
  }

  async function hashUpTo(file, t, end, chunkSize) {
    while (t.hashedUpTo < end) {
      const stop = Math.min(end, t.hashedUpTo + chunkSize);
      t.hasher.update(await read(file, t.hashedUpTo, stop));
      t.hashedUpTo = stop;
    }
  }

  // Where the upload stands, from the portal; `fallback` if it cannot be asked (the next PUT
  // answers 416 with the right offset if the fallback is wrong).
  async function askOffset(t, fallback, signal) {
    try {
      const answer = await api("GET", t.upload.url, undefined, signal);
      if (answer.status === 200) return answer.body.offset;
      if (answer.status === 404 || answer.status === 410) throw gone(answer);
    } catch (error) {
      if (!(error instanceof NetworkError)) throw error;
    }
    return fallback;
  }

  function progressMeter(size, from) {
    const started = performance.now();
    return (sent) => {
      const seconds = (performance.now() - started) / 1000;
      const rate = Math.max(sent - from, 0) / Math.max(seconds, 0.001);
      bar.value = (100 * sent) / size;
      const left = rate > 0 ? ` · ${duration((size - sent) / rate)} left` : "";
      text.textContent = `${human(sent)} of ${human(size)} · ${human(rate)}/s${left}`;
    };
  }

  async function start(file, signal) {
    const answer = await api("POST", form.dataset.uploads, { size: file.size, filename: file.name }, signal);
    if (answer.status !== 201) throw refused(answer, "start the upload");
    return {
      key: fileKey(file), upload: answer.body, hasher: new window.Sha256(), hashedUpTo: 0,
    };
  }

  async function send(file, t, signal) {
    const size = file.size;
    const chunkSize = Math.max(1, Number(t.upload.chunk_size) || 16 * 1024 * 1024);
    let offset = t.upload.offset || 0;
    let failures = 0;
    let chunk = null;  // the piece read last: {start, bytes}; a part of it is resent after an error
    const show = progressMeter(size, offset);
    show(offset);
    while (offset < size) {
      if (!chunk || offset < chunk.start || offset >= chunk.start + chunk.bytes.length) {
        chunk = { start: offset, bytes: await read(file, offset, Math.min(offset + chunkSize, size)) };
      }
      // The portal never holds more than was sent, and nothing is sent before it is hashed,
      // so this only fills a gap if someone else sent bytes of this upload.
      await hashUpTo(file, t, chunk.start, chunkSize);
      const base = offset;
      const sending = put(t.upload.url, chunk.bytes.subarray(offset - chunk.start), offset, size,
                          (loaded) => show(base + loaded), signal);
      // Hash while the bytes travel.
      const chunkEnd = chunk.start + chunk.bytes.length;
      if (t.hashedUpTo < chunkEnd) {
        t.hasher.update(chunk.bytes.subarray(t.hashedUpTo - chunk.start));
        t.hashedUpTo = chunkEnd;
      }
      let answer = null;
      try {
        answer = await sending;
      } catch (error) {
        if (!(error instanceof NetworkError)) throw error;
      }
      if (answer && answer.status === 200 && Number.isInteger(answer.body.offset)) {
        offset = answer.body.offset;
        failures = 0;
        continue;
      }
      // 416: out of order; 400 with an offset: the chunk was cut short; 409 with an offset:
      // every byte is there already. In each case go on from where the portal stands.
      if (answer && [400, 409, 416].includes(answer.status) && Number.isInteger(answer.body.offset)) {
        offset = answer.body.offset;
        continue;
      }
      if (answer && answer.status === 409 && /arriving right now/.test(answer.body.detail || "")) {
        await sleep(1000, signal);  // an earlier attempt of ours is still being received
        offset = await askOffset(t, offset, signal);
        continue;
      }
      if (answer && (answer.status === 404 || answer.status === 410)) throw gone(answer);
      // No answer, a timeout, a proxy's 5xx or a garbled 200: wait, ask where the upload stands, resume.
      const transient = !answer || answer.status >= 500 || [200, 408, 429].includes(answer.status);
      if (!transient) throw refused(answer, "take a chunk");
      failures += 1;
      if (failures > MAX_RETRIES) {
        throw new Refused(`The connection kept failing, so the upload stopped at ${human(offset)} of ${human(size)}. ` +
                          "Check your connection and submit again: it resumes from there.");
      }
      const wait = Math.min(500 * 2 ** (failures - 1), 15000);
      text.textContent =
        `Connection lost; trying again in ${duration(wait / 1000)} (attempt ${failures} of ${MAX_RETRIES})…`;
      await sleep(wait, signal);
      offset = await askOffset(t, offset, signal);
    }
    await hashUpTo(file, t, size, chunkSize);  // when every byte had arrived before this submission
  }

  async function finish(t) {
    const sha256 = t.hasher.hexdigest();
    for (let failures = 0; ; failures++) {
      let answer;
      try {
        answer = await api("POST", `${t.upload.url}/complete`, { sha256 });
      } catch (error) {
        // Finishing twice is harmless, so a lost answer is simply asked for again.
        if (!(error instanceof NetworkError) || failures >= MAX_RETRIES) throw error;
        await sleep(Math.min(500 * 2 ** failures, 15000));
        continue;
      }
      if (answer.status === 200) { t.upload = answer.body; return; }
      if (answer.status === 404 || answer.status === 410) throw gone(answer);
      if (answer.status === 400) transfer = null;  // a digest that does not match discards the upload
      throw refused(answer, "finish the upload");
    }
  }

  function fileKey(file) {
    return `${file.name}\n${file.size}\n${file.lastModified}`;
  }

  function forget(t) {
    // An unfinished upload of a file no longer chosen only takes up room until it is swept.
    if (t && t.upload.status !== "registered") api("DELETE", t.upload.url).catch(() => {});
  }

  function registration(uploadId) {
    const data = new FormData(form);
    data.delete("csrfmiddlewaretoken");
    data.delete("artifact");  // the bytes are in the upload
    for (const [key, value] of Array.from(data.entries())) {
      if (value === "" || (value instanceof File && !value.name && !value.size)) data.delete(key);  // "not given"
    }
    data.set("upload", uploadId);
    return data;
  }

  // Send (or resume, or reuse) the file's upload, then register it. Answers the registration.
  async function uploadAndRegister(file, signal) {
    let reused = false;
    if (transfer && transfer.key !== fileKey(file)) { forget(transfer); transfer = null; }
    if (transfer && transfer.upload.status === "receiving") {
      text.textContent = "Resuming the upload…";
      try {
        transfer.upload.offset = await askOffset(transfer, transfer.upload.offset, signal);
      } catch (error) {
        if (!(error instanceof Gone)) throw error;  // expired meanwhile: start a new upload below
      }
    }
    if (!transfer) {
      text.textContent = "Starting the upload…";
      transfer = await start(file, signal);
    } else if (transfer.upload.status === "complete") {
      reused = true;
    }
    const t = transfer;
    if (t.upload.status === "receiving") {
      cancelRow.hidden = false;
      await send(file, t, signal);
      cancelRow.hidden = true;
      bar.removeAttribute("value");  // indeterminate from here on
      text.textContent = "Checking the digest…";
      await finish(t);
    }
    cancelRow.hidden = true;
    bar.removeAttribute("value");
    text.textContent = (reused ? "The file was uploaded already. " : "Uploaded. ") +
                       "Checking that the model loads and predicts its sample input…";
    let answer;
    try {
      answer = await api("POST", form.dataset.api, registration(t.upload.id));
    } catch (error) {
      if (!(error instanceof NetworkError)) throw error;
      // The portal may have registered the version before the answer was lost.
      throw new Refused("The connection was lost while the portal checked the model. Open the model's page to " +
                        "see whether the version was registered; if not, submit again (the file is not sent twice).");
    }
    if (reused && (answer.status === 404 || answer.status === 410)) {
      transfer = null;  // the earlier upload expired or was swept: send the file again
      return uploadAndRegister(file, signal);
    }
    return answer;
  }

  function reportRefusal(answer) {
    const body = answer.body;
    const details = (body.breaking_changes || []).map((c) => c.message);
    if (body.errors && !details.length) {
      for (const [field, messages] of Object.entries(body.errors)) {
        if (!body.detail || !String(body.detail).includes(String(messages))) details.push(`${field}: ${messages}`);
      }
    }
    showError(body.detail || `The server answered ${answer.status}.`, details);
  }

  function warnBeforeLeaving(event) {
    event.preventDefault();
    event.returnValue = "";  // leaving stops the upload (it can be resumed by submitting again)
  }

  cancel.addEventListener("click", () => { if (controller) controller.abort(); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) return;  // already working
    errorBox.hidden = true;
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) { showError("Choose the model file to upload."); return; }
    if (!file.size) { showError(`${file.name} is empty. Choose the model file itself.`); return; }
    if (file.size > maxBytes) {
      showError(`The file is ${human(file.size)}; the limit is ${human(maxBytes)}.`);
      return;
    }

    controller = new AbortController();
    submit.disabled = true;
    status.hidden = false;
    bar.value = 0;
    window.addEventListener("beforeunload", warnBeforeLeaving);
    let answer = null;
    try {
      answer = await uploadAndRegister(file, controller.signal);
    } catch (error) {
      status.hidden = true;
      if (error instanceof Stopped) {
        forget(transfer);
        transfer = null;
        status.hidden = false;
        bar.value = 0;
        text.textContent = "Upload cancelled. Nothing was registered.";
      } else if (error instanceof Refused) {
        reportRefusal({ status: 0, body: { ...error.body, detail: error.message } });
      } else if (error instanceof NetworkError) {
        showError("The connection to the portal was lost, so nothing was registered. Check your connection " +
                  "and submit again: the upload resumes where it stopped.");
      } else {
        showError(`Something went wrong in this page: ${error.message}. Reload it and try again.`);
      }
    } finally {
      window.removeEventListener("beforeunload", warnBeforeLeaving);
      cancelRow.hidden = true;
      submit.disabled = false;
      controller = null;
    }
    if (!answer) return;
    if (answer.status === 201) {
      transfer = null;  // registered: the upload belongs to the version now
      text.textContent = "Registered.";
      window.location.assign(form.dataset.versionUrl.replace("0.0.0", encodeURIComponent(answer.body.version)));
      return;
    }
    status.hidden = true;
    reportRefusal(answer);
  });
})();
