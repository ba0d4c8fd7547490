"""Batched inference for the ranking network on the CPU or a GPU, with CUDA graphs on the GPU.

A CUDA graph is captured per padded batch size (1, 16, 256, 4096), so a request's prediction is one graph
replay instead of a dozen kernel launches; the graphs read the live parameters, so training in place between
replays needs no recapture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from service.prefetch.learned.features import HISTORY, KEY_BUCKETS, MAX_CANDIDATES, N_FEATURES, N_SOURCES, N_TOKENS
from service.prefetch.learned.model import PrefetchNet

BATCH_BUCKETS = (1, 16, 256, 4096)


@dataclass(slots=True)
class ModelInputs:
    context: np.ndarray  # [B, H] int64
    key_bucket: np.ndarray  # [B] int64
    source_accuracy: np.ndarray  # [B, S] float32
    cand_token: np.ndarray  # [B, C] int64
    cand_features: np.ndarray  # [B, C, F] float32

    def __len__(self) -> int:
        return len(self.key_bucket)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        arrays = (self.context, self.key_bucket, self.source_accuracy, self.cand_token, self.cand_features)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True) for a in arrays)


class _Graph:
    """One captured forward pass at a fixed batch size.

    All inputs travel in one pinned float32 staging row per access (token and bucket ids are small integers,
    exact in float32) and are split and cast inside the graph, so a call is one host-to-device copy, one
    graph launch and one device-to-host copy: the fixed cost that dominates batch-1 latency.
    """

    def __init__(self, model: PrefetchNet, size: int, widths: tuple[int, ...], slots: int) -> None:
        self.widths = widths
        total = sum(widths)
        self.host_in = torch.zeros((size, total), dtype=torch.float32).pin_memory()
        self.host_view = self.host_in.numpy()
        self.device_in = torch.zeros((size, total), dtype=torch.float32, device="cuda")
        self.host_out = torch.zeros((size, slots), dtype=torch.float32).pin_memory()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm up cuDNN and the allocator outside the graph
                self._forward(model, slots)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.output = self._forward(model, slots)

    def _forward(self, model: PrefetchNet, slots: int) -> torch.Tensor:
        context, bucket, accuracy, token, features = torch.split(self.device_in, list(self.widths), dim=1)
        return torch.sigmoid(
            model(
                context.long(),
                bucket.squeeze(1).long(),
                accuracy,
                token.long(),
                features.reshape(features.shape[0], slots, -1),
            )
        )

    def run(self, inputs: ModelInputs) -> np.ndarray:
        n, view, col = len(inputs), self.host_view, 0
        for array in _columns(inputs):
            width = array.shape[1]
            view[:n, col : col + width] = array
            col += width
        self.device_in.copy_(self.host_in, non_blocking=True)
        self.graph.replay()
        self.host_out.copy_(self.output, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self.host_out.numpy()[:n].copy()


def _columns(inputs: ModelInputs) -> tuple[np.ndarray, ...]:
    n = len(inputs)
    return (
        inputs.context,
        inputs.key_bucket.reshape(n, 1),
        inputs.source_accuracy,
        inputs.cand_token,
        inputs.cand_features.reshape(n, -1),
    )


class InferenceRunner:
    """Probabilities [B, C] for a batch; eager on the CPU, graph replays on CUDA when enabled."""

    def __init__(self, model: PrefetchNet, device: str | torch.device = "cpu", cuda_graphs: bool = True) -> None:
        self.model = model
        self.device = torch.device(device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[int, _Graph] = {}

    def invalidate(self) -> None:
        """Forget captured graphs (after the model's parameters were replaced, e.g. a rollback)."""
        self._graphs.clear()

    def __call__(self, inputs: ModelInputs) -> np.ndarray:
        n = len(inputs)
        if n == 0:
            return np.zeros((0, inputs.cand_token.shape[1]), dtype=np.float32)
        largest = BATCH_BUCKETS[-1]
        if n > largest:
            parts = [self(_slice(inputs, i, i + largest)) for i in range(0, n, largest)]
            return np.concatenate(parts)
        self.model.eval()
        if not self.cuda_graphs:
            with torch.no_grad():
                probs = torch.sigmoid(self.model(*inputs.tensors(self.device)))
            return probs.float().cpu().numpy()
        size = next(b for b in BATCH_BUCKETS if b >= n)
        graph = self._graphs.get(size)
        if graph is None:
            widths = tuple(a.shape[1] for a in _columns(inputs))
            graph = self._graphs[size] = _Graph(self.model, size, widths, inputs.cand_token.shape[1])
        return graph.run(inputs)


def random_inputs(batch: int, rng: np.random.Generator) -> ModelInputs:
    """Valid inputs of no meaning: for timing the network, and for paying a device's first-use costs."""
    return ModelInputs(
        rng.integers(1, N_TOKENS, size=(batch, HISTORY)),
        rng.integers(0, KEY_BUCKETS, size=batch),
        rng.random((batch, N_SOURCES), dtype=np.float32),
        rng.integers(1, N_TOKENS, size=(batch, MAX_CANDIDATES)),
        rng.random((batch, MAX_CANDIDATES, N_FEATURES), dtype=np.float32),
    )


def _slice(inputs: ModelInputs, start: int, stop: int) -> ModelInputs:
    return ModelInputs(
        inputs.context[start:stop],
        inputs.key_bucket[start:stop],
        inputs.source_accuracy[start:stop],
        inputs.cand_token[start:stop],
        inputs.cand_features[start:stop],
    )
