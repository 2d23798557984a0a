// execq console: refresh the page's live sections in place, every data-refresh-s seconds.
// The server renders everything; this only asks for the same page again and swaps in the
// elements marked data-live (matched by id). Without JavaScript the page still works:
// reload it by hand.
(function () {
  "use strict";
  var body = document.body;

  // A second click on a submit button sends nothing more (the first one is on its way).
  // Disabled after the submission has taken the clicked button's name and value.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    window.setTimeout(function () {
      form.querySelectorAll("button[type=submit]").forEach(function (button) {
        button.disabled = true;
      });
    }, 0);
  });
  // A page brought back by the browser's Back button is usable again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      document.querySelectorAll("button[type=submit]").forEach(function (button) {
        button.disabled = false;
      });
    }
  });

  if (!body.hasAttribute("data-live-page")) {
    return;
  }
  var everyMs = Math.max(500, Number(body.getAttribute("data-refresh-s") || 5) * 1000);
  var state = document.getElementById("live-state");
  var busy = false;

  function show(text, failing) {
    if (state) {
      state.textContent = text;
      state.className = failing ? "bad" : "";
    }
  }

  function swap(fresh) {
    document.querySelectorAll("[data-live]").forEach(function (current) {
      if (!current.id) {
        return;
      }
      var replacement = fresh.getElementById(current.id);
      // Never pull a form from under the person using it.
      if (replacement && !current.contains(document.activeElement)) {
        current.replaceWith(document.importNode(replacement, true));
      }
    });
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-Console-Live": "1" },
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual",
    })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/console/login");
          return null;
        }
        if (!response.ok) {
          show("not refreshed: the server answered " + response.status, true);
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html === null) {
          return;
        }
        swap(new DOMParser().parseFromString(html, "text/html"));
        show("live, every " + everyMs / 1000 + " s", false);
      })
      .catch(function () {
        show("not refreshed: the console is unreachable", true);
      })
      .finally(function () {
        busy = false;
      });
  }

  window.setInterval(refresh, everyMs);
  document.addEventListener("visibilitychange", refresh);
})();
