"""Lightning's FSDPStrategy, let onto CPU processes (gloo) so that CI without a GPU can test FSDP.

Lightning 2.6 refuses FSDP without a CUDA accelerator in two places:

* ``_AcceleratorConnector._check_strategy_and_fallback`` raises for ``strategy="fsdp"`` or an
  instance whose type *is* ``FSDPStrategy`` on ``accelerator="cpu"`` (a subclass passes);
* ``FSDPStrategy._setup_model`` passes ``device_id=root_device.index``, which is ``None`` on CPU,
  and torch's FSDP then looks for an accelerator and raises "FSDP needs a non-CPU accelerator
  device". Passing ``device_id=torch.device("cpu")`` is accepted.

Everything else (launcher, process group, precision, optimizer set-up, state dicts,
checkpoints) is Lightning's own. One more CPU limit, left as it is: full state-dict
checkpoints (``state_dict_type="full"``) offload to CPU and segfault when the parameters are
on CPU already, so tests use ``state_dict_type="sharded"`` (or no checkpoint). Test-only: on
GPUs use ``lightning.pytorch.strategies.FSDPStrategy`` (``configs/distributed/fsdp.yaml``).
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch import nn


class CPUFSDPStrategy(FSDPStrategy):
    """:class:`FSDPStrategy` whose FSDP wrapper is told that the device is the CPU."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model
