"""WISE-style side memory (memory.py: the gated module; editor.py: the "wise" editor;
persist.py: saving and loading a side memory beside a model dir)."""
from evolution.editors.wise.editor import WISEHyperParams, wise
from evolution.editors.wise.memory import SideMemoryLinear, install, side_memory_of, ties_merge, uninstall
from evolution.editors.wise.persist import has_side_memory, load_side_memory, save_side_memory

__all__ = ["WISEHyperParams", "wise", "SideMemoryLinear", "install", "side_memory_of", "ties_merge", "uninstall",
           "has_side_memory", "load_side_memory", "save_side_memory"]
