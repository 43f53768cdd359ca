"""The README's "Add an agent" example, kept here so the test suite runs it."""

from agents.base import GradientAgent


class MyAgent(GradientAgent):
    def __init__(self, policy, reference, lr=1e-4, my_param=0.5):
        super().__init__(policy, lr=lr)
        self.reference, self.my_param = reference, my_param

    def update(self, batch):  # batch: TensorDict [B, K] of whole trajectories
        reward = batch["next", "reward"][:, -1]  # terminal reward, (B, 1)
        dist = self.policy.get_dist(batch.reshape(-1))
        logp = dist.log_prob(batch.reshape(-1)["action"]).reshape(batch.shape)
        loss = -(logp.sum(-1) * (reward.squeeze(-1) - reward.mean())).mean()
        applied, grad_norm = self.optimizer_step(loss)
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}
