"""The book's chapter helpers: one module per chapter that needs one, named after it.

The instruments a chapter uses for its figures and experiments, which a user of
the library never needs: `ch00_quickstart` (the whole idea in plain PyTorch, shown on
the quickstart's page), `ch00b_front_answer` (the front page's answer, read from
stored studies), `ch01_architecture` (drawing and counting the parts),
`ch03_interleaving` (watching the forward pass), `ch04_saving_demo` (the
document's way of saving, and a harmless pickle trap), `ch05_qa_experiments` and
`ch05_layout_study` (the Q&A put to the test), `ch07_*` (the fault catalogue),
`ch11_mixture_study` and `ch11_mixture_report` (does the mixture pay?), and
`notebook` (paragraphs with computed numbers, and listings of the package's own
source, that render in Jupyter Book, JupyterLab and Colab alike).

The top layer: it may import any other subpackage, and none imports it.
"""
