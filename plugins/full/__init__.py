from plugins.full.plugin import FullFineTuning

__all__ = ["FullFineTuning"]
