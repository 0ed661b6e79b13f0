"""Our transformers implementation of LLaDA2.0 MoE (``LLaDA2MoeModelLM``), shipped with HF exports.

The two modules are copied verbatim next to exported weights (``tools/export_hf.py``); they import
only torch and transformers, and each other relatively, so they work as transformers remote code.
"""

import os

FILES = ("configuration_llada2_moe.py", "modeling_llada2_moe.py")
DIRECTORY = os.path.dirname(os.path.abspath(__file__))
