#!/usr/bin/env bash
# Vendor the JavaScript that renders ipywidgets in the built HTML book, so that
# the book works offline and never loads code from a CDN.
#
# Two npm packages are needed (myst-nb's default points at CDN copies of both):
#   - @jupyter-widgets/html-manager: dist/embed-amd.js, the AMD bundle that
#     finds the widget state stored in each page and renders the widgets. It
#     bundles @jupyter-widgets/base, controls and output, so core ipywidgets
#     need nothing else. Version 1.0.15 depends on @jupyter-widgets/controls
#     ^5.0.13 and base ^6.0.12, the same ranges as the JupyterLab manager that
#     ships with ipywidgets 8.1.9 (jupyterlab_widgets 3.0.17).
#   - requirejs: require.js, the AMD loader that embed-amd.js expects.
#
# The files land in book/_extra/_static/widgets/. _config.yml lists book/_extra
# in html_extra_path, so Sphinx copies them unchanged to
# _build/html/_static/widgets/. myst-nb's nb_ipywidgets_js names them as
# "widgets/require.js" and "widgets/embed-amd.js": Sphinx puts "_static/" in
# front of a script path and makes it relative to each page, so the links work
# from book/ subfolders and from file:// alike. Why not html_static_path:
# Jupyter Book adds every .js file found under html_static_path to every page
# once a root _static/ folder exists, and require.js on every page breaks
# other scripts; html_extra_path is never scanned that way. The widget
# scripts are only added to pages whose notebook stores widget state.
#
# MathJax 3 is vendored the same way, for pages with math (Sphinx loads it from
# a CDN by default): es5/tex-mml-chtml.js plus the files it loads on demand
# (CHTML woff-v2 fonts, TeX extensions, the context menu), keeping the es5/
# layout because MathJax finds them relative to its own URL. It lands in
# book/_extra/_static/mathjax/, named by `mathjax_path` in _config.yml.
# Left out: es5/sre (the speech engine, only for the menu's explorer option).
#
# Usage: bash scripts/vendor_widgets_js.sh   (needs npm and the npm registry)
# The vendored files are committed; run this only to change versions, and
# update the version numbers below, in _config.yml's comment and in
# book/_extra/_static/widgets/VERSIONS.txt (written by this script).
set -euo pipefail

HTML_MANAGER_VERSION=1.0.15
REQUIREJS_VERSION=2.3.8
MATHJAX_VERSION=3.2.2

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/book/_extra/_static/widgets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" >/dev/null
npm pack --silent "requirejs@${REQUIREJS_VERSION}" >/dev/null
npm pack --silent "mathjax@${MATHJAX_VERSION}" >/dev/null

mkdir -p hm rq mj
tar -xzf mathjax-"${MATHJAX_VERSION}".tgz -C mj
tar -xzf jupyter-widgets-html-manager-"${HTML_MANAGER_VERSION}".tgz -C hm
tar -xzf requirejs-"${REQUIREJS_VERSION}".tgz -C rq

mkdir -p "$dest"
cp hm/package/dist/embed-amd.js "$dest/embed-amd.js"
# webpack emits Font Awesome fonts beside the bundle; it resolves them relative
# to the script's URL. Browsers pick woff2 first, so only those are kept.
cp hm/package/dist/*.woff2 "$dest/"
# The npm tarball carries no LICENSE file: html-manager is BSD-3-Clause, under
# the ipywidgets monorepo licence, which the ipywidgets wheel installs. The
# notices of the libraries bundled into the file sit in embed.js.LICENSE.txt.
ipyw_license="$("${PYTHON:-$repo_root/.venv/bin/python}" -c \
  'import importlib.metadata as m; d = m.distribution("ipywidgets"); print([str(d.locate_file(f)) for f in d.files if f.name == "LICENSE"][0])')"
cp "$ipyw_license" "$dest/LICENSE.html-manager.txt"
cp hm/package/dist/embed.js.LICENSE.txt "$dest/THIRD-PARTY-NOTICES.html-manager.txt"
cp rq/package/require.js "$dest/require.js"
# require.js carries its MIT licence header in the file itself.

{
  echo "Vendored by scripts/vendor_widgets_js.sh from the npm registry."
  echo "@jupyter-widgets/html-manager ${HTML_MANAGER_VERSION}: embed-amd.js (BSD-3-Clause, LICENSE.html-manager.txt)"
  echo "  + Font Awesome woff2 fonts from the same dist/ folder; bundled notices: THIRD-PARTY-NOTICES.html-manager.txt"
  echo "requirejs ${REQUIREJS_VERSION}: require.js (MIT, licence header inside require.js)"
  echo
  echo "sha256:"
  (cd "$dest" && sha256sum embed-amd.js require.js ./*.woff2)
} > "$dest/VERSIONS.txt"

mj_dest="$repo_root/book/_extra/_static/mathjax"
rm -rf "$mj_dest"
mkdir -p "$mj_dest/output/chtml/fonts" "$mj_dest/input/tex"
cp mj/package/es5/tex-mml-chtml.js "$mj_dest/"
cp -r mj/package/es5/output/chtml/fonts/woff-v2 "$mj_dest/output/chtml/fonts/"
cp -r mj/package/es5/input/tex/extensions "$mj_dest/input/tex/"
cp -r mj/package/es5/ui "$mj_dest/"
cp mj/package/LICENSE "$mj_dest/LICENSE.txt"
echo "mathjax ${MATHJAX_VERSION} (Apache-2.0, LICENSE.txt): es5/ subset, vendored by scripts/vendor_widgets_js.sh" \
  > "$mj_dest/VERSION.txt"

ls -l "$dest"
du -sh "$dest" "$mj_dest"
