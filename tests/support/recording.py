"""Checking on a CPU what recording the decode step as a CUDA graph needs (bot/llm/decode_graphs.py)."""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

HOST_READS = ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


@contextlib.contextmanager
def no_host_traffic(copies_to_device: bool = True):
    """Fails a device value read on the host (a sync), and with `copies_to_device` host data
    turned into a tensor: neither can happen inside a recorded CUDA graph."""
    def refused(*_args, **_kwargs):
        raise AssertionError("a value moved between host and device")

    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    saved_factories = torch.tensor, torch.as_tensor
    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, refused)
        if copies_to_device:
            torch.tensor = torch.as_tensor = refused
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.tensor, torch.as_tensor = saved_factories


class GuardedRecorder:
    """Stands in for CUDA graphs on a CPU: a replay runs the forward again, under
    no_host_traffic (what recording on a GPU would refuse)."""

    def record(self, forward):
        def replay():
            with no_host_traffic():
                return forward()
        return replay


class TracedRecorder:
    """Stands in for CUDA graphs on a CPU as closely as a CPU allows. Recording runs the forward
    under no_host_traffic (what capture refuses) and keeps the aten ops it ran, in order. A
    replay runs only those ops, never the Python around them: every host value (a shape, a
    length, a scalar) is baked in as a graph bakes it, tensors from outside the forward (weights,
    slots, the next tokens) are read where they live, and the result is written into the
    recorded output tensor, as a graph's output has one address. GuardedRecorder reruns the
    Python, so it cannot catch a host value frozen at recording; this can."""

    def record(self, forward):
        for _ in range(2):  # warm-ups, as CudaGraphRecorder does before capture
            forward()
        trace = _OpTrace()
        with no_host_traffic(), trace:
            output = forward()
        kind, produced_by = trace.reference(output)
        assert kind == "op", "the forward's output was not made by the forward"

        def replay():
            made = trace.rerun()
            output.copy_(made[produced_by])
            return output
        return replay


class _OpTrace(TorchDispatchMode):
    """The aten ops of one forward, each with its arguments as references: ("op", id) for a
    tensor an earlier op made, ("outside", tensor) for one from outside, ("value", x) baked."""

    def __init__(self):
        super().__init__()
        self.ops: list = []
        self._made: dict = {}  # id() and (storage, offset, shape, stride, dtype) of tensors made here
        self._kept: list = []  # what the ops made, so that no id() is reused while the trace lives

    @staticmethod
    def _where(tensor: torch.Tensor) -> tuple:
        return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tuple(tensor.stride()), tensor.dtype)

    def reference(self, value) -> tuple:
        if not isinstance(value, torch.Tensor):
            return ("value", value)
        made = self._made.get(id(value)) or self._made.get(self._where(value))
        return ("op", made) if made is not None else ("outside", value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        references = tree_map(self.reference, (list(args), kwargs), is_leaf=_is_tensor)
        result = func(*args, **kwargs)
        produced = []
        for made in (result if isinstance(result, (tuple, list)) else [result]):
            if isinstance(made, torch.Tensor):
                self._made[id(made)] = self._made[self._where(made)] = id(made)
                produced.append(id(made))
            else:
                produced.append(None)
        self._kept.append(result)
        self.ops.append((func, references, produced))
        return result

    def rerun(self) -> dict:
        made: dict = {}

        def resolve(reference):
            kind, value = reference
            return made[value] if kind == "op" else value

        for func, references, produced in self.ops:
            args, kwargs = tree_map(resolve, references, is_leaf=_is_reference)
            result = func(*args, **kwargs)
            for key, tensor in zip(produced, result if isinstance(result, (tuple, list)) else [result]):
                if key is not None:
                    made[key] = tensor
        return made


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _is_reference(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] in ("op", "outside", "value")


def graphs_on_the_cpu():
    """DecodeGraphs for an engine on a CPU: buckets and fixed buffers as on a GPU; each decode
    graph is a TracedRecorder's replay."""
    from bot.llm.decode_graphs import DecodeGraphs

    return DecodeGraphs(TracedRecorder())
