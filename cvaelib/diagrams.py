"""Diagrams the chapters draw: graphical models (daft-pgm) and the hierarchy's and KL balancing's wiring (matplotlib).

Every figure has a white background, so that it reads the same in a light or a dark theme (JupyterLab, the site).
Solid arrows are the generative model p; dashed arrows the inference model q; a shaded node is observed.
"""

import daft
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

INFERENCE = {"linestyle": "--", "ec": "tab:blue", "fc": "tab:blue"}  # q's arrows
_CVAE_NODES = [("y", "$y$", -0.6, 1.6, True), ("z", "$z$", 0.3, 1, False), ("x", "$x$", 0, 0, True)]
_SOHN_NODES = [("x", "$x$", -0.6, 1.6, True), ("z", "$z$", 0.3, 1, False), ("y", "$y$", 0, 0, True)]
# Each panel: title, nodes (name, label, x, y, observed), edges, and whether they are q's (inference) or p's.
# Chapters 1-4: x is the image and y its label; chapter 5 (Sohn et al.): x is the input and y the output.
MODELS = {
    "vae": ("VAE: generation p(z) p(x|z)", [("z", "$z$", 0, 1, False), ("x", "$x$", 0, 0, True)], [("z", "x")], False),
    "vae_q": ("VAE: inference q(z|x)", [("z", "$z$", 0, 1, False), ("x", "$x$", 0, 0, True)], [("x", "z")], True),
    "cvae": ("CVAE: p(z|y) p(x|z,y)", _CVAE_NODES, [("y", "z"), ("y", "x"), ("z", "x")], False),
    "cvae_q": ("CVAE: inference q(z|x,y)", _CVAE_NODES, [("x", "z"), ("y", "z")], True),
    "sohn_cvae": (
        "CVAE: p(z|x) p(y|x,z), trained with q(z|x,y)",
        _SOHN_NODES,
        [("x", "z"), ("x", "y"), ("z", "y")],
        False,
    ),
    "sohn_q": ("CVAE and hybrid: q(z|x,y)", _SOHN_NODES, [("x", "z"), ("y", "z")], True),
    "gsnn": ("GSNN: z ~ p(z|x) in training too, no q", _SOHN_NODES, [("x", "z"), ("x", "y"), ("z", "y")], False),
}


def graphical_models(*names: str) -> Figure:
    """The graphical models of ``MODELS`` side by side, each in its plate over the N examples."""
    unknown = set(names) - set(MODELS)
    if not names or unknown:
        raise ValueError(f"name models to draw, from {sorted(MODELS)}; got {sorted(unknown) or 'none'}")
    width = 3.2
    pgm = daft.PGM(shape=(width * len(names), 3.1), origin=(-1.4, -0.7), node_unit=0.9)
    for i, name in enumerate(names):
        title, nodes, edges, inference = MODELS[name]
        dx = i * width
        for node, label, x, y, observed in nodes:
            pgm.add_node(f"{name}_{node}", label, x + dx, y, observed=observed)
        for a, b in edges:
            pgm.add_edge(f"{name}_{a}", f"{name}_{b}", plot_params=dict(INFERENCE) if inference else {})
        pgm.add_plate([dx - 1.1, -0.45, 1.9, 2.5], label="$N$", position="bottom right")
        pgm.add_text(dx - 1.2, 2.25, title, fontsize=7)
    ax = pgm.render(dpi=110)
    fig = ax.figure
    fig.patch.set_facecolor("white")
    fig.text(
        0.01, 0.01, "black: the generative model p;  blue, dashed: the inference model q;  shaded: observed", fontsize=7
    )
    return fig


def _box(ax, x, y, text, color, width=1.7, height=0.5):
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05", fc=color, ec="black", lw=0.8
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start, end, color="black", style="-", text=None):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, linestyle=style, lw=1))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, fontsize=7, color=color, ha="center")


