"""Pure ``nn.Module`` parts of FastInst: no file I/O, no export concerns."""

from .fastinst import FastInst

__all__ = ["FastInst"]
