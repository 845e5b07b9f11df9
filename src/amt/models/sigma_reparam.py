"""sigma-reparameterised linear layers (Zhai et al. 2023, "Stabilizing Transformer Training by
Preventing Attention Entropy Collapse").

W_hat = (gamma / sigma(W)) W, where sigma(W) is the spectral norm estimated by power iteration
(one step per training forward, persistent u / v buffers) and gamma is a learnable scalar
initialised to sigma(W) so that the initial function is unchanged.

The gain is stored in units of 1 / GAIN_SCALE: the `gamma` parameter holds gamma / GAIN_SCALE
(`gain()` returns gamma). Adam moves a parameter by about its learning rate per step whatever the
gradient's size, so an O(1) gain stored as is would need ~1/lr steps to double, while the weight
entries (O(1/sqrt(fan_in))) turn in a few dozen: the layer could point its weights anywhere but
hardly scale them, and a head learned to tell images apart only after hundreds of steps. Stored
GAIN_SCALE times smaller, the gain changes at about the relative rate of the weights. The forward has no
data-dependent Python, so it traces and exports (in eval mode the buffers are constants).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

GAIN_SCALE = 32.0  # gamma = GAIN_SCALE * the `gamma` parameter; see the module docstring
INIT_POWER_ITERATIONS = 200  # at most; stops earlier once the estimate has settled
EXACT_INIT_MAX_DIM = 512
_INIT = {"enabled": True}


def _float32_only(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off where it is on; otherwise no context at all (these layers run a few small
    ops per forward, and entering an autocast context costs as much as one of them)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def no_sigma_init() -> Iterator[None]:
    """Skip the power-iteration warm-up of new layers (their u, v, gamma are about to be loaded)."""
    previous = _INIT["enabled"]
    _INIT["enabled"] = False
    try:
        yield
    finally:
        _INIT["enabled"] = previous


class SigmaReparamLinear(nn.Module):
    """Drop-in replacement for `nn.Linear` with sigma reparameterisation.

    Parameters keep nn.Linear's names (`weight` (out, in), `bias` (out,)) plus `gamma` (scalar,
    the gain / GAIN_SCALE); buffers `u` (out,) and `v` (in,) hold the power-iteration state.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self._adopt(nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SigmaReparamLinear:
        """Wrap an existing layer, taking over its parameters (and hence its function)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._adopt(linear)
        return layer

    def _adopt(self, linear: nn.Linear) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.gamma = nn.Parameter(torch.ones((), **factory))
        self.register_buffer("u", torch.empty(self.out_features, **factory))
        self.register_buffer("v", torch.empty(self.in_features, **factory))
        self.reset_sigma()

    @torch.no_grad()
    def reset_sigma(self, iterations: int = INIT_POWER_ITERATIONS) -> None:
        """Initialise u, v at the top singular vectors and set gamma to the estimate, so the layer
        computes what the plain linear layer did. Small layers are solved exactly (one eigh call
        beats hundreds of power steps on randomly initialised weights, whose spectral gap is
        small); large ones power-iterate until the estimate settles. Skipped on the meta device;
        inside `no_sigma_init()` only a valid starting point is set."""
        if self.weight.is_meta:
            return
        w = self.weight.detach().float()
        if _INIT["enabled"] and min(w.shape) <= EXACT_INIT_MAX_DIM:
            # top eigenvector of the smaller Gram matrix (float64), the other side by one product
            w64 = w.double()
            if w.shape[0] <= w.shape[1]:
                u = torch.linalg.eigh(w64 @ w64.T).eigenvectors[:, -1]
                v = F.normalize(w64.T @ u, dim=0)
            else:
                v = torch.linalg.eigh(w64.T @ w64).eigenvectors[:, -1]
                u = F.normalize(w64 @ v, dim=0)
            self.u.copy_(u)
            self.v.copy_(v)
        else:
            self.v.copy_(F.normalize(torch.ones_like(self.v), dim=0))
            self.u.copy_(F.normalize(self.weight @ self.v, dim=0))
            previous = self.sigma()
            for i in range(1, iterations + 1 if _INIT["enabled"] else 1):
                self.power_iteration()
                if i % 10 == 0:
                    current = self.sigma()
                    if abs(current - previous) <= 1e-5 * abs(current):
                        break
                    previous = current
        self.gamma.copy_(self.sigma() / GAIN_SCALE)

    @torch.no_grad()
    def power_iteration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of power iteration on W: updates the u, v buffers in place and returns fresh
        copies (autograd saves those, so a later step cannot invalidate a pending backward)."""
        w = self.weight.detach().to(self.u.dtype)
        with _float32_only(w.device.type):  # the estimate stays in float32
            v = F.normalize(torch.mv(w.t(), self.u), dim=0, eps=1e-12)
            u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
        self.v.copy_(v)
        self.u.copy_(u)
        return u, v

    def sigma(self, u: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """Spectral-norm estimate u^T W v (scalar, differentiable in W); defaults to the buffers."""
        u = self.u if u is None else u
        v = self.v if v is None else v
        w = self.weight
        with _float32_only(w.device.type):
            return torch.dot(u.to(w.dtype), torch.mv(w, v.to(w.dtype)))

    def gain(self) -> torch.Tensor:
        """gamma, the spectral norm of W_hat (scalar)."""
        return self.gamma * GAIN_SCALE

    def effective_weight(self, u: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """W_hat = gamma / sigma * W, (out, in)."""
        return self.weight * (self.gain() / self.sigma(u, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.power_iteration() if self.training else (self.u, self.v)
        return F.linear(x, self.effective_weight(u, v), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def apply_sigma_reparam(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace every `nn.Linear` inside `module` (recursively) by a `SigmaReparamLinear`.

    Norms and embeddings are untouched; direct children named in `skip` are left alone.
    Returns the number of layers replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if name in skip:
            continue
        if type(child) is nn.Linear:
            setattr(module, name, SigmaReparamLinear.from_linear(child))
            count += 1
        else:
            count += apply_sigma_reparam(child)
    return count


@torch.no_grad()
def fold_sigma_reparam(module: nn.Module) -> int:
    """For inference: replace every `SigmaReparamLinear` by a plain `nn.Linear` holding the
    current W_hat (same function in eval mode, three fewer kernels per layer and per forward).
    The folded model no longer trains the reparameterisation. Returns the number folded."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, SigmaReparamLinear):
            w = child.weight
            linear = nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, device=w.device, dtype=w.dtype
            )
            linear.weight.copy_(child.effective_weight())
            if child.bias is not None:
                linear.bias.copy_(child.bias)
            linear.train(child.training)
            setattr(module, name, linear)
            count += 1
        else:
            count += fold_sigma_reparam(child)
    return count
