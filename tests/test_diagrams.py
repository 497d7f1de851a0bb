"""Every chapter draws at least one diagram from cvaelib.diagrams, and each diagram draws."""

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from cvaelib import diagrams

CHAPTERS = sorted((Path(__file__).parent.parent / "chapters").glob("0[1-5]_*.md"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_shows_a_diagram_with_its_caption(chapter):
    text = chapter.read_text()
    assert "diagrams." in text and "*Diagram:" in text, chapter.name


@pytest.mark.parametrize(
    "draw",
    [
        lambda: diagrams.graphical_models(*diagrams.MODELS),
        diagrams.hierarchy,
        diagrams.kl_balancing,
        diagrams.prior_hole,
    ],
)
def test_each_diagram_draws_on_a_white_background(draw):
    fig = draw()
    assert fig.get_facecolor()[:3] == (1.0, 1.0, 1.0)  # readable in a dark theme too
    fig.canvas.draw()
    plt.close(fig)


def test_an_unknown_model_is_named():
    with pytest.raises(ValueError, match="nope"):
        diagrams.graphical_models("vae", "nope")
