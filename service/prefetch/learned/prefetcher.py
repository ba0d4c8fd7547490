"""The learned prefetcher: candidates from simple predictors, ranked by a network trained online.

Labels come from the tenant's own accesses: a candidate proposed after access t is positive when it is read
within `window` accesses after the prefetch would land (t + distance ... t + distance + window - 1). Labels
are known only once those accesses happened, so training always lags inference and never sees the future.
Until the network has seen `warmup` labelled accesses, candidates are ranked by their source's measured
precision, which is what a hand-tuned hybrid of the baselines would do.

The stride and Markov prefetchers also run inside, as arms beside the network. Which arm feeds the cache is
decided by its effect on the cache, not by its accuracy: once told the cache's model (`attach_cache`), the
prefetcher keeps one shadow cache per arm plus one that never prefetches (`service/prefetch/shadow.py`) and
serves the arm whose shadow missed least lately. The network wins where what it learned pays off in this
cache; where it does not (yet), the tenant gets the better simple prefetcher, or none.

Without a cache model, arms are scored on the labels instead: an arm's first proposal above the threshold
counts +1 when used and -threshold/(1-threshold) when not (the break-even the threshold expresses), and each
batch is answered by the arm with the best recent score.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from service.prefetch.base import DEFAULT_THRESHOLD, USEFUL_WINDOW, Prediction, Predictions, Prefetcher
from service.prefetch.learned.features import (
    HISTORY,
    MAX_CANDIDATES,
    N_FEATURES,
    N_SOURCES,
    Batch,
    CandidateBuilder,
    candidate_features,
)
from service.prefetch.learned.model import ModelConfig, PrefetchNet
from service.prefetch.learned.runtime import BATCH_BUCKETS, InferenceRunner, ModelInputs, random_inputs
from service.prefetch.markov import DEFAULT_MAX_KEYS, markov_predictions
from service.prefetch.shadow import ArmProposals, CacheModel, SelectorConfig, ShadowSelector
from service.prefetch.stride import StridePrefetcher

_BEST_SOURCE = N_SOURCES + 4  # feature column holding the candidate's best source precision
_LATER_USE = 0.75  # training target of a candidate read within the window but not first


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Chosen on synthetic workloads (tests/prefetch), not on the benchmark traces; see docs/prefetch.md."""

    window: int = USEFUL_WINDOW  # accesses after landing within which a prefetch counts as used
    buffer: int = 16384  # labelled accesses kept for training (a sliding window)
    train_every: int = 1024  # labelled accesses between training rounds
    # Once the model has learned from this many accesses, rounds come `settled_train_every` apart: training is
    # the largest share of the per-read CPU, and drift detection still triggers extra rounds.
    settled_after: int = 32768
    settled_train_every: int = 4096
    steps: int = 4  # optimiser steps per round
    batch: int = 256  # accesses per optimiser step
    lr: float = 3e-3
    warmup: int = 2048  # labelled accesses before the network takes over ranking
    min_confidence: float = 0.05  # proposals below this are not returned at all
    threshold: float = DEFAULT_THRESHOLD  # the coordinator's: what an expert's proposal must reach to count
    seed: int = 0


