// The report page's script, inline in every page (`evo report`, and each page of `evo
// dashboard`, whose live updates call it again on what they change):
// - draw: each figure from the JSON beside its element, with the page's one plotly
//   template (kept once per page, not once per figure);
// - tables: a table with class "sortable" sorts by a column when its heading is clicked
//   (numbers as numbers; again to reverse), and a box above it keeps the rows that match
//   every word typed: `column:value` keeps the rows whose cell in that column is the value
//   (`rung:3`, `status:failed`), any other word the rows containing it. Both are kept in
//   the address (#sort=HEADING or -HEADING for descending, &filter=TEXT), so a link shares
//   the view. The sorted column is marked (aria-sort); without a sort in the address the
//   rows keep the order the page was made in, whose columns the page marks itself.
"use strict";
const evoReport = (() => {
  const view = new URLSearchParams(location.hash.slice(1));
  const remember = () => history.replaceState(null, "", "#" + view.toString());
  let template;

  function figure(data) {
    if (template === undefined) {
      const tag = document.getElementById("plotly-template");
      template = tag ? JSON.parse(tag.textContent) : null;
    }
    const drawn = JSON.parse(data.textContent);
    if (template) drawn.layout.template = template;
    return drawn;
  }

  function draw(root) {
    for (const data of root.querySelectorAll("script.figure-data")) {
      Plotly.newPlot(data.previousElementSibling, figure(data));
    }
  }

  // A heading's name: its text up to a unit in brackets ("bits_per_byte (bits/byte)").
  const headingName = (th) => th.textContent.replace(/ \(.*\)$/, "").toLowerCase();

  function rowTest(table, text) {
    const names = Array.from(table.tHead.rows[0].cells, headingName);
    const tests = text.toLowerCase().split(/\s+/).filter(Boolean).map((word) => {
      const [, name, value] = word.match(/^([^:]+):(.*)$/) || [];
      const column = name === undefined ? -1 : names.indexOf(name);
      if (column >= 0) return (row) => row.cells[column].textContent.toLowerCase() === value;
      return (row) => row.textContent.toLowerCase().includes(word);
    });
    return (row) => tests.every((test) => test(row));
  }

  function sortKey(row, column) {
    const text = row.cells[column].textContent.replace(/,/g, "");
    const number = parseFloat(text);
    return isNaN(number) ? text : number;
  }

  function compare(x, y) {
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1; // "—" after numbers
    return x < y ? -1 : x > y ? 1 : 0;
  }

  // Puts the table's rows in the order and filter the address asks for.
  function arrange(table) {
    const body = table.tBodies[0];
    const headings = Array.from(table.tHead.rows[0].cells);
    const wanted = (view.get("sort") || "").match(/^(-?)(.+)$/);
    const column = wanted ? headings.findIndex((th) => th.textContent === wanted[2]) : -1;
    if (column >= 0) {
      const up = wanted[1] !== "-";
      const rows = Array.from(body.rows);
      rows.sort((a, b) => compare(sortKey(a, column), sortKey(b, column)) * (up ? 1 : -1));
      body.append(...rows);
      headings.forEach((th) => th.removeAttribute("aria-sort"));
      headings[column].setAttribute("aria-sort", up ? "ascending" : "descending");
    }
    const keep = rowTest(table, view.get("filter") || "");
    for (const row of body.rows) row.hidden = !keep(row);
  }

  function sortable(table) {
    const filter = document.createElement("input");
    filter.className = "filter";
    filter.placeholder = "filter: words, or column:value (rung:3)";
    filter.value = view.get("filter") || "";
    filter.addEventListener("input", () => {
      filter.value ? view.set("filter", filter.value) : view.delete("filter");
      remember();
      arrange(table);
    });
    table.parentNode.insertBefore(filter, table);
    table.addEventListener("click", (event) => {
      const th = event.target.closest("thead th");
      if (!th) return;
      const ascending = view.get("sort") === th.textContent;
      view.set("sort", (ascending ? "-" : "") + th.textContent);
      remember();
      arrange(table);
    });
    arrange(table);
  }

  function prepare(root) {
    draw(root);
    root.querySelectorAll("table.sortable").forEach(sortable);
  }

  document.addEventListener("DOMContentLoaded", () => prepare(document));
  return { figure, prepare, arrange };
})();
