// ModularForge Book: glue between the vendored widget bundle and the book's
// pages. Written for this book (not vendored); loaded after require.js and
// before embed-amd.js, on pages that store widget state (see _config.yml).
(function () {
  "use strict";
  var script = document.currentScript;
  var src = script && script.src ? script.src : "";
  var dir = src.slice(0, src.lastIndexOf("/"));

  // embed-amd.js finds its fonts (Font Awesome) relative to the AMD URL of its
  // module "@jupyter-widgets/html-manager/dist/libembed-amd"; without this map,
  // RequireJS would place that URL beside the page, where no fonts are.
  if (dir && window.require && window.require.config) {
    window.require.config({
      paths: { "@jupyter-widgets/html-manager/dist": dir },
    });
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
