// Follow a deployment without reloading: poll its status and append new events.
(function () {
  const list = document.getElementById("events");
  if (!list || list.dataset.final === "1") return;
  const badge = document.getElementById("status");
  const url = list.dataset.statusUrl;
  const trial = document.getElementById("trial");
  const finals = new Set(["live", "superseded", "stopped", "rejected", "failed", "rolled_back", "cancelled"]);
  let last = 0;
  for (const li of list.querySelectorAll("li[data-id]")) last = Math.max(last, Number(li.dataset.id));

  async function poll() {
    try {
      const response = await fetch(`${url}?after=${last}`, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        for (const event of data.events) {
          const li = document.createElement("li");
          li.dataset.id = event.id;
          li.className = `level-${event.level}`;
          const time = document.createElement("time");
          time.dateTime = event.at;
          // As the server rendered the others (HH:MM:SS in the portal's time zone), not the
          // browser's locale format: one page, one way of writing a time.
          time.textContent = event.time;
          li.append(time, " ", event.message);
          list.appendChild(li);
          last = Math.max(last, event.id);
        }
        badge.textContent = data.label;
        badge.className = `badge status-${data.status} big`;
        for (const instance of data.instances) {
          const el = document.querySelector(`[data-instance="${CSS.escape(instance.name)}"]`);
          if (el) { el.textContent = instance.state; el.className = `badge status-${instance.state}`; }
        }
        if (trial) showAnalysis(data);
        if (trial && data.trial_key && data.trial_key !== trial.dataset.trialKey && !finals.has(data.status)) {
          // A canary moved to its next step, or was paused or resumed: show the new split and steps.
          if (!leaving) window.location.reload();
          return;
        }
        if (finals.has(data.status)) {
          // Reload once to show the final page (actions, instances and logs), unless the
          // person has meanwhile followed a link: the reload must not pull them back.
          setTimeout(() => { if (!leaving) window.location.reload(); }, 800);
          return;
        }
      }
    } catch (_) { /* network hiccup: try again */ }
    setTimeout(poll, 1000);
  }
  // A canary's or shadow's comparison with the live version, in the cells of its table.
  function showAnalysis(data) {
    const a = data.analysis;
    if (!a) return;
    // Live quality from ground truth: accuracy as a percent, an error (RMSE) as a number.
    const accuracy = a.quality_metric === "accuracy";
    const label = document.getElementById("quality-metric");
    if (label && a.quality_metric) label.textContent = accuracy ? "accuracy" : a.quality_metric.toUpperCase();
    for (const cell of trial.querySelectorAll("td[data-side][data-measure]")) {
      const value = (a[cell.dataset.side] || {})[cell.dataset.measure];
      if (value === undefined) continue;
      const format = cell.dataset.format === "quality" ? (accuracy ? "percent" : "number") : cell.dataset.format;
      if (value === null) cell.textContent = "–";
      else if (format === "percent") cell.textContent = `${Math.round(value * 1000) / 10} %`;
      else if (format === "ms") cell.textContent = `${value} ms`;
      else if (format === "number") cell.textContent = String(Number(value.toPrecision(4)));
      else cell.textContent = String(value);
    }
    const verdict = document.getElementById("verdict");
    const what = trial.querySelector("[data-measure=agreement]") ? "copies" : "requests";
    let text;
    if (a.verdict) text = a.verdict;  // as the worker put it
    else if (a.regression) text = `Regression: ${a.regression}.`;
    else if (!a.judged) text = `Waiting for ${a.min_requests} ${what} to ${a.candidate.version} before judging, ${a.candidate.requests} so far.`;
    else text = "Within the thresholds so far.";
    if (verdict && verdict.textContent !== text) verdict.textContent = text;
  }

  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  setTimeout(poll, 1000);
})();
