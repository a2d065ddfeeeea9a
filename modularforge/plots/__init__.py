"""Charts for the measurement chapters, drawn from `measure`'s results.

`memory_plots` (chapters 2 and 6b), `peak_plots` (chapter 6b), `bench_plots` and
`roofline_plots` (chapter 6), `figure_text` (how large a figure's text renders).

Depends on `measure`, `lean` and `model`. Nothing but the book imports it.
"""