class _Buffer:
    """Ring buffer of labelled accesses (inputs and per-candidate labels)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.context = np.zeros((size, HISTORY), dtype=np.int64)
        self.key_bucket = np.zeros(size, dtype=np.int64)
        self.source_accuracy = np.zeros((size, N_SOURCES), dtype=np.float32)
        self.cand_token = np.zeros((size, MAX_CANDIDATES), dtype=np.int64)
        self.cand_features = np.zeros((size, MAX_CANDIDATES, N_FEATURES), dtype=np.float32)
        self.label = np.zeros((size, MAX_CANDIDATES), dtype=np.float32)
        self.mask = np.zeros((size, MAX_CANDIDATES), dtype=np.float32)
        self.filled = 0
        self._next = 0

    def add(self, inputs: ModelInputs, label: np.ndarray, mask: np.ndarray) -> None:
        for start in range(0, len(inputs), self.size):
            stop = min(start + self.size, len(inputs))
            idx = (self._next + np.arange(stop - start)) % self.size
            self.context[idx] = inputs.context[start:stop]
            self.key_bucket[idx] = inputs.key_bucket[start:stop]
            self.source_accuracy[idx] = inputs.source_accuracy[start:stop]
            self.cand_token[idx] = inputs.cand_token[start:stop]
            self.cand_features[idx] = inputs.cand_features[start:stop]
            self.label[idx] = label[start:stop]
            self.mask[idx] = mask[start:stop]
            self._next = int((idx[-1] + 1) % self.size)
            self.filled = min(self.size, self.filled + stop - start)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[ModelInputs, np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.filled, size=min(n, self.filled))
        inputs = ModelInputs(
            self.context[idx],
            self.key_bucket[idx],
            self.source_accuracy[idx],
            self.cand_token[idx],
            self.cand_features[idx],
        )
        return inputs, self.label[idx], self.mask[idx]


# Ties go to the earlier arm: the network has to be measurably better to take over.
EXPERTS = ("stride", "markov", "network")


@dataclass(slots=True)
class _Pending:
    start: int  # absolute index of the batch's first access
    keys: list[list[int]]
    inputs: ModelInputs
    firsts: list[list[int | None]]  # per expert, per access: its first proposal above threshold


class LearnedPrefetcher(Prefetcher):
    name = "learned"

    def __init__(
        self,
        lead: int = 0,
        max_candidates: int = 2,
        device: str = "cpu",
        cuda_graphs: bool = True,
        use_experts: bool = True,
        config: TrainConfig | None = None,
        model_config: ModelConfig | None = None,
        cache: CacheModel | None = None,
        selector_config: SelectorConfig | None = None,
        cpu_threads: int | None = 1,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        super().__init__(lead, max_candidates)
        if cpu_threads is not None:
            # Process-wide. The network is tiny: at the engine's batches more intra-op threads mostly spin
            # (batch 256: 1.44 ms with 4 threads, 1.26 ms with 1, `bench inference`), and in the prefetch
            # process the spinning is charged to its CPU budget, which on a 16-core host it exhausted.
            torch.set_num_threads(cpu_threads)
        self.config = config = config or TrainConfig()
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.device = torch.device(device)
        self.model = PrefetchNet(model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.runner = InferenceRunner(self.model, self.device, cuda_graphs=cuda_graphs)
        self.builder = CandidateBuilder(self.distance, max_keys)
        self.buffer = _Buffer(config.buffer)
        self.labelled = 0  # accesses labelled so far
        self.train_steps = 0
        self.last_loss = float("nan")
        # Decayed (positives, proposals) per source: their ratio is the source's measured precision.
        self._source_pos = np.zeros(N_SOURCES)
        self._source_all = np.zeros(N_SOURCES)
        self._pending: deque[_Pending] = deque()
        self._log: list[int] = []  # recent keys, for labelling
        self._log_start = 0  # absolute index of _log[0]
        self._since_training = 0
        self._owed_steps = 0  # retraining still to do, a step per batch
        # The Markov arm proposes from the candidate builder's successor table (the same one a
        # `MarkovPrefetcher` would keep), so only the stride arm runs a prefetcher of its own.
        self.stride = StridePrefetcher(lead, max_candidates)
        self.expert_score = dict.fromkeys(EXPERTS, 0.0)  # decayed net usefulness of each expert's proposals
        self.use_experts = use_experts  # False: always answer with the network (tests, ablations)
        self.chosen = EXPERTS[0] if use_experts else "network"
        self.arms = EXPERTS
        self.selector_config = selector_config
        self.selector: ShadowSelector | None = None
        self.attach_cache(cache)
        if self.device.type == "cuda":
            self.warm_up()

    def warm_up(self) -> None:
        """Pay the device's first-use costs now, not on a live read: on an H200 host the network's first
        inference with CUDA graphs and its first training stalled the engine 107 and 300 ms (graph capture,
        lazily loaded kernels, optimiser state), and at 1,000 reads a second its proposals came 16-21 reads
        late, against 2-3 warmed up (docs/prefetch-live.md). Leaves the weights, the optimiser and the random
        streams as they were."""
        self._capture_graphs()
        self.model.train()
        self.model(*random_inputs(self.config.batch, np.random.default_rng(0)).tensors(self.device)).sum().backward()
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.zero_()  # Adam moves nothing on a zero gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()  # the first real step starts its moments afresh
        self.model.eval()

    def _capture_graphs(self) -> None:
        """Run a batch of each size live steps use (graph replays on CUDA capture on first use)."""
        rng = np.random.default_rng(0)
        for size in BATCH_BUCKETS[:-1]:
            self.runner(random_inputs(size, rng))

    def selector_for(self, model: CacheModel) -> ShadowSelector:
        return ShadowSelector(self.arms, model, self.selector_config)

    def attach_cache(self, model: CacheModel | None) -> None:
        """Choose arms by their misses in shadows of this cache from now on (None: by label scores)."""
        self.selector = None if model is None else self.selector_for(model)

    # -- inference ---------------------------------------------------------------------------------

    @property
    def source_accuracy(self) -> np.ndarray:
        return ((self._source_pos + 1.0) / (self._source_all + 2.0)).astype(np.float32)

    @property
    def warmed_up(self) -> bool:
        return self.labelled >= self.config.warmup

    @property
    def serving_arm(self) -> str:
        if not self.use_experts:
            return "network"
        return self.selector.serving if self.selector is not None else self.chosen

    def access(self, key: int) -> Predictions:
        return self.access_batch([key])[0]

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        keys = list(keys)
        answers = self.propose_arms(keys)
        if not self.use_experts:
            return answers["network"]
        if self.selector is not None:
            return self.selector.select_batch(keys, answers)
        return answers[self.chosen]

    def propose_arms(self, keys: Sequence[int]) -> ArmProposals:
        """Record the accesses and learn from them; each arm's proposals per access (cache-independent)."""
        keys = list(keys)
        start = self._log_start + len(self._log)
        batch = self.builder.build(keys)
        inputs = self._inputs(batch)
        probs = self.runner(inputs) if self.warmed_up else inputs.cand_features[..., _BEST_SOURCE]
        limit = self.max_candidates
        answers = {
            "network": self._proposals(batch.cand_keys, probs),
            "stride": self.stride.access_batch(keys),
            "markov": [markov_predictions(successors, limit) for successors in batch.successors],
        }
        threshold = self.config.threshold
        firsts = [
            [next((p.key for p in props if p.confidence >= threshold), None) for props in answers[name]]
            for name in EXPERTS
        ]
        self._log.extend(keys)
        self._pending.append(_Pending(start, batch.cand_keys, inputs, firsts))
        self.chosen = max(EXPERTS, key=lambda name: (self.expert_score[name], -EXPERTS.index(name)))
        self._learn()
        return answers

    def _inputs(self, batch: Batch) -> ModelInputs:
        accuracy = self.source_accuracy
        features = candidate_features(batch.cand_raw, accuracy, batch.stride_run)
        return ModelInputs(
            batch.context,
            batch.key_bucket,
            np.broadcast_to(accuracy, (len(batch), N_SOURCES)).copy(),
            batch.cand_token,
            features,
        )

    def _proposals(self, cand_keys: list[list[int]], probs: np.ndarray) -> list[Predictions]:
        floor, limit = self.config.min_confidence, self.max_candidates
        out: list[Predictions] = []
        for cands, row in zip(cand_keys, probs.tolist(), strict=True):
            ranked = sorted(
                (Prediction(c, p) for c, p in zip(cands, row, strict=False) if p >= floor),
                key=lambda pred: -pred.confidence,
            )
            out.append(ranked[:limit])
        return out

    def retrain(self, steps: int = 64) -> None:
        """Extra training on the recent window (drift was detected), one optimiser step per batch from the
        next one on. At once, 64 steps held up the answers for 0.6 s on the dev box: a live tenant's reads
        meanwhile were predicted from that much later (`bench live-replay`: a mean lag of 18 reads at 1,000
        reads a second, from one retraining in 10,000 reads)."""
        if self.buffer.filled:
            self._owed_steps += steps

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: weights, their shape, and the measured source precisions."""
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.as_dict(),
            "source_pos": torch.from_numpy(self._source_pos.copy()),
            "source_all": torch.from_numpy(self._source_all.copy()),
            "labelled": self.labelled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model_config"] != self.model.config.as_dict():
            raise ValueError(f"checkpoint is for model {state['model_config']}, not {self.model.config.as_dict()}")
        self.model.load_state_dict(state["model"])
        self._source_pos = state["source_pos"].numpy().copy()
        self._source_all = state["source_all"].numpy().copy()
        self.labelled = max(self.labelled, int(state["labelled"]))
        self.runner.invalidate()
        if self.device.type == "cuda":
            self._capture_graphs()  # a rollback must not stall the next live step either

    # -- online learning ---------------------------------------------------------------------------

    def _learn(self) -> None:
        """Label every pending batch whose windows have fully happened, then train if due."""
        horizon = self.distance + self.config.window - 1
        end = self._log_start + len(self._log)
        while self._pending and self._pending[0].start + len(self._pending[0].keys) - 1 + horizon < end:
            self._label(self._pending.popleft())
        keep = (self._pending[0].start if self._pending else end) - self._log_start
        if keep > 4 * horizon + 4096:
            del self._log[:keep]
            self._log_start += keep
        config = self.config
        every = config.train_every if self.labelled < config.settled_after else config.settled_train_every
        if self.labelled >= config.warmup // 2 and self._since_training >= every:
            rounds = self._since_training // every
            self._since_training -= rounds * every
            self._train(rounds * config.steps)
        if self._owed_steps:
            self._owed_steps -= 1
            self._train(1)

    def _label(self, pending: _Pending) -> None:
        d, w = self.distance, self.config.window
        log, offset = self._log, pending.start - self._log_start
        n = len(pending.keys)
        label = np.zeros((n, MAX_CANDIDATES), dtype=np.float32)
        mask = np.zeros((n, MAX_CANDIDATES), dtype=np.float32)
        used = [0] * len(EXPERTS)
        issued = [0] * len(EXPERTS)
        for i, cands in enumerate(pending.keys):
            base = offset + i + d
            window = set(log[base : base + w])
            needed_first = log[base]
            for slot, cand in enumerate(cands):
                mask[i, slot] = 1.0
                if cand == needed_first:
                    label[i, slot] = 1.0
                elif cand in window:
                    # Useful, but a later prefetch could still catch it: rank the key needed first above it.
                    label[i, slot] = _LATER_USE
            for e, first in enumerate(pending.firsts):
                if first[i] is not None:
                    issued[e] += 1
                    used[e] += first[i] in window
        cost = self.config.threshold / (1.0 - self.config.threshold)
        decay = 0.5 ** (n / 4096)
        for e, name in enumerate(EXPERTS):
            net = used[e] - cost * (issued[e] - used[e])
            self.expert_score[name] = self.expert_score[name] * decay + net
        self.buffer.add(pending.inputs, label, mask)
        self.labelled += n
        self._since_training += n
        bits = pending.inputs.cand_features[..., :N_SOURCES] * mask[..., None]
        self._source_all = self._source_all * decay + bits.sum(axis=(0, 1))
        self._source_pos = self._source_pos * decay + (bits * label[..., None]).sum(axis=(0, 1))

    def _train(self, steps: int) -> None:
        model, device = self.model, self.device
        model.train()
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")
        for _ in range(steps):
            inputs, label, mask = self.buffer.sample(self.rng, self.config.batch)
            logits = model(*inputs.tensors(device))
            target = torch.from_numpy(label).to(device)
            weight = torch.from_numpy(mask).to(device)
            loss = (loss_fn(logits, target) * weight).sum() / weight.sum().clamp(min=1.0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.last_loss = float(loss.detach())
            self.train_steps += 1
        model.eval()
