"""Batched inference for the ranking network on the CPU or a GPU, with CUDA graphs on the GPU.

A CUDA graph is captured per padded batch size (1, 16, 256, 4096), so a request's prediction is one graph
replay instead of a dozen kernel launches; the graphs read the live parameters, so training in place between
replays needs no recapture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
    """One captured forward pass at a fixed batch size, with its static input and output tensors."""

    def __init__(self, model: PrefetchNet, example: tuple[torch.Tensor, ...]) -> None:
        self.inputs = tuple(t.clone() for t in example)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm up cuDNN and the allocator outside the graph
                model(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.output = torch.sigmoid(model(*self.inputs))

    def run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for static, value in zip(self.inputs, inputs, strict=True):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.output


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
        tensors = inputs.tensors(self.device)
        self.model.eval()
        if not self.cuda_graphs:
            with torch.no_grad():
                probs = torch.sigmoid(self.model(*tensors))
            return probs.float().cpu().numpy()
        size = next(b for b in BATCH_BUCKETS if b >= n)
        padded = tuple(_pad(t, size) for t in tensors)
        graph = self._graphs.get(size)
        if graph is None:
            graph = self._graphs[size] = _Graph(self.model, padded)
        return graph.run(padded)[:n].float().cpu().numpy()


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    if tensor.shape[0] == size:
        return tensor
    pad = tensor.new_zeros((size - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad])


def _slice(inputs: ModelInputs, start: int, stop: int) -> ModelInputs:
    return ModelInputs(
        inputs.context[start:stop],
        inputs.key_bucket[start:stop],
        inputs.source_accuracy[start:stop],
        inputs.cand_token[start:stop],
        inputs.cand_features[start:stop],
    )
