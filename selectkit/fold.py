"""A BatchNorm-folded view of a model for selection forwards.

A selection forward in eval mode (``selection_mode: eval``, the default) normalises with
BatchNorm's running statistics, which is an affine map per channel: folded into the
convolution before it, the BatchNorm disappears from the forward (one pass over the
activations fewer per BatchNorm). The result is the same function up to float rounding.

``FoldedView`` traces the model once with ``torch.fx`` (in eval mode, so eval-only branches are
what it records) and replaces each convolution whose only use is a BatchNorm with a folded
convolution. Every other module of the view *is* the live model's (shared, not copied), and
the folded convolutions are recomputed from the live convolution and BatchNorm before every
forward (``refresh``: a few small tensor operations), so the view never lags the model being
trained. Models that fx cannot trace, or without a convolution followed by a BatchNorm, have
no view (``FoldedView.build`` says why). A convolution or BatchNorm with hooks or
parametrizations (weight norm, spectral norm, ...) is left unfolded: its forward is more than
the affine map folded here.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def bare(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel (``module``) or torch.compile (``_orig_mod``)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else None)
        if inner is None:
            return model
        model = inner


class FoldedView:
    """The traced, folded module (``module``) and the (folded, conv, bn) triples it refreshes."""

    def __init__(self, module: torch.fx.GraphModule, pairs: List[Tuple[nn.Module, nn.Module, nn.Module]],
                 net: nn.Module):
        self.module, self.pairs, self.net = module, pairs, net

    @classmethod
    def build(cls, model: nn.Module) -> Tuple[Optional["FoldedView"], str]:
        """``(view, "")``, or ``(None, why not)`` where the model cannot be folded."""
        net = bare(model)
        was_training = net.training
        net.eval()  # record the eval-mode forward: the only one a folded view may stand for
        try:
            gm = torch.fx.symbolic_trace(net)
        except Exception as e:  # fx refuses data-dependent control flow and more: run live
            return None, f"torch.fx cannot trace {type(net).__name__} ({type(e).__name__}: {str(e)[:120]})"
        finally:
            net.train(was_training)
        modules = dict(gm.named_modules())
        pairs = []
        for node in list(gm.graph.nodes):
            bn = modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
                continue
            src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
                continue
            conv = modules.get(src.target)
            if not any(type(conv) is c and type(bn) is b for c, b in _PAIRS) or conv.padding_mode != "zeros":
                continue
            if _hooked(conv) or _hooked(bn):
                continue
            # skip_init: built on the meta device, so the global RNG is not consumed
            folded = nn.utils.skip_init(type(conv), conv.in_channels, conv.out_channels, conv.kernel_size,
                                        stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                                        groups=conv.groups, bias=True, device=conv.weight.device,
                                        dtype=conv.weight.dtype).requires_grad_(False)
            with torch.no_grad():  # the live weight's memory format (channels_last stays so)
                folded.weight = nn.Parameter(torch.empty_like(conv.weight), requires_grad=False)
            name = f"selectkit_folded_{len(pairs)}"
            gm.add_submodule(name, folded)
            src.target = name
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            pairs.append((folded, conv, bn))
        if not pairs:
            return None, (f"{type(net).__name__} has no convolution followed by a BatchNorm to fold "
                          f"(none with hooks or parametrizations is folded)")
        gm.graph.lint()
        gm.recompile()
        view = cls(gm, pairs, net)
        view.refresh()
        return view, ""

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the folded convolutions from the live ones and their BatchNorms.

        Every call, unconditionally: version counters cannot tell whether they moved (a
        BatchNorm's running statistics and a fused optimizer's steps do not bump them). Three
        small operations per pair, written into the folded tensors in place."""
        for folded, conv, bn in self.pairs:
            # y = (conv(x) + b - mean) * gamma / sqrt(var + eps) + beta, per output channel
            scale = (bn.running_var + bn.eps).rsqrt_()
            if bn.weight is not None:
                scale.mul_(bn.weight)
            torch.mul(conv.weight, scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)), out=folded.weight)
            mean = bn.running_mean if conv.bias is None else bn.running_mean - conv.bias
            if bn.bias is None:
                torch.mul(mean, scale, out=folded.bias).neg_()
            else:
                torch.addcmul(bn.bias, mean, scale, value=-1, out=folded.bias)

    def __call__(self, *args, **kwargs):
        """The live model's eval-mode forward, folded (the model is put in eval mode for the
        call when it is not: unfolded BatchNorms must use their running statistics too)."""
        self.refresh()
        if not self.net.training:
            return self.module(*args, **kwargs)
        self.net.eval()
        try:
            return self.module(*args, **kwargs)
        finally:
            self.net.train()


def _hooked(m: nn.Module) -> bool:
    """Hooks or parametrizations change what the module computes: leave it unfolded."""
    return bool(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "weight_orig") or hasattr(m, "weight_g")
                or nn.utils.parametrize.is_parametrized(m))


def check_foldable(model: nn.Module, stack) -> None:
    """``selection_fold: true`` for a model that cannot be folded fails here, before any work.

    Raises:
        ConfigError: naming the method's key, why the model does not fold and the fix.
    """
    from selectkit.validation import ConfigError

    for method, cfg in stack:
        sel = method.selection(cfg)
        if sel is not None and sel.get("fold") is True:
            view, why = FoldedView.build(model)
            if view is None:
                raise ConfigError(f"train.methods.{method.name}.selection_fold: true, but {why}: set it to auto "
                                  f"(folds where the model can be folded, else runs it live) or false")
