// burst-broker console: copy buttons, confirmations, filters that apply on change.
// Plain JavaScript, loaded from this server only (the pages allow no inline script).
"use strict";

(function () {
  function flash(button, text) {
    var before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = text;
    window.setTimeout(function () { button.textContent = before; }, 1600);
  }

  // Without the Clipboard API (a page over plain HTTP on another host), select the id so
  // that Ctrl+C copies it, and try the older copy command.
  function selectText(button) {
    var code = button.parentNode.querySelector("code");
    if (!code) { return; }
    var range = document.createRange();
    range.selectNodeContents(code);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    flash(button, copied ? "Copied" : "Selected: press Ctrl+C");
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) { return; }
    var text = button.getAttribute("data-copy");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { flash(button, "Copied"); },
        function () { selectText(button); }
      );
    } else {
      selectText(button);
    }
  });

  // Forms with data-confirm ask first (without JavaScript they simply post).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  // The rank-0 log of a live experiment refreshes itself (text only: never parsed as HTML).
  var log = document.querySelector("pre.log[data-src]");
  if (log) {
    var refresh = function () {
      fetch(log.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (doc) {
          if (!doc) { return; }
          if (doc.lines.length) {
            var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
            log.textContent = doc.lines.join("\n");
            log.classList.remove("empty");
            if (atEnd) { log.scrollTop = log.scrollHeight; }
          }
          if (doc.live) { window.setTimeout(refresh, 2000); }
        })
        .catch(function () { window.setTimeout(refresh, 5000); });
    };
    window.setTimeout(refresh, 2000);
  }

  // Select boxes marked data-autosubmit apply their form at once.
  document.addEventListener("change", function (event) {
    var field = event.target;
    if (field.matches("select[data-autosubmit]") && field.form) {
      if (typeof field.form.requestSubmit === "function") { field.form.requestSubmit(); }
      else { field.form.submit(); }
    }
  });
})();
