"""Vector quantiser with straight-through gradients, usage tracking and dead-code re-init.

Same parameters and loss as diffusers' ``VectorQuantizer`` (``legacy=False``) that the official
tokenizer uses: one ``embedding`` table, nearest code by L2 distance, loss
``beta * ||sg[e] - z||^2 + ||e - sg[z]||^2``. Added here: codebook usage statistics and
re-initialisation of codes that no input has picked for ``dead_code_steps`` training batches
(a common cure for codebook collapse that the official lacks). The usage counters are
non-persistent buffers, so the state-dict keys stay those of the official checkpoints.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# Relative scale of the noise added to re-initialised codes so that two codes revived from
# the same encoder output do not stay identical.
_REINIT_NOISE = 1e-3


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, beta: float = 1.0,
                 dead_code_reset: bool = True, dead_code_steps: int = 1000):
        super().__init__()
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.dead_code_reset, self.dead_code_steps = dead_code_reset, dead_code_steps
        self.embedding = nn.Embedding(num_codes, dim)
        # diffusers' VectorQuantizer initialisation
        self.embedding.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)
        # training steps since each code was last chosen (or re-initialised)
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long), persistent=False)
        # re-initialised and not chosen since: not counted as used
        self.register_buffer("revived", torch.zeros(num_codes, dtype=torch.bool), persistent=False)

    def usage_state(self) -> dict[str, Tensor]:
        """The usage counters, for training checkpoints: they are non-persistent buffers (the
        state-dict keys stay the official ones) but decide which codes are re-initialised."""
        return {"steps_unused": self.steps_unused.clone(), "revived": self.revived.clone()}

    def load_usage_state(self, state: dict[str, Tensor]) -> None:
        self.steps_unused.copy_(state["steps_unused"])
        self.revived.copy_(state["revived"])

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [...] -> vectors [..., dim]."""
        return self.embedding(codes)

    def nearest(self, z: Tensor) -> Tensor:
        """z [N, dim] -> codes [N], in float32 whatever the autocast state."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            e = self.embedding.weight.float()
            dist2 = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(1)[None]  # [N, K]
            return dist2.argmin(1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """z [N, dim] -> (z_q [N, dim] straight-through, loss, codes [N], stats)."""
        z = z.float()
        codes = self.nearest(z.detach())
        e = self.embedding(codes)  # [N, dim]
        loss = self.beta * F.mse_loss(z, e.detach()) + F.mse_loss(e, z.detach())
        z_q = z + (e - z).detach()
        if self.training:
            stats = self._usage(codes, z.detach())
        else:
            stats = self._batch_stats(codes, sync=False)
            stats.pop("counts")
        return z_q, loss, codes, stats

    # ----- codebook health -----
    def _batch_stats(self, codes: Tensor, sync: bool) -> dict[str, Tensor]:
        """Perplexity and used fraction of this batch; ``sync`` sums the counts over ranks
        (training only: every rank runs it then, while evaluation may run on one rank)."""
        counts = torch.bincount(codes, minlength=self.num_codes).float()
        if sync and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        p = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())
        return {"perplexity": perplexity, "batch_codes_used": (counts > 0).float().mean(), "counts": counts}

    @torch.no_grad()
    def _usage(self, codes: Tensor, z: Tensor) -> dict[str, Tensor]:
        stats = self._batch_stats(codes, sync=True)
        used = stats.pop("counts") > 0
        # A diverged batch (its loss is skipped) leaves no trace: codes revived from non-finite
        # encoder outputs would be NaN and attract every input from then on. Decided on the
        # device: no host sync beyond the one re-initialisation already needs.
        finite = torch.isfinite(z).all()
        if dist.is_available() and dist.is_initialized():  # every rank decides alike
            vote = finite.float()
            dist.all_reduce(vote, op=dist.ReduceOp.MIN)
            finite = vote > 0
        aged = torch.where(used, torch.zeros_like(self.steps_unused), self.steps_unused + 1)
        self.steps_unused.copy_(torch.where(finite, aged, self.steps_unused))
        self.revived &= ~(used & finite)
        # fraction of the codebook chosen at least once within the last dead_code_steps steps
        stats["codes_used"] = ((self.steps_unused < self.dead_code_steps) & ~self.revived).float().mean()
        stats["dead_codes_reset"] = torch.zeros((), device=codes.device)
        if self.dead_code_reset:
            dead = ((self.steps_unused >= self.dead_code_steps) & finite).nonzero().squeeze(1)
            if dead.numel() > 0:
                self._reinit(dead, z)
                stats["dead_codes_reset"] += dead.numel()
        return stats

    @torch.no_grad()
    def _reinit(self, dead: Tensor, z: Tensor) -> None:
        """Move dead codes onto randomly chosen encoder outputs of this batch (the same on
        every rank: rank 0's choice is broadcast)."""
        pick = torch.randint(0, z.shape[0], (dead.numel(),), device=z.device)
        new = z[pick] + _REINIT_NOISE * z.std() * torch.randn_like(z[pick])
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, src=0)
        self.embedding.weight.data[dead] = new.to(self.embedding.weight.dtype)
        self.steps_unused[dead] = 0
        self.revived[dead] = True
