// The periodic task form of django-celery-beat's admin (its inline script, moved here for the
// Content-Security-Policy): the crontab's help says what the chosen schedule means.
(function () {
  var translation = document.querySelector(".field-crontab_translation");
  if (translation) translation.style.display = "none";
  var data = document.getElementById("readable-crontabs");
  var select = document.getElementById("id_crontab");
  var help = document.querySelector(".field-crontab .help");
  if (!data || !select || !help) return;
  var readable = JSON.parse(data.textContent);
  var note = document.createElement("span");
  help.appendChild(note);
  select.addEventListener("change", function () {
    note.textContent = "";
    var meaning = readable[select.value];
    if (meaning) note.append(document.createElement("br"), "Translation: " + meaning);
  });
})();
