(function () {
  "use strict";
  var table = document.getElementById("runs-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var search = document.getElementById("runs-filter");
  var status = document.getElementById("runs-status");
  var count = document.getElementById("runs-count");

  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    if (numeric) {
      var x = parseFloat(v);
      return isNaN(x) ? -Infinity : x;
    }
    return v.toLowerCase();
  }

  function sortBy(th) {
    var col = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    if (th.getAttribute("aria-sort") === null && numeric) { asc = false; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var keyed = rows.map(function (row, i) { return [cellValue(row, col, numeric), i, row]; });
    keyed.sort(function (a, b) {
      if (a[0] < b[0]) { return asc ? -1 : 1; }
      if (a[0] > b[0]) { return asc ? 1 : -1; }
      return a[1] - b[1];
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k[2]); });
    body.appendChild(frag);
    rows = keyed.map(function (k) { return k[2]; });
  }

  function applyFilter() {
    var q = search ? search.value.trim().toLowerCase() : "";
    var s = status ? status.value : "";
    var shown = 0;
    rows.forEach(function (row) {
      var name = (row.getAttribute("data-run") || "").toLowerCase();
      var ok = (!q || name.indexOf(q) !== -1) &&
        (!s || row.getAttribute("data-status") === s ||
         (s === "findings" && row.getAttribute("data-status") !== "ok") ||
         (s === "too_short" && row.getAttribute("data-short") === "1"));
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + rows.length + " runs shown"; }
  }

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.setAttribute("title", "Sort");
  });
  if (search) { search.addEventListener("input", applyFilter); }
  if (status) { status.addEventListener("change", applyFilter); }
  applyFilter();
  table.setAttribute("data-ready", "1");
  document.documentElement.setAttribute("data-gradaudit-ready", "1");
})();
