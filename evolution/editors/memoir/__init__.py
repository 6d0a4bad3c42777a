"""MEMOIR-style lifelong editing (memory.py: the routed residual memory; editor.py: the
"memoir" editor and the memory's save/load as agent state)."""
from evolution.editors.memoir.editor import MEMOIRHyperParams, memoir
from evolution.editors.memoir.memory import RoutedMemory, install, memory_of, uninstall

__all__ = ["MEMOIRHyperParams", "memoir", "RoutedMemory", "install", "memory_of", "uninstall"]
