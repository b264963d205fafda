// Keeps a dashboard page current without reloading it. Every few seconds it asks the JSON
// API for the page's view (/api/view + the page's path), sending the version it shows;
// the answer has new sections only when the run changed. Each section is then updated in
// place: a figure is redrawn with Plotly.react (the figure's uirevision keeps the reader's
// zoom, legend choices and parallel-coordinates selections), a sortable table gets its new
// rows, sorted and filtered as the address says (the filter box, its text and its focus
// stay), anything else that changed is replaced, and a section whose layout changed (a
// note became a chart) is replaced whole. evoReport is the page's own script (page.js).
"use strict";
(() => {
  const script = document.currentScript;
  const every = Number(script.dataset.seconds) * 1000;
  let version = script.dataset.version;

  const kind = (element) =>
    element.classList.contains("figure")
      ? "figure"
      : element.querySelector("table.sortable")
        ? "table"
        : element.tagName;

  function updateTable(old, fresh) {
    const table = old.querySelector("table.sortable");
    const next = fresh.querySelector("table.sortable");
    table.tHead.replaceWith(next.tHead);
    table.tBodies[0].replaceWith(next.tBodies[0]);
    evoReport.arrange(table);
  }

  function updateSection(old, fresh) {
    const before = Array.from(old.children);
    const after = Array.from(fresh.children);
    if (before.map(kind).join() !== after.map(kind).join()) {
      old.replaceWith(fresh);
      evoReport.prepare(fresh);
      return;
    }
    before.forEach((element, i) => {
      const next = after[i];
      if (kind(element) === "figure") {
        const data = element.querySelector("script.figure-data");
        data.textContent = next.querySelector("script.figure-data").textContent;
        Plotly.react(element.querySelector(".plot"), evoReport.figure(data));
      } else if (kind(element) === "table") {
        updateTable(element, next);
      } else if (element.outerHTML !== next.outerHTML) {
        element.replaceWith(next);
      }
    });
  }

  function update(view) {
    document.getElementById("subtitle").textContent = view.subtitle;
    if (!view.sections) return;
    const main = document.querySelector("main");
    const parsed = new DOMParser().parseFromString(view.sections.join(""), "text/html");
    const fresh = Array.from(parsed.body.children);
    const kept = new Set(fresh.map((section) => section.id));
    for (const old of Array.from(main.children)) if (!kept.has(old.id)) old.remove();
    let previous = null;
    for (const section of fresh) {
      const old = document.getElementById(section.id);
      const adopted = document.adoptNode(section);
      if (old) {
        updateSection(old, adopted);
      } else {
        main.insertBefore(adopted, previous ? previous.nextSibling : main.firstChild);
        evoReport.prepare(adopted);
      }
      previous = document.getElementById(section.id);
    }
  }

  async function poll() {
    try {
      const url = new URL("/api/view" + location.pathname, location.href);
      url.search = location.search;
      url.searchParams.set("since", version);
      const reply = await fetch(url, { headers: { Accept: "application/json" } });
      if (reply.ok) {
        const view = await reply.json();
        update(view);
        version = view.version;
      }
    } catch (err) {
      console.warn("evo dashboard: no update", err);
    }
    setTimeout(poll, every);
  }

  setTimeout(poll, every);
})();
