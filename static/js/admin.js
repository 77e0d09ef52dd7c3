// Copy buttons (ingest URLs, new secrets): the value is in data-copy, never fetched again.
document.addEventListener("click", function (event) {
  const button = event.target.closest(".hookline-copy");
  if (!button) return;
  navigator.clipboard.writeText(button.dataset.copy).then(function () { button.textContent = "Copied"; });
});
