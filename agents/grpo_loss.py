"""GRPO / REINFORCE-style clipped policy loss with a k3 KL penalty and an entropy bonus."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential
from torchrl.objectives import LossModule

KL_REFERENCES = ("base", "rollout")
ENTROPY_ESTIMATORS = ("sample", "analytic")


class GroupPolicyLoss(LossModule):
    """Per-step loss averaged over the stochastic steps of a [M, K] batch of trajectories.

    * surrogate: min(ρA, clip(ρ, 1−ε, 1+ε)A) with ρ = exp(log π_θ − log π_old) (no clipping if
      ``clip_epsilon`` is None: plain importance-weighted policy gradient);
    * KL penalty, k3 estimator exp(Δ) − 1 − Δ with Δ = log π_ref − log π_θ, where π_ref is the frozen
      base policy (``kl_reference="base"``) or the policy that sampled the batch (``"rollout"``);
    * entropy bonus: the sample estimate −log π_θ(a) or the analytic Gaussian entropy;
    * loss = −surrogate + kl_weight·KL − entropy_weight·entropy.

    Steps whose ``stochastic`` flag is False (zero transition std) carry no log-probability and
    are skipped (left out of the forward pass). Expects ``action``, ``action_log_prob``
    (rollout), ``stochastic`` and ``advantage`` (M, K, 1) in the batch, plus whatever the actor
    reads (:attr:`required_keys`).
    """

    def __init__(
        self,
        actor: ProbabilisticTensorDictSequential,
        reference: ProbabilisticTensorDictSequential | None = None,
        clip_epsilon: float | None = 0.001,
        kl_weight: float = 1.0,
        entropy_weight: float = 1e-5,
        kl_reference: str = "base",
        entropy_estimator: str = "sample",
    ):
        super().__init__()
        if kl_reference not in KL_REFERENCES:
            raise ValueError(f"Unknown kl_reference {kl_reference!r}; valid: {list(KL_REFERENCES)}")
        if entropy_estimator not in ENTROPY_ESTIMATORS:
            raise ValueError(f"Unknown entropy_estimator {entropy_estimator!r}; valid: {list(ENTROPY_ESTIMATORS)}")
        if kl_reference == "base" and reference is None and kl_weight > 0:
            raise ValueError("kl_reference='base' needs the frozen reference policy")
        self.actor = actor
        self.reference = reference
        self.clip_epsilon = clip_epsilon
        self.kl_weight = kl_weight
        self.entropy_weight = entropy_weight
        self.kl_reference = kl_reference
        self.entropy_estimator = entropy_estimator

    @property
    def required_keys(self) -> list:
        """The batch entries the loss reads (the actor's inputs, action, log-probs, flags, advantage)."""
        return [*self.actor.in_keys, "action", "action_log_prob", "stochastic", "advantage"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        flat = tensordict.reshape(-1)
        stochastic = flat["stochastic"].reshape(-1)
        if bool(stochastic.any()) and not bool(stochastic.all()):
            flat = flat[stochastic]  # deterministic steps contribute nothing: no forward/backward for them
        dist = self.actor.get_dist(flat)
        log_prob = dist.log_prob(flat["action"])
        old_log_prob = flat["action_log_prob"].detach()
        advantage = flat["advantage"].reshape(-1).detach()
        active = flat["stochastic"].reshape(-1).to(log_prob.dtype)
        n_active = active.sum().clamp_min(1.0)

        def average(x: torch.Tensor) -> torch.Tensor:
            return (x * active).sum() / n_active

        log_ratio = (log_prob - old_log_prob) * active
        ratio = log_ratio.exp()
        surrogate = ratio * advantage
        if self.clip_epsilon is not None:
            clipped = ratio.clamp(1 - self.clip_epsilon, 1 + self.clip_epsilon) * advantage
            surrogate = torch.minimum(surrogate, clipped)
            clip_fraction = average(((ratio - 1).abs() > self.clip_epsilon).to(ratio.dtype))
        else:
            clip_fraction = torch.zeros((), device=ratio.device)
        if self.kl_reference == "base" and self.reference is not None:
            with torch.no_grad():
                ref_log_prob = self.reference.get_dist(flat).log_prob(flat["action"])
        else:
            ref_log_prob = old_log_prob
        delta = (ref_log_prob - log_prob) * active
        kl = delta.exp() - 1 - delta
        entropy = -log_prob if self.entropy_estimator == "sample" else dist.entropy()
        return TensorDict(
            {
                "loss_objective": -average(surrogate),
                "loss_kl": self.kl_weight * average(kl),
                "loss_entropy": -self.entropy_weight * average(entropy),
                "kl_div": average(kl).detach(),
                "entropy": average(entropy).detach(),
                "ratio": average(ratio).detach(),
                "clip_fraction": clip_fraction.detach(),
            },
            batch_size=[],
        )
