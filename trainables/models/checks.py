"""What a trial config asks of its model, checked before any trial (``TrialConfig.check`` calls ``check_model``): the
name resolves (the closest names where it does not), a registration reaches the workers, ``model_args`` fit the
constructor, ``cifar_stem`` has a recipe, and ``pretrained`` weights are at hand. Problems are ``ConfigError``s."""

from __future__ import annotations

from trainables.errors import ConfigError
from trainables.models import external
from trainables.models.registry import build_model, model_arguments, model_source, registered_in_main

_BUILT: dict[tuple, str | None] = {}  # (model, model_args, cifar_stem) → the error building it gave, or None


def check_model(cfg) -> None:
    try:
        source = model_source(cfg.model)
    except ValueError as err:
        raise ConfigError("model", str(err)) from None
    if registered_in_main(cfg.model):
        raise ConfigError(
            "model",
            f"{cfg.model!r} is registered with register_model in the driver's __main__ (a "
            "notebook or script), which the Ray workers never run, so every trial would fail "
            "on it: move the registration into a module the workers can import, or give "
            "model: package.module:factory (shipped with runtime_env on a cluster)",
        )
    if cfg.pretrained_file and not cfg.pretrained:
        raise ConfigError("pretrained_file", "is set but pretrained is false; set pretrained: true to load it")
    if cfg.pretrained:
        try:
            external.weights_file(cfg.model, cfg.pretrained_file)
        except ValueError as err:
            key = "pretrained_file" if cfg.pretrained_file else "pretrained"
            raise ConfigError(key, str(err).removeprefix(f"{key}: ")) from None
    if source == "project":
        unknown = sorted(set(cfg.model_args) - set(model_arguments(cfg.model)) - {"cifar_stem", "width"})
        if unknown:
            raise ConfigError(
                f"model_args.{unknown[0]}",
                f"model {cfg.model!r} takes no argument {unknown[0]!r}; its "
                f"arguments: {', '.join(model_arguments(cfg.model))}",
            )
        return
    error = _build_error(cfg.model, cfg.model_args, cfg.cifar_stem, cfg.image_size)
    if error:
        key = next((k for k in ("cifar_stem", "image_size") if error.startswith(k)), None)
        key = key or ("model_args" if cfg.model_args else "model")
        raise ConfigError(key, error.removeprefix(f"{key}: "))


def _build_error(name: str, model_args: dict, cifar_stem: bool, image_size: int) -> str | None:
    """Why building the model, or its forward on the trial's image size, fails (on the meta device: no memory, no
    weights), or None; once per process."""
    import torch

    from trainables.sites import trace_sites

    key = (name, repr(sorted(model_args.items())), cifar_stem, image_size)
    if key not in _BUILT:
        _BUILT[key] = None
        try:
            with torch.device("meta"):
                model = build_model(name, num_classes=10, in_chans=3, cifar_stem=cifar_stem, model_args=model_args)
        except ValueError as err:
            _BUILT[key] = str(err)
            return _BUILT[key]
        except (RuntimeError, NotImplementedError):  # a constructor the meta device cannot run: the trial builds it
            return None
        try:  # a network built for one input size (a ViT's patch grid) fails every trial at another
            try:
                trace_sites(model, (3, image_size, image_size))
            except ValueError:  # a forward that reads values (`if x.sum() > 0`) cannot run on meta: built for real
                real = build_model(name, num_classes=10, in_chans=3, cifar_stem=cifar_stem, model_args=model_args)
                trace_sites(real, (3, image_size, image_size))
        except ValueError as err:
            reason = str(err).split(f"tried {(3, image_size, image_size)}: ", 1)[-1].rstrip(".")
            _BUILT[key] = (
                f"image_size: model {name!r} does not run on {image_size}×{image_size} images ({reason}); give an "
                "image_size it takes, or the size in model_args (timm: img_size)"
            )
    return _BUILT[key]
