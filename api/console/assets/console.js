// Live tail of the event explorer: reads the page's Server-Sent Events
// stream and lists each event as it arrives. The console's only script.
"use strict";
(function () {
  var list = document.getElementById("tail");
  var status = document.getElementById("tail-status");
  if (!list || !window.EventSource) {
    return;
  }
  var max = 500;
  function say(text) {
    status.textContent = text;
  }
  function add(ev) {
    var e = JSON.parse(ev.data);
    var li = document.createElement("li");
    li.className = "card";
    var head = document.createElement("p");
    var type = document.createElement("strong");
    type.textContent = e.type;
    var stream = document.createElement("code");
    stream.textContent = e.streamType + "/" + e.streamId;
    head.append(type, " ", stream, " v" + e.streamVersion);
    var meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = e.occurredAt + " · cursor " + e.cursor + " · id " + e.eventId;
    li.append(head, meta);
    list.prepend(li);
    while (list.children.length > max) {
      list.lastElementChild.remove();
    }
  }
  var source = new EventSource(list.dataset.stream);
  source.addEventListener("open", function () {
    say("Following the log. New events appear at the top.");
  });
  source.addEventListener("error", function () {
    say("Reconnecting…");
  });
  source.addEventListener("mana-event", add);
})();
