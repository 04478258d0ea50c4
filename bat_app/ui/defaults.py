"""The form's defaults for a number of uploaded photos: the preset's recipe (presets.json).

    >>> suggested_settings(5, "sd15")["steps"]
    500
    >>> suggested_settings(5, "shapes")["steps"] == recipe_for("shapes").train_settings(5)["steps"]
    True

The UI fills the folded "Advanced settings" with these whenever the number of photos changes;
the user may still change any of them before pressing Start. The numbers and why they are what
they are live in one place, ``bat_app/models/presets.json`` (see ``bat_app.models.recipe``).
"""

from __future__ import annotations

from ..models.recipe import recipe_for


def suggested_settings(n_images: int, preset: str | None = None) -> dict:
    """steps, rank, lr, resolution (0 = the model's native size), seed, k, m, aug_weight, and the
    recipe's other training settings (batch size, pivotal tuning) for ``n_images`` photos."""
    recipe = recipe_for(preset)
    return {**recipe.train_settings(n_images), **recipe.selection_settings(n_images),
            "resolution": 0, "seed": 0}
