"""Imports every built-in editing and learning method so that they register by name."""
from evolution import finetune  # noqa: F401
from evolution.memit import memit_main  # noqa: F401,E402  (MEMIT)
from evolution.rome import rome_main  # noqa: F401,E402  (ROME)
from evolution import ft_l  # noqa: F401,E402  (FT-L)
from evolution import wise  # noqa: F401,E402  (WISE-style side memory)