def hierarchy(resolutions: tuple[int, ...] = (4, 8, 16)) -> Figure:
    """Chapter 4's top-down hierarchical CVAE: the encoder's bottom-up pass, the decoder's top-down pass, a latent
    group per resolution with its prior read from the groups above and its posterior as the prior plus an offset
    computed with the encoder's activation, and the label y added at every resolution."""
    fig, ax = plt.subplots(figsize=(8, 1.4 + 1.1 * len(resolutions)), facecolor="white")
    top = len(resolutions)
    _box(ax, 0, -0.9, "image x (32x32)", "0.9")
    _box(ax, 5.6, -0.9, "p(x | z, y): pixels", "0.9")
    _box(ax, 5.6, top + 0.1, "learned constant h0", "0.9")
    for level, r in enumerate(reversed(resolutions)):  # 16x16 at the bottom, the lowest resolution on top
        y = level + 0.1
        _box(ax, 0, y, f"encoder {r}x{r}", "#dbe9f6")
        _box(ax, 2.8, y, f"q(z|x,z<,y) = p + offset\nz at {r}x{r}", "#fde0c5", width=2.2, height=0.62)
        _box(ax, 5.6, y, f"prior p(z|z<,y) {r}x{r}", "#d9f0d3", width=2.0)
        _arrow(ax, (0, y - 0.6 if level else -0.65), (0, y - 0.25))  # bottom-up
        _arrow(ax, (5.6, y + 0.75), (5.6, y + 0.25))  # top-down, from the level above
        _arrow(ax, (0.85, y), (1.7, y), "tab:blue", "--")
        _arrow(ax, (4.6, y), (3.9, y), "black", "-")
        ax.text(6.7, y, "+ y", fontsize=9, color="tab:red", va="center")
        _arrow(ax, (6.9, y), (6.62, y), "tab:red")
    _arrow(ax, (5.6, 0.1 - 0.25), (5.6, -0.65))
    ax.text(
        2.8,
        -0.9,
        "the label y enters at every resolution (red);\nsampling runs the right column alone",
        fontsize=7,
        ha="center",
        va="center",
    )
    ax.set_xlim(-1.2, 7.3)
    ax.set_ylim(-1.3, top + 0.5)
    ax.axis("off")
    ax.set_title("A top-down hierarchical CVAE: bottom-up encoder (left), top-down decoder (right)", fontsize=9)
    return fig


def kl_balancing(alpha: float = 0.8) -> Figure:
    """Which gradient path trains which head under DreamerV2's KL balancing: the KL's value once, its gradient
    split into alpha KL(sg(q) || p), which trains the prior, and (1 - alpha) KL(q || sg(p)), the posterior."""
    fig, ax = plt.subplots(figsize=(7, 2.6), facecolor="white")
    _box(ax, 0, 1, "posterior head q(z|x,y)", "#fde0c5", width=2.3)
    _box(ax, 6, 1, "prior head p(z|y)", "#d9f0d3", width=2.0)
    _box(ax, 3, 1, "KL(q || p)\none value", "0.92", width=1.6, height=0.7)
    _arrow(ax, (2.2, 1.25), (1.2, 1.25), "tab:orange", "-", f"1-α = {1 - alpha:g}")
    _arrow(ax, (3.8, 1.25), (4.95, 1.25), "tab:green", "-", f"α = {alpha:g}")
    ax.text(
        3,
        0.2,
        f"gradient: {alpha:g} KL(sg(q) || p) trains the prior,  {1 - alpha:g} KL(q || sg(p)) the "
        "posterior\n(sg: stop-gradient; with a fixed N(0, I) prior only the second is left: β = 1 - α)",
        ha="center",
        fontsize=7.5,
    )
    ax.set_xlim(-1.4, 7.2)
    ax.set_ylim(-0.1, 1.8)
    ax.axis("off")
    ax.set_title("KL balancing: one value, two gradient paths", fontsize=9)
    return fig


def prior_hole() -> Figure:
    """Chapter 3's picture: the codes of one class (the aggregate posterior) and a diagonal Gaussian prior with
    the same mean and variances. Where the prior has mass and no code lies is its hole."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = rng.uniform(-2.2, 2.2, 600)
    codes = np.stack([t, 0.45 * t**2 - 1.0 + 0.18 * rng.standard_normal(600)], 1)  # a curved cloud of codes
    mean, std = codes.mean(0), codes.std(0)
    fig, ax = plt.subplots(figsize=(4.6, 3.6), facecolor="white")
    ax.scatter(*codes.T, s=3, color="tab:blue", label="codes of one class: q(z|y)")
    angle = np.linspace(0, 2 * np.pi, 200)
    for k in (1, 2):
        ax.plot(
            mean[0] + k * std[0] * np.cos(angle),
            mean[1] + k * std[1] * np.sin(angle),
            color="tab:red",
            lw=1,
            label="diagonal Gaussian prior: 1 and 2 sd" if k == 1 else None,
        )
    ax.annotate(
        "hole: prior mass,\nno codes",
        xy=(mean[0], mean[1] + 0.3),
        xytext=(-0.6, 1.9),
        fontsize=8,
        arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 0.8},
    )
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("A prior with the codes' mean and variances can still miss them", fontsize=9)
    ax.set_aspect("equal")
    return fig
