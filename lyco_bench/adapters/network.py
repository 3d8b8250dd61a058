"""The set of adapter modules injected into one UNet + text encoder: training, saving, resuming.

:class:`AdapterNetwork` owns the adapter modules (registered under their file keys, so
``net.parameters()`` are exactly the trainable ones) and remembers where each replaced layer
lived, so :meth:`AdapterNetwork.remove` can put the originals back.

Norm layers (the ``full`` preset with ``train_norm``) are :class:`lyco_bench.adapters.norm.NormAdapter`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from lyco_bench import __version__
from lyco_bench.adapters.base import ALGORITHMS, AdapterModule
from lyco_bench.adapters.fileformat import load_adapter, save_tensors
from lyco_bench.errors import BadInput


class AdapterNetwork(nn.Module):
    """Adapter modules injected into a UNet (+ text encoder), keyed by their file keys."""

    def __init__(
        self, *, targets: list, modules: dict[str, nn.Module], spec: Any, key_map: Any = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.key_map = key_map
        """The denoiser family's KeyMap (lyco_bench.families): files in its layout when it has one."""
        self.adapters = nn.ModuleDict(modules)
        self._targets = {t.key: t for t in targets}
        self._applied = False
        self._apply_to_models()

    # --- injection --------------------------------------------------------------------
    def _apply_to_models(self) -> None:
        for key, target in self._targets.items():
            setattr(target.parent, target.attr, self.adapters[key])
        self.adapters.requires_grad_(True)
        self._applied = True

    def remove(self) -> None:
        """Put the original layers back (the adapter modules keep their weights)."""
        if not self._applied:
            return
        for target in self._targets.values():
            setattr(target.parent, target.attr, target.layer)
        self._applied = False

    def _apply(self, fn, recurse: bool = True):
        # The frozen base layers are not submodules of the adapters; move/cast them together so
        # ``net.to(device)`` keeps base and adapter on one device.
        for target in self._targets.values():
            target.layer._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @property
    def keys(self) -> list[str]:
        return list(self.adapters.keys())

    def is_text_encoder(self, key: str) -> bool:
        return self._targets[key].text_encoder

    # --- training ---------------------------------------------------------------------
    def before_step(self, step: int, *, seed: int) -> None:
        """Let modules prepare a training step (``AdapterModule.before_step``), in module order,
        from one generator seeded by (seed, step): the same draws when a run resumes."""
        hooks = [
            m
            for m in self.adapters.values()
            if getattr(type(m), "before_step", AdapterModule.before_step) is not AdapterModule.before_step
        ]  # fmt: skip  (normalisation layers trained in full have no hook)
        if not hooks:
            return
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
        for module in hooks:
            module.before_step(generator)

    def caption(self, text: str, concept: Any) -> str:
        """Training captions as the adapters need them: unchanged (a model-level method may
        rewrite them, lyco_bench.methods)."""
        return text

    def set_multiplier(self, multiplier: float) -> None:
        """λ in forward(x) = base(x) + λ·ΔW·x for every module."""
        for module in self.adapters.values():
            module.multiplier = float(multiplier)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every trainable adapter parameter, UNet modules first."""
        unet, te = self._split_parameters()
        return unet + te

    def _split_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        unet: list[nn.Parameter] = []
        te: list[nn.Parameter] = []
        for key, module in self.adapters.items():
            params = [p for p in module.parameters() if p.requires_grad]
            (te if self.is_text_encoder(key) else unet).extend(params)
        return unet, te

    def parameter_groups(self, *, lr: float, text_encoder_lr: float | None = None) -> list[dict]:
        """Optimizer groups: UNet adapters at ``lr``, text-encoder adapters at ``text_encoder_lr``
        (None → ``lr``, as in the paper). Empty groups are left out."""
        unet, te = self._split_parameters()
        groups = []
        if unet:
            groups.append({"params": unet, "lr": lr, "name": "unet"})
        if te:
            groups.append(
                {"params": te, "lr": lr if text_encoder_lr is None else text_encoder_lr, "name": "te"}
            )
        return groups

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # --- files --------------------------------------------------------------------------
    def state_dict_for_file(self) -> dict[str, torch.Tensor]:
        """``<key>.<suffix>`` → tensor (detached, CPU, contiguous), the kohya/LyCORIS layout."""
        out: dict[str, torch.Tensor] = {}
        for key, module in self.adapters.items():
            for suffix, tensor in module.file_tensors().items():
                out[f"{key}.{suffix}"] = tensor.detach().to("cpu").contiguous()
        return out

    def file_metadata(self, metadata: dict[str, Any] | None = None) -> dict[str, str]:
        """Metadata strings: lyco-bench's own keys plus the hints kohya/LyCORIS tools read."""
        spec = self.spec
        settings = spec.model_dump(mode="json")
        algo = spec.algo if spec.conv_algo in (None, spec.algo) else f"{spec.algo}+{spec.conv_algo}"
        cls = ALGORITHMS[spec.algo]
        # The kohya/LyCORIS hints other tools read: LyCORIS's name for the algorithm (its first
        # alias), the rank and α, and the conv settings.
        options, conv = spec.options, spec.conv_options
        network_args = {"algo": (cls.aliases or (spec.algo,))[0], "preset": spec.preset}
        network_args.update({f"conv_{k}": str(conv[k]) for k in ("dim", "alpha") if k in conv})
        network_args.update({k: str(v) for k, v in options.items() if k not in ("dim", "alpha")})
        meta = {
            "lyco_bench.algo": algo,
            "lyco_bench.settings": json.dumps(settings, sort_keys=True),
            "lyco_bench.version": __version__,
            "lyco_bench.modules": str(len(self.adapters)),
            "ss_network_module": "lycoris.kohya",
            "ss_network_dim": str(options.get("dim", "")),
            "ss_network_alpha": str(options.get("alpha", "")),
            "ss_network_args": json.dumps(network_args, sort_keys=True),
        }
        for name, value in (metadata or {}).items():
            key = name if "." in name or name.startswith("ss_") else f"lyco_bench.{name}"
            meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if "lyco_bench.base_model" in meta:
            meta.setdefault("ss_sd_model_name", meta["lyco_bench.base_model"])
        return meta

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write the adapter as safetensors (atomic). ``metadata`` keys without a dot are stored
        as ``lyco_bench.<key>`` (e.g. ``base_model``, ``epoch``); values not str become JSON."""

        save_tensors(path, self.file_tensors(), self.file_metadata(metadata))

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`state_dict_for_file` in the denoiser family's file layout (FLUX: kohya's fused
        BFL layers; other families: the same tensors)."""
        tensors = self.state_dict_for_file()
        to_file = getattr(self.key_map, "to_file", None)
        if to_file is None:
            return tensors
        return to_file(tensors, {key: type(module) for key, module in self.adapters.items()})

    def load_weights(self, path: str | os.PathLike) -> None:
        """Restore trained factors from a file this network wrote (resume): the keys and shapes
        must match exactly; parameters are updated in place (optimizer state stays attached)."""

        from lyco_bench.adapters.fileformat import in_layer_keys

        file = in_layer_keys(load_adapter(path), self.key_map)
        expected = {k: tuple(v.shape) for k, v in self.state_dict_for_file().items()}
        got = {k: tuple(v.shape) for k, v in file.tensors.items()}
        for key in sorted(set(expected) | set(got)):
            if key not in got:
                raise BadInput(f"{path}: key {key} missing (the file does not match this network)")
            if key not in expected:
                raise BadInput(f"{path}: unexpected key {key} (the file does not match this network)")
            if expected[key] != got[key]:
                raise BadInput(f"{path}: {key} has shape {got[key]}, the network needs {expected[key]}")
        for key, module in self.adapters.items():
            tensors = file.module_tensors(key)
            if file.modules[key] is not type(module):
                raise BadInput(f"{path}: {key} is {file.modules[key].algo}, the network has {module.algo}")
            rebuilt = type(module).from_file_tensors(module.base, tensors, name=key)
            rebuilt_state = rebuilt.state_dict()
            with torch.no_grad():
                for name, value in module.state_dict(keep_vars=True).items():
                    value.copy_(rebuilt_state[name].to(value.device, value.dtype))
            if "alpha" in tensors:
                self._check_alpha(path, key, module, tensors["alpha"])

    @staticmethod
    def _check_alpha(path, key: str, module: nn.Module, alpha: torch.Tensor) -> None:
        own = module.file_tensors().get("alpha") if isinstance(module, AdapterModule) else None
        if own is not None and float(own) != float(alpha):
            raise BadInput(f"{path}: {key}.alpha is {float(alpha)}, the network uses {float(own)}")

    def extra_repr(self) -> str:
        return f"modules={len(self.adapters)}, trainable={self.num_trainable()}"
