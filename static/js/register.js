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
  const notice = document.getElementById("upload-interrupted");
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
    unremember(transfer);
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
      unremember(transfer);
      transfer = null;  // the bytes sent so far may not be this file's any more
      throw new Refused(`${file.name} could not be read: it was changed, moved or deleted after you chose it. ` +
                        "Choose the file again and submit.");
    }
  }

  async function hashUpTo(file, t, end, chunkSize, signal, onProgress) {
    while (t.hashedUpTo < end) {
      if (signal && signal.aborted) throw new Stopped();  // re-hashing gigabytes takes a while
      const stop = Math.min(end, t.hashedUpTo + chunkSize);
      t.hasher.update(await read(file, t.hashedUpTo, stop));
      t.hashedUpTo = stop;
      if (onProgress) onProgress(stop);
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
    const t = { key: fileKey(file), upload: answer.body, hasher: new window.Sha256(), hashedUpTo: 0 };
    remember(t);  // before the first byte goes: a reload from here on can resume it
    return t;
  }

  // The upload of this file that an earlier page started (see remember()), rebuilt with a fresh
  // hash; null when there is none or the portal no longer has it.
  async function restore(file, signal) {
    const key = fileKey(file);
    const entry = recalled(key);
    if (!entry) return null;
    // No answer (a NetworkError) says nothing about the upload: it stays remembered for the next
    // submission, and so does it when a proxy or a busy portal answers with an error page.
    const answer = await api("GET", entry.url, undefined, signal);
    if (answer.status >= 500) {
      throw new Refused(`The portal answered ${answer.status} when asked about the upload started earlier. ` +
                        "Submit again in a moment: it resumes from where it stopped.");
    }
    const upload = answer.body;
    if (answer.status !== 200 && answer.status !== 404 && answer.status !== 410) {
      // Signed out meanwhile (401/403) or told to slow down (429): the upload may be fine, so
      // it stays remembered for the submission after this one.
      throw new Refused(`${upload.detail || `The portal answered ${answer.status}.`} ` +
                        "The upload started earlier is kept; submit again to resume it.");
    }
    const usable = answer.status === 200 && ["receiving", "complete"].includes(upload.status) &&
                   upload.size === file.size && typeof upload.url === "string";
    if (!usable) {
      // Expired, swept, registered meanwhile or someone else's (another account signed in here).
      unremember({ key });
      if ((answer.status === 404 || answer.status === 410) && notice) {
        // Say why the whole file goes again, where it stays readable while the bytes travel.
        notice.hidden = false;
        notice.textContent = "The upload of this file started earlier is gone (uploads left idle for a day " +
                             "are removed), so it is sent again from the start.";
      }
      return null;
    }
    const t = { key, upload, hasher: new window.Sha256(), hashedUpTo: 0 };
    if (upload.status === "complete") {
      // Name, size and modification time can match a different file (a copy of another
      // model, an unpacked archive): reuse the portal's bytes only if they are this file's.
      text.textContent = "Checking that this is the file uploaded earlier…";
      await hashUpTo(file, t, file.size, Math.max(1, Number(upload.chunk_size) || 16 * 1024 * 1024), signal);
      if (t.hasher.hexdigest() !== upload.sha256) {
        unremember({ key });
        return null;  // a different file: upload it
      }
    }
    remember(t);  // resumed: keep it as long again
    if (upload.status === "receiving") text.textContent = `Resuming the upload from ${human(upload.offset || 0)}…`;
    return t;
  }

  async function send(file, t, signal) {
    const size = file.size;
    const chunkSize = Math.max(1, Number(t.upload.chunk_size) || 16 * 1024 * 1024);
    let offset = t.upload.offset || 0;
    let failures = 0;
    let chunk = null;  // the piece read last: {start, bytes}; a part of it is resent after an error
    if (t.hashedUpTo < offset) {
      // An upload resumed after a reload: the hash of what the portal holds went with the old
      // page, so those bytes are read again from the file here (nothing is sent for them).
      const from = offset;
      const rehashed = (done) => {
        bar.value = (100 * done) / size;
        text.textContent = `Resuming the upload from ${human(from)}: reading the part sent earlier to ` +
                           `continue the checksum (${human(done)} of ${human(from)})…`;
      };
      rehashed(t.hashedUpTo);
      await hashUpTo(file, t, from, chunkSize, signal, rehashed);
    }
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
      if (answer.status === 400) {  // a digest that does not match discards the upload
        unremember(t);
        transfer = null;
      }
      throw refused(answer, "finish the upload");
    }
  }

  function fileKey(file) {
    return `${file.name}\n${file.size}\n${file.lastModified}`;
  }

  function forget(t) {
    // An unfinished upload of a file no longer chosen only takes up room until it is swept.
    if (t && t.upload.status !== "registered") api("DELETE", t.upload.url).catch(() => {});
    unremember(t);
  }

  // Uploads outlive the page: each one started here is remembered in localStorage (its id and
  // url, under the model and the file's key) until it is registered, cancelled or gone, so after
  // a reload or a closed tab the same file resumes where the portal stands. Where localStorage
  // is unavailable or refuses (private mode, storage blocked or full) this is simply skipped.
  const STORED = "portal.register-upload\n";
  const STORED_MAX_AGE = 2 * 24 * 3600 * 1000;  // the portal drops uploads idle for a day anyway
  const STORED_MAX_COUNT = 20;  // the portal holds at most that many unfinished uploads per person

  const storage = (() => {
    try {
      const s = window.localStorage;
      s.setItem(`${STORED}probe`, "1");
      s.removeItem(`${STORED}probe`);
      return s;
    } catch (_) {
      return null;
    }
  })();

  function storedName(key) {
    return `${STORED}${form.dataset.model}\n${key}`;
  }

  // Every remembered upload: [{name, model, id, url, savedAt}], newest first. Entries too old or
  // unreadable are dropped on the way, and the oldest beyond the limit too.
  function storedEntries() {
    if (!storage) return [];
    const entries = [];
    const stale = [];
    try {
      for (let i = 0; i < storage.length; i++) {
        const name = storage.key(i);
        if (!name || !name.startsWith(STORED)) continue;
        let entry = null;
        try { entry = JSON.parse(storage.getItem(name)); } catch (_) { /* written by something else */ }
        const fresh = entry && typeof entry.url === "string" && Date.now() - entry.savedAt < STORED_MAX_AGE;
        if (fresh) entries.push({ ...entry, name }); else stale.push(name);
      }
      entries.sort((a, b) => b.savedAt - a.savedAt);
      for (const entry of entries.splice(STORED_MAX_COUNT)) stale.push(entry.name);
      for (const name of stale) storage.removeItem(name);
    } catch (_) {
      return [];
    }
    return entries;
  }

  function remember(t) {
    if (!storage || !t) return;
    try {
      storage.setItem(storedName(t.key), JSON.stringify({
        model: form.dataset.model, id: t.upload.id, url: t.upload.url, savedAt: Date.now(),
      }));
      storedEntries();  // keeps them bounded
    } catch (_) { /* full or refused: this upload just cannot survive a reload */ }
  }

  function recalled(key) {
    const name = storedName(key);
    return storedEntries().find((entry) => entry.name === name) || null;
  }

  function unremember(t) {
    if (!storage || !t) return;
    try { storage.removeItem(storedName(t.key)); } catch (_) { /* nothing to undo */ }
  }

  // On arrival: say so if an upload for this model was left unfinished, so the person knows
  // that choosing the same file resumes it instead of sending it all again.
  async function announceInterrupted() {
    if (!notice) return;
    const prefix = `${STORED}${form.dataset.model}\n`;
    let gone = null;  // the file of an upload that expired, if no other one is left to resume
    for (const entry of storedEntries().filter((e) => e.name.startsWith(prefix))) {
      let answer;
      try {
        answer = await api("GET", entry.url);
      } catch (_) {
        return;  // no connection: the submission will find out
      }
      const upload = answer.body;
      const expired = answer.status === 404 || answer.status === 410;
      if (expired || (answer.status === 200 && !["receiving", "complete"].includes(upload.status))) {
        try { storage.removeItem(entry.name); } catch (_) { /* nothing to undo */ }
        if (expired && !gone) gone = entry.name.slice(prefix.length).split("\n")[0];
        continue;
      }
      if (answer.status !== 200 || controller) return;  // unsure, or a submission is under way
      const file = upload.filename || "a file";
      notice.hidden = false;  // shown before it is filled, so screen readers announce the text
      notice.textContent = upload.status === "complete"
        ? `An upload of ${file} (${human(upload.size)}) finished, but no version was registered with it. ` +
          "Choose the same file and submit to register it without sending it again."
        : `An upload of ${file} (${human(upload.offset || 0)} of ${human(upload.size)}) was interrupted. ` +
          "Choose the same file and submit to resume it.";
      return;
    }
    if (gone && !controller) {
      notice.hidden = false;
      notice.textContent = `An upload of ${gone} started earlier is gone (uploads left idle for a day are ` +
                           "removed). Choosing it again sends the whole file.";
    }
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
    if (!transfer) {
      transfer = await restore(file, signal);  // started by an earlier page, before a reload?
    } else if (transfer.upload.status === "receiving") {
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
      unremember(t);
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
    if (notice) notice.hidden = true;  // what happens now shows below
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
      unremember(transfer);
      transfer = null;  // registered: the upload belongs to the version now
      text.textContent = "Registered.";
      window.location.assign(form.dataset.versionUrl.replace("0.0.0", encodeURIComponent(answer.body.version)));
      return;
    }
    status.hidden = true;
    reportRefusal(answer);
  });

  announceInterrupted();
})();
