"""`build_model`: the model of any registered objective, freshly initialised."""

from __future__ import annotations

from flax import nnx

from ssl4sar_jax.models.config import ModelConfig, as_config


def build_model(
    config: ModelConfig | str | dict | None = None, *, seed: int = 0, objective: str = "segment"
) -> nnx.Module:
    """Builds the model of ``objective`` (an entry of `ssl4sar_jax.objectives`).

    Args:
        config: `ModelConfig`, variant name ("paper", "tiny"), dict of fields, or None (paper).
        seed: Seed of the parameter initialisation.
        objective: Registered objective name: "segment" (`SSL4SARSegmenter`), "opt_simmim"
            (`OptSimMIMModel`), "opt_translator" (`OptTranslatorModel`) or one added with
            `ssl4sar_jax.objectives.register_objective`.

    Returns:
        The NNX module with freshly initialised float32 parameters.

    Raises:
        ValueError: for an unknown objective (the message lists the registered ones).
    """
    # The registry sits above the model package (its entries name model classes and losses),
    # so it is imported when a model is built, not when the package is.
    from ssl4sar_jax import objectives

    entry = objectives.get_objective(objective)
    return entry.build(as_config(config), rngs=nnx.Rngs(params=seed))
