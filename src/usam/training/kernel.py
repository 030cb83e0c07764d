"""The fused, vectorised SGD or AdamW step of a group of heads, and each epoch's batches of all heads of a group.

Forward and backward passes are written out by hand on preallocated buffers.

Heads with the same batch size, epoch count, optimizer and schedule form a group, stacked in one
:class:`~usam.heads.UncertaintyHeads`; learning rate, momentum and weight decay are per-head tensors. Each epoch
every head of a group draws its own
permutation of its training rows and takes ``ceil(rows / batch)`` SGD steps, exactly as if it were trained alone
with a shuffling data loader. The heads of a group are ordered by their number of training rows, largest first, so
that in step ``s`` the heads that still have batches left are a prefix of the stack: a step runs on weight views
``[:k]``, without copies, and a head that has finished its epoch is neither computed nor updated. A partial last
batch is padded with zero-weight rows. Autograd would allocate every activation and gradient afresh and copy the
transposed weight gradients, which on CPU makes a step about 30 % slower (44 ms against 34 ms for nine heads at
batch 189 on two cores); the matrix products left are the bulk of the work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from usam.devices import Precision
from usam.heads import UncertaintyHeads
from usam.training.hyper_parameters import HyperParameters, Optimizer
from usam.validation import check_choice

# AdamW's constants, torch.optim.AdamW's defaults.
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8


@dataclasses.dataclass
class HeadPlan:
    """One head's share of a run: its hyper-parameters and its rows and targets, split by image."""

    name: str
    hyper: HyperParameters
    train_rows: np.ndarray
    train_targets: np.ndarray
    validation_rows: np.ndarray
    validation_targets: np.ndarray


def loss_dtype(device: torch.device) -> torch.dtype:
    """Losses are summed in float64 where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def epoch_batches(
    train_rows: list[torch.Tensor],
    train_targets: list[torch.Tensor],
    shufflers: list[torch.Generator],
    batch_size: int,
    num_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's batches of all heads of a group as ``(steps, heads, batch)`` row indices, targets, weights.

    Each head takes its own permutation of its rows. A partial last batch is padded with the head's first row
    at weight 0; the weights of a batch's real rows are 1 / (their number), so each step's loss is the mean
    over its real rows, as with a data loader without ``drop_last``. Entries past a head's last step are never
    read (the head is not among the active prefix there).
    """
    num_heads = len(train_rows)
    row_index = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.int64)
    targets = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.float32)
    weights = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.float32)
    for head, (rows, values, shuffler) in enumerate(zip(train_rows, train_targets, shufflers, strict=True)):
        count = rows.numel()
        steps = math.ceil(count / batch_size)
        order = torch.randperm(count, generator=shuffler)
        padded = steps * batch_size
        head_rows = torch.full((padded,), int(rows[0]), dtype=torch.int64)
        head_rows[:count] = rows[order]
        head_targets = torch.zeros(padded, dtype=torch.float32)
        head_targets[:count] = values[order]
        head_weights = torch.zeros(padded, dtype=torch.float32)
        head_weights[:count] = 1.0 / batch_size
        last = count - (steps - 1) * batch_size
        head_weights[(steps - 1) * batch_size : count] = 1.0 / last
        row_index[:steps, head] = head_rows.view(steps, batch_size)
        targets[:steps, head] = head_targets.view(steps, batch_size)
        weights[:steps, head] = head_weights.view(steps, batch_size)
    return row_index, targets, weights


