// Upload a version through the REST API with a progress bar. Without JavaScript the form
// posts to the page itself and the server does the same work, just without progress.
(function () {
  const form = document.getElementById("register-form");
  if (!form || !window.XMLHttpRequest || !window.FormData) return;
  const errorBox = document.getElementById("register-error");
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const submit = document.getElementById("register-submit");
  const maxBytes = Number(form.dataset.maxBytes);

  function human(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
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

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) { showError("Choose the model file to upload."); return; }
    if (file.size > maxBytes) { showError(`The file is ${human(file.size)}; the limit is ${human(maxBytes)}.`); return; }

    const data = new FormData(form);
    data.delete("csrfmiddlewaretoken");
    for (const [key, value] of Array.from(data.entries())) {
      if (value === "") data.delete(key);  // empty optional fields mean "not given"
    }
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    xhr.open("POST", form.dataset.api);
    xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    xhr.setRequestHeader("Accept", "application/json");
    status.hidden = false;
    submit.disabled = true;
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      const seconds = (performance.now() - started) / 1000;
      const rate = e.loaded / Math.max(seconds, 0.001);
      const left = rate > 0 ? (e.total - e.loaded) / rate : 0;
      bar.value = (100 * e.loaded) / e.total;
      text.textContent = `${human(e.loaded)} of ${human(e.total)} · ${human(rate)}/s · ${Math.ceil(left)} s left`;
    });
    xhr.upload.addEventListener("load", () => {
      bar.removeAttribute("value");  // indeterminate while the server checks the model
      text.textContent = "Uploaded. Checking that the model loads and predicts its sample input…";
    });
    xhr.addEventListener("load", () => {
      submit.disabled = false;
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201) {
        text.textContent = "Registered.";
        window.location.assign(form.dataset.versionUrl.replace("0.0.0", encodeURIComponent(body.version)));
        return;
      }
      status.hidden = true;
      const details = (body.breaking_changes || []).map((c) => c.message);
      if (body.errors && !details.length) {
        for (const [field, messages] of Object.entries(body.errors)) {
          if (!body.detail || !String(body.detail).includes(String(messages))) details.push(`${field}: ${messages}`);
        }
      }
      showError(body.detail || `The server answered ${xhr.status}.`, details);
    });
    xhr.addEventListener("error", () => {
      submit.disabled = false;
      status.hidden = true;
      showError("The upload was interrupted (network error). Nothing was registered; try again.");
    });
    xhr.send(data);
  });
})();
