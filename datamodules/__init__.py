"""ftzoo data modules: instruction files, LLM-Adapters reasoning sets, and generated arithmetic.

All share :class:`FineTuneDataModule` (batching, masking, resumable sharded loaders, evaluation API).
"""

from datamodules.arithmetic import ArithmeticDataModule
from datamodules.base import FineTuneDataModule
from datamodules.errors import DataError
from datamodules.instruction import InstructionDataModule
from datamodules.reasoning import ReasoningDataModule

__all__ = [
    "ArithmeticDataModule",
    "DataError",
    "FineTuneDataModule",
    "InstructionDataModule",
    "ReasoningDataModule",
]
