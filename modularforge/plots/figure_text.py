"""How large a figure's text appears on the book's page.

The rendered column is 688 px wide and Jupyter Book scales a wider figure down
to fit, so a label's height on the page is its font size times the scale
factor: `points / 72 * 688 / width_in_inches`, where the width is the figure's
tight bounding box (the inline backend saves with `bbox_inches="tight"`).
The book's rule: every figure's text is at least about 9 px there.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text

#: Width of the book's content column in CSS pixels.
COLUMN_PX = 688
#: Smallest text height, in px at the column width, that the book accepts.
MIN_TEXT_PX = 9.0


def rendered_width_in(fig: Figure) -> float:
    """Width in inches of the image the inline backend saves (tight bounding box)."""
    renderer = fig.canvas.get_renderer()
    return fig.get_tightbbox(renderer).width


def smallest_text_px(fig: Figure, column_px: int = COLUMN_PX) -> float:
    """Height in px of the figure's smallest visible text once scaled to `column_px`.

    An image narrower than the column is shown at its own size (dpi 100 in the
    browser's CSS pixels), so the scale never exceeds the figure's own.
    """
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and t.figure]
    if not texts:
        raise ValueError("the figure has no visible text to measure")
    width_px = rendered_width_in(fig) * fig.dpi
    scale = min(1.0, column_px / width_px)
    return min(t.get_fontsize() / 72 * fig.dpi * scale for t in texts)
