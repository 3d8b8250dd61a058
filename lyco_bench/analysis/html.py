"""The Jinja templates of the leaderboard page and the study report (``analysis/templates/``)."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"


def render_template(name: str, **context: object) -> str:
    """``templates/<name>`` rendered with ``context`` (autoescaped; an unknown name is an error)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )  # fmt: skip
    return env.get_template(name).render(**context)
