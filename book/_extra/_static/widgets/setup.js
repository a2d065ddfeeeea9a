// ModularForge Book: glue between the vendored widget bundle and the book's
// pages. Written for this book (not vendored); loaded after require.js and
// before embed-amd.js, on pages that store widget state (see _config.yml).
(function () {
  "use strict";
  var script = document.currentScript;
  var src = script && script.src ? script.src : "";
  var dir = src.slice(0, src.lastIndexOf("/"));

  // embed-amd.js defines several AMD modules, and each finds its fonts (Font
  // Awesome) relative to its own module URL. Without this map RequireJS would
  // place those URLs beside the page (book/@jupyter-widgets/...), where no
  // fonts are; mapping every module into this folder makes their directory dir.
  if (dir && window.require && window.require.config) {
    var paths = { "@jupyter-widgets/html-manager/dist": dir };
    ["base", "base7", "controls", "controls7", "html-manager"].forEach(function (name) {
      paths["@jupyter-widgets/" + name] = dir + "/" + name;
    });
    window.require.config({ paths: paths });
  }

  // Widgets typeset their labels with the MathJax 2 API (MathJax.Hub.Queue),
  // while Sphinx loads MathJax 3, which has no Hub. Give MathJax 3 a Hub that
  // forwards to typesetPromise once MathJax has started (its script is
  // deferred, so it has run by DOMContentLoaded).
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.version || mj.version.charAt(0) !== "3") {
      return;
    }
    mj.Hub = {
      Queue: function (job) {
        var el = job && job.length > 2 ? job[2] : null;
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        ready
          .then(function () {
            return mj.typesetPromise ? mj.typesetPromise(el ? [el] : undefined) : null;
          })
          .catch(function (err) {
            console.warn("MathJax typeset of a widget label failed:", err);
          });
      },
    };
  });
})();
