"""Checking on a CPU what recording the decode step as a CUDA graph needs (bot/llm/decode_graphs.py)."""

from __future__ import annotations

import contextlib

import torch

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


def graphs_on_the_cpu():
    """DecodeGraphs for an engine on a CPU: buckets and fixed buffers as on a GPU, guarded."""
    from bot.llm.decode_graphs import DecodeGraphs

    return DecodeGraphs(GuardedRecorder())