class GroupWorkspace:
    """Hand-written forward, backward and SGD or AdamW step of a group of heads, on preallocated buffers.

    Computes, for the first ``k`` heads of the group, exactly what autograd and ``torch.optim.SGD`` (momentum,
    no dampening, weight decay on all parameters) or ``torch.optim.AdamW`` (the group's optimizer, that of its first
    member) would for the loss ``sum_h sum_b w_hb (sigmoid(z_hb) - y_hb)^2``; the heads share no parameters, so each
    head gets the gradient of its own weighted mean.

    With ``precision="bfloat16"`` the inputs, the hidden activations and their gradients are kept in bfloat16
    and the two 512-wide layers multiply bfloat16 copies of their weights, refreshed every step; the weights,
    their gradients, the SGD state, the last layer and the loss stay float32, as under ``torch.autocast``.
    """

    def __init__(
        self,
        module: UncertaintyHeads,
        features: torch.Tensor,
        batch_size: int,
        members: Sequence[HeadPlan],
        precision: Precision | str = Precision.FLOAT32,
    ) -> None:
        self.features = features
        self.batch_size = batch_size
        num_heads, hidden, inputs = module.weight1.shape
        device, compute = features.device, check_choice(Precision, precision, "precision").dtype
        self.parameters = [
            parameter.detach()
            for parameter in (module.weight1, module.bias1, module.weight2, module.bias2, module.weight3, module.bias3)
        ]
        self.gradients = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.velocities = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.optimizer = members[0].hyper.optimizer
        if self.optimizer == Optimizer.ADAMW:
            # AdamW's second moments, and the number of steps each head has taken (for the bias corrections).
            self.second_moments = [torch.zeros_like(parameter) for parameter in self.parameters]
            self.steps_taken = torch.zeros(num_heads, dtype=torch.float64)
        self.learning_rates = self._per_head([plan.hyper.lr for plan in members], device)
        self.momenta = self._per_head([plan.hyper.momentum for plan in members], device)
        self.weight_decays = self._per_head([plan.hyper.weight_decay for plan in members], device)
        self.gathered = torch.empty(num_heads * batch_size, inputs, device=device)
        self.mixed = compute != torch.float32
        self.loss_dtype = loss_dtype(device)

        # What the two wide layers read and write, in the compute type: the inputs, weight1 and weight2 and
        # their gradients. In float32 these are the float32 tensors themselves, so nothing is copied.
        def in_compute_type(tensor: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(tensor, dtype=compute) if self.mixed else tensor

        self.inputs = in_compute_type(self.gathered)
        self.compute_weights = [in_compute_type(self.parameters[index]) for index in (0, 2)]
        self.compute_gradients = [in_compute_type(self.gradients[index]) for index in (0, 2)]
        activations = (num_heads, batch_size, hidden)
        self.hidden1 = torch.empty(activations, dtype=compute, device=device)
        self.hidden2 = torch.empty(activations, dtype=compute, device=device)
        self.grad_hidden1 = torch.empty(activations, dtype=compute, device=device)
        self.grad_hidden2 = torch.empty(activations, dtype=compute, device=device)
        self.relu_slope = torch.empty(activations, dtype=compute, device=device)

    @staticmethod
    def _per_head(values: list[float], device: torch.device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    def step(
        self,
        k: int,
        row_index: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        learning_rate_scale: float = 1.0,
    ) -> torch.Tensor:
        """One step of the first ``k`` heads on ``(k, batch)`` rows; returns their ``(k,)`` batch losses.

        ``learning_rate_scale`` multiplies every head's learning rate (the schedule's factor at this step).
        """
        batch = self.batch_size
        gathered = self.gathered[: k * batch]
        torch.index_select(self.features, 0, row_index.reshape(-1), out=gathered)
        inputs = self.inputs[: k * batch]
        if self.mixed:
            inputs.copy_(gathered)
        inputs = inputs.view(k, batch, -1)
        weight1, bias1, weight2, bias2, weight3, bias3 = (parameter[:k] for parameter in self.parameters)
        if self.mixed:
            for compute_weight, weight in zip(self.compute_weights, (weight1, weight2), strict=True):
                compute_weight[:k].copy_(weight)
        weight1, weight2 = (compute_weight[:k] for compute_weight in self.compute_weights)
        hidden1, hidden2 = self.hidden1[:k], self.hidden2[:k]

        # Forward, as UncertaintyHeads.logits computes it, but into the preallocated buffers.
        torch.bmm(inputs, weight1.transpose(1, 2), out=hidden1)
        hidden1.add_(bias1.unsqueeze(1)).relu_()
        torch.bmm(hidden1, weight2.transpose(1, 2), out=hidden2)
        hidden2.add_(bias2.unsqueeze(1)).relu_()
        last_hidden = hidden2.float()  # the same tensor in float32 mode
        logits = torch.bmm(last_hidden, weight3.unsqueeze(2)).squeeze(2).add_(bias3.unsqueeze(1))
        predictions = torch.sigmoid(logits)
        errors = predictions - targets
        losses = (weights * errors * errors).sum(1)

        # Backward: d loss / d logit = 2 w (p - y) p (1 - p), then through the layers.
        grad_logits = 2 * weights * errors * predictions * (1 - predictions)
        grad_weight1, grad_bias1, grad_weight2, grad_bias2, grad_weight3, grad_bias3 = (
            gradient[:k] for gradient in self.gradients
        )
        compute_grad_weight1, compute_grad_weight2 = (gradient[:k] for gradient in self.compute_gradients)
        torch.bmm(grad_logits.unsqueeze(1), last_hidden, out=grad_weight3.unsqueeze(1))
        torch.sum(grad_logits, 1, out=grad_bias3)
        relu_slope = self.relu_slope[:k]
        grad_hidden2 = self.grad_hidden2[:k]
        torch.mul(grad_logits.unsqueeze(2), weight3.unsqueeze(1), out=grad_hidden2)
        # sign(relu(z)) is the ReLU's slope (0 where z <= 0, as autograd has it), written into a reused buffer.
        grad_hidden2.mul_(torch.sign(hidden2, out=relu_slope))
        torch.bmm(grad_hidden2.transpose(1, 2), hidden1, out=compute_grad_weight2)
        if self.mixed:
            grad_weight2.copy_(compute_grad_weight2)
        torch.sum(grad_hidden2, 1, dtype=torch.float32, out=grad_bias2)
        grad_hidden1 = self.grad_hidden1[:k]
        torch.bmm(grad_hidden2, weight2, out=grad_hidden1)
        grad_hidden1.mul_(torch.sign(hidden1, out=relu_slope))
        torch.bmm(grad_hidden1.transpose(1, 2), inputs, out=compute_grad_weight1)
        if self.mixed:
            grad_weight1.copy_(compute_grad_weight1)
        torch.sum(grad_hidden1, 1, dtype=torch.float32, out=grad_bias1)

        learning_rates = self.learning_rates[:k] * learning_rate_scale
        if self.optimizer == Optimizer.ADAMW:
            self._adamw_update(k, learning_rates)
            return losses.to(self.loss_dtype)
        # SGD as torch.optim.SGD: d = g + wd p; v = momentum v + d (v starts at 0, so v = d at first); p -= lr v.
        for parameter, gradient, velocity in zip(self.parameters, self.gradients, self.velocities, strict=True):
            shape = (k,) + (1,) * (parameter.dim() - 1)
            gradient = gradient[:k]
            velocity = velocity[:k]
            parameter = parameter[:k]
            gradient.addcmul_(parameter, self.weight_decays[:k].view(shape))
            velocity.mul_(self.momenta[:k].view(shape)).add_(gradient)
            parameter.addcmul_(velocity, learning_rates.view(shape), value=-1.0)
        return losses.to(self.loss_dtype)

    def _adamw_update(self, k: int, learning_rates: torch.Tensor) -> None:
        """AdamW as torch.optim.AdamW: p *= 1 - lr wd; m, v moving averages; p -= lr m_hat / (sqrt(v_hat) + eps)."""
        self.steps_taken[:k] += 1
        steps = self.steps_taken[:k]
        first_correction = (1 - _BETA1**steps).float().to(learning_rates.device)
        # The step size of torch's AdamW: lr / (1 - beta1^t), and the denominator sqrt(v) / sqrt(1 - beta2^t) + eps.
        step_sizes = learning_rates / first_correction
        root_second_correction = (1 - _BETA2**steps).sqrt().float().to(learning_rates.device)
        decay = 1 - learning_rates * self.weight_decays[:k]
        for parameter, gradient, first, second in zip(
            self.parameters, self.gradients, self.velocities, self.second_moments, strict=True
        ):
            shape = (k,) + (1,) * (parameter.dim() - 1)
            gradient, first, second, parameter = gradient[:k], first[:k], second[:k], parameter[:k]
            parameter.mul_(decay.view(shape))
            first.lerp_(gradient, 1 - _BETA1)
            second.mul_(_BETA2).addcmul_(gradient, gradient, value=1 - _BETA2)
            # gradient's buffer is free now: it holds the denominator.
            torch.sqrt(second, out=gradient).div_(root_second_correction.view(shape)).add_(_EPSILON)
            parameter.addcdiv_(first * step_sizes.view(shape), gradient, value=-1.0)
