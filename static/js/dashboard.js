// Copy buttons: progressive enhancement, the value stays selectable without script. A screen reader
// does not say a focused button's new name, so "Copied" is also put in a status region, there
// (empty) from the start: a live region added with its text already in it is not read either.
var copyStatus = document.createElement("span");
copyStatus.className = "visually-hidden";
copyStatus.setAttribute("role", "status");
copyStatus.id = "copy-status";
document.body.appendChild(copyStatus);

document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var target = document.getElementById(button.getAttribute("data-copy"));
  if (!target || !navigator.clipboard) return;
  navigator.clipboard.writeText(target.value || target.textContent.trim()).then(function () {
    // Its first name: a second click within the 1.5 s read "Copied" and left it as the name.
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = "Copied";
    copyStatus.textContent = "Copied to the clipboard.";
    setTimeout(function () {
      button.textContent = label;
      copyStatus.textContent = "";
    }, 1500);
  });
});

// Disclosure menus (the organization switcher, a <details>): <details> opens and closes with its
// summary alone, so it stayed open over the page. Escape closes it and puts the focus back on its
// summary; a click, or the focus moving, outside it closes it too.
function closeDisclosure(menu, focusSummary) {
  menu.open = false;
  if (focusSummary) menu.querySelector("summary").focus();
}

document.addEventListener("keydown", function (event) {
  if (event.key !== "Escape") return;
  document.querySelectorAll("details[data-disclosure][open]").forEach(function (menu) {
    // The focus goes back to the summary when it was in the menu (or nowhere: Safari does not
    // focus a clicked summary), never away from a field elsewhere on the page.
    var focused = document.activeElement;
    closeDisclosure(menu, !focused || focused === document.body || menu.contains(focused));
    event.preventDefault();
  });
});

document.addEventListener("click", function (event) {
  document.querySelectorAll("details[data-disclosure][open]").forEach(function (menu) {
    if (!menu.contains(event.target)) closeDisclosure(menu, false);
  });
});

document.addEventListener("focusin", function (event) {
  document.querySelectorAll("details[data-disclosure][open]").forEach(function (menu) {
    if (!menu.contains(event.target)) closeDisclosure(menu, false);
  });
});

// "/" puts the cursor in the top bar's search for an event id, from anywhere on the page but a
// field (where "/" is typed) or with a modifier (the browser's own shortcuts).
document.addEventListener("keydown", function (event) {
  if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) return;
  var target = event.target;
  if (target.isContentEditable || (target.closest && target.closest("input, textarea, select"))) return;
  var field = document.getElementById("topbar-find");
  if (!field) return;
  event.preventDefault();
  field.focus();
  field.select();
});

// A section that a poll replaces in place (data-kept-in-place: the event page's deliveries, while
// one is about to change). htmx puts the focus back on the element of the same id in the new
// content; what the reader had opened (a response's <details>) is opened again, and a focus whose
// element is gone (a "Retry now" once the delivery succeeded) goes to the section, not to the top of
// the page. The page does not scroll: the browser keeps what was in view where it was.
var keptInPlace = null;

document.addEventListener("htmx:beforeSwap", function (event) {
  var section = event.detail.target;
  if (!event.detail.shouldSwap || !section || !section.hasAttribute("data-kept-in-place")) return;
  keptInPlace = {
    section: section,
    opened: Array.prototype.map.call(section.querySelectorAll("details[open][id]"), function (details) {
      return details.id;
    }),
    hadFocus: section.contains(document.activeElement),
  };
});

document.addEventListener("htmx:afterSwap", function (event) {
  var kept = keptInPlace;
  if (!kept || event.detail.target !== kept.section) return;
  keptInPlace = null;
  kept.opened.forEach(function (id) {
    var details = document.getElementById(id);
    if (details) details.open = true;
  });
  if (kept.hadFocus && !kept.section.contains(document.activeElement)) kept.section.focus({ preventScroll: true });
});
